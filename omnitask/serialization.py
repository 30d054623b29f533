"""Codecs that turn task arguments and results into bytes and back.

A call travels as ``[args, kwargs]`` (``args`` as a list) and a result as the bare value, both
encoded by the task's serializer. Each message records the serializer's wire code:

| name | code | use |
|---|---|---|
| `msgpack` | 0 | The default: fast and compact. Decoding never unpickles: it only imports the module of a class named in the message (running that module's top-level code, as any import does) and calls the class only if it is an `Enum`, a dataclass or a `msgspec.Struct`. |
| `cloudpickle` | 1 | Opt-in: anything cloudpickle can pickle, lambdas and local classes included. Decoding unpickles, which can run any code: use it only when everything that writes to Redis is trusted. |

What comes back from a round trip:

| value sent | `msgpack` | `cloudpickle` |
|---|---|---|
| `None`, `bool`, `int`, `float`, `str`, `bytes` | same type and value; an `int` must lie in `-2**63 .. 2**64 - 1` | same |
| `list`; `dict` with `str` or `int` keys | same | same |
| `dict` with other hashable keys (`tuple`, `bool`, `UUID`, an `Enum` ...) | same | same |
| `tuple` (nested too), `set`, `frozenset`, `bytearray` | same type | same |
| `datetime.datetime`, `datetime.time` | same value; naive stays naive; an aware value keeps its UTC offset, but its tzinfo comes back as a fixed-offset `datetime.timezone` (`ZoneInfo("Europe/Paris")` in July becomes `timezone(timedelta(hours=2))`); `fold` is not kept; a `time` whose tzinfo has no fixed offset (a `ZoneInfo`) is refused | same, tzinfo included |
| `datetime.date`, `datetime.timedelta`, `uuid.UUID`, `decimal.Decimal` | same (a `Decimal` exactly, via its string) | same |
| `enum.Enum` members (`IntEnum`, `Flag`, `str` mixins ...) | same member | same |
| dataclass instances | same class, built by calling it with its `init=True` fields, so `__post_init__` runs and `init=False` fields are recomputed | same class and state, `__init__` not called |
| `msgspec.Struct` instances | same class, built by calling it with its fields | same |
| subclasses of the above that are not enums, dataclasses or Structs (`namedtuple`, `OrderedDict`, `defaultdict`, a `str` or `datetime` subclass) | the base type (`tuple`, `dict`, `str`, `datetime`) | same class |
| `memoryview` | `SerializationError` | `bytes` |
| functions, lambdas, classes defined inside a function and their instances | `SerializationError` | same (by value) |
| open text files | `SerializationError` | an `io.StringIO` of the content (cloudpickle's rule) |
| sockets, locks, binary files, other objects | `SerializationError` | `SerializationError`, unless the object pickles |

With `msgpack`, an `Enum`, dataclass or `Struct` class must be importable in the worker under the
same `module:qualname` as in the sender: a class defined at module level, not in `__main__` of a
script that the worker does not run.
"""  # noqa: E501 - Markdown table rows cannot wrap

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import importlib
import pickle
import sys
import uuid
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, Protocol

import cloudpickle  # type: ignore[import-untyped]
import msgspec

from omnitask.errors import SerializationError

__all__ = (
    "SERIALIZER_NAMES",
    "CloudpickleSerializer",
    "MsgpackSerializer",
    "Serializer",
    "decode_call",
    "encode_call",
    "encode_result",
    "get_serializer",
)

SERIALIZER_NAMES: Final[tuple[str, ...]] = ("msgpack", "cloudpickle")
"""Names accepted by `get_serializer` (and by the `serializer` setting)."""


