"""Workflows: signatures, chains, groups and chords, continued by the step that acknowledges.

A workflow is planned once, when it is sent: every task in it gets its id then, so every
result is known from the start. The first tasks are queued; each carries, in its envelope's
``canvas`` field, what follows it:

- ``("c", nodes)``: the rest of a chain. When the task succeeds, the first node starts with
  the task's return value prepended to its arguments (unless it is immutable, ``si()``).
- ``("j", chord id, index, queue, targets)``: a chord to report to. The task's result record
  goes into the chord's hash in Redis (under the callback's queue, ``queue``); the one that
  completes the count queues the callback, which was built when the chord started and waits
  in that hash. ``targets`` are the ``[id, queue]`` of the callback and what follows it (a
  bare id, from an older sender, is on ``queue``), failed with the chord.

Whatever follows a task is queued by the same MULTI that acknowledges it, and a chord is
joined by a Lua script inside that MULTI (``lua/join.lua``): a task that runs twice (its worker
died before the ack) continues its workflow once, and a chord's callback is queued exactly
once, whichever worker finishes the last header task. A task that fails past its retries (or
is revoked) fails every task after it with its own error, so ``get()`` on the workflow's
result raises it instead of waiting forever.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Union

from omnitask import errors
from omnitask.broker import commands as cmd
from omnitask.broker.scripts import JOIN
from omnitask.errors import ConfigurationError
from omnitask.messages import Envelope
from omnitask.producer import Call, OptionsLike, new_task_id
from omnitask.result import AsyncResult
from omnitask.serialization import get_serializer

if TYPE_CHECKING:
    from omnitask.app import OmniTask
    from omnitask.task import Task

__all__ = (
    "GATHER_TASK",
    "Chain",
    "Chord",
    "Group",
    "GroupResult",
    "Signature",
    "chain",
    "chord",
    "gather",
    "group",
    "links",
)

R = TypeVar("R")

GATHER_TASK = "omnitask.gather"
"""The built-in task a chord queues when its body is not a single task: it returns the header's
results, and what follows it (the body) starts with them."""

_CODEC = get_serializer("msgpack")

CHORD_AFTER_MS = 300_000
"""How long a chord's hash stays after its callback succeeded (a duplicate run may need it)."""


def gather(results: list[Any]) -> list[Any]:
    """The body of :data:`GATHER_TASK`: the chord header's results, passed on."""
    return results


_OPTIONS = frozenset(
    {"queue", "priority", "countdown", "expires", "time_limit", "soft_time_limit", "task_id"}
)


class Signature(Generic[R]):
    """A task with arguments and options, to send later or as part of a workflow.

    Made by ``task.s(...)`` (its result is passed on in a chain) or ``task.si(...)``
    (immutable: it runs with its own arguments only).
    """

    def __init__(
        self,
        task: Task[Any, R] | str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        options: OptionsLike | None = None,
        immutable: bool = False,
        app: OmniTask | None = None,
    ) -> None:
        """Refer to ``task`` (a Task, or a task name with ``app``)."""
        self.name = task if isinstance(task, str) else task.name
        self.app = app if app is not None or isinstance(task, str) else task.app
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options: dict[str, Any] = dict(options or {})
        unknown = set(self.options) - _OPTIONS
        if unknown:
            raise ConfigurationError(f"unknown signature option(s): {', '.join(sorted(unknown))}")
        self.immutable = immutable
        self.id: str | None = self.options.get("task_id")

    def __repr__(self) -> str:
        call = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.name}{'.si' if self.immutable else '.s'}({call})"

    def set(self, **options: Any) -> Signature[R]:
        """A copy with these options (``queue``, ``priority``, ``countdown`` ...) added."""
        copy = self._copy()
        copy.options.update(options)
        unknown = set(copy.options) - _OPTIONS
        if unknown:
            raise ConfigurationError(f"unknown signature option(s): {', '.join(sorted(unknown))}")
        copy.id = copy.options.get("task_id")
        return copy

    def _copy(self) -> Signature[R]:
        copy: Signature[R] = Signature(
            self.name, self.args, self.kwargs, immutable=self.immutable, app=self.app
        )
        copy.options = dict(self.options)
        copy.id = self.id
        return copy

    def __or__(self, other: Node) -> Chain:
        return Chain(self, other)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        """Send it, with ``args`` before its own arguments and ``kwargs`` over its own."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> AsyncResult[R]:
        """Send it, with ``args`` before its own arguments and ``kwargs`` over its own."""
        sig = self._copy()
        sig.args = (*args, *self.args)
        sig.kwargs = {**self.kwargs, **(kwargs or {})}
        return _send(sig, _app_of(sig))  # type: ignore[return-value]


class Chain:
    """Nodes run one after the other, each given the previous one's result."""

    def __init__(self, *nodes: Node) -> None:
        """Chain ``nodes`` (chains inside are flattened)."""
        flat: list[Node] = []
        for node in nodes:
            if isinstance(node, Chain):
                flat.extend(node.nodes)
            else:
                flat.append(node)
        if not flat:
            raise ConfigurationError("a chain needs at least one task")
        self.nodes: list[Node] = flat

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.nodes))

    def __or__(self, other: Node) -> Chain:
        return Chain(self, other)

    def delay(self, *args: Any) -> AsyncResult[Any] | GroupResult:
        """Send the chain; ``args`` go before the first node's own arguments."""
        return self.apply_async(args)

    def apply_async(self, args: Iterable[Any] = ()) -> AsyncResult[Any] | GroupResult:
        """Send the chain; its result is the last node's."""
        return _send(self, _app_of(self), tuple(args))


