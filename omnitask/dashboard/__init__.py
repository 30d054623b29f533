"""The web dashboard (``omnitask dashboard``): pages, a JSON API and ``/metrics``.

Modules, each with one job:

- ``window.py``: the recent lifecycle events, read incrementally from the event stream;
- ``tasks.py``: tasks found in those events, and one task's detail from Redis;
- ``views.py``: workers, queues, dead letters and the live chart's series, as JSON-ready data;
- ``actions.py``: requeue and purge of dead letters, each confirmed first;
- ``auth.py``: loopback binding, token or basic auth, and the browser guards;
- ``server.py``: the starlette app that serves all of it;
- ``static/``: the page itself, plain HTML, CSS and JavaScript (no framework, nothing
  fetched from elsewhere: it works offline).

Only ``server.py`` imports starlette (``omnitask[dashboard]``); ``omnitask.metrics`` uses the
event window without it.
"""
