"""The Lua scripts of the protocol, loaded from ``lua/*.lua`` and shared by every client.

A transition is a Lua script when it must read before it writes (claim, requeue, renew) or
must check that the consumer still holds a task before changing it (retry, bury). The
write-only hot paths are scripts too, for the client's sake: a send (``enqueue.lua``, one task
or a batch) and a worker's ack, which rides in its next claim (``claim.lua``). A script call
costs Redis about 30 µs more than the same commands in MULTI (``INFO commandstats``), but the
client packs one command and reads one reply instead of one per command, and the client was
the bottleneck. Workflow steps, which share a step with other commands, are MULTI blocks
built in ``commands.py``.
"""

from __future__ import annotations

import hashlib
from importlib import resources

__all__ = (
    "ADMIT",
    "BURY",
    "CLAIM",
    "ENQUEUE",
    "FIRE",
    "JOIN",
    "LEAD",
    "RENEW",
    "REQUEUE",
    "RESIGN",
    "RETRY",
    "REVIVE",
    "REVOKE",
    "SCRIPTS",
    "SETTLE",
    "UNIQUE",
    "Script",
)


class Script:
    """One Lua script: its source (with the shared helpers prepended) and its SHA1."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        """Hold ``source`` under ``name``; the SHA1 is computed here, no round trip needed."""
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __repr__(self) -> str:
        return f"Script({self.name!r}, sha={self.sha[:8]})"


def _load(name: str) -> Script:
    folder = resources.files("omnitask.broker") / "lua"
    lib = (folder / "_lib.lua").read_text(encoding="utf-8")
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    return Script(name, f"{lib}\n{body}")


CLAIM = _load("claim")
REQUEUE = _load("requeue")
RENEW = _load("renew")
RETRY = _load("retry")
REVOKE = _load("revoke")
SETTLE = _load("settle")
BURY = _load("bury")
REVIVE = _load("revive")
JOIN = _load("join")
UNIQUE = _load("unique")
ENQUEUE = _load("enqueue")
ADMIT = _load("admit")
LEAD = _load("lead")
RESIGN = _load("resign")
FIRE = _load("fire")
SCRIPTS: tuple[Script, ...] = (
    CLAIM,
    REQUEUE,
    RENEW,
    RETRY,
    BURY,
    REVIVE,
    REVOKE,
    SETTLE,
    JOIN,
    UNIQUE,
    ENQUEUE,
    ADMIT,
    LEAD,
    RESIGN,
    FIRE,
)