class Group:
    """Nodes run in parallel; their results come back as a list, in order."""

    def __init__(self, *nodes: Node | Iterable[Node]) -> None:
        """Group ``nodes``, given one by one or as one iterable."""
        if len(nodes) == 1 and not isinstance(nodes[0], Signature | Chain | Group | Chord):
            nodes = tuple(nodes[0])
        self.nodes: list[Node] = list(nodes)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"group({', '.join(map(repr, self.nodes))})"

    def __or__(self, other: Node) -> Chain | Chord:
        if isinstance(other, Signature):
            return Chord(self, other)  # what Celery does too: a group then a task is a chord
        return Chain(self, other)

    def delay(self, *args: Any) -> GroupResult:
        """Send every node; ``args`` go before each one's own arguments."""
        return self.apply_async(args)

    def apply_async(self, args: Iterable[Any] = ()) -> GroupResult:
        """Send every node, in one step."""
        result = _send(self, _app_of(self), tuple(args))
        assert isinstance(result, GroupResult)
        return result


class Chord:
    """A group (the header) and a node (the body) that runs once with all their results."""

    def __init__(self, header: Group | Iterable[Node], body: Node | None = None) -> None:
        """Join ``header``; ``body`` may be given now or by calling the chord."""
        self.header = header if isinstance(header, Group) else Group(header)
        self.body = body

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def __call__(self, body: Node | None = None, *args: Any) -> AsyncResult[Any] | GroupResult:
        """Send the chord (``chord(header)(callback)``, Celery's spelling)."""
        chord = Chord(self.header, body if body is not None else self.body)
        return chord.apply_async(args)

    def __or__(self, other: Node) -> Chain:
        return Chain(self, other)

    def delay(self, *args: Any) -> AsyncResult[Any] | GroupResult:
        """Send the chord; ``args`` go before each header node's own arguments."""
        return self.apply_async(args)

    def apply_async(self, args: Iterable[Any] = ()) -> AsyncResult[Any] | GroupResult:
        """Send the chord; its result is the body's."""
        if self.body is None:
            raise ConfigurationError("a chord needs a body: chord(header)(body)")
        return _send(self, _app_of(self), tuple(args))


Node = Union[Signature[Any], Chain, Group, Chord]  # noqa: UP007 - a runtime alias, 3.10


def chain(*nodes: Node) -> Chain:
    """``chain(a, b, c)``: the same as ``a | b | c``."""
    return Chain(*nodes)


def group(*nodes: Node | Iterable[Node]) -> Group:
    """``group(a, b)`` or ``group(sigs)``: run in parallel, results as a list."""
    return Group(*nodes)


def chord(header: Group | Iterable[Node], body: Node | None = None) -> Chord:
    """``chord(header, body)`` or ``chord(header)(body)``."""
    return Chord(header, body)


