"""What nginx appends to an error-log line of a request (ngx_http_log_error, ngx_http_log_error_handler: client,
server, request line, upstream URL, Host, Referer) and Kong's request id after it (lua_kong_error_log_request_id),
built only when a line is written, so a request that fails nothing pays nothing for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.http.server import Exchange

SERVER_NAME = "kong"  # Kong's proxy server block: `server_name kong;` (kong/templates/nginx_kong.lua)


class ErrorContext:
    """`, client: ..., server: kong, request: "...", upstream: "...", host: "...", request_id: "..."` of an exchange,
    as a log argument (`log.error("... %s", ErrorContext(ex))`): made into text only if a handler writes the line,
    once (a record formatted again later says what was true when it was written)."""

    __slots__ = ("_ex", "_text")

    def __init__(self, ex: Exchange) -> None:
        self._ex = ex
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = error_context(self._ex)
        return self._text


def error_context(ex: Exchange) -> str:
    """nginx's context of a request's error line (ngx_http_request.c:3865, 3893-3941, at release-1.27.1), then
    Kong's `, request_id: "<id>"`. The upstream is the last try's: its scheme, the address it went to (nginx's
    u->peer.name) and the URI sent ($upstream_uri); none before any try. What the client sent is escaped where it
    is not printable, so a line stays one line."""
    req = ex.request
    parts = [f", client: {ex.client_ip}, server: {SERVER_NAME}"]
    if req.method:
        target = req.absolute or ex.request_uri()
        parts.append(f', request: "{_text(ex.request_line_method())} {_text(target)} HTTP/'
                     f'{_text(req.http_version)}"')
    tries = ex.tries
    if tries:
        attempt = tries[-1]
        peer = getattr(attempt, "peer", None)  # (set only when the try looked its target's name up: Attempt)
        host, port = (peer[0], peer[1]) if peer else (attempt.target.host, attempt.target.port)
        service = getattr(ex.route, "service", None)
        scheme = "https" if getattr(service, "tls", None) is not None else "http"
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        parts.append(f', upstream: "{scheme}://{address}{_text(attempt.uri)}"')
    host_header = referrer = None
    for name, value in req.headers:
        if name == b"host":
            if host_header is None:
                host_header = value
        elif name == b"referer" and referrer is None:
            referrer = value
    if host_header is not None:
        parts.append(f', host: "{_text(host_header)}"')
    if referrer is not None:
        parts.append(f', referrer: "{_text(referrer)}"')
    if ex.request_id:
        parts.append(f', request_id: "{_text(ex.request_id)}"')
    return "".join(parts)


def _text(value: bytes) -> str:
    """Bytes from the wire as log text: printable ASCII as it is, any other byte as \\xNN (a tab, a line break, and
    a byte of a UTF-8 name alike: the log shows what was sent, never a line break nor a character it did not send)."""
    text = value.decode("latin-1")
    if value.isascii() and text.isprintable():
        return text
    return "".join(c if " " <= c < "\x7f" else f"\\x{ord(c):02x}" for c in text)
