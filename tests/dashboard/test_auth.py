"""Who may use the dashboard: bind refusals, token and basic auth (unit and real process)."""

from __future__ import annotations

import base64

import pytest

from omnitask import OmniTask
from omnitask.cli import main
from omnitask.dashboard.auth import TOKEN_COOKIE, Access, check_bind, cookie_value, is_loopback
from omnitask.errors import ConfigurationError
from tests.dashboard.conftest import APP, DashboardFactory


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("dashboard.example", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_public_host_needs_credentials_or_insecure() -> None:
    check_bind("127.0.0.1", Access(), insecure=False)
    check_bind("0.0.0.0", Access(token="t"), insecure=False)
    check_bind("0.0.0.0", Access(user="u", password="p"), insecure=False)
    check_bind("0.0.0.0", Access(), insecure=True)
    with pytest.raises(ConfigurationError, match=r"refusing to serve the dashboard on 0\.0\.0\.0"):
        check_bind("0.0.0.0", Access(), insecure=False)


@pytest.mark.parametrize(
    ("token", "basic", "error"),
    [
        ("t", "u:p", "not both"),
        ("", None, "must not be empty"),
        (None, "user", "USER:PASSWORD"),
        (None, ":p", "USER:PASSWORD"),
        (None, "u:", "USER:PASSWORD"),
    ],
)
def test_bad_auth_options(token: str | None, basic: str | None, error: str) -> None:
    with pytest.raises(ConfigurationError, match=error):
        Access.from_options(token, basic)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_access_checks_each_credential() -> None:
    token = Access(token="s3cret")
    assert token.allows({"authorization": "Bearer s3cret"})
    assert not token.allows({"authorization": "Bearer s3cre"})
    assert not token.allows({})
    assert token.allows({"cookie": f"a=b; {TOKEN_COOKIE}={cookie_value('s3cret')}"})
    # The cookie holds a digest: the token itself does not work as a cookie, nor the reverse.
    assert not token.allows({"cookie": f"{TOKEN_COOKIE}=s3cret"})
    assert not token.allows({"authorization": f"Bearer {cookie_value('s3cret')}"})
    basic = Access(user="admin", password="pw:with:colons")
    assert basic.allows({"authorization": _basic("admin", "pw:with:colons")})
    assert not basic.allows({"authorization": _basic("admin", "pw")})
    assert not basic.allows({"authorization": _basic("root", "pw:with:colons")})
    assert not basic.allows({"authorization": "Basic !!!not-base64"})
    assert not basic.allows({"authorization": "Bearer pw:with:colons"})
    assert Access().allows({})


def test_the_command_refuses_a_public_host_without_auth(
    app: OmniTask, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dashboard", "-A", APP, "--host", "0.0.0.0"]) == 1
    assert "refusing to serve the dashboard on 0.0.0.0" in capsys.readouterr().err
    assert main(["dashboard", "-A", APP, "--token", "t", "--basic-auth", "u:p"]) == 1
    assert "not both" in capsys.readouterr().err


@pytest.mark.process
def test_the_command_fails_fast_when_redis_is_unreachable(
    start_dashboard: DashboardFactory, app: OmniTask
) -> None:
    from tests.dashboard.conftest import free_port

    with pytest.raises(AssertionError, match="exited with 1") as failure:
        start_dashboard(env={"OMNITASK_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert "cannot reach Redis" in str(failure.value)


@pytest.mark.process
def test_token(start_dashboard: DashboardFactory, app: OmniTask) -> None:
    board = start_dashboard("--token", "s3cret")
    assert board.get("/api/workers").status == 401
    assert board.get("/").status == 401
    assert board.get("/metrics").status == 401
    assert board.get("/api/workers", headers={"Authorization": "Bearer nope"}).status == 401
    bearer = {"Authorization": "Bearer s3cret"}
    assert board.get("/api/workers", headers=bearer).status == 200
    assert board.get("/metrics", headers=bearer).status == 200
    assert board.post("/api/dead-letters/purge", {}, headers=bearer).status == 428
    assert board.get("/?token=wrong").status == 401

    # A browser opens /?token=... once; the cookie carries it from then on.
    opened = board.get("/?token=s3cret")
    assert (opened.status, opened.headers["location"]) == (303, "/")
    cookie = opened.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "s3cret" not in cookie
    jar = {"Cookie": cookie.split(";")[0]}
    assert board.get("/api/overview", headers=jar).status == 200
    assert board.get("/", headers=jar).status == 200
    # Behind credentials, the Host check is not needed (nor made).
    assert board.get("/api/overview", headers={**bearer, "Host": "board.example"}).status == 200


@pytest.mark.process
def test_token_from_the_environment(start_dashboard: DashboardFactory, app: OmniTask) -> None:
    board = start_dashboard(env={"OMNITASK_DASHBOARD_TOKEN": "from-env"})
    assert board.get("/api/queues").status == 401
    assert board.get("/api/queues", headers={"Authorization": "Bearer from-env"}).status == 200
    assert "(token)" in board.output


@pytest.mark.process
def test_basic_auth(start_dashboard: DashboardFactory, app: OmniTask) -> None:
    board = start_dashboard("--basic-auth", "admin:pw")
    denied = board.get("/api/workers")
    assert denied.status == 401
    assert denied.headers["www-authenticate"] == 'Basic realm="omnitask"'
    assert board.get("/api/workers", headers={"Authorization": _basic("admin", "no")}).status == 401
    board.use_basic("admin", "pw")
    assert board.get("/api/workers").status == 200
    assert board.get("/").status == 200
    assert board.post("/api/dead-letters/purge", {"confirm": True}).status == 200