class GroupResult:
    """The results of a group's tasks, in the group's order."""

    def __init__(self, results: Sequence[AsyncResult[Any] | GroupResult]) -> None:
        """Hold ``results`` (a nested group gives a nested GroupResult)."""
        self.results = list(results)

    def __repr__(self) -> str:
        return f"<GroupResult {len(self.results)} tasks>"

    def __len__(self) -> int:
        return len(self.results)

    def get(self, timeout: float | None = None, *, propagate: bool = True) -> list[Any]:
        """Wait for every task; return their results in order (raises the first failure)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise errors.TimeoutError(f"the group did not finish within {timeout} s")
            values.append(result.get(timeout=left, propagate=propagate))
        return values

    def ready(self) -> bool:
        """Whether every task has finished."""
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        """Whether every task finished successfully."""
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        """Whether any task failed."""
        return any(r.failed() for r in self.results)

    def completed_count(self) -> int:
        """How many tasks finished successfully."""
        return sum(1 for r in self.results if r.successful())

    def revoke(self, *, terminate: bool = False) -> None:
        """Revoke every task of the group."""
        for result in self.results:
            result.revoke(terminate=terminate)


# -- planning and sending ---------------------------------------------------------------------


def _app_of(node: Node) -> OmniTask:
    if isinstance(node, Signature):
        if node.app is None:
            raise ConfigurationError(f"{node!r} has no app: make it with task.s()")
        return node.app
    if isinstance(node, Chain):
        return _app_of(node.nodes[0])
    if isinstance(node, Group):
        if not node.nodes:
            raise ConfigurationError("an empty group has no app to send with")
        return _app_of(node.nodes[0])
    if not node.header.nodes and node.body is not None:
        return _app_of(node.body)
    return _app_of(node.header)


def _send(node: Node, app: OmniTask, args: tuple[Any, ...] = ()) -> AsyncResult[Any] | GroupResult:
    plan = Plan(app)
    node = _assign_ids(node)
    _check_first(node, args)
    _check_one_slot(app, [queue for _, queue in _targets(node, app)])
    plan.start(node, args or None, [])
    plan.send()
    return _result_of(node, app)


def _assign_ids(node: Node) -> Node:
    """The same tree with an id on every signature: copies, the user's objects stay as they are."""
    if isinstance(node, Signature):
        sig = node._copy()
        sig.id = sig.id or new_task_id()
        return sig
    if isinstance(node, Chain):
        return Chain(*(_assign_ids(n) for n in node.nodes))
    if isinstance(node, Group):
        return Group([_assign_ids(n) for n in node.nodes])
    assert node.body is not None
    return Chord(Group([_assign_ids(n) for n in node.header.nodes]), _assign_ids(node.body))


def _check_first(node: Node, args: tuple[Any, ...]) -> None:
    """Check the arguments of the tasks that start now, where they are registered here."""
    if isinstance(node, Signature) and node.app is not None:
        task = node.app.tasks.get(node.name)
        if task is not None:
            task.arguments.check((*args, *node.args) if not node.immutable else node.args,
                                 node.kwargs)  # fmt: skip
    elif isinstance(node, Chain):
        _check_first(node.nodes[0], args)
    elif isinstance(node, Group):
        for n in node.nodes:
            _check_first(n, args)
    elif isinstance(node, Chord):
        _check_first(node.header, args)


def queue_of(app: OmniTask, sig: Signature[Any]) -> str:
    """The queue ``sig`` is sent to: its ``queue`` option, else its task's, else the default."""
    task = app.tasks.get(sig.name)
    queue: str | None = sig.options.get("queue")
    return queue or (task.queue if task is not None else app.conf.default_queue)


def _result_of(node: Node, app: OmniTask) -> AsyncResult[Any] | GroupResult:
    if isinstance(node, Signature):
        assert node.id is not None
        task = app.tasks.get(node.name)
        ignored = bool(task and task.ignore_result)
        return AsyncResult(node.id, app, queue=queue_of(app, node), ignored=ignored)
    if isinstance(node, Chain):
        return _result_of(node.nodes[-1], app)
    if isinstance(node, Group):
        return GroupResult([_result_of(n, app) for n in node.nodes])
    assert node.body is not None
    return _result_of(node.body, app)


def _first_signature(node: Node) -> Signature[Any] | None:
    """The first task ``node`` runs (a group's first member), or None for an empty group."""
    if isinstance(node, Signature):
        return node
    if isinstance(node, Chain | Group):
        return _first_signature(node.nodes[0]) if node.nodes else None
    return _first_signature(node.header) or (
        _first_signature(node.body) if node.body is not None else None
    )


def _targets(node: Node, app: OmniTask) -> list[list[str]]:
    """``[id, queue]`` of every task in ``node``."""
    if isinstance(node, Signature):
        assert node.id is not None
        return [[node.id, queue_of(app, node)]]
    if isinstance(node, Chain | Group):
        return [t for n in node.nodes for t in _targets(n, app)]
    assert node.body is not None
    return _targets(node.header, app) + _targets(node.body, app)


