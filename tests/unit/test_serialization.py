"""Unit tests of omnitask.serialization: what round-trips, what fails, and how it says so."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import io
import os
import socket
import threading
import uuid
import zoneinfo
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest

from omnitask.errors import SerializationError
from omnitask.serialization import (
    SERIALIZER_NAMES,
    CloudpickleSerializer,
    MsgpackSerializer,
    Serializer,
    decode_call,
    encode_call,
    encode_result,
    get_serializer,
)

MSGPACK = get_serializer("msgpack")
CLOUDPICKLE = get_serializer("cloudpickle")
BOTH = pytest.mark.parametrize("serializer", [MSGPACK, CLOUDPICKLE], ids=lambda s: s.name)

UTC = datetime.timezone.utc
IST = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
PARIS = zoneinfo.ZoneInfo("Europe/Paris")


@dataclasses.dataclass
class Point:
    """A plain dataclass."""

    x: int
    y: int


@dataclasses.dataclass(frozen=True)
class Meeting:
    """A frozen dataclass holding values that need exts."""

    title: str
    at: datetime.datetime
    attendees: tuple[str, ...] = ()


@dataclasses.dataclass
class Doubler:
    """A dataclass with a field computed in ``__post_init__``."""

    value: int
    doubled: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        """Compute the field that is not an ``__init__`` parameter."""
        self.doubled = self.value * 2


class Color(enum.Enum):
    """An Enum, one of whose values needs an ext."""

    RED = "red"
    PAIR = (1, 2)


class Level(enum.IntEnum):
    """An IntEnum, which msgspec alone would send as a bare int."""

    LOW = 1
    HIGH = 2


class Shade(str, enum.Enum):
    """A str-mixin Enum, which msgspec alone would send as a bare str."""

    DARK = "dark"


class Perm(enum.Flag):
    """A Flag, whose combined members are values too."""

    READ = 1
    WRITE = 2


class Money(msgspec.Struct, frozen=True):
    """A frozen Struct with a default."""

    amount: decimal.Decimal
    currency: str = "EUR"


class Order(msgspec.Struct):
    """A Struct nesting a dataclass, an Enum and other Structs."""

    id: uuid.UUID
    where: Point
    color: Color
    lines: list[Money]
    due: datetime.date | None = None


class Pair(NamedTuple):
    """A namedtuple: a tuple subclass."""

    left: int
    right: int


class Name(str):
    """A str subclass."""

    __slots__ = ()


class Stamp(datetime.datetime):
    """A datetime subclass."""


def assert_same(expected: Any, actual: Any) -> None:
    """Assert that ``actual`` equals ``expected`` with the same types all the way down."""
    assert type(actual) is type(expected), f"{actual!r} is not a {type(expected).__name__}"
    assert actual == expected
    if isinstance(expected, datetime.datetime | datetime.time):
        assert (actual.tzinfo is None) == (expected.tzinfo is None)
        assert actual.utcoffset() == expected.utcoffset()
    for want, got in _inner_pairs(expected, actual):
        assert_same(want, got)


def _inner_pairs(expected: Any, actual: Any) -> list[tuple[Any, Any]]:
    """Pair up the values inside two equal containers or records, to compare their types."""
    if isinstance(expected, list | tuple):
        return list(zip(expected, actual, strict=True))
    if isinstance(expected, dict):
        return list(zip([*expected, *expected.values()], [*actual, *actual.values()], strict=True))
    if isinstance(expected, set | frozenset):
        return [(want, next(got for got in actual if got == want)) for want in expected]
    if dataclasses.is_dataclass(expected):
        names = [field.name for field in dataclasses.fields(expected)]
    elif isinstance(expected, msgspec.Struct):
        names = list(expected.__struct_fields__)
    else:
        return []
    return [(getattr(expected, name), getattr(actual, name)) for name in names]


VALUES: dict[str, Any] = {
    "none": None,
    "bool": True,
    "int": 42,
    "int-min": -(2**63),
    "int-max": 2**64 - 1,
    "float": 2.5,
    "str": "héllo ✓",
    "bytes": b"\x00\xff",
    "list": [1, "a", None],
    "dict-str-int-keys": {"a": 1, 2: "b"},
    "datetime-naive": datetime.datetime(2024, 2, 29, 23, 59, 58, 123456),
    "datetime-utc": datetime.datetime(2024, 1, 1, tzinfo=UTC),
    "datetime-offset": datetime.datetime(2024, 1, 1, 9, 30, tzinfo=IST),
    "date": datetime.date(1999, 12, 31),
    "time-naive": datetime.time(12, 30, 1, 5),
    "time-offset": datetime.time(8, 0, tzinfo=IST),
    "timedelta": datetime.timedelta(days=-3, seconds=7, microseconds=11),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "decimal": decimal.Decimal("1.10"),
    "decimal-negative-zero": decimal.Decimal("-0"),
    "decimal-exponent": decimal.Decimal("1E+30"),
    "decimal-long": decimal.Decimal("3.14159265358979323846264338327950288419716939937510"),
    "bytearray": bytearray(b"ab"),
    "tuple-empty": (),
    "tuple": (1, "a"),
    "tuple-nested": ((1, (2, (3,))), [4, (5,)]),
    "set": {1, 2, 3},
    "set-of-tuples": {(1, 2), (3,)},
    "frozenset": frozenset({"a", "b"}),
    "frozenset-nested": frozenset({frozenset({1}), (2, 3)}),
    "dict-tuple-keys": {(1, 2): "a", (3,): "b"},
    "dict-bool-none-float-keys": {True: 1, None: 2, 1.5: 3},
    "dict-rich-keys": {
        uuid.UUID(int=1): 1,
        Color.RED: 2,
        datetime.date(2024, 1, 1): 3,
        frozenset({1}): 4,
        b"k": 5,
    },
    "dataclass": Point(1, 2),
    "dataclass-frozen-nested": Meeting(
        "standup", datetime.datetime(2024, 1, 1, tzinfo=IST), ("a",)
    ),
    "dataclass-post-init": Doubler(21),
    "struct": Money(decimal.Decimal("9.99")),
    "struct-nested": Order(
        uuid.UUID(int=7), Point(0, 1), Color.PAIR, [Money(decimal.Decimal("1"), "USD")]
    ),
    "enum": Color.RED,
    "enum-tuple-value": Color.PAIR,
    "int-enum": Level.HIGH,
    "str-enum": Shade.DARK,
    "flag": Perm.READ | Perm.WRITE,
}


def nest(value: Any) -> Any:
    """Put ``value`` inside every container kind, so exts are tested inside each other."""
    return [value, {"key": value}, (value, [value]), {"deep": [({"x": value},)]}]


@BOTH
@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
def test_value_round_trips_with_its_own_type(serializer: Serializer, value: Any) -> None:
    assert_same(value, serializer.decode(serializer.encode(value)))


@BOTH
@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
def test_nested_value_round_trips(serializer: Serializer, value: Any) -> None:
    assert_same(nest(value), serializer.decode(serializer.encode(nest(value))))


@BOTH
@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
def test_call_round_trips_as_args_and_kwargs(serializer: Serializer, value: Any) -> None:
    data = encode_call(serializer, "t", (value, nest(value)), {"kw": value})
    args, kwargs = decode_call(serializer, data)
    assert_same((value, nest(value)), args)
    assert_same({"kw": value}, kwargs)


@BOTH
@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
def test_result_round_trips(serializer: Serializer, value: Any) -> None:
    assert_same(value, serializer.decode(encode_result(serializer, "t", value)))


def test_zoneinfo_datetime_comes_back_with_fixed_offset_under_msgpack() -> None:
    summer = datetime.datetime(2024, 7, 1, 12, tzinfo=PARIS)
    back = MSGPACK.decode(MSGPACK.encode(summer))
    assert back == summer
    assert back.tzinfo == datetime.timezone(datetime.timedelta(hours=2))
    winter = MSGPACK.decode(MSGPACK.encode(summer.replace(month=1)))
    assert winter.utcoffset() == datetime.timedelta(hours=1)


def test_zoneinfo_datetime_keeps_its_zone_under_cloudpickle() -> None:
    value = datetime.datetime(2024, 7, 1, 12, tzinfo=PARIS)
    assert CLOUDPICKLE.decode(CLOUDPICKLE.encode(value)).tzinfo is PARIS


def test_msgpack_does_not_keep_fold() -> None:
    second = datetime.datetime(2024, 10, 27, 2, 30, fold=1)
    assert MSGPACK.decode(MSGPACK.encode(second)).fold == 0


def test_dataclass_is_rebuilt_by_its_constructor_under_msgpack_only() -> None:
    value = Doubler(1)
    value.doubled = 99
    assert MSGPACK.decode(MSGPACK.encode(value)).doubled == 2  # __post_init__ ran again
    assert CLOUDPICKLE.decode(CLOUDPICKLE.encode(value)).doubled == 99  # state restored as is


def test_plain_values_take_the_fast_path_and_round_trip() -> None:
    value = [[1, "x", 2.5, None, True, b"b"], {"k": [1, 2]}]
    data = MSGPACK.encode(value)
    # Byte-identical to msgspec alone: nothing was converted to an ext on the way.
    assert data == msgspec.msgpack.encode(value)
    assert_same(value, MSGPACK.decode(data))
    args, kwargs = decode_call(MSGPACK, encode_call(MSGPACK, "t", (1, 2), {}))
    assert_same((1, 2), args)
    assert_same({}, kwargs)


def test_non_plain_values_are_not_sent_as_msgspec_would() -> None:
    assert MSGPACK.encode([(1, 2)]) != msgspec.msgpack.encode([(1, 2)])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Pair(1, 2), (1, 2)),
        (collections.OrderedDict(a=1), {"a": 1}),
        (collections.defaultdict(list, a=[1]), {"a": [1]}),
        (Name("n"), "n"),
        (Stamp(2024, 1, 1), datetime.datetime(2024, 1, 1)),
    ],
    ids=["namedtuple", "ordereddict", "defaultdict", "str-subclass", "datetime-subclass"],
)
def test_msgpack_sends_subclasses_as_their_base_type(value: Any, expected: Any) -> None:
    assert_same(expected, MSGPACK.decode(MSGPACK.encode(value)))


@pytest.mark.parametrize(
    "value",
    [Pair(1, 2), collections.OrderedDict(a=1), Name("n"), Stamp(2024, 1, 1)],
    ids=["namedtuple", "ordereddict", "str-subclass", "datetime-subclass"],
)
def test_cloudpickle_keeps_subclasses(value: Any) -> None:
    assert_same(value, CLOUDPICKLE.decode(CLOUDPICKLE.encode(value)))


def test_cloudpickle_round_trips_a_lambda_and_a_local_class() -> None:
    class Local:
        def __init__(self, n: int) -> None:
            self.n = n

    double, obj = CLOUDPICKLE.decode(CLOUDPICKLE.encode([lambda x: x * 2, Local(3)]))
    assert double(4) == 8
    assert type(obj).__name__ == "Local"
    assert obj.n == 3


def test_cloudpickle_turns_memoryview_into_bytes() -> None:
    assert_same(b"ab", CLOUDPICKLE.decode(CLOUDPICKLE.encode(memoryview(b"ab"))))


def _local_dataclass_instance() -> object:
    @dataclasses.dataclass
    class Local:
        n: int

    return Local(1)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (lambda: 1, "type function is unsupported"),
        (object(), "type object is unsupported"),
        (threading.Lock(), "unsupported"),
        (memoryview(b"x"), "type memoryview is unsupported"),
        (2**64, "can't serialize ints"),
        (-(2**63) - 1, "can't serialize ints"),
        (_local_dataclass_instance(), "define it at module level"),
        (datetime.time(12, tzinfo=PARIS), "no fixed UTC offset"),
        (Point(1, lambda: 2), "type function is unsupported"),  # type: ignore[arg-type]
    ],
    ids=[
        "lambda",
        "object",
        "lock",
        "memoryview",
        "int-too-big",
        "int-too-small",
        "local-dataclass",
        "time-zoneinfo",
        "lambda-in-dataclass",
    ],
)
def test_msgpack_refuses_what_it_cannot_carry(value: Any, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        MSGPACK.encode(value)


def test_msgpack_refuses_an_open_file(tmp_path: Path) -> None:
    with (tmp_path / "f.txt").open("w") as file, pytest.raises(SerializationError):
        MSGPACK.encode(file)


def test_cloudpickle_sends_an_open_text_file_as_its_content(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("hello")
    with path.open() as file:
        back = CLOUDPICKLE.decode(CLOUDPICKLE.encode(file))
    assert isinstance(back, io.StringIO)
    assert back.getvalue() == "hello"


def test_cloudpickle_refuses_locks_sockets_and_binary_files(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"x")
    with socket.socket() as sock, (tmp_path / "f.bin").open("rb") as file:
        for value in (threading.Lock(), sock, file):
            with pytest.raises(SerializationError, match="cannot pickle"):
                CLOUDPICKLE.encode(value)


def test_error_names_the_positional_argument_and_hints_at_cloudpickle() -> None:
    with pytest.raises(SerializationError) as info:
        encode_call(MSGPACK, "emails.send", ("a@example.com", object()), {"cc": None})
    message = str(info.value)
    assert message.startswith(
        "cannot serialize positional argument at index 1 of task 'emails.send' "
        "with serializer 'msgpack': Encoding objects of type object is unsupported"
    )
    assert 'serializer="cloudpickle"' in message
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value.__cause__, SerializationError)


def test_error_names_the_keyword_argument() -> None:
    with pytest.raises(SerializationError) as info:
        encode_call(MSGPACK, "emails.send", ("a@example.com",), {"to": lambda: 1})
    assert str(info.value).startswith(
        "cannot serialize argument 'to' of task 'emails.send' with serializer 'msgpack': "
        "Encoding objects of type function is unsupported"
    )


def test_cloudpickle_error_names_the_argument_without_the_hint() -> None:
    with pytest.raises(SerializationError) as info:
        encode_call(CLOUDPICKLE, "jobs.lock", (), {"lock": threading.Lock()})
    message = str(info.value)
    assert "argument 'lock' of task 'jobs.lock' with serializer 'cloudpickle'" in message
    assert "hint" not in message


def test_result_error_names_the_task() -> None:
    with pytest.raises(SerializationError, match=r"^result of task 'reports\.build' cannot be "):
        encode_result(MSGPACK, "reports.build", object())


class CountingSerializer:
    """Counts encode calls around the real msgpack serializer."""

    name = "msgpack"
    code = 0

    def __init__(self) -> None:
        """Start counting at zero."""
        self.calls = 0

    def encode(self, obj: Any) -> bytes:
        """Count, then encode with msgpack."""
        self.calls += 1
        return MSGPACK.encode(obj)

    def decode(self, data: bytes) -> Any:
        """Decode with msgpack."""
        return MSGPACK.decode(data)


def test_the_culprit_is_only_searched_for_after_a_failure() -> None:
    counting = CountingSerializer()
    encode_call(counting, "t", (1, datetime.date(2024, 1, 1)), {"a": 2})
    assert counting.calls == 1
    with pytest.raises(SerializationError, match="argument 'bad'"):
        encode_call(counting, "t", (1,), {"ok": 2, "bad": object()})
    assert counting.calls == 1 + 1 + 3  # the whole call, then one per argument up to the culprit


def _ext(code: int, payload: Any) -> bytes:
    encoder = msgspec.msgpack.Encoder()
    return encoder.encode(msgspec.msgpack.Ext(code, encoder.encode(payload)))


@pytest.mark.parametrize(
    ("code", "payload", "expected"),
    [
        (1, "2024-01-01T00:00:00+05:30", datetime.datetime(2024, 1, 1, tzinfo=IST)),
        (2, "2024-01-01", datetime.date(2024, 1, 1)),
        (3, "12:00:00", datetime.time(12)),
        (4, [1, 2, 3], datetime.timedelta(1, 2, 3)),
        (5, uuid.UUID(int=1).bytes, uuid.UUID(int=1)),
        (6, "1.10", decimal.Decimal("1.10")),
        (7, [1, 2], (1, 2)),
        (8, [1, 2], {1, 2}),
        (9, [1, 2], frozenset({1, 2})),
        (10, b"ab", bytearray(b"ab")),
        (11, [1.5, "a", None, "b"], {1.5: "a", None: "b"}),
        (12, [f"{__name__}:Level", 2], Level.HIGH),
        (13, [f"{__name__}:Point", {"x": 1, "y": 2}], Point(1, 2)),
        (
            14,
            [f"{__name__}:Money", {"amount": msgspec.msgpack.Ext(6, msgspec.msgpack.encode("1"))}],
            Money(decimal.Decimal("1")),
        ),
    ],
    ids=lambda v: str(v) if isinstance(v, int) else "",
)
def test_wire_format_of_every_ext_code_is_stable(code: int, payload: Any, expected: Any) -> None:
    assert_same(expected, MSGPACK.decode(_ext(code, payload)))


@pytest.mark.parametrize(
    ("code", "payload"),
    [
        (12, ["os:system", "echo pwned"]),
        (13, ["os:system", {"command": "echo pwned"}]),
        (14, ["os:system", {"command": "echo pwned"}]),
        (13, ["builtins:dict", {"a": 1}]),  # a class, but not a dataclass
        (13, [f"{__name__}:Money", {"amount": 1}]),  # a Struct named as a dataclass
        (12, [f"{__name__}:Point", 1]),  # a dataclass named as an Enum
        (14, [f"{__name__}:Level", {}]),  # an Enum named as a Struct
    ],
    ids=[
        "enum-os-system",
        "dataclass-os-system",
        "struct-os-system",
        "dict",
        "struct-as-dc",
        "dc-as-enum",
        "enum-as-struct",
    ],
)
def test_a_message_naming_another_callable_is_refused_without_calling_it(
    code: int, payload: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append((a, k)))
    with pytest.raises(SerializationError, match="refusing to rebuild"):
        MSGPACK.decode(_ext(code, payload))
    assert calls == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_ext(13, ["no_such_module_xyz:Thing", {}]), "cannot import"),
        (_ext(13, ["os", {}]), "bad class path"),
        (_ext(99, None), "unknown msgpack ext code 99"),
        (_ext(1, 12), "cannot decode msgpack data"),
        (_ext(13, [f"{__name__}:Point", {"nope": 1}]), "cannot decode msgpack data"),
        (b"\xc1", "cannot decode msgpack data"),
    ],
    ids=["missing-module", "no-colon", "unknown-code", "bad-payload", "bad-fields", "garbage"],
)
def test_bad_msgpack_data_raises_serialization_error(data: bytes, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        MSGPACK.decode(data)


def test_cloudpickle_garbage_raises_serialization_error() -> None:
    with pytest.raises(SerializationError, match="cannot unpickle"):
        CLOUDPICKLE.decode(b"not a pickle")


@BOTH
@pytest.mark.parametrize("payload", [1, [1], [1, 2, 3], [{}, []], [[], 1]], ids=str)
def test_decode_call_refuses_what_is_not_an_args_kwargs_pair(
    serializer: Serializer, payload: Any
) -> None:
    with pytest.raises(SerializationError, match="not an encoded call"):
        decode_call(serializer, serializer.encode(payload))


@pytest.mark.parametrize(
    ("key", "expected_type"),
    [
        ("msgpack", MsgpackSerializer),
        (0, MsgpackSerializer),
        ("cloudpickle", CloudpickleSerializer),
        (1, CloudpickleSerializer),
    ],
)
def test_get_serializer_by_name_and_code(key: str | int, expected_type: type) -> None:
    serializer = get_serializer(key)
    assert type(serializer) is expected_type
    assert get_serializer(key) is serializer  # one shared instance
    assert get_serializer(serializer.name) is get_serializer(serializer.code)


def test_serializer_names_and_codes() -> None:
    assert SERIALIZER_NAMES == ("msgpack", "cloudpickle")
    assert [(get_serializer(n).name, get_serializer(n).code) for n in SERIALIZER_NAMES] == [
        ("msgpack", 0),
        ("cloudpickle", 1),
    ]


@pytest.mark.parametrize("key", ["json", "", "MSGPACK", 2, -1, True], ids=repr)
def test_get_serializer_refuses_unknown_names_and_codes(key: str | int) -> None:
    with pytest.raises(ValueError, match=r"'msgpack' \(code 0\), 'cloudpickle' \(code 1\)"):
        get_serializer(key)


def test_fresh_instances_satisfy_the_protocol() -> None:
    serializers: list[Serializer] = [MsgpackSerializer(), CloudpickleSerializer()]
    assert [s.decode(s.encode((1,))) for s in serializers] == [(1,), (1,)]
