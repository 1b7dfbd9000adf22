"""The error log as an operator reads it, against nginx's (Kong's error.log is nginx's, written at kong.conf's
`log_level`, default `notice`: kong/templates/kong_defaults.lua:3, kong/templates/nginx_kong.lua:121 `error_log
${{PROXY_ERROR_LOG}} ${{LOG_LEVEL}};`). The gateway's default `--log-level` INFO plays nginx's notice: what nginx
writes at info (a client gone, a client too slow) is DEBUG, below it; what nginx writes at error (an upstream refused,
timed out, broken) is ERROR, so `--log-level WARNING` or `ERROR` keeps it as Kong's `log_level = warn` / `error` does,
with the context nginx appends (gateway.http.errlog). Upstream failures are the codec's alike: one codec runs them."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from backends import BadBackend, Client, EchoBackend, ScriptedBackend, free_port, raw_exchange, service, wait_until

from gateway.http import errlog
from gateway.http.codec import Request
from gateway.http.errlog import ErrorContext, error_context
from gateway.http.server import CLIENT_GONE_LOG, Exchange

TIMEOUT = 10


def _exchange(headers: list[tuple[bytes, bytes]], tries: list[Any] | None = None, tls: object = None,
              target: bytes = b"/x?a=1", request_id: bytes = b"4f1c") -> Exchange:
    """An exchange as the forwarder leaves it: its request from 10.0.0.7, its tries, its route's service."""
    conn: Any = SimpleNamespace(peer=("10.0.0.7", 40000))
    ex = Exchange(Request(b"GET", target, headers, b"1.1", True), conn, None, None, None)  # type: ignore[arg-type]
    ex.tries = tries
    ex.route = SimpleNamespace(service=SimpleNamespace(tls=tls))
    ex.request_id = request_id
    return ex


def _try(host: str, port: int, uri: bytes, peer: tuple[Any, ...] | None = None) -> SimpleNamespace:
    attempt = SimpleNamespace(target=SimpleNamespace(host=host, port=port), uri=uri)
    if peer is not None:
        attempt.peer = peer
    return attempt


# --- the context, as text -------------------------------------------------------------------------------------------


def test_the_context_is_nginx_s_with_kong_s_request_id_last():
    """nginx 1.27.1 src/http/ngx_http_request.c:3865 (ngx_http_log_error) `", client: %V"`, :3893-3950
    (ngx_http_log_error_handler) `", server: %V"`, `", request: \\"%V\\""`, `", upstream: \\"%V%V%s%V\\""` (schema,
    peer name, $upstream_uri), `", host: \\"%V\\""`, `", referrer: \\"%V\\""`; then Kong's
    `lua_kong_error_log_request_id $kong_request_id` (kong/templates/nginx_kong.lua:107-109) `, request_id: "<id>"`
    (spec/02-integration/21-request-debug/01-request-debug_spec.lua:201 matches `client.+request_id: "<id>"`). The
    server is Kong's proxy server block's `server_name kong;`."""
    ex = _exchange([(b"host", b"gateway.test"), (b"referer", b"http://from.test/")],
                   [_try("127.0.0.1", 8080, b"/up/x?a=1")])
    assert error_context(ex) == (', client: 10.0.0.7, server: kong, request: "GET /x?a=1 HTTP/1.1", '
                                 'upstream: "http://127.0.0.1:8080/up/x?a=1", host: "gateway.test", '
                                 'referrer: "http://from.test/", request_id: "4f1c"')


def test_the_upstream_is_the_last_try_at_the_address_it_went_to():
    """nginx's u->peer.name is the address the last try connected to (a name's address, as Kong's balancer hands
    nginx an ip), `[v6]:port` for IPv6; the schema is https:// for a service over TLS."""
    ex = _exchange([(b"host", b"gateway.test")],
                   [_try("127.0.0.1", 8080, b"/x"), _try("api.test", 8443, b"/x", peer=("::1", 8443, "tls"))],
                   tls=object())
    assert ', upstream: "https://[::1]:8443/x", host:' in error_context(ex)


def test_a_failure_before_any_try_names_no_upstream():
    """nginx writes `upstream:` only once u->peer.name is set: a name that found no address (Kong's access-phase
    "DNS resolution failed") fails before any try."""
    ex = _exchange([(b"host", b"gateway.test")], None)
    assert error_context(ex) == (', client: 10.0.0.7, server: kong, request: "GET /x?a=1 HTTP/1.1", '
                                 'host: "gateway.test", request_id: "4f1c"')


