"""omnitask's pytest plugin: a private Redis, your app pointed at it, real workers, eager mode.

pytest loads it in every run where omnitask is installed (the ``pytest11`` entry point), so
importing it starts nothing: a Redis starts the first time a test asks for a fixture that
needs one. Every fixture name starts with ``omnitask_``.

- ``omnitask_redis`` (session): a ``redis-server`` of its own on a free loopback port.
- ``omnitask_redis_url``: its URL; override it to test against a Redis you run yourself.
- ``omnitask_app_spec``: the app under test as ``module:attribute``, from the ``omnitask_app``
  ini option.
- ``omnitask_app``: that app, pointed at ``omnitask_redis_url`` with a key prefix of this
  test's own; its settings are restored afterwards.
- ``omnitask_eager``: ``omnitask_app`` with ``eager=True``.
- ``omnitask_start_worker``: starts real workers (``python -m omnitask worker``) of the app.
- ``omnitask_worker``: one such worker with one child process.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Protocol

import msgspec
import pytest

from omnitask.config import Config, load_config, mask_url
from omnitask.testing.server import RedisServer, RedisServerNotFound

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("StartWorker", "WorkerProcess")

_APP_INI = "omnitask_app"

# Specs whose app was seen to take its broker URL and key prefix from the environment.
_CHECKED_SPECS = pytest.StashKey[set[str]]()

# What a worker started with -A <spec> resolves its settings to: the same import, same env.
_SETTINGS_PROBE = """\
import json, sys
from omnitask.loader import load_app
conf = load_app(sys.argv[1]).conf
print(json.dumps({"broker": conf.broker_url, "results": conf.result_url,
                  "prefix": conf.key_prefix}))
"""


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the ``omnitask_app`` ini option."""
    parser.addini(
        _APP_INI,
        "the omnitask app under test, as for 'omnitask worker -A': module or module:attribute",
        default="",
    )


class WorkerProcess:
    """A real worker (``python -m omnitask worker``) started for a test, in its own session.

    Attributes:
        args: The command line after ``python -m omnitask worker``.
        process: The worker's main process (its supervisor), once started.
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: str) -> None:
        """Describe the worker; nothing starts until :meth:`start`."""
        self.args = tuple(args)
        self.process: subprocess.Popen[str] | None = None
        self._env = dict(env)
        self._cwd = cwd
        self._lines: list[str] = []
        self._ready = False
        self._changed = threading.Event()
        self._reader: threading.Thread | None = None
        self._stopped = False

    @property
    def output(self) -> str:
        """Everything the worker printed so far (stdout and stderr)."""
        return "\n".join(self._lines)

    @property
    def pid(self) -> int:
        """The process id of the worker's main process."""
        if self.process is None:
            raise RuntimeError("the worker is not started")
        return self.process.pid

    def start(self, ready_timeout_s: float = 30.0) -> WorkerProcess:
        """Start the worker and wait for its ready line (its children are consuming then).

        Raises:
            RuntimeError: It exited or was not ready within ``ready_timeout_s``; the message
                holds its output.
        """
        self.process = subprocess.Popen(
            [sys.executable, "-m", "omnitask", "worker", *self.args],
            cwd=self._cwd,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Its own process group, so that stop() can kill the children with it.
            start_new_session=True,
        )
        self._reader = threading.Thread(
            target=self._read, args=(self.process.stdout,), name="omnitask-worker-output"
        )
        self._reader.daemon = True
        self._reader.start()
        if not (self._changed.wait(ready_timeout_s) and self._ready):
            self.stop(timeout_s=1.0)
            raise RuntimeError(
                f"the worker 'omnitask worker {' '.join(self.args)}' was not ready within "
                f"{ready_timeout_s} s; its output:\n{self.output}"
            )
        return self

    def _read(self, stream: IO[str] | None) -> None:
        for line in stream or ():
            line = line.rstrip("\n")
            self._lines.append(line)
            # The supervisor prints "omnitask worker <name> ready" once its children run.
            if line.startswith("omnitask worker ") and line.endswith(" ready"):
                self._ready = True
                self._changed.set()
        self._changed.set()  # exited before it was ready

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Stop the worker: SIGTERM, then SIGKILL to its whole process group after ``timeout_s``.

        On SIGTERM the worker lets running tasks finish for its ``shutdown_timeout_s`` and
        hands the others back to their queue, as in production.

        Returns:
            Its exit code (negative: the signal that ended it), or None if it never started.
        """
        process = self.process
        if process is None or self._stopped:
            return None if process is None else process.returncode
        self._stopped = True
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout_s)
        finally:
            # Also reaps children left behind by a supervisor that did not stop in time.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if self._reader is not None:
                self._reader.join(5)
            if process.stdout is not None:
                process.stdout.close()
        return process.returncode


class StartWorker(Protocol):
    """The ``omnitask_start_worker`` fixture: starts a worker of ``omnitask_app``."""

    def __call__(
        self,
        *,
        concurrency: int = 1,
        queues: Sequence[str] = (),
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 30.0,
    ) -> WorkerProcess:
        """Start a worker and wait until it is ready; it is stopped when the test ends.

        Args:
            concurrency: Child processes (``-c``).
            queues: Queues to consume (``-Q``); default the app's default queue.
            args: More command-line options, e.g. ``["--time-limit", "5"]``.
            env: More environment variables, e.g. ``{"OMNITASK_SECRET_KEY": "..."}``.
            ready_timeout_s: Seconds to wait for the worker to be ready.
        """
        ...


@pytest.fixture(scope="session")
def omnitask_redis() -> Iterator[RedisServer]:
    """A ``redis-server`` of the test session's own, on a free loopback port."""
    server = RedisServer()
    try:
        server.start()
    except RedisServerNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def omnitask_redis_url(omnitask_redis: RedisServer) -> str:
    """The URL of the Redis the app under test uses (override it to use your own)."""
    return omnitask_redis.url


