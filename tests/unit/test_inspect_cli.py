"""The inspect/control commands' formatting, parsing and wire formats, without Redis."""

from __future__ import annotations

import pytest

from omnitask.broker.keys import Keyspace
from omnitask.cli import _parser
from omnitask.control import ControlCommand, Reply, WorkerStatus, status_commands
from omnitask.inspect_cli import ago, by_priority, duration, table, until


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-3, "0.0s"),
        (0.44, "0.4s"),
        (9.96, "10.0s"),
        (42.9, "42s"),
        (185, "3m05s"),
        (3600 * 2 + 180, "2h03m"),
        (86400 * 4 + 7200, "4d02h"),
    ],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_relative_times() -> None:
    assert ago(None, 10_000) == "-"
    assert ago(8_500, 10_000) == "1.5s ago"
    assert until(250_000, 10_000) == "in 4m00s"
    assert until(9_000, 10_000) == "due 1.0s ago"


def test_table_aligns_columns_without_trailing_spaces() -> None:
    text = table(("A", "LONGER"), [["xyz", ""], ["1", "2"]])
    assert text.splitlines() == ["A    LONGER", "xyz", "1    2"]


def test_by_priority_lists_the_non_empty_ones_highest_first() -> None:
    assert by_priority([0] * 10) == "-"
    assert by_priority([1, 0, 0, 0, 0, 120, 0, 0, 0, 3]) == "9:3 5:120 0:1"


def test_control_command_round_trip_and_refusals() -> None:
    command = ControlCommand("abc", "pool-grow", 2)
    assert ControlCommand.decode(command.encode().encode()) == command
    for bad in ('{"id": "x", "cmd": "rm -rf"}', '{"id": "x", "cmd": "pool-grow", "n": -1}'):
        with pytest.raises(ValueError, match="not a control command"):
            ControlCommand.decode(bad)
    reply = Reply("w1", True, "done", 3)
    assert Reply.decode(reply.encode()) == reply


def test_worker_status_round_trip_through_its_hash() -> None:
    status = WorkerStatus(
        name="h:1",
        heartbeat_ms=1_000,
        pid=7,
        host="h",
        version="0.1.0",
        started_ms=500,
        heartbeat_interval_s=2.0,
        concurrency=2,
        processes=2,
        spawned=3,
        queues=("a", "b"),
        tasks=("t.one", "t.two"),
        running={"h:1/ab.1": ("id1", 900)},
    )
    raw = {k.encode(): str(v).encode() for k, v in status.fields(full=True).items()}
    assert WorkerStatus.from_hash("h:1", 0, raw) == status
    # Between full writes only what changes is sent.
    assert set(status.fields(full=False)) == {
        "hb",
        "concurrency",
        "processes",
        "spawned",
        "running",
    }
    assert WorkerStatus.from_hash("h:1", 5, {}) == WorkerStatus("h:1", 5, alive=False)
    expire, hset, again = status_commands(Keyspace("ot", "app"), status, full=False, ttl_ms=6000)
    assert expire == ("PEXPIRE", "ot:{app}:w:h:1", 6000) == again
    assert hset[:2] == ("HSET", "ot:{app}:w:h:1")
    assert status.as_dict()["running"] == {"h:1/ab.1": {"task_id": "id1", "since_ms": 900}}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["control", "-A", "m", "revoke", "a", "b", "--terminate"], {"ids": ["a", "b"]}),
        (["control", "-A", "m", "--json", "pool-grow", "2", "w1"], {"n": 2, "worker": "w1"}),
        (["control", "-A", "m", "pool-shrink", "1", "--json"], {"n": 1, "json": True}),
        (["control", "-A", "m", "--timeout", "3", "shutdown"], {"timeout": 3.0, "worker": None}),
        (["inspect", "-A", "m", "queues", "--json"], {"view": "queues", "json": True}),
        (["health", "-A", "m", "--worker", "w", "--max-age", "4"], {"max_age": 4.0}),
        (["purge", "-A", "m", "-Q", "q", "-f"], {"queue": "q", "force": True}),
    ],
)
def test_command_lines(argv: list[str], expected: dict[str, object]) -> None:
    args = vars(_parser().parse_args(argv))
    assert {k: args[k] for k in expected} == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["control", "-A", "m", "pool-grow", "0"],
        ["inspect", "-A", "m", "everything"],
        ["purge", "-A", "m"],
    ],
)
def test_bad_command_lines(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err
