"""The wire layout the Lua scripts rely on, and the key schema."""

from __future__ import annotations

import string

import msgspec
import pytest

from omnitask import OmniTask
from omnitask.broker.keys import Keyspace
from omnitask.broker.scripts import SCRIPTS
from omnitask.errors import MessageError
from omnitask.events import events_of, stream_order
from omnitask.messages import PROTOCOL_VERSION, Envelope, decode_envelope, encode_envelope
from omnitask.producer import Call, new_task_ids


@pytest.mark.parametrize("id_len", [1, 31, 32, 200])
def test_envelope_header_layout(id_len: int) -> None:
    # lua/_lib.lua reads: fixarray header, version, priority, then the id and name strings.
    task_id = "i" * id_len
    body = encode_envelope(Envelope(PROTOCOL_VERSION, 7, task_id, "a.task", b"x", 0, 123))
    assert 0x97 <= body[0] <= 0x9F
    assert body[1] == PROTOCOL_VERSION == 1
    assert body[2] == 7
    if id_len <= 31:
        assert body[3] == 0xA0 + id_len and body[4 : 4 + id_len] == task_id.encode()
    else:
        assert body[3] == 0xD9 and body[4] == id_len and body[5 : 5 + id_len] == task_id.encode()


def test_lua_knows_the_protocol_version() -> None:
    assert all(f"local OT_VERSION = {PROTOCOL_VERSION}" in s.source for s in SCRIPTS)


@pytest.mark.parametrize("data", [b"", b"garbage", b"\x93\x01\x05", b'{"task": "celery"}'])
def test_garbage_is_a_message_error(data: bytes) -> None:
    with pytest.raises(MessageError):
        decode_envelope(data)


def test_keys_share_hash_tags() -> None:
    keys = Keyspace("ot", "app")
    queue = keys.queue("emails")
    every = (*queue.ready, queue.delayed, queue.consumers, queue.proc("c"), queue.dead)
    every += (queue.result("t1"), queue.state("t1"), queue.events, queue.revoked)
    every += (queue.terminate, queue.paused, queue.rate("t"), queue.cap("t"), queue.chord("c"))
    for key in every:
        assert key.startswith("ot:{app:emails}:")
    assert queue.result("t1") == "ot:{app:emails}:r:t1" and keys.events == "ot:{app}:events"
    assert keys.queues == "ot:{app}:queues"
    with pytest.raises(ValueError, match="queue name"):
        keys.queue("a{b}")


@pytest.mark.parametrize("expires", [None, 60.0])
def test_bulk_envelopes_are_the_single_ones(expires: float | None) -> None:
    # Call.build_many writes the envelope from a tuple of its leading fields; it must be the
    # bytes Call.build writes for the same call, trailing defaults trimmed alike.
    app = OmniTask("wire", broker="redis://127.0.0.1:1/0")

    @app.task(queue="reports", priority=3, expires=expires)
    def render(page: int, title: str) -> None:
        del page, title

    calls = [(1, "one"), (2, "two")]
    for call, args in zip(Call.build_many(app, render, calls), calls, strict=True):
        one = Call.build(app, render, args, {}, {"task_id": call.task_id})
        assert call.queue == one.queue == "reports"
        assert call.item[1:] == one.item[1:]
        many_env, one_env = decode_envelope(call.item[0]), decode_envelope(one.item[0])
        assert call.item[0] == encode_envelope(many_env)  # trailing defaults trimmed alike
        assert abs(many_env.sent_ms - one_env.sent_ms) < 1000
        shift = one_env.sent_ms - many_env.sent_ms
        if expires is not None:
            assert many_env.expires_ms is not None
            many_env = msgspec.structs.replace(many_env, expires_ms=many_env.expires_ms + shift)
        assert msgspec.structs.replace(many_env, sent_ms=one_env.sent_ms) == one_env


def test_bulk_task_ids() -> None:
    ids = new_task_ids(1000)
    assert len(set(ids)) == 1000
    alphabet = set(string.ascii_letters + string.digits + "-_")
    assert all(len(i) == 22 and set(i) <= alphabet for i in ids)


def test_an_is_field_not_written_by_omnitask_stays_a_field() -> None:
    [event] = events_of(b"5-0", {b"e": b"custom", b"is": b"not json"})
    assert event.kind == "custom" and event.fields == {"is": "not json"}
    assert [e.task_id for e in events_of(b"5-1", {b"e": b"task-sent", b"is": b'["a","b"]'})] == [
        "a",
        "b",
    ]


def test_positions_within_a_shared_entry_sort_before_the_entry() -> None:
    shuffled = ["6-0", "5-1", "5-1#0", "6-0#0", "5-0", "5-1#7"]
    assert sorted(shuffled, key=stream_order) == ["5-0", "5-1#0", "5-1#7", "5-1", "6-0#0", "6-0"]
