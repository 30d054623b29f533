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


@app.task
async def fetch(url: str, retries: int = 0) -> bytes:
    return url.encode()


@app.task(queue="io", bind=True)
async def crawl(self: Any, depth: int) -> list[str]:
    return [str(depth)]


async def caller() -> None:
    assert_type(fetch.delay("u"), AsyncResult[bytes])
    assert_type(fetch.delay("u").get(), bytes)
    assert_type(await fetch("u"), bytes)
    assert_type(await fetch.delay_async("u"), AsyncResult[bytes])
    assert_type(await fetch.delay("u").get_async(timeout=5), bytes)
    assert_type(await fetch.delay("u"), bytes)
    assert_type(await crawl.delay_async(2), AsyncResult[list[str]])
    assert_type(await add.send_async((1, 2), countdown=1), AsyncResult[int])
    fetch.delay(1)  # E: arg-type
    await fetch.delay_async("u", retries="x")  # E: arg-type
    await crawl.delay_async()  # E: call-arg
    await add.send_async((1, 2), countdon=1)  # E: call-arg
    blob: str = await fetch.delay("u")  # E: assignment  # noqa: F841


assert_type(add.delay(1, 2).get(propagate=False), "int | BaseException")
