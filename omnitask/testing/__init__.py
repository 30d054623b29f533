"""Helpers for testing with omnitask: a private Redis server, eager results, a pytest plugin.

The pytest plugin (``omnitask.testing.pytest_plugin``) is loaded by pytest itself; it is not
imported here, so that code outside tests never imports pytest.
"""

from omnitask.testing.eager import EagerResult
from omnitask.testing.server import RedisServer, RedisServerNotFound, find_redis_server

__all__ = ("EagerResult", "RedisServer", "RedisServerNotFound", "find_redis_server")
