"""Every ```python block of the docs (docs/**/*.md and README.md) is run, or at least compiled.

The convention, for everyone who writes a page
================================================

**A page is one session.** The ```python blocks of one page run in order, in one test
(``test_page[docs/guide/results.md]``), in one namespace: a later block uses the names an
earlier one defined, as a reader would expect. Only ```python blocks are collected: shell
commands are ```console, output and logs are ```text, interactive sessions are ```pycon (shown,
not run).

**Marks.** A block is marked by an HTML comment on the line right before its fence (comments
do not show on the site). Without a mark a block runs.

====================================  =======================================================
mark                                  what the test does with the block
====================================  =======================================================
(none)                                runs it
``<!-- snippet: compile-only -->``    byte-compiles it, does not run it: a fragment that uses
                                      names the page never defines, waits forever
                                      (``follow()``), or reads a secret from the environment
``<!-- snippet: skip (reason) -->``   neither (the reason is required): not valid Python on
                                      purpose, e.g. a line shown as a type error
``<!-- snippet: eager -->``           runs it with ``OMNITASK_EAGER=true`` set, so an app it
                                      creates runs tasks inside ``.delay()``: for a page about
                                      the API's shape, where a worker adds nothing
``<!-- snippet: worker -->``          starts a worker first (below), then runs the block
====================================  =======================================================

**Hidden setup.** ``<!-- snippet: setup`` ... ``-->`` (the code on the lines between) runs at
that point of the session and is not shown on the site. Use it for pages whose blocks are
fragments (``add.delay(2, 3)`` on a page that never defines ``add``); keep it a few lines.

**The page's module is ``tasks``.** The session's namespace is a real module named ``tasks``
(in ``sys.modules`` while the page runs), so tasks defined on the page are named ``tasks.add``
as in the text, and a block may write ``from tasks import app``.

**Workers.** A page with a block marked ``worker`` gets one worker, started right before that
block runs: ``python -m omnitask worker -A tasks -c 1 -Q <queues>`` on ``<tmp>/tasks.py``
(``<queues>``: every queue the file's tasks are declared with, and the default), a file that
holds the *definitions* of every block of the page that runs: their imports (but
``from tasks import ...``, which would be the file importing itself), ``def``,
``async def`` and ``class`` statements, and their assignments of a literal or of a call that
does not send or wait (no ``.delay``, ``.apply_async``, ``.apply_at``, ``.delay_many``,
``.send_task``, ``.get``, ``.revoke``, ``.forget`` or ``.AsyncResult`` in it): ``app =
OmniTask("shop")`` and ``LIMIT = 10`` are kept, ``result = add.delay(2, 3)`` and
``task_id = result.id`` are not. So the worker knows every task of the
page, wherever the page defines it. The test waits for the worker's ready line, and kills its
process group at the end.

From the worker block on, blocks run as ``python tasks.py`` would run them, next to that
worker: ``__name__ == "__main__"`` (code under ``if __name__ == "__main__":`` runs, and a task
defined there is named ``tasks.x``, as on the worker). The namespace stays the module
``tasks``, so ``from tasks import add`` and an exception class rebuilt by ``.get()`` are the
very objects the page defined. A single block with an app, a task and a ``.get()`` (the
README's) needs one mark; so does a page that defines tasks first and calls them later.

A page whose blocks call ``.get()`` on a real result needs a worker (or ``eager``); one that
only sends (``.delay()``, ``apply_async(countdown=...)``, ``revoke()``) does not: the tasks
wait in Redis.

**Environment.** Each page runs in a fresh temporary directory (the working directory, first
on ``sys.path``) against the suite's own Redis (``redis_server`` in tests/conftest.py),
flushed before the page: ``OMNITASK_BROKER_URL`` points at it, so ``OmniTask("shop")``
without ``broker=`` connects there, and a literal ``redis://localhost:6379/0`` in a block is
rewritten to it. The suite never talks to a Redis it did not start: the one on
127.0.0.1:6379 belongs to someone else. Other ``OMNITASK_*`` variables are removed, and
``SHOP_TASKS_KEY``-style secrets a block reads from ``os.environ`` are not set: give such a
block a setup that sets the variable (the environment is restored after the page, and the
worker inherits it), or mark it compile-only.

**Budget.** The whole module stays under ~40 s: prefer run and eager to worker, and never
wait on a fixed sleep.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import runpy
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
MODULE = "tasks"
MARKS = ("compile-only", "skip", "eager", "worker")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
_MARK = re.compile(r"^\s*<!--\s*snippet:\s*(?P<mark>[\w-]+)\s*(?:\((?P<reason>[^)]*)\))?\s*-->\s*$")
_SETUP = re.compile(r"^\s*<!--\s*snippet:\s*setup\s*$")
# Any URL of a Redis on the default port of this host: never ours, so never used.
_DEFAULT_REDIS = re.compile(r"redis://(?:localhost|127\.0\.0\.1)(?::6379)?(?:/\d+)?\b")
_WORKER_READY_S = 20.0


@dataclass(frozen=True)
class Block:
    """One ```python block (or hidden setup) of a page, with its mark."""

    path: Path
    line: int
    mode: str  # run, compile-only, skip, eager, worker, setup
    code: str
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{_rel(self.path)}:{self.line}"


def _rel(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def parse(path: Path) -> list[Block]:
    """The page's python blocks and setup comments, in order, each with its mark.

    Raises:
        ValueError: A mark is unknown, lacks its reason, or is not followed by a python block.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    rel = _rel(path)
    blocks: list[Block] = []
    pending: tuple[int, str, str] | None = None  # (line, mark, reason) waiting for its fence
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        mark = _MARK.match(line)
        if _SETUP.match(line):
            end = _closing(lines, i, lambda s: s.strip() == "-->", f"{rel}:{i + 1}: setup")
            code = textwrap.dedent("\n".join(lines[i + 1 : end]))
            blocks.append(Block(path, i + 1, "setup", code))
        elif mark is not None:
            pending = (i + 1, *_mark(mark, f"{rel}:{i + 1}"))
            end = i
        elif fence is not None:
            indent, token = fence["indent"], fence["fence"]
            closing = re.compile(rf"^{re.escape(indent)}{re.escape(token[0])}{{{len(token)},}}\s*$")
            end = _closing(lines, i, closing.match, f"{rel}:{i + 1}: code block")
            if fence["lang"] == "python":
                body = "\n".join(ln[len(indent) :] for ln in lines[i + 1 : end])
                mode, reason = ("run", "") if pending is None else pending[1:]
                blocks.append(Block(path, i + 1, mode, body, reason))
            elif pending is not None:
                lang = fence["lang"] or "plain"
                raise ValueError(f"{rel}:{pending[0]}: snippet mark before a {lang} block")
            pending = None
        else:
            if pending is not None and line.strip():
                raise ValueError(f"{rel}:{pending[0]}: a snippet mark must precede a fence")
            end = i
        i = end + 1
    if pending is not None:
        raise ValueError(f"{rel}:{pending[0]}: snippet mark at the end of the page")
    return blocks


def _closing(lines: list[str], start: int, ends: Callable[[str], object], what: str) -> int:
    end = next((j for j in range(start + 1, len(lines)) if ends(lines[j])), None)
    if end is None:
        raise ValueError(f"{what} is never closed")
    return end


def _mark(match: re.Match[str], where: str) -> tuple[str, str]:
    name, reason = match["mark"], (match["reason"] or "").strip()
    if name not in MARKS:
        raise ValueError(f"{where}: unknown snippet mark {name!r}; marks: {', '.join(MARKS)}")
    if name == "skip" and not reason:
        raise ValueError(f"{where}: 'snippet: skip' needs a reason: skip (why)")
    return name, reason


def counts() -> dict[str, int]:
    """How many blocks of each mode the docs hold (for reports)."""
    out: dict[str, int] = {}
    for page in PAGES:
        for block in parse(page):
            out[block.mode] = out.get(block.mode, 0) + 1
    return out


def _source(block: Block, url: str) -> str:
    return _DEFAULT_REDIS.sub(url, block.code)


def _compile(block: Block, url: str) -> types.CodeType:
    # Lines keep their numbers in the page, so a traceback points at the Markdown source.
    return compile("\n" * block.line + _source(block, url), str(block.path), "exec")


class _Worker:
    """``python -m omnitask worker -A tasks -c 1`` in ``cwd``, in its own session."""

    def __init__(self, cwd: Path, url: str, queues: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITASK_")}
        env.update(OMNITASK_BROKER_URL=url, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(cwd), str(ROOT)])
        self.lines: list[str] = []
        self._ready = threading.Event()
        args = ["worker", "-A", MODULE, "-c", "1", "-Q", ",".join(queues), "-l", "warning"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omnitask", *args],
            cwd=cwd,
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
            if line.startswith("omnitask worker ") and line.rstrip().endswith(" ready"):
                self._ready.set()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + _WORKER_READY_S
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                output = "\n".join(self.lines)
                raise AssertionError(f"the docs worker did not become ready:\n{output}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def _page_env(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("OMNITASK_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OMNITASK_BROKER_URL", url)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = sys.modules.pop(MODULE, None)
    environ = dict(os.environ)  # a setup block may set a variable, e.g. a secret key
    try:
        yield
    finally:
        sys.modules.pop(MODULE, None)
        if saved is not None:
            sys.modules[MODULE] = saved
        os.environ.clear()
        os.environ.update(environ)


def _run(block: Block, namespace: dict[str, object], url: str) -> None:
    code = _compile(block, url)
    if block.mode == "eager":
        os.environ["OMNITASK_EAGER"] = "true"
    try:
        exec(code, namespace)
    finally:
        os.environ.pop("OMNITASK_EAGER", None)


_SEND_OR_WAIT = frozenset(
    {"delay", "apply_async", "apply_at", "delay_many", "send_task"}
    | {"get", "revoke", "forget", "AsyncResult"}
)


def _defines(node: ast.stmt) -> bool:
    """Whether the worker's copy of the page keeps this top-level statement."""
    if isinstance(node, ast.ImportFrom):
        return node.module != MODULE  # the page's own module imports nothing from itself
    if isinstance(node, ast.Import):
        return all(alias.name != MODULE for alias in node.names)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return True
    if isinstance(node, ast.ClassDef):
        return True
    if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
        return False
    # `app = OmniTask(...)` and `LIMIT = 10` are definitions; `r = add.delay(1)` and
    # `task_id = result.id` are the client's.
    value = node.value
    if isinstance(value, ast.Call):
        return not any(
            isinstance(sub, ast.Call)
            and isinstance(sub.func, ast.Attribute)
            and sub.func.attr in _SEND_OR_WAIT
            for sub in ast.walk(value)
        )
    try:
        ast.literal_eval(value)
    except ValueError:
        return False
    return True


def _definitions(blocks: list[Block], url: str) -> str:
    """What the worker imports: the definitions of ``blocks``, none of their calls."""
    parts = []
    for block in blocks:
        tree = ast.parse(_source(block, url))
        parts.append(ast.unparse(ast.Module([n for n in tree.body if _defines(n)], [])))
    return "\n\n".join(parts) + "\n"


@contextlib.contextmanager
def _as_main(namespace: dict[str, object], path: Path) -> Iterator[None]:
    """Run the namespace as ``python <path>`` would: as ``__main__``, named after the file."""
    main = types.ModuleType("__main__")
    main.__file__ = str(path)
    main.__spec__ = None
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = main
    namespace["__name__"] = "__main__"
    try:
        yield
    finally:
        sys.modules["__main__"] = saved
        namespace["__name__"] = MODULE


def _queues(path: Path) -> list[str]:
    """Every queue the tasks of the worker's module are declared with, and the default one."""
    from omnitask import OmniTask

    found: set[str] = set()
    namespace = runpy.run_path(str(path), run_name="_docs_queues")
    for app in [v for v in namespace.values() if isinstance(v, OmniTask)]:
        found.add(app.conf.default_queue)
        found.update(task.queue for task in app.tasks.values())
        app.close()
    return sorted(found) or ["default"]


def _page_id(path: Path) -> str:
    return str(_rel(path))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_page(page: Path, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = parse(page)
    for block in blocks:
        if block.mode != "skip":
            _compile(block, redis_url)  # every block but the skipped ones is valid Python
    runnable = [b for b in blocks if b.mode not in ("skip", "compile-only")]
    if not runnable:
        return
    split = next((n for n, b in enumerate(runnable) if b.mode == "worker"), len(runnable))
    worker: _Worker | None = None
    with _page_env(tmp_path, redis_url, monkeypatch):
        path = tmp_path / f"{MODULE}.py"
        module = types.ModuleType(MODULE)
        module.__file__ = str(path)
        sys.modules[MODULE] = module
        try:
            for block in runnable[:split]:
                _run(block, module.__dict__, redis_url)
            if split == len(runnable):
                return
            path.write_text(_definitions(runnable, redis_url), encoding="utf-8")
            worker = _Worker(tmp_path, redis_url, _queues(path))
            worker.wait_ready()
            with _as_main(module.__dict__, path):
                for block in runnable[split:]:
                    _run(block, module.__dict__, redis_url)
        except BaseException:
            if worker is not None:  # shown by pytest with the failure
                print("--- the docs worker's output ---", *worker.lines, sep="\n")
            raise
        finally:
            if worker is not None:
                worker.kill()
            _close_apps(module.__dict__)


def _close_apps(namespace: dict[str, object]) -> None:
    from omnitask import OmniTask

    for value in list(namespace.values()):
        if isinstance(value, OmniTask):
            value.close()


def test_marks_parse() -> None:
    """Every mark on every page is known and sits right before a python block."""
    for page in PAGES:
        parse(page)
