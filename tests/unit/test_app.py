"""Declaring tasks, options, pickling, and call-time checks: no Redis needed."""

from __future__ import annotations

import inspect
import pickle
from datetime import datetime, timedelta, timezone

import pytest

import omnitask
from omnitask import ConfigurationError, OmniTask, SerializationError, TaskNotRegisteredError
from omnitask.app import Settings
from omnitask.config import Config
from omnitask.messages import decode_envelope
from omnitask.producer import Call
from tests.apps import basic


def test_public_api_is_exported() -> None:
    lazy = set(omnitask._WHERE)
    assert set(omnitask.__all__) == lazy | {"__version__"}
    for name in omnitask.__all__:
        value = getattr(omnitask, name)
        assert value is not None and getattr(value, "__name__", name) == name
    # The names type checkers see are the ones that load at run time.
    source = inspect.getsource(omnitask)
    checked = source.split("if TYPE_CHECKING:")[1].split("_WHERE")[0]
    assert all(f" {name}," in checked or f" {name}\n" in checked for name in lazy)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        omnitask.Nope  # noqa: B018


def test_settings_typed_dict_matches_config() -> None:
    assert set(Settings.__annotations__) == set(Config.__struct_fields__) - {
        "broker_url",
        "result_backend",
    }


def test_task_runs_locally_and_has_name() -> None:
    assert basic.add(1, 2) == 3
    assert basic.add.name == "tests.apps.basic.add"
    assert basic.app.get_task("tests.apps.basic.add") is basic.add


def test_options_and_defaults() -> None:
    app = OmniTask("opts", broker="redis://127.0.0.1:1/0")

    @app.task(name="emails.send", queue="emails", priority=7, retries=3, result_ttl=3600)
    def send(to: str) -> None: ...

    @app.task
    def plain() -> None: ...

    assert (send.name, send.queue, send.priority, send.retries) == ("emails.send", "emails", 7, 3)
    assert send.result_ttl_s == 3600
    assert (plain.queue, plain.priority, plain.result_ttl_s) == ("default", 5, 86400)
    app.configure(default_queue="other", default_priority=2)
    assert (plain.queue, plain.priority) == ("other", 2)


def test_unknown_option_is_a_clear_error_at_decoration() -> None:
    app = OmniTask("opts", broker="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigurationError, match=r"'retires' \(did you mean 'retries'\?\)"):
        app.task(retires=3)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"priority": 10}, "priority"),
        ({"priority": True}, "priority"),
        ({"retries": -1}, "retries"),
        ({"serializer": "json"}, "serializer"),
        ({"queue": "bad queue"}, "queue name"),
        ({"expires": -5}, "expires"),
    ],
)
def test_bad_option_values(options: dict[str, object], match: str) -> None:
    app = OmniTask("opts", broker="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigurationError, match=match):
        app.task(**options)(lambda: None)  # type: ignore[call-overload]


def test_duplicate_name_is_refused() -> None:
    app = OmniTask("opts", broker="redis://127.0.0.1:1/0")
    app.task(name="same")(lambda: 1)
    with pytest.raises(ConfigurationError, match="already registered"):
        app.task(name="same")(lambda: 2)


def test_pickling_a_task_gives_back_the_registered_task() -> None:
    assert pickle.loads(pickle.dumps(basic.add)) is basic.add
    assert pickle.loads(pickle.dumps([basic.add, basic.echo])) == [basic.add, basic.echo]


def test_unknown_task_name() -> None:
    with pytest.raises(TaskNotRegisteredError, match="no task named 'nope'"):
        basic.app.get_task("nope")


def test_bad_arguments_fail_at_call_time() -> None:
    with pytest.raises(TypeError, match=r"task 'tests\.apps\.basic\.add': missing a required"):
        basic.add.delay(1)  # type: ignore[call-arg]


def test_unserializable_argument_names_task_and_argument() -> None:
    with pytest.raises(
        SerializationError, match=r"argument 'value' of task 'tests\.apps\.basic\.echo'"
    ):
        basic.echo.delay(value=object())


def _build(**options: object) -> Call:
    return Call.build(basic.app, basic.add, (1, 2), {}, options)  # type: ignore[arg-type]


def test_call_options_land_in_the_envelope() -> None:
    call = _build(priority=9, queue="high", task_id="my-id", countdown=10, expires=60)
    body, priority, due_ms, task_id, name = call.item
    envelope = decode_envelope(body)
    assert (call.queue, priority, task_id, name) == ("high", 9, "my-id", "tests.apps.basic.add")
    assert envelope.priority == 9 and envelope.id == "my-id"
    assert due_ms is not None and 9_500 < due_ms - envelope.sent_ms <= 10_000
    assert envelope.expires_ms is not None and envelope.expires_ms - envelope.sent_ms == 60_000


def test_eta_forms() -> None:
    when = datetime.now(timezone.utc) + timedelta(minutes=5)
    by_datetime = _build(eta=when).item[2]
    by_timestamp = _build(eta=when.timestamp()).item[2]
    assert by_datetime == by_timestamp == int(when.timestamp() * 1000)
    assert _build(eta=datetime.now(timezone.utc) - timedelta(hours=1)).item[2] is None


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"eta": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"countdown": 1, "eta": 2e9}, "not both"),
        ({"priority": -1}, "priority"),
        ({"countdown": "soon"}, "countdown"),
        ({"task_id": "x" * 500}, "task_id"),
    ],
)
def test_bad_call_options(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        _build(**options)


def test_broker_url_keyword_is_honoured() -> None:
    app = OmniTask("kw", broker_url="redis://127.0.0.1:7/0")  # type: ignore[call-arg]
    assert app.conf.broker_url == "redis://127.0.0.1:7/0"


def test_zero_result_ttl_is_refused() -> None:
    app = OmniTask("ttl", broker="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigurationError, match="result_ttl must be > 0"):
        app.task(result_ttl=0)(lambda: None)


def test_cloudpickle_is_accepted_only_when_used() -> None:
    app = OmniTask("acc", broker="redis://127.0.0.1:1/0")
    assert app.accepted_serializers == {0}
    app.task(serializer="cloudpickle")(lambda: None)
    assert app.accepted_serializers == {0, 1}


def test_unreachable_redis_is_a_broker_connection_error() -> None:
    app = OmniTask("down", broker="redis://:pw@127.0.0.1:1/0", connect_timeout_s=0.5)
    with pytest.raises(omnitask.BrokerConnectionError, match=r"redis://:\*\*\*@127\.0\.0\.1:1/0"):
        app.connect()
    app.close()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"retry_on": "KeyError"}, "retry_on must be exception types"),
        ({"retry_on": ()}, "retry_on must be exception types"),
        ({"retry_backoff_max": -1}, "must not be negative"),
        ({"time_limit": 0}, "time_limit must be greater than 0"),
        ({"time_limit": 1, "soft_time_limit": 2}, "soft_time_limit must be shorter"),
    ],
)
def test_bad_retry_and_limit_options(options: dict[str, object], match: str) -> None:
    app = OmniTask("opts", broker="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigurationError, match=match):
        app.task(**options)(lambda: None)  # type: ignore[call-overload]


def test_single_exception_type_is_accepted_for_retry_on() -> None:
    app = OmniTask("opts", broker="redis://127.0.0.1:1/0")
    task = app.task(retries=1, retry_on=KeyError)(lambda: None)
    assert task.retry_policy.retry_on == (KeyError,)
