"""Checked by mypy from tests/typing/test_typing.py, never run.

Lines marked ``# E: <code>`` must be reported by mypy with that error code; no other line may
be reported.
"""

from __future__ import annotations

from typing import Any

from typing_extensions import assert_type

from omnitask import AsyncResult, OmniTask

app = OmniTask("typing")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(queue="emails", retries=3)
def send(to: str, *, urgent: bool = False) -> None: ...


@app.task(bind=True)
def bound(self: Any, n: int) -> str:
    return str(n)


assert_type(add.delay(1, 2), AsyncResult[int])
assert_type(add.delay(1, 2).get(timeout=1), int)
assert_type(add(1, 2), int)
assert_type(send.delay("a@b.c", urgent=True), AsyncResult[None])
assert_type(bound.delay(3).get(), str)
assert_type(add.apply_at(0.0, 1, 2), AsyncResult[int])

add.delay(1, "x")  # E: arg-type
add.delay(1)  # E: call-arg
add.delay(1, 2, 3)  # E: call-arg
send.delay("a@b.c", urgent="yes")  # E: arg-type
bound.delay("three")  # E: arg-type
result: str = add.delay(1, 2).get()  # E: assignment
app.task(retires=3)  # E: call-overload
app.task(retry_on=KeyError)(lambda: None)
app.task(retry_on="KeyError")  # E: call-overload
