"""One active probe of one target: a TCP connect, or an HTTP(S) GET whose status line is read. Kong's semantics:

- cannot connect (refused, unreachable, TLS handshake failed), or the connection drops before a status: TCP failure
- nothing within `timeout` (connect + request + status line): timeout
- a status line: the policy says success, HTTP failure or nothing; an unparseable answer is an HTTP failure
"""

from __future__ import annotations

import ssl

import h11
import trio

from gateway.health.machine import Event
from gateway.health.policy import ActivePolicy

USER_AGENT = "mcp-gateway-healthcheck"


def _ssl_context(policy: ActivePolicy) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not policy.https_verify_certificate:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def request_headers(policy: ActivePolicy, host_header: str) -> list[tuple[str, str]]:
    headers = [("Host", host_header), ("User-Agent", USER_AGENT), ("Accept", "*/*"), ("Connection", "close")]
    return headers + [(k, v) for k, v in policy.headers if k.lower() not in ("host", "connection", "content-length")]


async def _status_line(stream: trio.abc.Stream, policy: ActivePolicy, host_header: str) -> int | None:
    """Send the GET and read up to the status line; None when the peer closed first."""
    conn = h11.Connection(h11.CLIENT)
    data = conn.send(h11.Request(method="GET", target=policy.http_path, headers=request_headers(policy, host_header)))
    await stream.send_all(data + conn.send(h11.EndOfMessage()))
    eof = False
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            if eof:
                return None  # closed before (the end of) a status line: a connection failure, not a bad answer
            raise
        if event is h11.NEED_DATA:
            chunk = await stream.receive_some(16384)
            eof = not chunk
            conn.receive_data(bytes(chunk))
            continue
        if isinstance(event, h11.Response):
            return event.status_code
        if isinstance(event, h11.ConnectionClosed):
            return None
        # InformationalResponse (1xx): keep reading


async def probe(host: str, port: int, policy: ActivePolicy, host_header: str | None = None) -> Event | None:
    """Probe once; the event it stands for (None: a status the policy ignores). As lua-resty-healthcheck: the Host
    is the upstream's host_header, else the target's host, without a port; the TLS name is https_sni, else the
    host_header, else the target's host."""
    shown = f"[{host}]" if ":" in host else host
    try:
        with trio.fail_after(policy.timeout_s):
            try:
                stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
            except OSError:
                return Event.TCP_FAILURE
            try:
                if policy.type == "tcp":
                    return Event.SUCCESS
                if policy.type == "https":
                    stream = trio.SSLStream(stream, _ssl_context(policy),
                                            server_hostname=policy.https_sni or host_header or host)
                    try:
                        await stream.do_handshake()
                    except (trio.BrokenResourceError, ssl.SSLError):
                        return Event.TCP_FAILURE
                try:
                    status = await _status_line(stream, policy, host_header or shown)
                except h11.RemoteProtocolError:
                    return Event.HTTP_FAILURE
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    return Event.TCP_FAILURE
                if status is None:
                    return Event.TCP_FAILURE
                return policy.classify_status(status)
            finally:
                await trio.aclose_forcefully(stream)
    except trio.TooSlowError:
        return Event.TIMEOUT
