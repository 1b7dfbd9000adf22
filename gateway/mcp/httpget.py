"""One bounded HTTP(S) GET on Trio + h11, for documents the gateway fetches off the request path (JWKS).

A new connection per request (`Connection: close`): these fetches are rare (once per cache TTL, or on an unknown
key id), so pooling would buy nothing. Everything is bounded: the whole exchange by `timeout`, the body by
`max_bytes`. Any failure is one `FetchError` whose message names the URL and what went wrong.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import h11
import trio

from gateway.config.errors import show
from gateway.http.net import open_tcp_stream
from gateway.http.tls_contexts import client_context

_RECV = 65536


class FetchError(Exception):
    """The document could not be fetched (network, TLS, HTTP status, size, time)."""


class Url:
    """A parsed http(s) URL: scheme, host, port, request target and the Host header value."""

    __slots__ = ("text", "tls", "host", "port", "target", "authority")

    def __init__(self, text: str) -> None:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f'expected an absolute http:// or https:// URL, got {show(text)}')
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f'bad port in {show(text)}') from None
        self.text = text
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = port or (443 if self.tls else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        self.authority = host if self.port == default else f"{host}:{self.port}"


async def get(url: Url, *, timeout: float, max_bytes: int, verify: bool = True,
              accept: str = "application/json") -> bytes:
    """The body of a 200 answer to GET `url`; FetchError otherwise."""
    try:
        with trio.fail_after(timeout):
            return await _get(url, max_bytes, verify, accept)
    except trio.TooSlowError:
        raise FetchError(f"{url.text}: no complete answer within {timeout:g}s") from None
    except ssl.SSLError as e:
        raise FetchError(f"{url.text}: TLS failed: {e.reason or e}") from None
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
        raise FetchError(f"{url.text}: {e.__class__.__name__}: {e}") from None
    except h11.ProtocolError as e:
        raise FetchError(f"{url.text}: bad HTTP answer: {e}") from None


async def _get(url: Url, max_bytes: int, verify: bool, accept: str) -> bytes:
    stream: trio.abc.Stream = await open_tcp_stream(url.host, url.port)
    if url.tls:
        # verified against kong.conf's lua_ssl_trusted_certificate (gateway.http.tls_contexts)
        stream = trio.SSLStream(stream, client_context(verify), server_hostname=url.host, https_compatible=True)
    async with stream:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=16384)
        headers = [("Host", url.authority), ("Accept", accept), ("Connection", "close"),
                   ("User-Agent", "mcp-gateway")]
        await stream.send_all(conn.send(h11.Request(method="GET", target=url.target, headers=headers))
                              + conn.send(h11.EndOfMessage()))
        status = 0
        parts: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(_RECV)))
            elif isinstance(event, h11.Response):
                status = event.status_code
                if status != 200:
                    raise FetchError(f"{url.text}: HTTP {status}")
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_bytes:
                    raise FetchError(f"{url.text}: answer larger than {max_bytes} bytes")
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            elif isinstance(event, h11.ConnectionClosed):
                raise FetchError(f"{url.text}: connection closed before the answer was complete")
