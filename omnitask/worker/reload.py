"""``omnitask worker --reload``: a fresh worker whenever the app's Python files change.

For development only. The reloader is a small parent process that never imports the app. It
runs the real worker (``python -m omnitask worker`` with the same arguments minus ``--reload``)
as a child process and watches the app's source tree with watchfiles. On a change it stops the
worker cold, so that running tasks go back to their queue at once instead of after a lease, and
starts a new one, which imports the changed code. A worker that cannot start (a syntax error, a
failing import) prints its traceback and exits; the reloader says so and waits for the next
change.

Signals to the reloader are passed on, so they mean what they mean to a worker: SIGTERM or
SIGINT (Ctrl-C) a warm shutdown, a second one or SIGQUIT a cold one (SIGHUP counts as SIGTERM).
The reloader then exits with the worker's exit code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from watchfiles import Change, PythonFilter, watch

__all__ = ("Reloader", "watch_roots")

logger = logging.getLogger(__name__)

POLL_MS = 250
"""How often the reloader looks whether its worker exited, while no file changes."""

COLD_AFTER_S = 0.05
"""Pause between the SIGTERM and the SIGQUIT that stop a worker (see ``_stop_worker``)."""

STOP_GRACE_S = 5.0
"""How long a worker gets to stop cold (it needs well under a second) before it is killed."""

_FORWARD: dict[int, int] = {
    signal.SIGINT: signal.SIGINT,
    signal.SIGTERM: signal.SIGTERM,
    # A closed terminal: the worker runs in a session of its own and would not hear of it.
    signal.SIGHUP: signal.SIGTERM,
    signal.SIGQUIT: signal.SIGQUIT,
}


def watch_roots(app_spec: str) -> list[Path]:
    """The directories to watch for ``-A app_spec``, found without importing the app.

    That is the directory tree of the app's top-level package (every directory of a namespace
    package), or the directory holding the app's module when it is a single file; the current
    directory when the module cannot be found (the worker then says why).
    """
    top = app_spec.partition(":")[0].partition(".")[0]
    # The worker makes the current directory importable (see load_app); so must the lookup.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        # A top-level name only: finding ``a.b`` would import (run) the package ``a``.
        spec = importlib.util.find_spec(top) if top else None
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return [Path.cwd()]
    if spec.submodule_search_locations:
        roots = [Path(p) for p in spec.submodule_search_locations]
    elif spec.origin:
        roots = [Path(spec.origin).parent]
    else:  # built-in or frozen
        roots = []
    return [root for root in roots if root.is_dir()] or [Path.cwd()]


def _without_reload(argv: Sequence[str]) -> list[str]:
    # argparse accepts any unambiguous prefix (--rel), and --reload takes no value, so every
    # such word is the flag itself: argparse refuses a value that starts with "--".
    return [arg for arg in argv if not (len(arg) >= 3 and "--reload".startswith(arg))]


class Reloader:
    """Runs a worker, and replaces it with a fresh one whenever the app's Python files change."""

    def __init__(self, app_spec: str, argv: Sequence[str]) -> None:
        """Reload the worker of ``-A app_spec`` started by the command line ``argv``.

        Args:
            app_spec: The ``-A`` argument, ``module[:attribute]``.
            argv: The ``omnitask`` arguments, ``worker ... --reload``; the worker gets the same
                ones without ``--reload``.
        """
        self.app_spec = app_spec
        self.command = [sys.executable, "-m", "omnitask", *_without_reload(argv)]
        self._worker: subprocess.Popen[bytes] | None = None
        self._signals: list[int] = []
        self._stop = threading.Event()

    def run(self) -> int:
        """Run until stopped by a signal; return the exit code of the worker it then stopped.

        That is 0 after a warm or cold shutdown, and 0 too when no worker was running (the
        last one had failed and the reloader was waiting for changes).
        """
        roots = watch_roots(self.app_spec)
        logger.info("reloading on changes to Python files under %s", ", ".join(map(str, roots)))
        previous = {signum: signal.signal(signum, self._on_signal) for signum in _FORWARD}
        try:
            self._start()
            for changes in watch(
                *roots,
                watch_filter=PythonFilter(),
                stop_event=self._stop,
                rust_timeout=POLL_MS,
                yield_on_timeout=True,
            ):
                if changes:
                    self._reload(changes)
                else:
                    self._check_exited()
            return self._shut_down()
        finally:
            # Only after an unexpected error: no worker may outlive its reloader.
            if self._worker is not None and self._worker.poll() is None:
                self._stop_worker(self._worker)
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only recorded here; the stop event also ends the watch loop within one step.
        self._signals.append(signum)
        self._stop.set()

    def _start(self) -> None:
        if self._stop.is_set():
            return
        # A session of its own: Ctrl-C reaches only the reloader, which passes it on once. In
        # the terminal's process group the worker would get it twice, which means cold.
        self._worker = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # A .pyc is trusted when its source has the recorded size and mtime in whole
            # seconds: two saves of the same size within one second, with a restart between
            # them, would run the first version again. Edited files are compiled each start.
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        logger.debug("worker started pid=%s", self._worker.pid)

    def _reload(self, changes: set[tuple[Change, str]]) -> None:
        paths = sorted({_shown(path) for _, path in changes})
        more = f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""
        logger.info("change detected file=%s%s; restarting the worker", paths[0], more)
        if self._worker is not None:
            self._stop_worker(self._worker)
            self._worker = None
        self._start()

    def _check_exited(self) -> None:
        worker = self._worker
        if worker is None or worker.poll() is None:
            return
        self._worker = None
        print(  # noqa: T201 - shown at any log level: nothing runs tasks until the next change
            f"omnitask: worker exited with code {worker.returncode}; waiting for changes",
            file=sys.stderr,
            flush=True,
        )

    def _stop_worker(self, worker: subprocess.Popen[bytes]) -> None:
        """Stop ``worker`` cold and wait for it: its running tasks are handed back at once."""
        # SIGTERM first: a worker still importing the app has no handler yet and just exits,
        # where SIGQUIT would dump core. A running worker takes the SIGTERM as the start of a
        # warm shutdown and the SIGQUIT as the second signal, which makes it cold.
        worker.send_signal(signal.SIGTERM)
        if not _exited(worker, COLD_AFTER_S):
            worker.send_signal(signal.SIGQUIT)
        if not _exited(worker, STOP_GRACE_S):
            logger.warning(
                "worker pid=%s did not stop in %g s; killing it", worker.pid, STOP_GRACE_S
            )
            # Its own session is its own process group: the children go with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()

    def _shut_down(self) -> int:
        """Pass the stop signals on to the worker, wait for it, and return its exit code."""
        worker = self._worker
        if worker is None or worker.poll() is not None:
            return 0  # it had failed already; the reloader was only waiting for changes
        passed = 0
        while (code := worker.poll()) is None:
            for signum in self._signals[passed:]:
                worker.send_signal(_FORWARD[signum])
                passed += 1
            _exited(worker, POLL_MS / 1000)
        self._worker = None
        # Killed by a signal: the shell's convention, 128 + the signal number.
        return code if code >= 0 else 128 - code


def _exited(worker: subprocess.Popen[bytes], within_s: float) -> bool:
    try:
        worker.wait(within_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def _shown(path: str) -> str:
    """``path`` relative to the current directory when it is under it."""
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(Path.cwd()))
    return path
