"""Real beats, run through the CLI: exactly-once runs with two beats, failover, runtime changes,
the missed-run policy, and ``worker -B``.

The runs are counted from what the beats queued (one envelope per run, its task id made of the
schedule and the slot), or, with a worker, from what the task itself counted.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from omnitask.messages import decode_envelope
from omnitask.schedules import run_id
from tests.apps import beatapp
from tests.conftest import ROOT, WorkerFactory, wait_for

pytestmark = pytest.mark.process

APP = "tests.apps.beatapp"
CODE = "code-every-second"  # declared in tests/apps/beatapp.py
LEASE_S = 1.5


class BeatProcess:
    """A real ``python -m omnitask beat`` in its own session, with its output collected."""

    def __init__(self, url: str, *args: str) -> None:
        self.lines: list[str] = []
        self._ready = threading.Event()
        env = {**os.environ, "OMNITASK_BROKER_URL": url, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omnitask", "beat", "-A", APP, "--lease", str(LEASE_S), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("omnitask beat ") and line.rstrip().endswith(" ready"):
                self.name = line.split()[2]
                self._ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout_s: float = 20.0) -> BeatProcess:
        if not self._ready.wait(timeout_s):
            self.kill()
            raise AssertionError(f"beat did not become ready:\n{self.output}")
        return self

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def leading_since_ms(self) -> list[int]:
        return [int(m[1]) for line in self.lines if (m := re.search(r"since_ms=(\d+)", line))]

    def stop(self, timeout_s: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        self._close()
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def beats(redis_url: str) -> Iterator[list[BeatProcess]]:
    started: list[BeatProcess] = []
    yield started
    for beat in started:
        beat.kill()


@pytest.fixture
def app(redis_url: str) -> Iterator[None]:
    beatapp.app.configure(broker_url=redis_url)
    yield
    beatapp.app.close()


def start(beats: list[BeatProcess], url: str, n: int = 1) -> list[BeatProcess]:
    new = [BeatProcess(url) for _ in range(n)]
    beats.extend(new)
    return [beat.wait_ready() for beat in new]


def queued(r: redis.Redis) -> list[str]:
    """Task ids of the runs the beats queued (none is consumed: no worker runs)."""
    key = beatapp.app.keys.queue("default").ready[5]
    return [decode_envelope(body).id for body in r.lrange(key, 0, -1)]


def slots(ids: list[str], name: str) -> list[int]:
    prefix = run_id(name, 0).removesuffix("0")
    return [int(i.removeprefix(prefix)) for i in ids if i.startswith(prefix)]


def leader(r: redis.Redis) -> str | None:
    value = r.get(beatapp.app.keys.beat_leader)
    return None if value is None else value.decode()


def test_two_beats_send_each_slot_exactly_once(
    redis_url: str, r: redis.Redis, beats: list[BeatProcess]
) -> None:
    a, b = start(beats, redis_url, 2)
    started = time.time()
    wait_for(lambda: leader(r) is not None, 5, "a leader")
    # Every 2.5 s the lease goes to the other beat, as when it expires during the leader's
    # pause and the standby takes it: the old leader still believes it leads until it renews.
    for _ in range(3):
        time.sleep(2.5)
        other = b.name if leader(r) == a.name else a.name
        r.set(beatapp.app.keys.beat_leader, other, px=int(LEASE_S * 1000))
    time.sleep(max(0.0, started + 10 - time.time()))
    assert a.stop() == 0 and b.stop() == 0
    fired = slots(queued(r), CODE)
    duplicates = sum(n - 1 for n in Counter(fired).values())
    expected = list(range(min(fired), max(fired) + 1000, 1000))
    print(f"two beats: {len(fired)} runs, {duplicates} duplicates")
    assert duplicates == 0
    assert sorted(fired) == expected, "a slot was skipped"
    assert len(fired) >= 8
    # Both led, and the old leader was refused when it tried to send after losing the lease.
    assert a.count("periodic run sent") > 0 and b.count("periodic run sent") > 0
    refused = a.count("no longer leads") + b.count("no longer leads")
    print(f"two beats: {refused} sends refused to a beat that had lost the lease")
    assert leader(r) is None  # the last leader gave the lease up on SIGTERM


def test_failover_after_the_leader_is_killed(
    redis_url: str, r: redis.Redis, beats: list[BeatProcess]
) -> None:
    first, second = start(beats, redis_url, 2)
    wait_for(lambda: leader(r) is not None, 5, "a leader")
    by_name = {first.name: first, second.name: second}
    old = by_name[leader(r)]  # type: ignore[index]
    standby = second if old is first else first
    wait_for(lambda: len(slots(queued(r), CODE)) >= 2, 5, "two runs")
    old.kill()
    killed = time.time()
    wait_for(lambda: leader(r) == standby.name, LEASE_S + 3, "the standby to take over")
    took_over = time.time()
    failover_s = took_over - killed
    wait_for(lambda: max(slots(queued(r), CODE)) >= took_over * 1000 + 2000, 5, "more runs")
    assert standby.stop() == 0
    fired = slots(queued(r), CODE)
    print(f"failover: {failover_s:.2f} s (lease {LEASE_S} s), {len(fired)} runs")
    assert failover_s <= LEASE_S + 0.5
    assert len(fired) == len(set(fired)), "a slot was sent twice"
    # Slots in the gap: only the latest missed one is made up (policy once), never a burst;
    # every slot from the take-over on is sent.
    after = [s for s in fired if s > took_over * 1000]
    assert after == list(range(after[0], after[-1] + 1000, 1000))
    gap = [s for s in fired if killed * 1000 - 1000 < s <= took_over * 1000]
    assert len(gap) <= 2


def test_runtime_changes_reach_a_running_beat(
    redis_url: str, r: redis.Redis, beats: list[BeatProcess], app: None
) -> None:
    (beat,) = start(beats, redis_url)
    env = {**os.environ, "OMNITASK_BROKER_URL": redis_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "omnitask", "beat", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    beatapp.app.schedules.add("rt-py", beatapp.tick, 1, args=(1,))
    added = cli("add", "-A", APP, "rt-cli", "tests.apps.beatapp.tick", "--every", "1")
    assert added.returncode == 0, added.stderr
    assert "schedule rt-cli: tests.apps.beatapp.tick every 1s" in added.stdout
    wait_for(lambda: slots(queued(r), "rt-py") and slots(queued(r), "rt-cli"), 5, "both run")
    listing = cli("list", "-A", APP)
    assert listing.returncode == 0
    assert [line.split()[0] for line in listing.stdout.splitlines()] == [
        "NAME",
        CODE,
        "rt-cli",
        "rt-py",
    ]
    removed = cli("remove", "-A", APP, "rt-py")
    assert removed.returncode == 0 and removed.stdout.strip() == "removed rt-py"
    assert beatapp.app.schedules.remove("rt-cli")
    assert cli("remove", "-A", APP, "rt-py").returncode == 1
    # Taken into account at the beat's next wake-up: within a third of a lease.
    time.sleep(LEASE_S / 3 + 0.2)
    before = Counter(n for n in ("rt-py", "rt-cli") for _ in slots(queued(r), n))
    time.sleep(1.5)
    after = Counter(n for n in ("rt-py", "rt-cli") for _ in slots(queued(r), n))
    assert after == before
    assert len(slots(queued(r), CODE)) >= 2  # the code schedule kept running
    assert beat.stop() == 0


def test_missed_runs_once_or_skipped_when_a_beat_comes_back(
    redis_url: str, r: redis.Redis, beats: list[BeatProcess], app: None
) -> None:
    period_ms = 2000
    # Defined while no beat runs; two slots pass, then a beat starts 1 s after a slot.
    once = beatapp.app.schedules.add("gap-once", beatapp.tick, 2, missed="once")
    beatapp.app.schedules.add("gap-skip", beatapp.tick, 2, missed="skip")
    second = (once.since_ms // period_ms + 2) * period_ms
    time.sleep(max(0.0, (second + 1000) / 1000 - time.time()))
    (beat,) = start(beats, redis_url)
    wait_for(beat.leading_since_ms, 5, "the beat to lead")
    since = beat.leading_since_ms()[0]
    # Slots due longer than the hand-over tolerance (a third of a lease) before it led.
    missed_before = since - LEASE_S / 3 * 1000
    wait_for(
        lambda: [s for s in slots(queued(r), "gap-skip") if s >= missed_before],
        5,
        "an on-time run of gap-skip",
    )
    assert beat.stop() == 0
    # Of the slots due before the beat led, exactly one ran (the latest): made up once if it
    # was missed, or on time when a slow start made it fall within the hand-over tolerance
    # (a loaded machine); never a burst. gap-skip made up none.
    latest_due = int(since) // period_ms * period_ms
    assert [s for s in slots(queued(r), "gap-once") if s < since] == [latest_due]
    assert [s for s in slots(queued(r), "gap-skip") if s < missed_before] == []
    assert latest_due > once.since_ms + period_ms  # more than one slot was missed
    skipped = beat.count("periodic run skipped schedule=gap-skip")
    assert skipped == (1 if latest_due < missed_before else 0)


def test_worker_with_an_embedded_beat(
    redis_url: str, r: redis.Redis, start_worker: WorkerFactory
) -> None:
    worker = start_worker(APP, "-B", env={"OMNITASK_BEAT_LEASE_S": str(LEASE_S)})

    def runs() -> dict[bytes, bytes]:
        return r.hgetall("test:runs")  # type: ignore[return-value]

    wait_for(lambda: len(runs()) >= 2, 10, "two runs of the code schedule")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert "omnitask beat " in worker.output and " ready" in worker.output
    counted = runs()
    prefix = run_id(CODE, 0).removesuffix("0").encode()
    assert counted and all(k.startswith(prefix) and v == b"1" for k, v in counted.items())
    assert leader(r) is None  # the embedded beat stopped with the worker and gave up its lease