def test_what_the_client_sent_is_escaped_so_a_line_stays_one_line():
    """A Host or Referer the parser let through (obs-text, a tab) is written with each such byte as \\xNN, never as a
    control byte in the log, nor as a character the client did not send."""
    ex = _exchange([(b"host", b"caf\xc3\xa9.test"), (b"referer", b"a\tb")], None)
    assert ', host: "caf\\xc3\\xa9.test", referrer: "a\\x09b"' in error_context(ex)


def test_the_context_is_built_only_when_a_line_is_written(monkeypatch):
    """Built when a handler formats the line, once: nothing at a level the log does not write, and a record
    formatted again later says what was true when it was written."""
    built: list[object] = []
    monkeypatch.setattr(errlog, "error_context", lambda ex: built.append(ex) or ", client: x")
    ex = _exchange([], None)
    logger = logging.getLogger("test_error_log.quiet")
    logger.setLevel(logging.CRITICAL)
    logger.error("upstream failed%s", ErrorContext(ex))
    assert built == []
    context = ErrorContext(ex)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "upstream failed%s", (context,), None)
    assert record.getMessage() == record.getMessage() == "upstream failed, client: x"
    assert built == [ex]


# --- upstream failures: nginx's [error] -----------------------------------------------------------------------------


def _lines(caplog: pytest.LogCaptureFixture, at_least: int = logging.INFO) -> list[logging.LogRecord]:
    """What the gateway logged at `at_least` or above, but the worker's start line."""
    return [r for r in caplog.records if r.name.startswith("gateway") and r.levelno >= at_least
            and r.name != "gateway.worker"]


