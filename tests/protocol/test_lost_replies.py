"""A finishing step whose reply is lost is sent again: what follows the task must not be
queued twice (a chain's next task, a link), and a dead-lettered task still fails its workflow."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from omnitask.worker.execute import Executor
from tests.apps import flows as f


@pytest.fixture(autouse=True)
def _app(redis_url: str) -> Iterator[None]:
    f.app.configure(broker_url=redis_url)
    yield
    f.app.close()


def lossy() -> Callable[[Callable[[], Any]], Any]:
    """An io that runs each Redis step, loses the reply of the first, and tries again."""
    lost = [False]

    def io(step: Callable[[], Any]) -> Any:
        value = step()
        if not lost[0]:
            lost[0] = True
            return step()  # as the child's retry does after a ConnectionError
        return value

    return io


def ready(r: redis.Redis) -> list[bytes]:
    return [b for key in f.app.keys.queue("default").ready for b in r.lrange(key, 0, -1)]


def test_a_chain_step_is_queued_once_when_the_ack_reply_is_lost(r: redis.Redis) -> None:
    result = (f.add.s(1, 2) | f.mul.s(10)).delay()
    executor = Executor(f.app, "c1", lossy())
    claim = executor.claim("default")
    executor.handle("default", claim.tasks[0], 0)
    follow = ready(r)
    assert len(follow) == 1 and result.id.encode() in follow[0]  # mul, once


def test_a_link_is_queued_once_when_the_ack_reply_is_lost(r: redis.Redis) -> None:
    f.add.apply_async((1, 2), link=f.mul.s(10))
    executor = Executor(f.app, "c1", lossy())
    executor.handle("default", executor.claim("default").tasks[0], 0)
    assert len(ready(r)) == 1


def test_a_dead_lettered_task_fails_its_workflow_even_when_the_reply_is_lost(
    r: redis.Redis,
) -> None:
    follow = f.app.send_task("no.such.task", (1,), link_error=f.note.s())
    executor = Executor(f.app, "c1", lossy())
    executor.handle("default", executor.claim("default").tasks[0], 0)
    assert f.app.dead_letters.count() == 1
    assert len(ready(r)) == 1  # the link_error callback, queued although the bury was resent
    assert follow.state == "FAILURE"
