"""Arguments are checked against annotations at .delay() and converted to them on workers."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from omnitask import ArgumentTypeError, OmniTask

if TYPE_CHECKING:
    from collections.abc import Sequence

app = OmniTask("targs", broker="redis://127.0.0.1:9/0")
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Item(msgspec.Struct):
    sku: str


class Opaque:
    """A class msgspec knows nothing of: never checked."""


@app.task
def typed(
    n: int,
    when: datetime,
    color: Color,
    points: list[Point],
    item: Item | None = None,
    *more: float,
    **tags: str,
) -> None: ...


@app.task
def loose(a, b: Any, c: object, d: Opaque, e: Sequence[int]) -> None: ...  # type: ignore[no-untyped-def]


@app.task(bind=True)
def bound(self: Any, key: uuid.UUID) -> None: ...


@app.task
def later(p: Defined) -> None: ...


@app.task
def plain(n: int, ratio: float, name: str, anything) -> None: ...  # type: ignore[no-untyped-def]


@dataclasses.dataclass
class Defined:
    """Defined after the task that names it: annotations resolve on first use."""

    v: int


def test_good_calls_pass_unchanged() -> None:
    typed.arguments.check((1, NOW, Color.RED, [Point(1, 2)]), {})
    typed.arguments.check((True, NOW, Color.RED, [], Item("a"), 1, 2.5), {"k": "v"})
    typed.arguments.check((1, NOW, Color.RED, []), {"item": None})
    bound.arguments.check((uuid.uuid4(),), {})
    later.arguments.check((Defined(1),), {})
    loose.arguments.check((object(), object(), object(), "not opaque", [1]), {})


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("1", NOW, Color.RED, []), {}, "argument 'n' must be int, got str '1'"),
        ((1, "2030-01-01", Color.RED, []), {}, "argument 'when' must be datetime, got str"),
        ((1, NOW, "red", []), {}, "argument 'color' must be Color, got str 'red'"),
        ((1, NOW, Color.RED, [(1, 2)]), {}, "argument 'points' must be list[tests."),
        ((1, NOW, Color.RED, [], "sku"), {}, "argument 'item' must be"),
        ((1, NOW, Color.RED, [], None, "x"), {}, "argument 'more'[0] must be float"),
        ((1, NOW, Color.RED, []), {"k": 3}, "argument 'tags'['k'] must be str, got int 3"),
    ],
)
def test_wrong_types_are_refused_naming_task_and_argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ArgumentTypeError) as info:
        typed.arguments.check(args, kwargs)
    assert "task 'tests.unit.test_arguments.typed'" in str(info.value)
    assert message in str(info.value)
    assert isinstance(info.value, TypeError)


def test_delay_refuses_before_sending() -> None:
    # The app points at a port nothing listens on: a send would fail differently.
    with pytest.raises(ArgumentTypeError, match="argument 'key' must be UUID"):
        bound.delay("not-a-uuid")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="missing a required argument: 'when'"):
        typed.delay(1)  # type: ignore[call-arg]
    with pytest.raises(ArgumentTypeError):
        typed.delay_many([(1, NOW, Color.RED, []), ("2", NOW, Color.RED, [])])


def test_worker_side_conversion() -> None:
    args, kwargs = typed.arguments.convert(
        (1, "2030-01-02T03:04:05Z", "red", [{"x": 1, "y": 2}], {"sku": "a"}, 2), {"k": "v"}
    )
    assert args == (1, NOW, Color.RED, [Point(1, 2)], Item("a"), 2.0)
    assert kwargs == {"k": "v"}
    same = (1, NOW, Color.RED, [Point(1, 2)])
    assert typed.arguments.convert(same, {})[0] == same
    with pytest.raises(ArgumentTypeError, match="'when' cannot be read as datetime"):
        typed.arguments.convert((1, "soon", "red", []), {})


def test_plain_positional_calls_take_the_short_check_with_the_same_rules() -> None:
    # Every parameter positional and annotated with a class or not at all: one isinstance
    # each; a mismatch is then worded by the full check.
    plain.arguments.check((1, 2.5, "a", object()), {})
    plain.arguments.check((True, 2, "a", None), {})  # bool is an int; int is fine for float
    with pytest.raises(ArgumentTypeError, match="argument 'ratio' must be float, got str"):
        plain.arguments.check((1, "2.5", "a", None), {})
    with pytest.raises(ArgumentTypeError, match=r"argument 'n' must be int, got float 1\.0"):
        plain.arguments.check((1.0, 2.5, "a", None), {})
    with pytest.raises(TypeError, match="too many positional arguments"):
        plain.arguments.check((1, 2.5, "a", None, 5), {})
    with pytest.raises(ArgumentTypeError, match="argument 'name' must be str"):
        plain.arguments.check((1, 2.5), {"name": 3, "anything": None})
