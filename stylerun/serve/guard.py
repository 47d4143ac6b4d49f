"""What stands between the server and the sockets: who may talk to it, and how much they may send.

A server on loopback sits beside the browser its user reads the web with. Loopback alone keeps
other machines out but not web pages: DNS rebinding gives a page a name that resolves to
127.0.0.1 (its requests carry that name as Host), and any page can send a ``no-cors`` POST to
127.0.0.1 (it carries the page's Origin). `GuardMiddleware` is pure ASGI, outside every route,
and answers before a body is read: a Host not on the allow-list, a state-changing request from
another origin, a cross-site fetch, a missing bearer token, or a body over `Guard.max_upload`
(declared or streamed). It also sets the headers that keep the pages out of frames and sniffing.
`head_timeout_protocol` closes connections whose request head does not arrive in time, which
uvicorn's own settings do not bound.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

#: Names and addresses that only ever mean this machine: a page can make a name resolve to 127.0.0.1, but
#: it cannot make the browser send one of these as Host for its own origin.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Sent on every response unless the route set its own (a page that needs other rules keeps them).
SECURITY_HEADERS = (
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; connect-src 'self' blob:; "
                                 b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),  # a foreign page's <img> of a result is refused
)
MIN_TOKEN = 16
_TOKEN = re.compile(r"[!-~]+")  # visible ASCII: it travels in a header


@dataclass(frozen=True)
class Guard:
    """The server's limits for clients and connections; one value, from the command line or a caller.

    `hosts` are Host names allowed besides `LOOPBACK_NAMES` (the bound address, ``--allow-host``;
    ``*`` allows any, for a proxy that checks Host itself).
    """

    hosts: tuple[str, ...] = ()
    max_upload: int = 100 << 20
    max_connections: int = 100
    header_timeout: float = 10.0
    keep_alive: int = 5
    names: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("max_upload", "max_connections", "header_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be above 0, got {getattr(self, name)!r}")
        names = {_bare(h) for h in (*LOOPBACK_NAMES, *self.hosts)}
        object.__setattr__(self, "names", frozenset(names))

    def allows(self, name: str) -> bool:
        return "*" in self.names or _bare(name) in self.names

    def uvicorn_options(self) -> dict[str, Any]:
        """The connection limits as `uvicorn.run` keywords."""
        return {"limit_concurrency": self.max_connections, "timeout_keep_alive": self.keep_alive,
                "http": head_timeout_protocol(self.header_timeout)}


def allow_open_files(wanted: int = 65536) -> None:
    """Raise this process's open-file limit toward its hard limit: every socket is a file, and at a desktop's
    usual 1024 a thousand idle sockets would stop the server accepting any (the head timeout frees them, but
    only after it runs out)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def check_token(token: str) -> str:
    """The token, if a client cannot guess it by trying and it fits in a header; ValueError otherwise."""
    if len(token) < MIN_TOKEN or not _TOKEN.fullmatch(token):
        raise ValueError(f"the token must be at least {MIN_TOKEN} visible ASCII characters (no spaces); "
                         "python3 -c 'import secrets; print(secrets.token_urlsafe())' makes one")
    return token


def _bare(name: str) -> str:
    """A host name as compared: lower case, no IPv6 brackets, no trailing dot."""
    return name.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")


