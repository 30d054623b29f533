"""Dead letters: made by real workers, then listed, requeued, purged and trimmed."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis

from omnitask import ArgumentTypeError
from omnitask.broker.keys import QueueKeys
from omnitask.deadletters import DeadLetters
from omnitask.dlq_cli import add_parser, run
from omnitask.errors import MessageError
from omnitask.loader import load_app
from omnitask.messages import PROTOCOL_VERSION, Envelope, encode_envelope, now_ms
from omnitask.serialization import encode_call, get_serializer
from tests.apps import basic
from tests.conftest import WorkerFactory, wait_for

pytestmark = pytest.mark.process

GARBAGE = b"\x00garbage\xff"
ADD = "tests.apps.basic.add"
SHIFT = "tests.apps.basic.shift"


@pytest.fixture(autouse=True)
def _app(redis_url: str) -> Iterator[None]:
    basic.app.configure(broker_url=redis_url)
    yield
    basic.app.close()


@pytest.fixture
def dead() -> DeadLetters:
    return DeadLetters(basic.app)


def qk(queue: str = "default") -> QueueKeys:
    return basic.app.keys.queue(queue)


def envelope(
    task_id: str, args: tuple[object, ...] = (1, 2), *, task: str = ADD, priority: int = 5
) -> bytes:
    codec = get_serializer("msgpack")
    payload = encode_call(codec, task, args, {})
    return encode_envelope(
        Envelope(PROTOCOL_VERSION, priority, task_id, task, payload, codec.code, now_ms())
    )


def bury(
    r: redis.Redis,
    message: bytes,
    reason: str = "unknown-task",
    *,
    queue: str = "default",
    task_id: str | None = None,
    task: str = ADD,
    stream_id: str = "*",
    **extra: str,
) -> str:
    """A dead letter written the way lua/bury.lua writes one."""
    fields: dict[Any, Any] = {"msg": message, "reason": reason, "detail": "why", "w": "t/1"}
    if task_id is not None:
        fields.update(i=task_id, n=task)
    fields.update(extra)
    r.sadd(basic.app.keys.queues, queue)  # as the first send to a queue does
    added: Any = r.xadd(qk(queue).dead, fields, id=stream_id)
    return str(added.decode())


def test_real_dead_letters_are_listed_filtered_and_kept(
    start_worker: WorkerFactory, r: redis.Redis, dead: DeadLetters
) -> None:
    start_worker(env={"OMNITASK_MAX_DELIVERIES": "2"})
    unknown = basic.app.send_task("no.such.task", (1,))
    r.rpush(qk().ready[5], GARBAGE)
    r.lpush(qk().wake, "1")
    pill = basic.die.delay("pill")
    failed = basic.fail.delay("boom")  # fails with no retries left
    wait_for(lambda: dead.count() == 4, what="four dead letters")

    assert dead.queues() == ["default"] and dead.count("default") == 4 and dead.count("q2") == 0
    letters = dead.list()
    assert [d.stream_id for d in letters] == sorted(
        (d.stream_id for d in letters), key=lambda s: tuple(map(int, s.split("-"))), reverse=True
    )
    reasons = {d.reason for d in letters}
    assert reasons == {"unknown-task", "malformed", "max-deliveries", "failed"}
    assert dead.list(limit=2) == letters[:2]
    for letter in letters:
        assert letter.queue == "default" and letter.worker and letter.detail
        assert letter.time.tzinfo == timezone.utc
        assert abs((datetime.now(timezone.utc) - letter.time).total_seconds()) < 30
        assert dead.get("default", letter.stream_id) == letter

    (malformed,) = dead.list(reason="malformed")
    assert malformed.message == GARBAGE and malformed.envelope is None
    assert malformed.task_id is None and malformed.task_name is None
    (poison,) = dead.list(task="tests.apps.basic.die")
    assert (poison.reason, poison.task_id) == ("max-deliveries", pill.id)
    assert poison.envelope is not None and poison.envelope.task == "tests.apps.basic.die"
    (missing,) = dead.list("default", reason="unknown-task", task="no.such.task")
    assert missing.task_id == unknown.id and "no.such.task" in missing.detail
    assert dead.list(reason="unknown-task", task=ADD) == []
    assert dead.get("default", "1-0") is None and dead.get("default", "nonsense") is None
    (boom,) = dead.list(reason="failed")
    assert boom.task_id == failed.id and boom.fields["attempts"] == "1"
    assert "Boom: boom" in boom.fields["traceback"] and boom.as_dict()["attempts"] == "1"

    with pytest.raises(MessageError, match="not a valid omnitask message"):
        dead.requeue("default", malformed.stream_id)
    assert dead.get("default", malformed.stream_id) == malformed

    # Requeued while the cause remains, they run into the dead letters again.
    assert dead.requeue_many(task="no.such.task") == 1
    assert dead.requeue("default", boom.stream_id) is True
    wait_for(lambda: dead.count() == 4, what="both dead-lettered again")
    (again,) = dead.list(reason="unknown-task")
    assert again.stream_id != missing.stream_id and again.message == missing.message
    (boom_again,) = dead.list(reason="failed")
    assert boom_again.stream_id != boom.stream_id and boom_again.task_id == failed.id


def test_requeued_task_runs_with_a_fresh_delivery_budget(
    start_worker: WorkerFactory, r: redis.Redis, dead: DeadLetters
) -> None:
    start_worker()
    stream_id = bury(r, envelope("revived-1", (2, 3)), task_id="revived-1")
    r.hset(qk().deliveries, "revived-1", 99)  # far past max_deliveries: would be buried again
    assert dead.requeue("default", stream_id) is True
    assert basic.app.AsyncResult("revived-1").get(timeout=5) == 5
    assert dead.count() == 0 and not r.hexists(qk().deliveries, "revived-1")
    assert dead.requeue("default", stream_id) is False


def test_revive_pushes_to_the_tail_of_its_priority_and_wakes(
    r: redis.Redis, dead: DeadLetters
) -> None:
    r.rpush(qk().ready[7], b"already-there")
    body = envelope("t-7", priority=7)
    stream_id = bury(r, body, task_id="t-7")
    bad = bury(r, GARBAGE, "malformed")
    assert dead._revive("default", [bad, stream_id, "5-5"]) == [-1, 1, 0]
    assert r.lrange(qk().ready[7], 0, -1) == [b"already-there", body]
    assert r.llen(qk().wake) == 1
    assert [d.stream_id for d in dead.list()] == [bad]


def test_requeue_many_by_queue_reason_and_task(r: redis.Redis, dead: DeadLetters) -> None:
    bodies = [envelope(f"t{i}") for i in range(4)]
    bury(r, bodies[0], task_id="t0")
    bury(r, bodies[1], "undecodable", task_id="t1")
    bury(r, bodies[2], task_id="t2", task="other.task")
    bury(r, bodies[3], queue="emails", task_id="t3")
    bury(r, GARBAGE, "malformed")
    assert dead.requeue_many(reason="unknown-task", task=ADD) == 2
    assert r.lrange(qk().ready[5], 0, -1) == [bodies[0]]
    assert r.lrange(qk("emails").ready[5], 0, -1) == [bodies[3]]
    assert dead.requeue_many("default") == 2  # the malformed one stays
    assert r.lrange(qk().ready[5], 0, -1) == [bodies[0], bodies[1], bodies[2]]
    assert [d.reason for d in dead.list()] == ["malformed"]
    assert dead.requeue_many() == 0


def test_purge_with_filters_and_all(r: redis.Redis, dead: DeadLetters) -> None:
    bury(r, envelope("a"), task_id="a")
    bury(r, envelope("b"), "undecodable", task_id="b")
    bury(r, GARBAGE, "malformed")
    bury(r, envelope("c"), queue="emails", task_id="c")
    bury(r, envelope("d"), queue="emails", task_id="d", task="other.task")
    assert dead.queues() == ["default", "emails"] and dead.count() == 5
    assert dead.purge(reason="malformed") == 1
    assert dead.purge(task="other.task") == 1
    assert dead.purge("emails") == 1 and not r.exists(qk("emails").dead)
    assert dead.queues() == ["default"]
    assert dead.purge() == 2 and dead.count() == 0 and dead.queues() == []
    assert dead.purge() == 0


def test_trim_older_than(r: redis.Redis, dead: DeadLetters) -> None:
    now = now_ms()
    bury(r, GARBAGE, "malformed", stream_id=f"{now - 2 * 3600_000}-0")
    bury(r, GARBAGE, "malformed", stream_id=f"{now - 1800_000}-0")
    fresh = bury(r, GARBAGE, "malformed")
    assert dead.trim_older_than("default", 3600) == 1
    assert dead.trim_older_than("default", timedelta(minutes=10)) == 1
    assert [d.stream_id for d in dead.list()] == [fresh]
    assert dead.trim_older_than("default", 60) == 0
    with pytest.raises(ValueError, match="negative"):
        dead.trim_older_than("default", -1)


# -- the CLI, through add_parser() and run() until cli.py wires them as `omnitask dlq` ---------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def dlq(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="omnitask")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dlq", *argv])
    assert args.loglevel == "warning"  # cli.main() configures logging with it
    code = run(load_app(args.app), args)
    out, err = capsys.readouterr()
    return code, out, err


A = ("-A", "tests.apps.basic")


def test_cli_list_show_count(r: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    now = now_ms()  # distinct times: entries of two streams within one ms have no order
    first = bury(r, envelope("t1", (2, 3)), task_id="t1", stream_id=f"{now - 3}-0")
    bad = bury(r, GARBAGE, "malformed", queue="emails", stream_id=f"{now - 2}-0")
    pickled = encode_call(get_serializer("cloudpickle"), ADD, (1,), {})
    body = encode_envelope(Envelope(PROTOCOL_VERSION, 5, "p1", ADD, pickled, 1, now))
    third = bury(r, body, "serializer-refused", task_id="p1", stream_id=f"{now - 1}-0")

    code, out, _ = dlq(capsys, "list", *A)
    lines = out.splitlines()
    header = ["QUEUE", "ID", "TIME", "REASON", "TASK", "TASK", "ID", "DETAIL"]
    assert code == 0 and lines[0].split() == header
    assert [line.split()[1] for line in lines[1:]] == [third, bad, first]
    column = lines[0].index("REASON")
    assert [line[column:].split()[0] for line in lines[1:]] == [
        "serializer-refused",
        "malformed",
        "unknown-task",
    ]
    code, out, _ = dlq(capsys, "list", *A, "-Q", "default", "--reason", "unknown-task", "--json")
    (item,) = json.loads(out)
    assert item["id"] == first and item["task_id"] == "t1" and item["task"] == ADD
    assert dlq(capsys, "list", *A, "--task", "nope") == (0, "no dead letters\n", "")
    assert dlq(capsys, "count", *A) == (0, "3\n", "")
    assert dlq(capsys, "count", *A, "-Q", "emails") == (0, "1\n", "")

    code, out, _ = dlq(capsys, "show", *A, "default", first)
    assert code == 0 and f"id:         {first}" in out and "reason:     unknown-task" in out
    assert "envelope:" in out and "  args:       (2, 3)" in out and "  kwargs:     {}" in out
    code, out, _ = dlq(capsys, "show", *A, "default", first, "--json")
    shown = json.loads(out)
    assert shown["envelope"]["args"] == "(2, 3)" and shown["envelope"]["priority"] == 5
    assert shown["envelope"]["retries"] == 0 and shown["envelope"]["id"] == "t1"
    assert shown["envelope"]["serializer"] == "msgpack"
    _, out, _ = dlq(capsys, "show", *A, "default", third)
    assert "bytes of cloudpickle, not decoded" in out
    _, out, _ = dlq(capsys, "show", *A, "emails", bad)
    assert "not a valid message" in out and "envelope:" not in out
    trace = "Traceback (most recent call last):\n  ...\nBoom: boom"
    boom = bury(r, envelope("f1"), "failed", task_id="f1", attempts="3", traceback=trace)
    _, out, _ = dlq(capsys, "show", *A, "default", boom)
    assert "attempts:   3\n" in out and "traceback:\n  Traceback (most" in out
    assert "\n    ...\n  Boom: boom\n" in out
    code, out, err = dlq(capsys, "show", *A, "default", "1-1")
    assert code == 1 and out == "" and "has no dead letter '1-1'" in err


def test_cli_requeue(r: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    one = bury(r, envelope("t1"), task_id="t1")
    bury(r, envelope("t2"), "undecodable", task_id="t2")
    bury(r, envelope("t3"), queue="emails", task_id="t3")
    bad = bury(r, GARBAGE, "malformed")
    assert dlq(capsys, "requeue", *A, one) == (0, f"requeued {one}\n", "")
    code, _, err = dlq(capsys, "requeue", *A, one, bad)
    assert code == 1 and "has no dead letter" in err and "left in place" in err
    assert dlq(capsys, "requeue", *A)[0] == 2
    assert dlq(capsys, "requeue", *A, "--all", "--reason", "x")[0] == 2
    assert dlq(capsys, "requeue", *A, "--reason", "undecodable")[1] == "requeued 1 dead letter(s)\n"
    assert dlq(capsys, "requeue", *A, "--all")[1] == "requeued 1 dead letter(s)\n"
    assert r.llen(qk().ready[5]) == 2 and r.llen(qk("emails").ready[5]) == 1
    assert DeadLetters(basic.app).count() == 1


def test_cli_purge_asks_first(
    r: redis.Redis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bury(r, envelope("t1"), task_id="t1")
    bury(r, GARBAGE, "malformed")
    bury(r, GARBAGE, "malformed", queue="emails")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, _, err = dlq(capsys, "purge", *A)
    assert code == 1 and "--force" in err
    monkeypatch.setattr("sys.stdin", _Terminal())
    prompts: list[str] = []
    answers = iter(["n", "y"])

    def answer(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("builtins.input", answer)
    assert dlq(capsys, "purge", *A, "--reason", "malformed") == (0, "nothing deleted\n", "")
    assert dlq(capsys, "purge", *A, "-Q", "emails")[1] == "deleted 1 dead letter(s)\n"
    assert prompts == [
        "Delete 2 dead letter(s) from every queue? [y/N] ",
        "Delete 1 dead letter(s) from queue 'emails'? [y/N] ",
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert dlq(capsys, "purge", *A, "-f")[1] == "deleted 2 dead letter(s)\n"
    assert DeadLetters(basic.app).count() == 0


def test_arguments_of_the_wrong_type_sent_by_name_are_dead_lettered(
    start_worker: WorkerFactory, dead: DeadLetters
) -> None:
    start_worker()
    # send_task knows no annotations; the worker converts what it can and refuses the rest.
    assert basic.app.send_task(ADD, (True, 2)).get(timeout=5) == 3
    when = "2030-05-01T12:00:00+02:00"
    point, back = basic.app.send_task(SHIFT, ({"x": 1, "y": 2}, when)).get(timeout=5)
    assert point == basic.Point(2, 3) and back.isoformat() == when
    refused = basic.app.send_task(ADD, ("one", 2))
    with pytest.raises(ArgumentTypeError, match="argument 'x' cannot be read as int"):
        refused.get(timeout=5)
    missing = basic.app.send_task(ADD, (1,))  # does not fit the signature: never runs
    with pytest.raises(TypeError, match="missing a required argument: 'y'"):
        missing.get(timeout=5)
    letters = dead.list(reason="bad-arguments")
    assert {d.task_id for d in letters} == {refused.id, missing.id}
    assert any("'x'" in d.detail for d in letters)
