"""The ``redis+sentinel://`` URL: parsed, checked by Config, masked, and turned into clients."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.sentinel import MasterNotFoundError, SentinelConnectionPool

from omnitask import OmniTask
from omnitask.broker.client import _failed_to_connect
from omnitask.broker.connect import (
    AsyncSentinelMaster,
    SentinelMaster,
    SentinelURL,
    async_client,
    parse_sentinel_url,
    sync_client,
)
from omnitask.config import mask_url
from omnitask.errors import ConfigurationError


def test_full_form() -> None:
    url = "redis+sentinel://app:s%40cret@s1:26380,s2,[::1]:26381/mymaster/3?socket_timeout=2.5"
    assert parse_sentinel_url(url) == SentinelURL(
        sentinels=[("s1", 26380), ("s2", 26379), ("::1", 26381)],
        service_name="mymaster",
        db=3,
        tls=False,
        username="app",
        password="s@cret",
        sentinel_username=None,
        sentinel_password=None,
        options={"socket_timeout": 2.5},
    )


def test_short_form_and_sentinel_credentials() -> None:
    url = "rediss+sentinel://:pw@s1/mymaster?sentinel_username=mon&sentinel_password=spw"
    parsed = parse_sentinel_url(url)
    assert parsed.sentinels == [("s1", 26379)]
    assert (parsed.service_name, parsed.db, parsed.tls) == ("mymaster", 0, True)
    assert (parsed.username, parsed.password) == (None, "pw")
    assert (parsed.sentinel_username, parsed.sentinel_password) == ("mon", "spw")
    assert parsed.options == {}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://s1:26379", "path must be"),
        ("redis+sentinel://s1:26379/", "path must be"),
        ("redis+sentinel://s1:26379/m/0/1", "path must be"),
        ("redis+sentinel://s1:26379/m/zero", "must be a number"),
        ("redis+sentinel://s1:x/m", "bad port"),
        ("redis+sentinel://s1,,s2/m", "no host"),
        ("redis+sentinel://s1/m?db=x", "bad value for the URL option db"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sentinel_url(url)


def test_config_checks_the_url_and_masks_passwords() -> None:
    app = OmniTask("shop", broker="redis+sentinel://s1:26379,s2:26379/mymaster/1")
    assert app.conf.broker_url.startswith("redis+sentinel://")
    with pytest.raises(ConfigurationError, match=r"broker_url 'redis\+sentinel://:\*\*\*@s1/'"):
        OmniTask("shop", broker="redis+sentinel://:secret@s1/").conf  # noqa: B018
    with pytest.raises(ConfigurationError, match="redis\\+sentinel://"):
        OmniTask("shop", broker="sentinel://s1/m").conf  # noqa: B018
    masked = mask_url("redis+sentinel://u:pw@s1,s2/m?sentinel_password=spw")
    assert masked == "redis+sentinel://u:***@s1,s2/m?sentinel_password=***"


def test_sync_client_asks_the_sentinels_with_the_brokers_policy() -> None:
    url = "redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/mymaster/2?sentinel_password=spw"
    client = sync_client(url, connect_timeout_s=1.5, socket_timeout_s=4.0)
    try:
        assert isinstance(client, SentinelMaster)
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        kwargs = pool.connection_kwargs
        assert (kwargs["db"], kwargs["password"], kwargs["socket_timeout"]) == (2, "pw", 4.0)
        assert kwargs["socket_connect_timeout"] == 1.5
        assert kwargs["retry"].get_retries() == 0
        sentinels = pool.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
        sentinel_kwargs = sentinels[0].connection_pool.connection_kwargs
        assert (sentinel_kwargs["password"], sentinel_kwargs["socket_timeout"]) == ("spw", 1.5)
        assert sentinel_kwargs["retry"].get_retries() == 0
        # Nothing listens on ports 1 and 2: no master is found, which is "nothing was sent".
        with pytest.raises(MasterNotFoundError) as info:
            client.ping()
        assert _failed_to_connect(info.value)
    finally:
        client.close()


def test_async_client_is_a_sentinel_master() -> None:
    async def main() -> None:
        client = async_client("redis+sentinel://127.0.0.1:1/m", connect_timeout_s=1.0)
        assert isinstance(client, AsyncSentinelMaster)
        with pytest.raises(redis.ConnectionError):
            await client.ping()
        await client.aclose()

    asyncio.run(main())


def test_plain_urls_are_unchanged() -> None:
    client = sync_client("redis://127.0.0.1:1/4", connect_timeout_s=1.0)
    assert type(client) is redis.Redis
    assert client.connection_pool.connection_kwargs["db"] == 4
    client.close()


def test_a_demoted_master_counts_as_not_applied() -> None:
    assert _failed_to_connect(redis.ConnectionError("The previous master is now a slave"))
    assert not _failed_to_connect(redis.ConnectionError("Connection closed by server."))
