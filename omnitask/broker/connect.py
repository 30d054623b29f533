"""Turns a broker URL into a redis-py client, sync or asyncio: the one place clients are built.

Plain Redis takes redis-py's own URLs (``redis://``, ``rediss://``, ``unix://``). Sentinel takes
the ``redis+sentinel://`` form that Redis-Sentinel-Url, RedisVL and prefect-redis share, since
redis-py has none::

    redis+sentinel://[user:password@]host1[:port1][,host2[:port2]...]/<service>[/<db>][?options]
    rediss+sentinel://...   (TLS to the master and to the sentinels)

The hosts are sentinels (port 26379 when none is given); ``<service>`` is the master's name in
their ``sentinel monitor`` line. The user and password are the master's (its ``requirepass`` or
ACL user); sentinels with a password of their own take ``?sentinel_password=`` (and
``sentinel_username=``). Other options are redis-py's URL options, for the master's connections.
The client asks the sentinels for the master's address at each new connection, so after a
failover the next connection goes to the promoted replica.

Redis Cluster takes ``redis+cluster://``, shaped like the Sentinel form (redis-py's own cluster
URL names one node only)::

    redis+cluster://[user:password@]host1[:port1][,host2[:port2]...][/][?options]
    rediss+cluster://...   (TLS to every node)

The hosts are any of the cluster's nodes (port 6379 when none is given); the client asks them
for the map of slots to masters and finds the rest itself. A cluster has one database, so the
path stays empty. Options are redis-py's URL options, for the connections to every node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

__all__ = (
    "CLUSTER_SCHEMES",
    "SENTINEL_PORT",
    "SENTINEL_SCHEMES",
    "ClusterURL",
    "SentinelURL",
    "async_client",
    "async_cluster_client",
    "cluster_client",
    "is_cluster_url",
    "is_sentinel_url",
    "parse_cluster_url",
    "parse_sentinel_url",
    "sync_client",
)

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
"""Port of a sentinel the URL gives without one (Sentinel's default)."""
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
REDIS_PORT = 6379


class SentinelURL(NamedTuple):
    """The parts of a ``redis+sentinel://`` URL."""

    sentinels: list[tuple[str, int]]
    service_name: str
    db: int
    tls: bool
    username: str | None
    password: str | None
    sentinel_username: str | None
    sentinel_password: str | None
    options: dict[str, Any]
    """redis-py URL options for the master's connections (``socket_timeout``, ``ssl_*`` ...)."""


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names a master through Sentinel (by its scheme alone)."""
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelURL:
    """Split a ``redis+sentinel://`` URL into its parts.

    Raises:
        ValueError: The URL is not of that form; the message says what is wrong.
    """
    parts, scheme, hosts, username, password = _split_url(url, SENTINEL_SCHEMES)
    segments = [unquote(s) for s in parts.path.strip("/").split("/")] if parts.path else []
    if not segments or not segments[0] or len(segments) > 2:
        raise ValueError("the path must be /<master name> or /<master name>/<db>")
    options = _url_options(parts.query)
    db = options.pop("db", None)
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ValueError(f"the database must be a number, not {segments[1]!r}")
        db = int(segments[1]) if db is None else db
    return SentinelURL(
        sentinels=[_host_port(h) for h in hosts.split(",")],
        service_name=segments[0],
        db=db or 0,
        tls=scheme == "rediss+sentinel",
        username=username,
        password=password,
        sentinel_username=options.pop("sentinel_username", None),
        sentinel_password=options.pop("sentinel_password", None),
        options=options,
    )


class ClusterURL(NamedTuple):
    """The parts of a ``redis+cluster://`` URL."""

    nodes: list[tuple[str, int]]
    tls: bool
    username: str | None
    password: str | None
    options: dict[str, Any]
    """redis-py URL options for the connections to every node."""


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (by its scheme alone)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterURL:
    """Split a ``redis+cluster://`` URL into its parts.

    Raises:
        ValueError: The URL is not of that form; the message says what is wrong.
    """
    parts, scheme, hosts, username, password = _split_url(url, CLUSTER_SCHEMES)
    if parts.path.strip("/"):
        raise ValueError("a Redis Cluster has one database: the URL takes no path")
    options = _url_options(parts.query)
    if options.pop("db", 0):
        raise ValueError("a Redis Cluster has database 0 only")
    return ClusterURL(
        nodes=[_host_port(h, REDIS_PORT, "cluster node") for h in hosts.split(",")],
        tls=scheme == "rediss+cluster",
        username=username,
        password=password,
        options=options,
    )


def _split_url(
    url: str, schemes: tuple[str, ...]
) -> tuple[SplitResult, str, str, str | None, str | None]:
    """The parts of a URL of several hosts: split, scheme, hosts, user name, password.

    Raises:
        ValueError: Its scheme is not one of ``schemes``.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise ValueError(f"not a {' or '.join(schemes)} URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, has_password, password = userinfo.partition(":")
    return (
        parts,
        scheme,
        hosts,
        unquote(user) or None,
        unquote(password) if has_password else None,
    )


def _url_options(query: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query):
        # redis-py's own parsers of its URL options (db, socket_timeout, ssl_check_hostname ...)
        parse: Callable[[str], Any] = URL_QUERY_ARGUMENT_PARSERS.get(name, str)  # type: ignore[assignment]
        try:
            options[name] = parse(value)
        except (TypeError, ValueError):
            raise ValueError(f"bad value for the URL option {name}: {value!r}") from None
    return options


def _host_port(
    text: str, default_port: int = SENTINEL_PORT, what: str = "sentinel"
) -> tuple[str, int]:
    if text.startswith("["):  # [::1]:26379
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"a {what} address is empty or has no host: {text!r}")
    if port and not port.isdigit():
        raise ValueError(f"bad port in the {what} address {text!r}")
    return host, int(port) if port else default_port


def _sentinel_kwargs(parsed: SentinelURL, connect_timeout_s: float) -> dict[str, Any]:
    # Sentinels answer at once: their replies get the connect timeout too, so a hung sentinel
    # delays a connection by that much and the next sentinel is asked.
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout_s,
        "socket_timeout": connect_timeout_s,
        "socket_keepalive": True,
        "username": parsed.sentinel_username,
        "password": parsed.sentinel_password,
    }
    if parsed.tls:
        kwargs["ssl"] = True
        kwargs.update((k, v) for k, v in parsed.options.items() if k.startswith("ssl_"))
    return kwargs


def _master_kwargs(parsed: SentinelURL) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "db": parsed.db,
        "username": parsed.username,
        "password": parsed.password,
    }
    if parsed.tls:
        kwargs["ssl"] = True  # the pool then uses SentinelManagedSSLConnection
    return kwargs


class SentinelMaster(redis.Redis):
    """A client of the master that the sentinels name; closing it closes their connections too."""

    def close(self) -> None:
        """Close the master's connections and those to the sentinels."""
        super().close()
        pool = self.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            pool.sentinel_manager.close()


class AsyncSentinelMaster(AsyncRedis):
    """The asyncio form of :class:`SentinelMaster`."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Close the master's connections and those to the sentinels."""
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        if isinstance(pool, AsyncSentinelConnectionPool):
            await pool.sentinel_manager.aclose()


def sync_client(
    url: str, *, connect_timeout_s: float, socket_timeout_s: float | None = None
) -> redis.Redis:
    """A redis-py client for ``url`` that never re-sends a command by itself.

    No silent re-sends by redis-py (some versions retry 3 times by default): a MULTI whose
    reply was lost may have applied, and only omnitask knows what is safe to repeat (claim
    returns orphans; retry and bury check ownership; see each caller). ``socket_timeout_s``
    bounds every reply wait (None: a blocking command may wait as long as it asks).
    """
    common: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": connect_timeout_s,
        "socket_timeout": socket_timeout_s,
        "socket_keepalive": True,
    }
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **common)
    parsed = parse_sentinel_url(url)
    sentinel_kwargs = _sentinel_kwargs(parsed, connect_timeout_s)
    sentinel_kwargs["retry"] = Retry(NoBackoff(), 0)
    # Any: redis-py annotates Sentinel in some versions and not in others.
    sentinel_class: Any = Sentinel
    sentinel = sentinel_class(parsed.sentinels, sentinel_kwargs=sentinel_kwargs)
    # URL options win over the defaults, as in redis-py's from_url.
    kwargs = {**common, **_master_kwargs(parsed), **parsed.options}
    client: redis.Redis = sentinel.master_for(
        parsed.service_name, redis_class=SentinelMaster, **kwargs
    )
    return client