@pytest.fixture
def omnitask_app_spec(request: pytest.FixtureRequest) -> str:
    """The app under test, as ``module:attribute``: the ``omnitask_app`` ini option."""
    spec = str(request.config.getini(_APP_INI) or "")
    if not spec:
        pytest.fail(
            f'no omnitask app to test: set {_APP_INI} = "mypackage.tasks:app" in the pytest '
            "configuration, or override the omnitask_app_spec fixture",
            pytrace=False,
        )
    return spec


@pytest.fixture
def omnitask_app(omnitask_app_spec: str, omnitask_redis_url: str) -> Iterator[OmniTask]:
    """The app under test, pointed at ``omnitask_redis_url`` for this test.

    It gets a random key prefix, so that no test sees another's tasks, results or events.
    Its settings are restored when the test ends.
    """
    from omnitask.loader import load_app

    app = load_app(omnitask_app_spec)
    saved = app.conf
    app.configure(
        broker_url=omnitask_redis_url,
        result_backend=omnitask_redis_url,
        key_prefix=f"{saved.key_prefix}-{secrets.token_hex(4)}",
    )
    try:
        yield app
    finally:
        _restore(app, saved)


@pytest.fixture
def omnitask_eager(omnitask_app: OmniTask) -> Iterator[OmniTask]:
    """``omnitask_app`` in eager mode: ``.delay()`` runs the task here and now."""
    saved = omnitask_app.conf
    omnitask_app.configure(eager=True)
    try:
        yield omnitask_app
    finally:
        _restore(omnitask_app, saved)


@pytest.fixture
def omnitask_start_worker(
    request: pytest.FixtureRequest, omnitask_app: OmniTask, omnitask_app_spec: str
) -> Iterator[StartWorker]:
    """Start real workers of ``omnitask_app`` (``python -m omnitask worker -A <spec>``).

    A worker gets the test's Redis URL and key prefix through ``OMNITASK_BROKER_URL``,
    ``OMNITASK_RESULT_BACKEND`` and ``OMNITASK_KEY_PREFIX``, and the test process's
    ``sys.path``. Every worker is stopped when the test ends.
    """
    started: list[WorkerProcess] = []
    cwd = str(request.config.invocation_params.dir)

    def start(
        *,
        concurrency: int = 1,
        queues: Sequence[str] = (),
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 30.0,
    ) -> WorkerProcess:
        conf = omnitask_app.conf
        full_env = {
            **os.environ,
            "OMNITASK_BROKER_URL": conf.broker_url,
            "OMNITASK_RESULT_BACKEND": conf.result_url,
            "OMNITASK_KEY_PREFIX": conf.key_prefix,
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        _check_worker_settings(request.config, omnitask_app_spec, full_env, cwd)
        argv = ["-A", omnitask_app_spec, "-c", str(concurrency)]
        if queues:
            argv += ["-Q", ",".join(queues)]
        worker = WorkerProcess([*argv, *args], full_env, cwd)
        started.append(worker)
        return worker.start(ready_timeout_s)

    try:
        yield start
    finally:
        for worker in reversed(started):
            worker.stop()


@pytest.fixture
def omnitask_worker(omnitask_start_worker: StartWorker) -> WorkerProcess:
    """A real worker of ``omnitask_app`` with one child process, ready to run tasks."""
    return omnitask_start_worker()


def _restore(app: OmniTask, saved: Config) -> None:
    """Give ``app`` back the settings ``saved``.

    A setting whose value the environment or the defaults give anyway is passed as None (not
    given), so that it keeps following the environment as it did before the test.
    """
    unset = load_config({})
    settings = msgspec.structs.asdict(saved)
    app.configure(**{k: None if getattr(unset, k) == v else v for k, v in settings.items()})


def _check_worker_settings(
    config: pytest.Config, spec: str, env: Mapping[str, str], cwd: str
) -> None:
    """Fail unless a worker of ``spec`` would use the test's Redis and key prefix.

    Settings given to ``OmniTask(...)`` in code win over the environment, so an app written
    with ``broker="redis://..."`` would start a worker on that Redis instead, where it would
    run (and take) tasks that are not the test's. The probe imports the app as the worker
    would, once per spec and session.
    """
    checked = config.stash.setdefault(_CHECKED_SPECS, set())
    if spec in checked:
        return
    probe = subprocess.run(
        [sys.executable, "-c", _SETTINGS_PROBE, spec],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        pytest.fail(f"a worker cannot load the app {spec!r}:\n{probe.stderr}", pytrace=False)
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    wanted = {
        "broker": (env["OMNITASK_BROKER_URL"], "broker", "OMNITASK_BROKER_URL"),
        "results": (env["OMNITASK_RESULT_BACKEND"], "result_backend", "OMNITASK_RESULT_BACKEND"),
        "prefix": (env["OMNITASK_KEY_PREFIX"], "key_prefix", "OMNITASK_KEY_PREFIX"),
    }
    for key, (value, setting, variable) in wanted.items():
        if found[key] != value:
            pytest.fail(
                f"the app {spec!r} sets {setting} in code, which wins over {variable}: its "
                f"worker would use {mask_url(found[key])} instead of the test's "
                f"{mask_url(value)}, and run tasks that are not the test's. Let {setting} come "
                f"from the environment ({variable}) in this app.",
                pytrace=False,
            )
    checked.add(spec)
