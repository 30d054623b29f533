"""Rate limits and concurrency caps, enforced in Redis across every worker.

``rate_limit="100/m"`` spreads a task's runs evenly (GCRA): at most 100 a minute in all, one
every 0.6 s. ``concurrency_limit=5`` lets at most 5 run at once. With ``limit_key``, a
function of the task's arguments, each key gets its own limit and cap (one tenant cannot
starve another). A worker checks both right after it claims the task, in one Lua step
(``lua/admit.lua``); a task that may not run yet goes back to Redis, to ``delayed``, due when
it may run (or, when the cap is full, re-checked every :data:`CAP_RECHECK_MS`): it never
holds a worker slot while it waits.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from omnitask.errors import ConfigurationError

if TYPE_CHECKING:
    from omnitask.task import Task

__all__ = ("CAP_RECHECK_MS", "Limits", "parse_rate")

CAP_RECHECK_MS = 200
"""How soon a task turned away by a full concurrency cap is checked again."""

CAP_ENTRY_DEFAULT_S = 3600.0
"""How long a running task's place under a cap lasts without a hard time limit: a worker that
dies without acknowledging frees it after this long at the latest."""

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([smhd])\s*$")


def parse_rate(text: str) -> tuple[int, float]:
    """``"100/m"`` as (100, 60.0): runs per period of seconds. ``"10/5s"`` is 10 per 5 s.

    Raises:
        ConfigurationError: Not of that form, or zero.
    """
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigurationError(
            f"rate_limit must look like '100/m' (per s, m, h or d), got {text!r}"
        )
    count, multiple, unit = match.groups()
    period = float(multiple or 1) * _UNITS[unit]
    if int(count) <= 0 or period <= 0:
        raise ConfigurationError(f"rate_limit must allow at least one run, got {text!r}")
    return int(count), period


class Limits(NamedTuple):
    """A task's rate limit and concurrency cap, and the key function that splits them."""

    rate: tuple[int, float] | None
    cap: int | None
    key: Callable[..., str] | None

    @classmethod
    def build(
        cls,
        rate_limit: str | None,
        concurrency_limit: int | None,
        limit_key: Callable[..., str] | None,
    ) -> Limits | None:
        """The limits of the task options, or None when the task has none.

        Raises:
            ConfigurationError: An option has a bad value, or ``limit_key`` comes alone.
        """
        if rate_limit is None and concurrency_limit is None:
            if limit_key is not None:
                raise ConfigurationError("limit_key needs rate_limit or concurrency_limit")
            return None
        if concurrency_limit is not None and (
            type(concurrency_limit) is not int or concurrency_limit < 1
        ):
            raise ConfigurationError(
                f"concurrency_limit must be an int of at least 1, got {concurrency_limit!r}"
            )
        if limit_key is not None and not callable(limit_key):
            raise ConfigurationError("limit_key must be a function of the task's arguments")
        rate = None if rate_limit is None else parse_rate(rate_limit)
        return cls(rate, concurrency_limit, limit_key)

    @property
    def interval_ms(self) -> int:
        """Milliseconds between two runs under the rate limit (0: no rate limit)."""
        if self.rate is None:
            return 0
        count, period = self.rate
        return max(int(period * 1000 / count), 1)

    def suffix(self, task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The part of the limit keys that names this call's key (empty without limit_key).

        Raises:
            TypeError: ``limit_key`` did not return a str.
        """
        if self.key is None:
            return ""
        value = self.key(*args, **kwargs)
        if not isinstance(value, str):
            raise TypeError(f"task {task.name!r}: limit_key returned {type(value).__name__}")
        return ":" + hashlib.sha256(value.encode()).hexdigest()[:32]
