"""When and how soon a failed task runs again: the policy as pure functions, and ``Retry``."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ("Retry", "RetryPolicy")


class Retry(Exception):  # noqa: N818 - control flow, not an error
    """Raised by ``self.retry()`` inside a bound task to ask for another run.

    Attributes:
        exc: The exception that caused it, re-raised if no retries are left.
        countdown_s: Seconds until the next run, or None for the policy's delay.
        eta: When to run next (aware datetime), instead of ``countdown_s``.
        max_retries: Overrides the task's ``retries`` for this decision.
    """

    def __init__(
        self,
        exc: BaseException | None = None,
        countdown_s: float | None = None,
        eta: datetime | None = None,
        max_retries: int | None = None,
    ) -> None:
        """Ask for a retry; see the attributes."""
        super().__init__(f"retry requested{f': {exc!r}' if exc else ''}")
        self.exc = exc
        self.countdown_s = countdown_s
        self.eta = eta
        self.max_retries = max_retries


@dataclass(frozen=True)
class RetryPolicy:
    """A task's retry settings.

    Attributes:
        retries: Automatic retries after the first run.
        retry_on: Exception types that are retried; others fail at once.
        backoff_s: Base of the exponential backoff in seconds (attempt n waits up to
            ``backoff_s * 2**n``); 0 means a fixed ``delay_s`` instead.
        backoff_max_s: Cap of the exponential backoff.
        jitter: Full jitter: wait a uniformly random time between 0 and the backoff, so that
            many tasks failing together do not come back together.
        delay_s: The fixed delay used when ``backoff_s`` is 0.
    """

    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff_s: float = 1.0
    backoff_max_s: float = 600.0
    jitter: bool = True
    delay_s: float = 0.0

    def should_retry(self, exc: BaseException, retries_done: int) -> bool:
        """Whether a run that raised ``exc`` after ``retries_done`` retries runs again."""
        return retries_done < self.retries and isinstance(exc, self.retry_on)

    def delay(self, retries_done: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retries_done + 1``."""
        if self.backoff_s <= 0:
            return self.delay_s
        cap = min(self.backoff_max_s, self.backoff_s * 2.0**retries_done)
        return (rng or random).uniform(0, cap) if self.jitter else cap


def countdown_of(value: float | timedelta | None) -> float | None:
    """Seconds from a countdown given as seconds or a timedelta."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value
