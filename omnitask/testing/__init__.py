"""Helpers for testing with omnitask: a private Redis server, eager results, a pytest plugin.

The pytest plugin (``omnitask.testing.pytest_plugin``) is loaded by pytest itself; it is not
imported here, so that code outside tests never imports pytest. Names load on first use, so
that loading the plugin costs next to nothing in test runs that do not use it.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omnitask.testing.eager import EagerResult
    from omnitask.testing.server import RedisServer, RedisServerNotFound, find_redis_server

_WHERE = {
    "EagerResult": "omnitask.testing.eager",
    "RedisServer": "omnitask.testing.server",
    "RedisServerNotFound": "omnitask.testing.server",
    "find_redis_server": "omnitask.testing.server",
}

__all__ = ("EagerResult", "RedisServer", "RedisServerNotFound", "find_redis_server")


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'omnitask.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
