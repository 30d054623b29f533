"""Settings: precedence, validation messages, masking."""

from __future__ import annotations

import pytest

from omnitask import ConfigurationError, OmniTask
from omnitask.config import load_config, mask_url


def test_defaults() -> None:
    conf = load_config({}, environ={})
    assert conf.broker_url == "redis://localhost:6379/0"
    assert conf.result_url == conf.broker_url
    assert (conf.result_ttl_s, conf.default_priority, conf.lease_s) == (86400, 5, 30)


def test_precedence_keywords_over_environment_over_defaults() -> None:
    env = {"OMNITASK_BROKER_URL": "redis://env:1/0", "OMNITASK_LEASE_S": "12.5"}
    conf = load_config({"broker_url": None}, environ=env)
    assert conf.broker_url == "redis://env:1/0" and conf.lease_s == 12.5
    conf = load_config({"broker_url": "redis://kw:2/0"}, environ=env)
    assert conf.broker_url == "redis://kw:2/0"


def test_environment_values_are_parsed() -> None:
    conf = load_config({}, environ={"OMNITASK_EVENTS": "false", "OMNITASK_MAX_DELIVERIES": "3"})
    assert conf.events is False and conf.max_deliveries == 3


@pytest.mark.parametrize(
    ("settings", "env", "match"),
    [
        (
            {},
            {"OMNITASK_LEASE_S": "soon"},
            r"lease_s \(from environment variable OMNITASK_LEASE_S\)",
        ),
        ({"lease_s": -1}, {}, "lease_s"),
        ({"default_priority": 12}, {}, "default_priority"),
        ({"broker_url": "http://x"}, {}, "broker_url"),
        ({"serializer": "yaml"}, {}, "serializer"),
        ({"nonsense": 1}, {}, "unknown setting"),
    ],
)
def test_bad_values_name_the_setting(
    settings: dict[str, object], env: dict[str, str], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        load_config(settings, environ=env)


def test_app_constructor_validates() -> None:
    with pytest.raises(ConfigurationError, match="app name"):
        OmniTask("has space")
    with pytest.raises(ConfigurationError, match="lease_s"):
        OmniTask("ok", lease_s=0)


def test_mask_url() -> None:
    assert mask_url("redis://user:secret@host:6380/1") == "redis://user:***@host:6380/1"
    assert mask_url("redis://:secret@host/0") == "redis://:***@host/0"
    assert mask_url("redis://host:6379/0") == "redis://host:6379/0"


def test_mask_url_query_passwords_and_ipv6() -> None:
    assert mask_url("redis://h:1/0?password=pw&x=1") == "redis://h:1/0?password=***&x=1"
    assert mask_url("rediss://h/0?ssl_password=pw") == "rediss://h/0?ssl_password=***"
    assert mask_url("redis://:pw@[::1]:6379/0") == "redis://:***@[::1]:6379/0"


def test_empty_secret_key_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="secret_key must not be empty"):
        load_config({"secret_key": ""}, environ={})
