"""The ``redis+cluster://`` URL: parsed, checked by Config, masked; no Redis needed."""

from __future__ import annotations

import pytest

from omnitask import OmniTask
from omnitask.broker.connect import ClusterURL, is_cluster_url, parse_cluster_url
from omnitask.errors import ConfigurationError


def test_full_form() -> None:
    url = "rediss+cluster://app:s%40cret@h1:7000,h2,[::1]:7002/?socket_timeout=2.5"
    assert parse_cluster_url(url) == ClusterURL(
        nodes=[("h1", 7000), ("h2", 6379), ("::1", 7002)],
        tls=True,
        username="app",
        password="s@cret",
        options={"socket_timeout": 2.5},
    )
    assert parse_cluster_url("redis+cluster://h1:7000").nodes == [("h1", 7000)]
    assert is_cluster_url("REDIS+CLUSTER://h1") and not is_cluster_url("redis://h1")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://h1:7000/0", "takes no path"),
        ("redis+cluster://h1:7000/?db=2", "database 0 only"),
        ("redis+cluster://h1:x/", "bad port in the cluster node"),
        ("redis+cluster://h1,,h2/", "no host"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_cluster_url(url)


def test_config_checks_the_url_and_masks_the_password() -> None:
    app = OmniTask("shop", broker="redis+cluster://h1:7000,h2:7001/")
    assert app.broker.is_cluster  # nothing connects until the first command
    assert not app.broker.same_slot(["a", "b"]) and app.broker.same_slot(["a", "a"])
    with pytest.raises(ConfigurationError, match=r"broker_url 'redis\+cluster://:\*\*\*@h1/0'"):
        OmniTask("shop", broker="redis+cluster://:pw@h1/0")


def test_beat_refuses_a_cluster_before_connecting() -> None:
    from omnitask.beat import Beat

    app = OmniTask("shop", broker="redis+cluster://127.0.0.1:1/")
    with pytest.raises(ConfigurationError, match="beat"):
        Beat(app).run()
