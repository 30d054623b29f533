"""The supervisor stops a run only if it is still the one running."""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass

from omnitask import OmniTask
from omnitask.worker.limits import RunSlot
from omnitask.worker.supervisor import Supervisor


@dataclass
class _NotStarted:
    pid: int | None = None  # nothing to kill


def test_a_kill_never_lands_on_the_next_run() -> None:
    ctx = multiprocessing.get_context("fork")
    supervisor = Supervisor(OmniTask("lim", broker="redis://127.0.0.1:1/0"), ["default"], 1)
    slot = supervisor._slots["c"] = RunSlot(ctx)
    supervisor.children["c"] = _NotStarted()  # type: ignore[assignment]
    slot.begin("B", None)  # the child finished A and started B meanwhile
    assert supervisor._stop_run("c", "A", revoked=True) is False
    assert "c" not in supervisor._stopped
    slot.begin("A", 60.0)
    assert supervisor._stop_run("c", "A", revoked=False) is False  # not overdue yet
    assert supervisor._stop_run("c", "A", revoked=True) is True
    assert supervisor._stopped["c"] == (True, "A")


def test_recycling_is_the_childs_word_not_an_exit_code() -> None:
    slot = RunSlot(multiprocessing.get_context("fork"))
    assert slot.planned_exit is False
    slot.mark_planned_exit()
    assert slot.planned_exit is True