class Serializer(Protocol):
    """A codec for task arguments and results.

    Attributes:
        name: The name users pick the serializer by, e.g. ``"msgpack"``.
        code: The wire code stored in messages, e.g. ``0``.
    """

    name: str
    code: int

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj`` to bytes.

        Raises:
            SerializationError: ``obj`` holds a value this serializer cannot encode.
        """
        ...

    def decode(self, data: bytes) -> Any:
        """Decode bytes made by `encode`.

        Raises:
            SerializationError: ``data`` is not valid for this serializer.
        """
        ...


class _Ext(enum.IntEnum):
    """msgpack ext codes (1..15) of the values msgpack cannot carry as their own type.

    Every ext's data is itself a msgpack document, decoded by the same decoder, so exts nest.
    Codes are wire format: never renumber one, only add new ones.
    """

    DATETIME = 1  # isoformat string
    DATE = 2  # isoformat string
    TIME = 3  # isoformat string
    TIMEDELTA = 4  # [days, seconds, microseconds]
    UUID = 5  # 16 bytes
    DECIMAL = 6  # str(value)
    TUPLE = 7  # [items]
    SET = 8  # [items]
    FROZENSET = 9  # [items]
    BYTEARRAY = 10  # bytes
    DICT = 11  # [key0, value0, key1, value1, ...] for keys other than str and int
    ENUM = 12  # ["module:qualname", value]
    DATACLASS = 13  # ["module:qualname", {field: value}]
    STRUCT = 14  # ["module:qualname", {field: value}]


# Exact types that msgpack carries as themselves; only these skip the conversion walk.
_PLAIN_SCALARS: Final = frozenset({type(None), bool, int, float, str, bytes})
_PLAIN_KEYS: Final = frozenset({str, int})
_SCALAR_BASES: Final[tuple[type[Any], ...]] = (str, int, float, bytes)


def _time_isoformat(value: datetime.time) -> str:
    if value.tzinfo is not None and value.utcoffset() is None:
        # isoformat() would silently drop such a tzinfo and the time would come back naive.
        raise TypeError(f"cannot encode {value!r}: its tzinfo has no fixed UTC offset")
    return value.isoformat()


# Looked up along the value's MRO, so a subclass travels as its nearest listed base.
_TO_PAYLOAD: Final[Mapping[type, tuple[_Ext, Callable[[Any], Any]]]] = MappingProxyType(
    {
        datetime.datetime: (_Ext.DATETIME, datetime.datetime.isoformat),
        datetime.date: (_Ext.DATE, datetime.date.isoformat),
        datetime.time: (_Ext.TIME, _time_isoformat),
        datetime.timedelta: (_Ext.TIMEDELTA, lambda v: [v.days, v.seconds, v.microseconds]),
        uuid.UUID: (_Ext.UUID, lambda v: v.bytes),
        decimal.Decimal: (_Ext.DECIMAL, str),
        tuple: (_Ext.TUPLE, list),
        set: (_Ext.SET, list),
        frozenset: (_Ext.FROZENSET, list),
        bytearray: (_Ext.BYTEARRAY, bytes),
    }
)


def _is_plain(obj: Any) -> bool:
    """Tell whether ``obj`` holds only values msgpack carries as their own type.

    This is the only Python-level work on the hot path, so it inlines the scalar test instead of
    recursing for every item.
    """
    cls = type(obj)
    if cls is list:
        for item in obj:
            if type(item) in _PLAIN_SCALARS:
                continue
            if not _is_plain(item):
                return False
        return True
    if cls is dict:
        for key, value in obj.items():
            if type(key) not in _PLAIN_KEYS:
                return False
            if type(value) not in _PLAIN_SCALARS and not _is_plain(value):
                return False
        return True
    return cls in _PLAIN_SCALARS


def _class_path(cls: type) -> str:
    """Return ``module:qualname`` of ``cls``, checking that this name leads back to ``cls``."""
    path = f"{cls.__module__}:{cls.__qualname__}"
    found: object = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    if found is not cls:
        raise TypeError(
            f"cannot encode an instance of {cls.__qualname__!r}: the class is not reachable as "
            f"{path!r} (define it at module level)"
        )
    return path


def _ext_parts(obj: object) -> tuple[_Ext, Any]:
    """Return the ext code and the payload that carry ``obj``.

    Raises:
        TypeError: ``obj`` is of a type msgpack cannot carry.
    """
    cls = type(obj)
    entry = _TO_PAYLOAD.get(cls)  # the common case, before the slower class checks below
    if entry is not None:
        return entry[0], entry[1](obj)
    if isinstance(obj, enum.Enum):
        return _Ext.ENUM, [_class_path(cls), obj.value]
    if isinstance(obj, msgspec.Struct):
        return _Ext.STRUCT, [_class_path(cls), msgspec.structs.asdict(obj)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        init_fields = [field.name for field in dataclasses.fields(obj) if field.init]
        return _Ext.DATACLASS, [_class_path(cls), {n: getattr(obj, n) for n in init_fields}]
    for base in cls.__mro__:
        entry = _TO_PAYLOAD.get(base)
        if entry is not None:
            code, to_payload = entry
            return code, to_payload(obj)
    raise TypeError(f"Encoding objects of type {cls.__qualname__} is unsupported")


def _import_class(path: object, kind: str, is_kind: Callable[[type], bool]) -> Any:
    """Import the class a message names, refusing anything that is not a class of ``kind``.

    Nothing found here is called unless ``is_kind`` accepts it, so a message naming e.g.
    ``os:system`` is refused, not run.
    """
    if not isinstance(path, str) or ":" not in path:
        raise SerializationError(f"bad class path {path!r} in msgpack data")
    module_name, _, qualname = path.partition(":")
    try:
        found: object = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception as exc:  # importing runs module code, which may raise anything
        raise SerializationError(f"cannot import {path!r} named in msgpack data: {exc}") from exc
    if not (isinstance(found, type) and is_kind(found)):
        raise SerializationError(f"refusing to rebuild {path!r}: it is not {kind}")
    return found


def _build_enum(payload: Any) -> Any:
    path, value = payload
    return _import_class(path, "an Enum class", lambda c: issubclass(c, enum.Enum))(value)


def _build_dataclass(payload: Any) -> Any:
    path, fields = payload
    return _import_class(path, "a dataclass", dataclasses.is_dataclass)(**fields)


def _build_struct(payload: Any) -> Any:
    path, fields = payload
    cls = _import_class(path, "a msgspec.Struct", lambda c: issubclass(c, msgspec.Struct))
    return cls(**fields)


def _build_dict(payload: Any) -> dict[Any, Any]:
    return dict(zip(payload[::2], payload[1::2], strict=True))


_FROM_PAYLOAD: Final[Mapping[int, Callable[[Any], Any]]] = MappingProxyType(
    {
        _Ext.DATETIME: datetime.datetime.fromisoformat,
        _Ext.DATE: datetime.date.fromisoformat,
        _Ext.TIME: datetime.time.fromisoformat,
        _Ext.TIMEDELTA: lambda p: datetime.timedelta(*p),
        _Ext.UUID: lambda p: uuid.UUID(bytes=p),
        _Ext.DECIMAL: decimal.Decimal,
        _Ext.TUPLE: tuple,
        _Ext.SET: set,
        _Ext.FROZENSET: frozenset,
        _Ext.BYTEARRAY: bytearray,
        _Ext.DICT: _build_dict,
        _Ext.ENUM: _build_enum,
        _Ext.DATACLASS: _build_dataclass,
        _Ext.STRUCT: _build_struct,
    }
)


class MsgpackSerializer:
    """The default serializer: msgpack via msgspec, with exts for common Python types.

    Values made only of ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``list`` and
    ``dict`` with ``str``/``int`` keys are encoded by one msgspec call. Anything else is first
    converted to msgpack exts (see the module docstring for what round-trips).
    """

    name: str = "msgpack"
    code: int = 0

    def __init__(self) -> None:
        """Create the msgspec encoder and decoder this instance reuses for every call."""
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
            ext_hook=self._from_ext
        )

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj`` to msgpack.

        Raises:
            SerializationError: ``obj`` holds a value of an unsupported type, an ``int`` out of
                the 64-bit range, or is nested too deeply.
        """
        try:
            if _is_plain(obj):
                return self._encoder.encode(obj)
            return self._encoder.encode(self._to_wire(obj))
        except Exception as exc:  # msgspec and user code the walk reaches raise many kinds
            raise SerializationError(str(exc)) from exc

    def decode(self, data: bytes) -> Any:
        """Decode msgpack made by `encode`, rebuilding the types it carried as exts.

        Raises:
            SerializationError: ``data`` is not valid, or names a class that cannot be imported
                or is not an Enum, dataclass or msgspec.Struct.
        """
        try:
            return self._decoder.decode(data)
        except SerializationError:
            raise
        except Exception as exc:  # an ext's payload may be malformed in many ways
            raise SerializationError(f"cannot decode msgpack data: {exc}") from exc

    def _to_wire(self, obj: Any) -> Any:
        """Return ``obj`` with every value msgpack cannot carry as itself replaced by an ext."""
        if type(obj) in _PLAIN_SCALARS:
            return obj
        if isinstance(obj, list):
            return [self._to_wire(item) for item in obj]
        if isinstance(obj, dict):
            if all(type(key) in _PLAIN_KEYS for key in obj):
                return {key: self._to_wire(value) for key, value in obj.items()}
            return self._ext(_Ext.DICT, [part for item in obj.items() for part in item])
        if not isinstance(obj, enum.Enum):
            for base in _SCALAR_BASES:
                if isinstance(obj, base):
                    return base(obj)  # msgspec refuses subclasses of these, so send the base
        return self._ext(*_ext_parts(obj))

    def _ext(self, code: _Ext, payload: Any) -> msgspec.msgpack.Ext:
        return msgspec.msgpack.Ext(int(code), self._encoder.encode(self._to_wire(payload)))

    def _from_ext(self, code: int, data: memoryview) -> Any:
        build = _FROM_PAYLOAD.get(code)
        if build is None:
            raise SerializationError(f"unknown msgpack ext code {code}")
        return build(self._decoder.decode(data))