def _host_port(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` of a Host header or an origin's netloc; None if it is not one."""
    if not value or re.search(r"[@/?#\\\s]", value):
        return None
    try:
        parts = urlsplit("//" + value)
        return (parts.hostname or "", parts.port) if parts.hostname else None
    except ValueError:  # a port that is not a number
        return None


def _same_origin(origin: str, host: tuple[str, int | None], scheme: str) -> bool:
    """Whether an Origin header names the host and port the request came to (the scheme is not compared:
    a proxy in front may add TLS, and no other program can listen on this port)."""
    try:
        parts = urlsplit(origin)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a bad port or IPv6 address
        return False
    if parts.scheme not in ("http", "https") or parts.path or not parts.hostname:
        return False  # "null" (sandboxed frames, files) and anything odd
    return _bare(parts.hostname) == _bare(host[0]) and port == (host[1] or (443 if scheme == "https" else 80))


class GuardMiddleware:
    """The checks of `Guard` on every HTTP request, and the security headers on every response."""

    def __init__(self, app: Any, guard: Guard, token: str | None = None) -> None:
        self.app, self.guard = app, guard
        self.bearer = None if token is None else b"Bearer " + check_token(token).encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        headers: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key, value)  # the first of a repeated header, as the routes read it
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            await _answer(send, *refusal)
            return
        await self._counted(scope, receive, send)

    def refusal(self, scope: dict, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        """(status, reason) if the request is refused before the application sees it, else None."""
        text = {k: v.decode("latin-1") for k, v in headers.items() if k != b"authorization"}
        host = _host_port(text.get(b"host", ""))
        if host is None or not self.guard.allows(host[0]):
            return 403, (f"Host {text.get(b'host', '')!r} is not served here (a DNS rebinding page?); "
                         "start the server with --allow-host NAME for a name it should answer to")
        method = scope["method"]
        origin = text.get(b"origin")
        if method in UNSAFE_METHODS and origin is not None and not _same_origin(origin, host, scope["scheme"]):
            return 403, f"{method} from the origin {origin!r} refused: only this server's own page may change things"
        site = text.get(b"sec-fetch-site", "none")
        navigation = method in ("GET", "HEAD") and text.get(b"sec-fetch-mode") == "navigate"
        if site in ("cross-site", "same-site") and not navigation:
            return 403, f"a {site} request from a browser refused: only this server's own page may use the API"
        if self.bearer is not None and scope["path"].startswith("/api/") and not hmac.compare_digest(
                headers.get(b"authorization", b""), self.bearer):
            return 401, "missing or wrong bearer token"
        declared = text.get(b"content-length", "0")
        if declared.isdigit() and int(declared) > self.guard.max_upload:
            return 413, f"request body over this server's --max-upload ({self.guard.max_upload} bytes)"
        return None

    async def _counted(self, scope: dict, receive: Any, send: Any) -> None:
        """The application, with the body's bytes counted as they arrive: past the cap it is told the
        client went away (it stops reading), whatever it answers is dropped, and the client gets a 413."""
        seen, over, started = 0, False, False

        async def counted() -> dict:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.guard.max_upload:
                over = True
                return {"type": "http.disconnect"}
            return message

        async def watched(message: dict) -> None:
            nonlocal started
            if over:
                return  # the application's answer to a body cut short (a 400 from its form parser)
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, watched)
        if over and not started:
            await _answer(send, 413, f"request body over this server's --max-upload ({self.guard.max_upload} bytes)")


def _with_headers(send: Any) -> Any:
    """`send` adding `SECURITY_HEADERS` to a response start that does not set them itself."""
    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            have = {key.lower() for key, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in have]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)
    return sending


async def _answer(send: Any, status: int, reason: str) -> None:
    """A JSON error as the routes give them; the connection closes (a refused body is never read)."""
    body = json.dumps({"error": reason}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def head_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol closing a connection whose request head is not complete `seconds` after
    it began (a connection that sends nothing, or drips one header line at a time), which uvicorn has no
    setting for. Until its head is complete a connection does not count against uvicorn's
    `limit_concurrency` (--max-connections): a thousand slow sockets cannot make it answer 503 to the rest."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeoutProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.connections.discard(self)
            self._head_timer = self.loop.call_later(seconds, self._head_late)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # a head begun (also the next one on a kept-alive connection)
                if self._head_timer is None:
                    self._head_timer = self.loop.call_later(seconds, self._head_late)
                return
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            if not self.transport.is_closing() and self.transport.get_protocol() is self:  # not a websocket now
                self.connections.add(self)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _head_late(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeadTimeoutProtocol
