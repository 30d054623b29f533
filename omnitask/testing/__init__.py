"""Helpers for testing with omnitask: a private Redis server."""

from omnitask.testing.server import RedisServer, RedisServerNotFound, find_redis_server

__all__ = ("RedisServer", "RedisServerNotFound", "find_redis_server")
