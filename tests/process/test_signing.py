"""Signed messages: with a secret_key, only messages and results signed with it are used."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest
import redis

import omnitask
from omnitask.messages import decode_envelope, encode_envelope, encode_envelope_full
from omnitask.signing import Signer
from tests.apps import basic
from tests.conftest import WorkerFactory, wait_for

pytestmark = pytest.mark.process

KEY = "test-secret-0123456789abcdef"


@pytest.fixture(autouse=True)
def _signed_app(redis_url: str) -> Iterator[None]:
    basic.app.configure(broker_url=redis_url, secret_key=KEY)
    yield
    # None means "not given": back to the defaults for the tests that run after these.
    basic.app.configure(secret_key=None, events=None, unsigned_pickle=None)
    basic.app.close()


def test_signer_detects_tampering() -> None:
    from omnitask.messages import PROTOCOL_VERSION, Envelope

    signer = Signer(KEY)
    signed = signer.sign(Envelope(PROTOCOL_VERSION, 5, "id", "t", b"payload", 0, 1))
    assert signer.verify(signed)
    assert not signer.verify(msgspec.structs.replace(signed, payload=b"other"))
    assert not signer.verify(msgspec.structs.replace(signed, sig=None))
    assert not Signer("another key").verify(signed)


def test_signed_round_trip_and_pickle(start_worker: WorkerFactory) -> None:
    start_worker(env={"OMNITASK_SECRET_KEY": KEY})
    assert basic.add.delay(2, 3).get(timeout=5) == 5
    assert basic.apply_fn.delay(lambda x: x * 10, 4).get(timeout=5) == 40


def test_tampered_and_unsigned_messages_are_not_run(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    start_worker(env={"OMNITASK_SECRET_KEY": KEY})
    qk = basic.app.keys.queue("default")
    # Sent signed by a client, then altered in Redis before a worker took it.
    basic.app.configure(events=False)
    good = basic.record.apply_async(("x",), countdown=60)
    (body,) = r.zrange(qk.delayed, 0, -1)
    r.delete(qk.delayed)
    envelope = decode_envelope(body)
    from omnitask.serialization import encode_call, get_serializer

    evil = encode_call(get_serializer("msgpack"), "x", ("tampered",), {})
    tampered = msgspec.structs.replace(envelope, payload=evil, eta_ms=None)
    unsigned = msgspec.structs.replace(tampered, id="unsigned-1", sig=None)
    r.rpush(qk.ready[5], encode_envelope(tampered), encode_envelope(unsigned))
    r.lpush(qk.wake, "1")
    wait_for(lambda: r.xlen(qk.dead) == 2, what="two dead letters")
    reasons = sorted(f[b"reason"] for _, f in r.xrange(qk.dead))
    assert reasons == [b"bad-signature", b"bad-signature"]
    assert r.llen("test:log") == 0  # neither ran
    with pytest.raises(omnitask.MessageError, match="signature that does not match"):
        good.get(timeout=5)


def test_a_message_in_the_untrimmed_encoding_still_runs(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    # Queued by a sender that wrote every field of the envelope (before trailing defaults
    # were dropped): same values, same signature, other bytes.
    start_worker(env={"OMNITASK_SECRET_KEY": KEY})
    qk = basic.app.keys.queue("default")
    result = basic.record.apply_async(("old",), countdown=60)
    (body,) = r.zrange(qk.delayed, 0, -1)
    r.delete(qk.delayed)
    full = encode_envelope_full(decode_envelope(body))
    assert len(full) > len(body)
    r.rpush(qk.ready[5], full)
    r.lpush(qk.wake, "1")
    assert result.get(timeout=10) == "old"
    assert r.xlen(qk.dead) == 0


def test_cloudpickle_without_a_key_is_refused_at_delay() -> None:
    basic.app.configure(secret_key=None)
    with pytest.raises(omnitask.ConfigurationError, match="set secret_key"):
        basic.apply_fn.delay(abs, -1)
    basic.app.configure(unsigned_pickle=True)
    basic.apply_fn.delay(abs, -1)  # the documented opt-out for trusted networks
    basic.app.configure(unsigned_pickle=False)


def test_results_not_signed_with_the_key_are_refused(
    start_worker: WorkerFactory, redis_url: str
) -> None:
    start_worker(env={"OMNITASK_SECRET_KEY": "the worker's other key"})
    result = basic.add.delay(1, 1)  # signed with KEY: the worker refuses it ...
    with pytest.raises(omnitask.SerializationError, match="not signed with this app's"):
        result.get(timeout=5)  # ... and its failure record is signed with the other key