class CloudpickleSerializer:
    """The opt-in serializer: cloudpickle, for any picklable object including lambdas.

    Decoding unpickles, which can run arbitrary code: use it only when everything that writes to
    Redis is trusted.
    """

    name: str = "cloudpickle"
    code: int = 1

    def encode(self, obj: Any) -> bytes:
        """Pickle ``obj`` with cloudpickle at the highest protocol.

        Raises:
            SerializationError: ``obj`` cannot be pickled.
        """
        try:
            data: bytes = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # pickling raises PicklingError, TypeError, AttributeError ...
            raise SerializationError(str(exc)) from exc
        return data

    def decode(self, data: bytes) -> Any:
        """Unpickle ``data``.

        Raises:
            SerializationError: ``data`` cannot be unpickled here.
        """
        try:
            return pickle.loads(data)  # cloudpickle's contract: writers are trusted
        except Exception as exc:  # unpickling imports and calls code, which may raise anything
            raise SerializationError(f"cannot unpickle data: {exc}") from exc


# Immutable and built from quiet constructors, so sharing one instance per serializer is safe.
_SERIALIZERS: Final[tuple[Serializer, ...]] = (MsgpackSerializer(), CloudpickleSerializer())


def get_serializer(name_or_code: str | int) -> Serializer:
    """Return the shared serializer with this name or wire code.

    Args:
        name_or_code: A name from `SERIALIZER_NAMES`, or a wire code read from a message.

    Raises:
        ValueError: No serializer has this name or code; the message lists the valid ones.
    """
    for serializer in _SERIALIZERS:
        if isinstance(name_or_code, str):
            if name_or_code == serializer.name:
                return serializer
        elif not isinstance(name_or_code, bool) and name_or_code == serializer.code:
            return serializer
    valid = ", ".join(f"{s.name!r} (code {s.code})" for s in _SERIALIZERS)
    raise ValueError(f"unknown serializer {name_or_code!r}: expected one of {valid}")