def async_client(url: str, *, connect_timeout_s: float) -> AsyncRedis:
    """An asyncio redis-py client for ``url``, with :func:`sync_client`'s no-retry policy.

    Its connections belong to the event loop that first uses them; close it with ``aclose()``.
    """
    common: dict[str, Any] = {
        "retry": AsyncRetry(NoBackoff(), 0),
        "socket_connect_timeout": connect_timeout_s,
        "socket_keepalive": True,
    }
    if not is_sentinel_url(url):
        return AsyncRedis.from_url(url, **common)
    parsed = parse_sentinel_url(url)
    sentinel_kwargs = _sentinel_kwargs(parsed, connect_timeout_s)
    sentinel_kwargs["retry"] = AsyncRetry(NoBackoff(), 0)
    sentinel_class: Any = AsyncSentinel
    sentinel = sentinel_class(parsed.sentinels, sentinel_kwargs=sentinel_kwargs)
    kwargs = {**common, **_master_kwargs(parsed), **parsed.options}
    client: AsyncRedis = sentinel.master_for(
        parsed.service_name, redis_class=AsyncSentinelMaster, **kwargs
    )
    return client


def _cluster_kwargs(parsed: ClusterURL, connect_timeout_s: float) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout_s,
        "socket_keepalive": True,
        "username": parsed.username,
        "password": parsed.password,
    }
    if parsed.tls:
        kwargs["ssl"] = True
    return {**kwargs, **parsed.options}


def cluster_client(
    url: str, *, connect_timeout_s: float, socket_timeout_s: float | None = None
) -> RedisCluster:
    """A redis-py cluster client for a ``redis+cluster://`` URL that never re-sends by itself.

    :func:`sync_client`'s policy: redis-py's cluster client re-sends on a broken connection
    by default.
    Creating it connects: it reads the map of slots to masters from the first node that
    answers. Each master's own client (``get_node_from_key(key).redis_connection``) shares the
    same options.

    Raises:
        ValueError: The URL is malformed.
        redis.RedisClusterException: No node of the URL answered.
    """
    parsed = parse_cluster_url(url)
    kwargs = _cluster_kwargs(parsed, connect_timeout_s)
    kwargs.setdefault("socket_timeout", socket_timeout_s)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.nodes],  # type: ignore[no-untyped-call, unused-ignore]
        retry=Retry(NoBackoff(), 0),
        **kwargs,
    )


def async_cluster_client(url: str, *, connect_timeout_s: float) -> AsyncRedisCluster:
    """The asyncio form of :func:`cluster_client`; it connects on first use.

    Close it with ``aclose()``.
    """
    parsed = parse_cluster_url(url)
    return AsyncRedisCluster(
        startup_nodes=[AsyncClusterNode(host, port) for host, port in parsed.nodes],
        retry=AsyncRetry(NoBackoff(), 0),
        **_cluster_kwargs(parsed, connect_timeout_s),
    )
