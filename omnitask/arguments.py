"""Checking a call's arguments against the task function's signature and annotations.

At ``.delay()`` the arguments are checked, not changed: a wrong type raises
:class:`~omnitask.errors.ArgumentTypeError` naming the task and the parameter, and nothing is
sent. On the worker, an argument that is not already of its annotated type (a message sent by
name from code that knows no types, say an ISO date string for a ``datetime`` parameter) is
converted to it with msgspec; one that cannot be is refused before the task runs.

Only annotations msgspec understands are checked (builtins, ``datetime``, ``UUID``,
``Decimal``, enums, dataclasses, ``msgspec.Struct``, ``TypedDict``, containers, unions and
``Literal`` of these ...); ``Any``, ``object``, other classes and annotations that cannot be
resolved are not. An annotation naming a plain class passes any instance of it (so ``True``
passes for ``int``, as type checkers agree).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import msgspec.inspect

from omnitask.errors import ArgumentTypeError

__all__ = ("Arguments",)

_SKIP = (Any, object, inspect.Parameter.empty)


def _is_a(value: Any, cls: type) -> bool:
    """``isinstance``, with an int accepted where a float is asked for."""
    return isinstance(value, cls) or (cls is float and type(value) is int)


class _Param:
    """One checked parameter: its annotation and how to test a value against it."""

    __slots__ = ("annotation", "kind", "name", "plain")

    def __init__(self, name: str, kind: inspect._ParameterKind, annotation: Any) -> None:
        self.name = name
        self.kind = kind
        self.annotation = annotation
        # A plain class is tested with isinstance (fast, and exact for enums, which msgspec
        # converts from their values, not from their members).
        self.plain = annotation if isinstance(annotation, type) else None

    def fits(self, value: Any) -> bool:
        """Whether ``value`` is acceptable as sent (no conversion)."""
        if self.plain is not None:
            return _is_a(value, self.plain)
        try:
            msgspec.convert(msgspec.to_builtins(value), self.annotation, strict=True)
        except msgspec.ValidationError:
            return False
        except TypeError:
            return True  # a value msgspec cannot represent: not ours to judge
        return True

    def convert(self, value: Any) -> Any:
        """``value`` as the annotated type, converting it if it is not one already."""
        if self.plain is not None and isinstance(value, self.plain):
            return value
        try:
            return msgspec.convert(value, self.annotation, strict=False)
        except msgspec.ValidationError:
            if self.plain is not None:
                raise
            # Enum members inside a container: msgspec converts enums from their values.
            return msgspec.convert(msgspec.to_builtins(value), self.annotation, strict=False)


class Arguments:
    """The signature and checked annotations of one task's function (resolved on first use).

    Args:
        task_name: For error messages.
        fn: The task's function.
        bind: The function's first parameter is the task itself, never passed by callers.
    """

    def __init__(self, task_name: str, fn: Callable[..., Any], *, bind: bool) -> None:
        """Read the signature now; resolve annotations on the first call."""
        signature = inspect.signature(fn)
        if bind:
            params = list(signature.parameters.values())[1:]
            signature = signature.replace(parameters=params)
        self.signature = signature
        self._task_name = task_name
        self._fn = fn
        self._params: dict[str, _Param] | None = None
        # When every parameter is a plain one without a default, a call of exactly that many
        # positional arguments fits without Signature.bind (a few microseconds per task, on
        # both .delay() and the worker).
        plain = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.POSITIONAL_ONLY
        values = signature.parameters.values()
        simple = all(p.kind in plain and p.default is inspect.Parameter.empty for p in values)
        self._names: tuple[str, ...] | None = tuple(signature.parameters) if simple else None
        self._classes: tuple[type | None, ...] | None = None
        self._classes_known = False

    def _resolved(self) -> dict[str, _Param]:
        if self._params is None:
            self._params = self._resolve()
        return self._params

    def _resolve(self) -> dict[str, _Param]:
        # Resolved late so that an annotation may name a class defined after the function.
        try:
            hints = typing.get_type_hints(self._fn)
        except Exception:  # noqa: BLE001 - a name only imported for type checkers: skip all
            return {}
        params = {}
        for name, param in self.signature.parameters.items():
            annotation = hints.get(name, inspect.Parameter.empty)
            if annotation in _SKIP or not _understood(annotation):
                continue
            params[name] = _Param(name, param.kind, annotation)
        return params

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        try:
            return self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self._task_name!r}: {exc}") from None

    def _plain_classes(self) -> tuple[type | None, ...] | None:
        """Per parameter, the class its annotation names (None: not checked).

        Only when every parameter is a plain positional one annotated with a class or not at
        all; else None.
        """
        if not self._classes_known:
            params = self._resolved()
            names = self._names or ()
            plain = [params[n].plain if n in params else None for n in names]
            simple = self._names is not None and all(
                n not in params or cls is not None for n, cls in zip(names, plain, strict=True)
            )
            self._classes = tuple(plain) if simple else None
            self._classes_known = True
        return self._classes

    def check(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Check a call as ``.delay()`` receives it.

        Raises:
            TypeError: The arguments do not fit the signature (missing, unexpected ...).
            ArgumentTypeError: An argument does not match its annotation.
        """
        classes = self._plain_classes()
        if classes is not None and not kwargs and len(args) == len(classes):
            # The common call: one isinstance per argument (a third of the time of the walk
            # below, which is still what finds and words a mismatch).
            for value, cls in zip(args, classes, strict=True):
                if cls is not None and not _is_a(value, cls):
                    break
            else:
                return
        params = self._resolved()
        for name, value in self._arguments(args, kwargs):
            param = params.get(name)
            if param is None:
                continue
            for item, where in _items(param, value):
                if not param.fits(item):
                    raise ArgumentTypeError(self._mismatch(param, item, where))

    def convert(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments as a worker passes them: each converted to its annotated type.

        Raises:
            TypeError: The arguments do not fit the signature.
            ArgumentTypeError: An argument cannot be converted to its annotated type.
        """
        # Also without annotations: a call that does not fit (sent by name) is refused before
        # it runs, not failed (and retried) by the TypeError of the call itself.
        arguments = self._arguments(args, kwargs)
        params = self._resolved()
        converted = {}
        for name, value in arguments:
            param = params.get(name)
            if param is None:
                continue
            new = self._convert(param, value)
            if new is not value:
                converted[name] = new
        if not converted:
            return args, kwargs
        bound = self._bind(args, kwargs)
        bound.arguments.update(converted)
        return bound.args, bound.kwargs

    def _arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Iterable[tuple[str, Any]]:
        """The call's arguments by parameter name.

        Raises:
            TypeError: They do not fit the signature (missing, unexpected ...).
        """
        if self._names is not None and not kwargs and len(args) == len(self._names):
            return zip(self._names, args, strict=True)
        return self._bind(args, kwargs).arguments.items()

    def _convert(self, param: _Param, value: Any) -> Any:
        try:
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                return tuple(param.convert(v) for v in value)
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                return {k: param.convert(v) for k, v in value.items()}
            return param.convert(value)
        except (msgspec.ValidationError, TypeError, ValueError) as exc:
            raise ArgumentTypeError(
                f"task {self._task_name!r}: argument {param.name!r} cannot be read as "
                f"{_name(param.annotation)}: {exc}"
            ) from None

    def _mismatch(self, param: _Param, value: Any, where: str) -> str:
        return (
            f"task {self._task_name!r}: argument {param.name!r}{where} must be "
            f"{_name(param.annotation)}, got {type(value).__name__} {_short(value)}"
        )


def _items(param: _Param, value: Any) -> list[tuple[Any, str]]:
    """The values one parameter received, with where each sits (``*args`` / ``**kwargs``)."""
    if param.kind is inspect.Parameter.VAR_POSITIONAL:
        return [(v, f"[{i}]") for i, v in enumerate(value)]
    if param.kind is inspect.Parameter.VAR_KEYWORD:
        return [(v, f"[{k!r}]") for k, v in value.items()]
    return [(value, "")]


def _understood(annotation: Any) -> bool:
    try:
        info = msgspec.inspect.type_info(annotation)
    except TypeError:
        return False
    # A plain class msgspec knows nothing of comes back as CustomType: not checked.
    return not isinstance(info, msgspec.inspect.CustomType)


def _name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__qualname__
    return str(annotation).replace("typing.", "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
