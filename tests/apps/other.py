"""A second app with the same task names as ``basic`` but another name, hence another prefix."""

from __future__ import annotations

from omnitask import OmniTask

app = OmniTask("tother")


@app.task(name="tests.apps.basic.add")
def add(x: int, y: int) -> int:
    return 1000 + x + y
