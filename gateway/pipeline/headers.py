"""Header rewriting at the proxy boundary: hop-by-hop removal, X-Forwarded-*, request ids, Host."""

from __future__ import annotations

import itertools
import os

from gateway.http.codec import Headers

# RFC 9110 7.6.1 connection-specific fields, plus the legacy ones every proxy strips.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
                        b"upgrade", b"proxy-authenticate", b"proxy-authorization"})
# Replaced by the gateway on the way in (unless trust_forwarded), so a client cannot spoof them.
_FORWARDED = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port", b"x-real-ip"})
_DROP_IN = HOP_BY_HOP | {b"host", b"expect", b"x-forwarded-for", b"x-request-id"}
_SPECIAL_IN = _DROP_IN | _FORWARDED | {b"mcp-session-id"}  # one set lookup per header sorts out the rest
_MAX_REQUEST_ID = 200


# Never dropped because a Connection header names them: removing a framing header would change where the message
# ends (a body sent on without its Content-Length is lost, or worse, read as the next request), so they are not
# connection options whatever the peer says; nginx forwards the body too.
_NOT_OPTIONS = frozenset({b"close", b"keep-alive", b"", b"content-length", b"transfer-encoding", b"host"})


def connection_tokens(headers: Headers) -> frozenset[bytes] | None:
    """The header names listed as connection options in Connection headers (to drop at the hop), or None."""
    tokens = None
    for name, value in headers:
        if name == b"connection":
            extra = {t.strip().lower() for t in value.split(b",")} - _NOT_OPTIONS
            if extra:
                tokens = (tokens or frozenset()) | extra
    return tokens


def _valid_request_id(value: bytes) -> bool:
    return 0 < len(value) <= _MAX_REQUEST_ID and value.isascii() and value.decode().isprintable() and b" " not in value


class _RequestIds:
    """Unique ids without a syscall per request: 12 random bytes per process, then a counter (32 hex chars)."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = os.urandom(12).hex().encode()
        self.counter = itertools.count(1)

    def __call__(self) -> bytes:
        return b"%s%08x" % (self.prefix, next(self.counter) & 0xFFFFFFFF)


new_request_id = _RequestIds()


def upstream_request_headers(headers: Headers, client_ip: bytes, listen_port: bytes, trust_forwarded: bool,
                             chunked: bool, affinity: bool = False) -> tuple[Headers, bytes, bytes, bytes | None]:
    """(headers for upstream without Host, the client's Host value, the request id, the client's Mcp-Session-Id).

    With `affinity` the client's Mcp-Session-Id is taken out (the caller puts the upstream's own id back);
    otherwise it passes through like any header and None is returned for it."""
    named = connection_tokens(headers)
    out: Headers = []
    host = b""
    xff = b""
    request_id = b""
    session_id = None
    seen_forwarded: set[bytes] = set()
    for hv in headers:
        name = hv[0]
        if name in _SPECIAL_IN:
            if name == b"host":
                host = hv[1]
                continue
            if name == b"x-forwarded-for":
                if trust_forwarded:
                    xff = hv[1] if not xff else xff + b", " + hv[1]
                continue
            if name == b"x-request-id":
                if not request_id and _valid_request_id(hv[1]):
                    request_id = hv[1]
                continue
            if name == b"mcp-session-id":
                if affinity:
                    session_id = hv[1]
                    continue
            elif name in _FORWARDED:
                if not trust_forwarded or (named and name in named):
                    continue
                seen_forwarded.add(name)
            else:
                continue  # hop-by-hop, expect
        if named and name in named:
            continue
        out.append(hv)
    if not request_id:
        request_id = new_request_id()
    out.append((b"x-forwarded-for", xff + b", " + client_ip if xff else client_ip))
    if b"x-forwarded-proto" not in seen_forwarded:
        out.append((b"x-forwarded-proto", b"http"))
    if b"x-forwarded-host" not in seen_forwarded and host:
        out.append((b"x-forwarded-host", host))
    if b"x-forwarded-port" not in seen_forwarded:
        out.append((b"x-forwarded-port", listen_port))
    if b"x-real-ip" not in seen_forwarded:
        out.append((b"x-real-ip", client_ip))
    out.append((b"x-request-id", request_id))
    if chunked:
        out.append((b"transfer-encoding", b"chunked"))
    return out, host, request_id, session_id