def _hint(serializer: Serializer) -> str:
    if serializer.name == MsgpackSerializer.name:
        return '; hint: use serializer="cloudpickle" to send arbitrary Python objects'
    return ""


def _encode_error(serializer: Serializer, value: Any) -> SerializationError | None:
    try:
        serializer.encode(value)
    except SerializationError as exc:
        return exc
    return None


def _find_culprit(
    serializer: Serializer, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, SerializationError] | None:
    """Encode each argument alone to name the first one that cannot be encoded."""
    for index, value in enumerate(args):
        if error := _encode_error(serializer, value):
            return f"positional argument at index {index}", error
    for key, value in kwargs.items():
        if error := _encode_error(serializer, value):
            return f"argument {key!r}", error
    return None


def encode_call(
    serializer: Serializer, task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bytes:
    """Encode a call's arguments as ``[args, kwargs]``.

    Args:
        serializer: The task's serializer.
        task_name: The task's name, used in error messages.
        args: Positional arguments.
        kwargs: Keyword arguments.

    Raises:
        SerializationError: An argument cannot be encoded; the message names the task, the
            argument and the reason.
    """
    try:
        return serializer.encode([list(args), kwargs])
    except SerializationError as exc:
        # Only now pay for encoding each argument alone: the happy path stays one encode.
        what, cause = _find_culprit(serializer, args, kwargs) or ("the arguments", exc)
        raise SerializationError(
            f"cannot serialize {what} of task {task_name!r} with serializer "
            f"{serializer.name!r}: {cause}{_hint(serializer)}"
        ) from cause


def decode_call(serializer: Serializer, data: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Decode bytes made by `encode_call` into ``(args, kwargs)``.

    Raises:
        SerializationError: ``data`` cannot be decoded or is not an ``[args, kwargs]`` pair.
    """
    payload = serializer.decode(data)
    if isinstance(payload, list | tuple) and len(payload) == 2:
        args, kwargs = payload
        if isinstance(args, list | tuple) and isinstance(kwargs, dict):
            return tuple(args), dict(kwargs)
    raise SerializationError(f"not an encoded call ([args, kwargs]): {type(payload).__name__}")


def encode_result(serializer: Serializer, task_name: str, value: Any) -> bytes:
    """Encode a task's return value.

    Raises:
        SerializationError: ``value`` cannot be encoded; the message names the task.
    """
    try:
        return serializer.encode(value)
    except SerializationError as exc:
        raise SerializationError(
            f"result of task {task_name!r} cannot be serialized with serializer "
            f"{serializer.name!r}: {exc}{_hint(serializer)}"
        ) from exc
