"""The wire layout the Lua scripts rely on, and the key schema."""

from __future__ import annotations

import pytest

from omnitask.broker.keys import Keyspace
from omnitask.broker.scripts import SCRIPTS
from omnitask.errors import MessageError
from omnitask.messages import PROTOCOL_VERSION, Envelope, decode_envelope, encode_envelope


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