def _frame_targets(frames: Sequence[Any], app: OmniTask) -> list[list[str]]:
    """``[id, queue]`` of every task that the continuation ``frames`` would still run."""
    targets: list[list[str]] = []
    for frame in frames:
        if frame[0] == "c":
            targets += [t for wire in frame[1] for t in _targets(_from_wire(wire, app), app)]
        else:  # "j": the chord's callback and what follows it
            targets += [[t, frame[3]] if isinstance(t, str) else list(t) for t in frame[4]]
    return targets


class Plan:
    """Commands that start nodes: the envelopes to queue and the chords to set up.

    Used by clients to send a workflow, and by workers to start what follows a task, in the
    MULTI that acknowledges it.
    """

    def __init__(self, app: OmniTask) -> None:
        """Plan for ``app``."""
        self.app = app
        self.calls: list[Call] = []
        self.setup: list[cmd.Command] = []
        self.chord_queues: list[str] = []

    @property
    def queues(self) -> list[str]:
        """The queues the plan sends to (for the app's set of queues, a step of its own)."""
        return list(dict.fromkeys([*self.chord_queues, *(call.queue for call in self.calls)]))

    def commands(self) -> list[cmd.Command]:
        """Everything planned, as one list of commands (setups first)."""
        by_queue: dict[str, list[Any]] = {}
        for call in self.calls:
            by_queue.setdefault(call.queue, []).append(call.item)
        out = list(self.setup)
        keys = self.app.keys
        maxlen = self.app.conf.events_maxlen if self.app.conf.events else 0
        for queue, items in by_queue.items():
            qk = keys.queue(queue)
            out += cmd.enqueue(qk, items, qk.events, maxlen)
        return out

    def send(self) -> None:
        """Run the plan in one MULTI: every task of it is queued, or none.

        Raises:
            ConfigurationError: On a Redis Cluster, the workflow spans several queues.
        """
        _check_one_slot(self.app, self.queues)
        ids = [call.task_id for call in self.calls]
        self.app.broker.send_commands(self.commands(), ids, self.queues)

    def register(self) -> list[cmd.Command]:
        """:meth:`commands`, once the queues they send to are in the app's set of queues.

        Raises:
            ConfigurationError: On a Redis Cluster, they span several queues (the step that
                carries them would be refused by Redis, again and again).
        """
        _check_one_slot(self.app, self.queues)
        self.app.broker.register_queues(self.queues)
        return self.commands()

    def start(self, node: Node, prev: tuple[Any, ...] | None, frames: list[Any]) -> None:
        """Start ``node`` with ``prev`` before its arguments and ``frames`` after it."""
        if isinstance(node, Signature):
            self._queue(node, prev, {"f": frames} if frames else {})
        elif isinstance(node, Chain):
            rest = [["c", [_to_wire(n) for n in node.nodes[1:]]]] if len(node.nodes) > 1 else []
            self.start(node.nodes[0], prev, rest + frames)
        elif isinstance(node, Group):
            if frames:  # something follows the group: join it first
                self._chord(node, None, prev, frames)
            else:
                for member in node.nodes:
                    self.start(member, prev, [])
        else:
            self._chord(node.header, node.body, prev, frames)

    def _queue(self, sig: Signature[Any], prev: tuple[Any, ...] | None, canvas: dict[str, Any]
               ) -> Call:  # fmt: skip
        args = sig.args if sig.immutable or prev is None else (*prev, *sig.args)
        options: OptionsLike = {k: v for k, v in sig.options.items() if k != "task_id"}  # type: ignore[assignment]
        options["task_id"] = sig.id
        task = self.app.tasks.get(sig.name)
        encoded = _CODEC.encode(canvas) if canvas else None
        call = Call.build(self.app, task or sig.name, args, sig.kwargs, options, encoded)
        self.calls.append(call)
        return call

    def _chord(self, header: Group, body: Node | None, prev: tuple[Any, ...] | None,
               frames: list[Any]) -> None:  # fmt: skip
        n = len(header.nodes)
        cid = new_task_id()
        # The callback: the body itself when it is one task, else the built-in gather task
        # with the body (if any) as what follows it.
        if isinstance(body, Signature):
            callback, after = body, frames
        else:
            # On the queue of the tasks around it (the body's first, else the header's), not
            # the default one: on a Redis Cluster a workflow's steps must stay on one queue,
            # and on one server a worker of those tasks then runs it.
            near = _first_signature(body) if body is not None else None
            near = near or _first_signature(header)
            options: OptionsLike = {"task_id": new_task_id()}
            if near is not None:
                options["queue"] = queue_of(self.app, near)
            callback = Signature(GATHER_TASK, app=self.app, options=options)
            callback.id = callback.options["task_id"]
            after = ([["c", [_to_wire(body)]]] if body is not None else []) + frames
        gather: dict[str, Any] = {"g": [cid, n, callback.immutable]}
        if after:
            gather["f"] = after
        if n == 0:  # nothing to wait for: the callback runs now, with no results
            self._queue(
                callback, None if callback.immutable else ([],), {"f": after} if after else {}
            )
            return
        planned = Plan(self.app)
        built = planned._queue(callback, None, gather)
        ttl_ms = int(self.app.conf.result_ttl_s * 1000)
        key = self.app.keys.queue(built.queue).chord(cid)
        self.setup += [
            ("HSET", key, "n", n, "cb", built.item[0], "q", built.queue),
            ("PEXPIRE", key, ttl_ms),
        ]
        # The chord's hash lives under the callback's queue: one of the steps' queues too.
        self.chord_queues.append(built.queue)
        assert callback.id is not None
        doomed = [[callback.id, built.queue], *_frame_targets(after, self.app)]
        for index, member in enumerate(header.nodes):
            self.start(member, prev, [["j", cid, index, built.queue, doomed]])


