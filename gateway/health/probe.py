"""One active probe of one target: a TCP connect, or an HTTP(S) GET whose status line is read. Kong's semantics
(lua-resty-healthcheck's `run_single_check`, which Kong's healthcheckers run):

- the timeout bounds each socket operation on its own (connect, TLS handshake, send, receive), as ngx's
  `sock:settimeout` does, not the probe as a whole
- cannot connect (refused, unreachable): TCP failure; no connection within the timeout: timeout
- https: a handshake that fails, certificate refused or too slow alike, is a TCP failure
- only the first line of the answer is read: a status there is classified by the policy (success, HTTP failure or
  nothing), a line that is no status line is status 0, an HTTP failure; the connection closing before the end of
  that line is a TCP failure, no line within the timeout a timeout
"""

from __future__ import annotations

import re
import ssl

import trio

from gateway.balancing.continuum import kong_address
from gateway.health.machine import Event
from gateway.health.policy import ActivePolicy
from gateway.http.net import open_tcp_stream
from gateway.http.tls_contexts import client_context, load_chain

# lua-resty-healthcheck's match on the line it reads, with ngx.re's "joi" flags (case-insensitive)
STATUS_LINE = re.compile(rb"HTTP/\d+\.\d+\s+(\d+)", re.IGNORECASE)
MAX_LINE = 65536  # of a longer first line, the part kept (the status is at its start)


def _ssl_context(policy: ActivePolicy) -> ssl.SSLContext:
    """https_verify_certificate against kong.conf's lua_ssl_trusted_certificate (gateway.http.tls_contexts), with
    the policy's client certificate when it has one."""
    ctx: ssl.SSLContext = client_context(policy.https_verify_certificate)
    if policy.client_cert is not None:
        load_chain(ctx, *policy.client_cert, "upstreams.client_certificate")
    return ctx


def request_bytes(policy: ActivePolicy, host_header: str) -> bytes:
    """lua-resty-healthcheck's probe, byte for byte: `GET <http_path> HTTP/1.0`, the configured headers as
    written (UTF-8; check-config refuses a line break or NUL in them), then the Host; nothing of its own."""
    head = "".join(f"{name}: {value}\r\n" for name, value in policy.headers)
    return f"GET {policy.http_path} HTTP/1.0\r\n{head}Host: {host_header}\r\n\r\n".encode()


async def _first_line(stream: trio.abc.Stream, timeout: float) -> bytes | None:
    """The answer's first line as ngx's `sock:receive()` gives it: up to "\\n", every "\\r" in it dropped
    (ngx_http_lua_read_line), its first MAX_LINE bytes kept and the rest read past (ngx's buffer has no cap); None
    when the peer closed before its end. `timeout` bounds each wait for more of it, not the whole line: the
    cosocket arms its read timer afresh each time it waits for more (lua-nginx-module v0.10.27
    ngx_http_lua_socket_tcp.c:2874-2875, `ngx_add_timer(rev, u->read_timeout)`)."""
    line = bytearray()
    while True:
        with trio.fail_after(timeout):
            chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        end = chunk.find(b"\n")
        if len(line) < MAX_LINE:
            line += chunk.replace(b"\r", b"") if end < 0 else chunk[:end].replace(b"\r", b"")
        if end >= 0:
            return bytes(line[:MAX_LINE])


def status_of(line: bytes) -> int:
    """The status of a first line; 0 when it is no status line (lua-resty-healthcheck's `tonumber(nil) or 0`)."""
    match = STATUS_LINE.match(line)
    return int(match.group(1)) if match else 0


async def _http(stream: trio.abc.Stream, policy: ActivePolicy, host_header: str) -> Event | None:
    """Send the GET and classify the first line of the answer."""
    try:
        with trio.fail_after(policy.timeout_s):
            await stream.send_all(request_bytes(policy, host_header))
        line = await _first_line(stream, policy.timeout_s)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        return Event.TCP_FAILURE
    if line is None:
        return Event.TCP_FAILURE
    return policy.classify_status(status_of(line))


async def probe(host: str, port: int, policy: ActivePolicy, host_header: str | None = None) -> Event | None:
    """Probe once; the event it stands for (None: a status the policy ignores). As lua-resty-healthcheck: the Host
    is the upstream's host_header, else the target's name as Kong's balancer has it (healthcheckers.lua:52
    `target.name`: an IPv6 address in the targets DAO's form, `[0000:...:0001]`, balancer/targets.lua:96), without a
    port; the TLS name is https_sni, else the host_header, else the target's host."""
    shown = kong_address(host, host) if ":" in host else host
    try:
        try:
            with trio.fail_after(policy.timeout_s):
                stream: trio.abc.Stream = await open_tcp_stream(host, port)
        except OSError:
            return Event.TCP_FAILURE
        try:
            if policy.type == "tcp":
                return Event.SUCCESS
            if policy.type == "https":
                stream = trio.SSLStream(stream, _ssl_context(policy),
                                        server_hostname=policy.https_sni or host_header or host)
                with trio.move_on_after(policy.timeout_s) as handshake:
                    try:
                        await stream.do_handshake()
                    except (trio.BrokenResourceError, ssl.SSLError):
                        return Event.TCP_FAILURE
                if handshake.cancelled_caught:
                    return Event.TCP_FAILURE  # sslhandshake gave no session: a TCP failure, even on its timeout
            return await _http(stream, policy, host_header or shown)
        finally:
            await trio.aclose_forcefully(stream)
    except trio.TooSlowError:
        return Event.TIMEOUT
