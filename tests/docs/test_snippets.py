"""Every ```python block of the docs (docs/**/*.md and README.md) is run, or at least compiled.

The convention, for everyone who writes a page
================================================

**A page is one session.** The ```python blocks of one page run in order, in one test
(``test_page[docs/guide/results.md]``), in one namespace: a later block uses the names an
earlier one defined, as a reader would expect. Only ```python blocks are collected: shell
commands are ```console, output and logs are ```text, interactive sessions are ```pycon (shown,
not run).

**Marks.** A block is marked by an HTML comment on the line right before its fence (comments
do not show on the site). Without a mark a block runs.

====================================  =======================================================
mark                                  what the test does with the block
====================================  =======================================================
(none)                                runs it
``<!-- snippet: compile-only -->``    byte-compiles it, does not run it: a fragment that uses
                                      names the page never defines, waits forever
                                      (``follow()``), or reads a secret from the environment
``<!-- snippet: skip (reason) -->``   neither (the reason is required): not valid Python on
                                      purpose, e.g. a line shown as a type error
``<!-- snippet: eager -->``           runs it with ``OMNITASK_EAGER=true`` set, so an app it
                                      creates runs tasks inside ``.delay()``: for a page about
                                      the API's shape, where a worker adds nothing
``<!-- snippet: worker -->``          starts a worker first (below), then runs the block
====================================  =======================================================

**Hidden setup.** ``<!-- snippet: setup`` ... ``-->`` (the code on the lines between) runs at
that point of the session and is not shown on the site. Use it for pages whose blocks are
fragments (``add.delay(2, 3)`` on a page that never defines ``add``); keep it a few lines.

**The page's module is ``tasks``.** The session's namespace is a real module named ``tasks``
(in ``sys.modules`` while the page runs), so tasks defined on the page are named ``tasks.add``
as in the text, and a block may write ``from tasks import app``.

**Workers.** The first block marked ``worker`` splits the page in two:

- the blocks before it (run blocks and setup) are the tasks module: they run in ``tasks`` and
  are also written to ``<tmp>/tasks.py``, and ``python -m omnitask worker -A tasks -c 1``
  starts on that file (the test waits for its ready line, and kills its process group at the
  end);
- the worker block and every block after it are the client: they run with
  ``__name__ == "__main__"`` in a namespace that starts with the module's names, so
  ``add.delay(2, 3).get(timeout=10)`` works with or without ``from tasks import add``, and
  code under ``if __name__ == "__main__":`` runs. Tasks the worker must know are defined
  before the worker block. One worker per page at most.

A page whose blocks call ``.get()`` on a real result needs a worker (or ``eager``); one that
only sends (``.delay()``, ``apply_async(countdown=...)``, ``revoke()``) does not: the tasks
wait in Redis.

**Environment.** Each page runs in a fresh temporary directory (the working directory, first
on ``sys.path``) against the suite's own Redis (``redis_server`` in tests/conftest.py),
flushed before the page: ``OMNITASK_BROKER_URL`` points at it, so ``OmniTask("shop")``
without ``broker=`` connects there, and a literal ``redis://localhost:6379/0`` in a block is
rewritten to it. The suite never talks to a Redis it did not start: the one on
127.0.0.1:6379 belongs to someone else. Other ``OMNITASK_*`` variables are removed, and
``SHOP_TASKS_KEY``-style secrets a block reads from ``os.environ`` are not set: mark such
blocks compile-only or give them a setup that sets the variable.

**Budget.** The whole module stays under ~40 s: prefer run and eager to worker, and never
wait on a fixed sleep.
"""

from __future__ import annotations