def _check_one_slot(app: OmniTask, queues: Sequence[str]) -> None:
    """On a Redis Cluster, refuse a workflow over several queues before anything is sent.

    Each step of a workflow is one MULTI with the step that starts it, and a MULTI on a
    cluster touches one hash slot, so one queue; over several it could start and never finish.
    """
    if not app.broker.same_slot(queues):
        raise ConfigurationError(
            "on Redis Cluster a workflow (chain, group, chord, link) runs on one queue; this "
            f"one sends to {', '.join(sorted(queues))}"
        )


def _to_wire(node: Node) -> list[Any]:
    if isinstance(node, Signature):
        return ["s", node.name, list(node.args), node.kwargs, node.options, node.immutable, node.id]
    if isinstance(node, Chain):
        return ["c", [_to_wire(n) for n in node.nodes]]
    if isinstance(node, Group):
        return ["g", [_to_wire(n) for n in node.nodes]]
    assert node.body is not None
    return ["d", _to_wire(node.header), _to_wire(node.body)]


def _from_wire(wire: Sequence[Any], app: OmniTask | None = None) -> Node:
    kind = wire[0]
    if kind == "s":
        _, name, args, kwargs, options, immutable, task_id = wire
        sig: Signature[Any] = Signature(name, args, kwargs, immutable=immutable, app=app)
        sig.options = dict(options)
        sig.id = task_id
        return sig
    if kind == "c":
        return Chain(*(_from_wire(w, app) for w in wire[1]))
    if kind == "g":
        return Group([_from_wire(w, app) for w in wire[1]])
    header = _from_wire(wire[1], app)
    assert isinstance(header, Group)
    return Chord(header, _from_wire(wire[2], app))


def check_links(
    app: OmniTask,
    queue: str,
    link: Signature[Any] | Sequence[Signature[Any]] | None,
    link_error: Signature[Any] | Sequence[Signature[Any]] | None,
) -> None:
    """On a Redis Cluster, refuse callbacks that run on another queue than their task's.

    They are queued by the step that finishes the task, on its queue's hash slot.

    Raises:
        ConfigurationError: A callback's queue is not ``queue``, on a cluster.
    """
    if not app.broker.is_cluster:
        return
    sigs = [s for group in (link, link_error) if group is not None
            for s in ([group] if isinstance(group, Signature) else group)]  # fmt: skip
    _check_one_slot(app, [queue, *(queue_of(app, sig) for sig in sigs)])


def links(
    link: Signature[Any] | Sequence[Signature[Any]] | None,
    link_error: Signature[Any] | Sequence[Signature[Any]] | None,
) -> bytes | None:
    """The canvas field of a task sent with callbacks (``apply_async(link=, link_error=)``).

    ``link`` runs with the task's result when it succeeds; ``link_error`` with the task's id
    when it fails for good (or is revoked). Both are queued by the step that finishes the task.
    """
    data: dict[str, Any] = {}
    for key, sigs in (("l", link), ("e", link_error)):
        if sigs is None:
            continue
        for sig in [sigs] if isinstance(sigs, Signature) else sigs:
            if not isinstance(sig, Signature):
                raise ConfigurationError(f"link and link_error take signatures, got {sig!r}")
            data.setdefault(key, []).append(_to_wire(_assign_ids(sig)))
    return _CODEC.encode(data) if data else None