@pytest.mark.parametrize("http_codec", ["llhttp"])  # (the log, not the codec)
async def test_each_upstream_failure_is_one_line_at_error(nursery, gateway, caplog):
    """Each at nginx's [error], kept by Kong's `log_level = warn` or `error`, each naming its request (nginx 1.27.1):
    a refused connect, src/event/ngx_event_connect.c:222-236 (`level = NGX_LOG_ERR` for ECONNREFUSED); a read
    timeout, src/http/ngx_http_upstream.c:4361-4364 (`upstream timed out`); a close before the head, :2454-2457
    (`upstream prematurely closed connection`); an invalid header, src/http/modules/ngx_http_proxy_module.c:2032
    (`upstream sent invalid header`); a close mid-body, ngx_http_upstream.c:4222-4225 (the mid-body line names the
    upstream as `host:port`, not a Python tuple); and Kong's kong/runloop/balancer/init.lua:382 `log(ERR, "DNS
    resolution failed: "...)` for a name without an address."""
    caplog.set_level(logging.DEBUG)
    backends = {"timeout": BadBackend("hang"), "closed": BadBackend("close"), "cut": BadBackend("truncate"),
                "stall": BadBackend("stall"),
                "invalid": ScriptedBackend([b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 0\r\n\r\n"])}
    for backend in backends.values():
        await nursery.start(backend.serve)
    urls = {"refused": f"http://127.0.0.1:{free_port()}", "dns": "http://no-such-host.invalid:80",
            **{name: f"http://127.0.0.1:{backend.port}" for name, backend in backends.items()}}
    port = await gateway({"services": [
        service(name, url, [{"paths": [f"/{name}"], "strip_path": False}], retries=0, read_timeout=200)
        for name, url in urls.items()]})
    expected = {"refused": (502, "cannot connect to"), "timeout": (504, "did not send a response within 0.2s"),
                "closed": (502, "closed the connection without a response"), "invalid": (502, "malformed"),
                "dns": (503, "cannot resolve no-such-host.invalid")}
    for name, (status, text) in expected.items():
        caplog.clear()
        with trio.fail_after(TIMEOUT):
            async with await Client.connect(port) as client:
                reply = await client.request("GET", f"/{name}?a=1")
        await trio.sleep(0.05)
        lines = [(r.levelname, r.getMessage()) for r in _lines(caplog)]
        assert reply.status == status, name
        assert len(lines) == 1 and lines[0][0] == "ERROR" and text in lines[0][1], (name, lines)
        assert f'request: "GET /{name}?a=1 HTTP/1.1"' in lines[0][1], lines
    caplog.clear()
    with trio.fail_after(TIMEOUT):
        await raw_exchange(port, b"GET /cut HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
    await trio.sleep(0.05)
    lines = [(r.levelname, r.getMessage()) for r in _lines(caplog)]
    cut = backends["cut"].port
    assert len(lines) == 1 and lines[0][0] == "ERROR", lines
    assert lines[0][1].startswith(f"upstream 127.0.0.1:{cut} failed mid-response: "), lines
    assert f'upstream: "http://127.0.0.1:{cut}/cut"' in lines[0][1], lines
    caplog.clear()  # silent past read_timeout mid-body (ngx_http_upstream.c:4361 "upstream timed out" while reading
    with trio.fail_after(TIMEOUT):  # upstream): the answer cut, one line
        await raw_exchange(port, b"GET /stall HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
    await trio.sleep(0.05)
    lines = [(r.levelname, r.getMessage()) for r in _lines(caplog)]
    stall = backends["stall"].port
    assert len(lines) == 1 and lines[0][0] == "ERROR", lines
    assert lines[0][1].startswith(f"upstream 127.0.0.1:{stall} sent nothing of its response body within 0.2s "
                                  "(read_timeout)"), lines
    assert 'request: "GET /stall HTTP/1.1"' in lines[0][1], lines


@pytest.mark.parametrize("http_codec", ["llhttp"])  # (the log, not the codec)
async def test_an_upstream_error_line_names_its_request_and_the_id_the_client_got(nursery, gateway, caplog):
    """nginx's `connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, server:
    kong, request: "GET /x?a=1 HTTP/1.1", upstream: "http://127.0.0.1:P/x?a=1", host: "gateway.test"`, and Kong's
    `, request_id: "<id>"` (the id of X-Kong-Request-Id and of the error page, which says the details are in the
    log): with many routes to one service, the line tells which request failed."""
    caplog.set_level(logging.DEBUG)
    dead = free_port()
    port = await gateway({"services": [service("dead", f"http://127.0.0.1:{dead}", [{"paths": ["/"]}],
                                               retries=0)]})
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            reply = await client.request("GET", "/x?a=1")
    request_id = reply.header("x-kong-request-id")
    assert reply.status == 502 and request_id and request_id in reply.body.decode()
    assert [r.getMessage() for r in _lines(caplog)] == [
        f'cannot connect to 127.0.0.1:{dead}: connection refused: 502, client: 127.0.0.1, server: kong, request: '
        f'"GET /x?a=1 HTTP/1.1", upstream: "http://127.0.0.1:{dead}/x?a=1", host: "gateway.test", '
        f'request_id: "{request_id}"']


# --- client behaviour: nginx's [info], not written at Kong's notice -------------------------------------------------


def _client_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The format strings of what the gateway logged of clients gone or too slow."""
    return [r.msg for r in _lines(caplog, logging.DEBUG)
            if r.msg == CLIENT_GONE_LOG or "header_timeout_s" in r.msg or "client_body_timeout_s" in r.msg]


@pytest.mark.parametrize("http_codec", ["llhttp"])  # (the log, not the codec)
async def test_clients_gone_or_too_slow_write_nothing_at_the_default_level(nursery, gateway, caplog):
    """nginx 1.27.1 writes at [info], below Kong's default `log_level = notice`: a client gone while its upstream
    works (a 499), src/http/ngx_http_upstream.c:1509-1518 `client prematurely closed connection`; a head too slow,
    src/http/ngx_http_request.c:1097-1098 `client timed out`; and nothing at all for a body too slow,
    src/http/ngx_http_request_body.c:280-283 (its 408 is the access log's). So 10,000 such clients write nothing at
    the default level, as a malformed request and a failed TLS handshake (nginx's info too) write nothing: each is a
    DEBUG line."""
    caplog.set_level(logging.DEBUG)
    hang, echo = BadBackend("hang"), EchoBackend()
    await nursery.start(hang.serve)
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("hang", f"http://127.0.0.1:{hang.port}", [{"paths": ["/hang"]}]),
                                       service("echo", f"http://127.0.0.1:{echo.port}", [{"paths": ["/echo"]}])]},
                         header_timeout_s=0.3, client_body_timeout_s=0.3)
    caplog.clear()

    async def gone() -> None:
        streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        for stream in streams:
            await stream.send_all(b"GET /hang HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        await wait_until(lambda: len(hang.requests) == 3, "the upstream has the requests")
        for stream in streams:
            await stream.aclose()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as clients:
            clients.start_soon(gone)
            clients.start_soon(raw_exchange, port, b"GET /echo HTTP/1.1\r\nHost: gateway.test\r\n")
            clients.start_soon(raw_exchange, port, b"POST /echo HTTP/1.1\r\nHost: gateway.test\r\n"
                                                   b"Content-Length: 100\r\n\r\n0123456789")
        await wait_until(lambda: len(_client_lines(caplog)) == 5, "a DEBUG line for each of the five clients")
    debug = _client_lines(caplog)
    assert sum(m == CLIENT_GONE_LOG for m in debug) == 3, debug
    assert sum("within header_timeout_s" in m for m in debug) == 1, debug
    assert sum("within client_body_timeout_s" in m for m in debug) == 1, debug
    assert [(r.levelname, r.getMessage()) for r in _lines(caplog)] == []
