"""A worker and a client over TLS (rediss://), verifying the server's certificate."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from omnitask.testing import find_redis_server
from tests.apps import basic
from tests.conftest import WorkerProcess

pytestmark = pytest.mark.process


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def tls_url(tmp_path: Path) -> Iterator[str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificates")
    _run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=omnitask-test-ca",
        cwd=tmp_path,
    )
    _run(
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=tmp_path,
    )
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "ext.cnf",
         cwd=tmp_path)  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [find_redis_server(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
         "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={tmp_path}/ca.crt"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis.from_url(url) as client:
                    client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("the TLS redis-server did not start (built without TLS?)")
                time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(10)


def test_round_trip_over_tls(tls_url: str) -> None:
    env = {**os.environ, "OMNITASK_BROKER_URL": tls_url, "PYTHONUNBUFFERED": "1"}
    worker = WorkerProcess(["-A", "tests.apps.basic", "-c", "1"], env).wait_ready()
    try:
        basic.app.configure(broker_url=tls_url)
        assert basic.add.delay(40, 2).get(timeout=5) == 42
    finally:
        basic.app.close()
        worker.kill()


def test_wrong_certificate_authority_is_refused(tls_url: str, tmp_path: Path) -> None:
    bad = tls_url.replace(f"{tmp_path}/ca.crt", "/etc/ssl/certs/ca-certificates.crt")
    from omnitask import BrokerConnectionError, OmniTask

    app = OmniTask("tlsbad", broker=bad, connect_timeout_s=2)
    with pytest.raises(BrokerConnectionError):
        app.connect()
    app.close()