# -- on the worker ----------------------------------------------------------------------------


def decode(envelope: Envelope) -> dict[str, Any]:
    """The canvas part of an envelope, or an empty dict."""
    if envelope.canvas is None:
        return {}
    data = _CODEC.decode(envelope.canvas)
    return data if isinstance(data, dict) else {}


def on_success(
    app: OmniTask, envelope: Envelope, queue: str, value: Any, record: bytes
) -> list[cmd.Command]:
    """Commands that continue a workflow after ``envelope``'s task on ``queue`` returned ``value``.

    ``record`` is the task's SUCCESS result record (what a chord's callback receives).
    They join the MULTI that acknowledges the task.
    """
    canvas = decode(envelope)
    out: list[cmd.Command] = []
    if canvas.get("l"):
        plan = Plan(app)
        for wire in canvas["l"]:
            plan.start(_from_wire(wire, app), (value,), [])
        out += plan.register()
    frames = canvas.get("f") or []
    if frames:
        top, rest = frames[0], frames[1:]
        if top[0] == "c":
            plan = Plan(app)
            nodes = top[1]
            follow = ([["c", nodes[1:]]] if len(nodes) > 1 else []) + rest
            plan.start(_from_wire(nodes[0], app), (value,), follow)
            out += plan.register()
        else:
            _, cid, index, chord_queue, _ = top
            ttl_ms = int(app.conf.result_ttl_s * 1000)
            out.append(_join(app, cid, index, chord_queue, record, ttl_ms))
    if "g" in canvas:
        # The callback ran: its chord goes soon, not at once, so that a second run of the
        # callback (its worker's lease lapsed) still finds the header's results.
        out.append(("PEXPIRE", app.keys.queue(queue).chord(canvas["g"][0]), CHORD_AFTER_MS))
    return out


def on_failure(app: OmniTask, envelope: Envelope, record: bytes, ttl_ms: int
               ) -> tuple[list[cmd.Command], list[cmd.Command]]:  # fmt: skip
    """Commands that fail what follows a task that failed for good (or was revoked).

    Returns the commands for the broker (a chord marked failed, so its callback never runs)
    and those for the result store (``record``, the task's own final record, stored for every
    task that would have followed, so that waiting for them raises the same error).
    """
    canvas = decode(envelope)
    frames = canvas.get("f") or []
    broker: list[cmd.Command] = []
    for frame in frames:
        if frame[0] == "j":  # with a TTL: the hash may have gone already, and comes back here
            chord = app.keys.queue(frame[3]).chord(frame[1])
            broker.append(("HSET", chord, "failed", envelope.id))
            broker.append(("PEXPIRE", chord, ttl_ms))
    if canvas.get("e"):
        plan = Plan(app)
        for wire in canvas["e"]:
            plan.start(_from_wire(wire, app), (envelope.id,), [])
        broker += plan.register()
    results: list[cmd.Command] = []
    for task_id, queue in _frame_targets(frames, app):
        qk = app.keys.queue(queue)
        results += cmd.store_result(qk.result(task_id), qk.state(task_id), record, ttl_ms)
    return broker, results


def _join(
    app: OmniTask, cid: str, index: int, queue: str, record: bytes, ttl_ms: int
) -> cmd.Command:
    qk = app.keys.queue(queue)
    keys = [qk.chord(cid), *qk.ready, qk.wake]
    # EVAL, not EVALSHA: inside a MULTI a missing script (Redis restarted since the worker
    # loaded it) would fail this command alone while the ack applied, losing the join.
    return ("EVAL", JOIN.source, len(keys), *keys, index, record, ttl_ms)


def gather_plan(
    app: OmniTask, envelope: Envelope, queue: str
) -> tuple[str, list[str], bool] | None:
    """Where a chord's callback, run from ``queue``, finds its header's results; None for others.

    Returns the chord's hash, the fields of the header's result records in order, and whether
    the callback is immutable (runs without them).
    """
    canvas = decode(envelope)
    if "g" not in canvas:
        return None
    cid, n, immutable = canvas["g"]
    return app.keys.queue(queue).chord(cid), [f"r:{i}" for i in range(n)], bool(immutable)
