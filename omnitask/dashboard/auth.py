"""Who may use the dashboard: loopback binding, a token or basic auth, and two browser guards.

- **Binding.** :func:`check_bind` refuses a host other than loopback without a token or basic
  auth (``--insecure`` overrides): the dashboard can requeue and purge dead letters.
- **Credentials.** With a token, a request carries ``Authorization: Bearer <token>`` (what a
  Prometheus scrape config sends) or the cookie that opening ``/?token=<token>`` once sets in
  a browser (a digest of the token; HttpOnly, SameSite=Strict). With basic auth, the browser
  asks for the user and password itself. Both are compared in constant time.
- **DNS rebinding.** Without credentials on loopback, a page from elsewhere could still reach
  the dashboard through a hostname that resolves to 127.0.0.1; requests must then name a
  loopback host in their ``Host`` header.
- **Cross-site requests.** A POST must be JSON (a plain HTML form cannot send that without
  the browser asking the dashboard first), and its ``Origin``, when the browser sends one,
  must be the dashboard's own: a page elsewhere cannot requeue or purge through a visitor's
  browser, which would send its basic-auth credentials or cookie along.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from omnitask.errors import ConfigurationError

__all__ = (
    "TOKEN_COOKIE",
    "Access",
    "AuthMiddleware",
    "check_bind",
    "cookie_value",
    "is_loopback",
)

TOKEN_COOKIE = "omnitask_dashboard_token"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is loopback."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """The credentials the dashboard asks for: none, a token, or a basic-auth user.

    Attributes:
        token: The bearer token, or None.
        user: The basic-auth user, or None.
        password: The basic-auth password.
    """

    token: str | None = None
    user: str | None = None
    password: str = ""

    @classmethod
    def from_options(cls, token: str | None, basic_auth: str | None) -> Access:
        """Build it from ``--token`` and ``--basic-auth user:pass``.

        Raises:
            ConfigurationError: Both are given, one is empty, or basic auth lacks its ``:``.
        """
        if token is not None and basic_auth is not None:
            raise ConfigurationError("give --token or --basic-auth, not both")
        if token is not None:
            if not token:
                raise ConfigurationError("--token must not be empty")
            return cls(token=token)
        if basic_auth is not None:
            user, colon, password = basic_auth.partition(":")
            if not user or not colon or not password:
                raise ConfigurationError("--basic-auth must be USER:PASSWORD, both non-empty")
            return cls(user=user, password=password)
        return cls()

    @property
    def required(self) -> bool:
        """Whether requests must carry credentials."""
        return self.token is not None or self.user is not None

    def allows(self, headers: dict[str, str]) -> bool:
        """Whether request ``headers`` (lower-case names) carry the credentials."""
        if not self.required:
            return True
        given = headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if self.token is not None:
            if scheme.lower() == "bearer" and _same(value.strip(), self.token):
                return True
            cookie = SimpleCookie()
            cookie.load(headers.get("cookie", ""))
            morsel = cookie.get(TOKEN_COOKIE)
            return morsel is not None and _same(morsel.value, cookie_value(self.token))
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        # Both compared, always: the time taken says nothing about which one was wrong.
        user_ok = _same(user, self.user or "")
        return _same(password, self.password) and user_ok


def cookie_value(token: str) -> str:
    """What the token cookie holds: a digest of the token, never the token itself.

    Any token then makes a valid cookie value, and the browser's cookie store holds nothing
    that works as a bearer token elsewhere (``/metrics``, scripts).
    """
    return hashlib.sha256(b"omnitask-dashboard-cookie:" + token.encode()).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def check_bind(host: str, access: Access, *, insecure: bool) -> None:
    """Refuse to serve on a non-loopback ``host`` without credentials, unless ``insecure``.

    Raises:
        ConfigurationError: It would.
    """
    if is_loopback(host) or access.required or insecure:
        return
    raise ConfigurationError(
        f"refusing to serve the dashboard on {host} without --token or --basic-auth: anyone "
        "who can reach it could requeue and purge dead letters (--insecure to do it anyway)"
    )


class AuthMiddleware:
    """ASGI middleware enforcing :class:`Access` and the guards of the module docstring.

    Args:
        app: The ASGI app to protect.
        access: The credentials to ask for.
        loopback_only: The dashboard listens on loopback only (enables the Host check when
            no credentials are asked for).
    """

    def __init__(self, app: ASGIApp, access: Access, *, loopback_only: bool) -> None:
        """Wrap ``app``."""
        self.app = app
        self.access = access
        self.check_host = loopback_only and not access.required

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Let the request through, or answer it with 400, 401 or 403."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.check_host and not is_loopback(urlsplit(f"//{host}").hostname or ""):
            await _plain(send, 400, "the Host header must name a loopback address")
            return
        if scope["method"] == "POST" and not _same_site_json(headers, host):
            await _plain(send, 403, "a POST must be JSON, from the dashboard's own pages")
            return
        if self.access.allows(headers):
            await self.app(scope, receive, send)
            return
        token = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        if self.access.token is not None and token and _same(token, self.access.token):
            # Opening /?token=... once: the cookie carries it from now on, and the token
            # leaves the address bar (and the browser history) at once.
            value = cookie_value(token)
            cookie = f"{TOKEN_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict"
            await _redirect(send, scope.get("root_path", "") + scope["path"], cookie)
            return
        challenge = [(b"www-authenticate", b'Basic realm="omnitask"')] if self.access.user else []
        await _plain(send, 401, "credentials required", challenge)


def _same_site_json(headers: dict[str, str], host: str) -> bool:
    if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return False
    origin = headers.get("origin")
    return origin is None or urlsplit(origin).netloc.lower() == host.lower()


async def _plain(
    send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = (text + "\n").encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), *(extra or [])]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Send, location: str, cookie: str) -> None:
    headers = [
        (b"location", location.encode("latin-1")),
        (b"set-cookie", cookie.encode("latin-1")),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
