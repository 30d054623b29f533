"""The tasks of the Sentinel tests. The broker URL comes from OMNITASK_BROKER_URL."""

from __future__ import annotations

from omnitask import OmniTask

app = OmniTask("tsentinel")


@app.task
def echo(i: int) -> int:
    """Return ``i``: the result record is the proof the task ran."""
    return i
