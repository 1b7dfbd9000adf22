"""Active probes as Kong runs them: lua-resty-healthcheck 3.1.0's `run_single_check` (the version Kong's rockspec
pins), configured by kong/runloop/balancer/healthcheckers.lua, as spec/02-integration/05-proxy/10-balancer/
01-healthchecks_spec.lua exercises it ("perform active health checks -- automatic recovery #https" with
https_verify_certificate false, "up then down", "can detect before any proxy traffic").

What run_single_check does, step by step:
- `sock:settimeout(timeout * 1000)`: the timeout is for each socket operation (connect, TLS handshake, send,
  receive), not for the probe as a whole;
- connect: a timeout is a timeout, any other error a TCP failure;
- https: `sock:sslhandshake(nil, sni, https_verify_certificate)`; when it gives no session (refused certificate,
  broken handshake, or its timeout) the probe is a TCP failure;
- send `GET <http_path>`; read ONE line (`sock:receive()`); a timeout is a timeout, a closed connection a TCP failure;
- the status is `^HTTP/\\d+\\.\\d+\\s+(\\d+)` of that line (case-insensitive); no match is status 0, which
  `report_http_status` counts as an HTTP failure; the headers are never read.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trustme
from conftest import build_config
from e2e_helpers import Backend, GatewayNode, request
from tls_helpers import HttpsEcho, Pki

from gateway.config.schema import ActiveHealthcheck, Healthchecks
from gateway.health import ActivePolicy, Event, probe
from gateway.health.checker import upstreams_from_config

Handler = Callable[[trio.abc.Stream], Awaitable[None]]


async def serve(nursery: trio.Nursery, handler: Handler) -> int:
    """A TCP server on 127.0.0.1 running `handler` per connection; its port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def run(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                await handler(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    nursery.start_soon(trio.serve_listeners, run, listeners)
    return int(listeners[0].socket.getsockname()[1])


def answering(raw: bytes, *, then_wait: bool = False) -> Handler:
    """Read the request, write `raw`; then hang (`then_wait`) or close."""

    async def handler(stream: trio.abc.Stream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(raw)
        if then_wait:
            await trio.sleep_forever()

    return handler


def answering_after(delay: float, raw: bytes) -> Handler:
    """Read the request, wait `delay` seconds, write `raw`."""

    async def handler(stream: trio.abc.Stream) -> None:
        await stream.receive_some(65536)
        await trio.sleep(delay)
        await stream.send_all(raw)

    return handler


def http(**kw: object) -> ActivePolicy:
    return ActivePolicy(**{"type": "http", "timeout_s": 1.0, **kw})  # type: ignore[arg-type]


def https(**kw: object) -> ActivePolicy:
    return ActivePolicy(**{"type": "https", "timeout_s": 1.0, "https_verify_certificate": False,
                           **kw})  # type: ignore[arg-type]


def tls_server_context() -> ssl.SSLContext:
    """A server context with a certificate for localhost from a CA nobody trusts."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("localhost").configure_cert(ctx)
    return ctx


def tls(handler: Handler, *, handshake_delay: float = 0.0) -> Handler:
    """`handler` behind a TLS handshake, which starts `handshake_delay` seconds after the connection is accepted."""
    ctx = tls_server_context()

    async def wrapped(stream: trio.abc.Stream) -> None:
        await trio.sleep(handshake_delay)
        secure = trio.SSLStream(stream, ctx, server_side=True)
        try:
            await secure.do_handshake()
        except trio.BrokenResourceError:
            return
        await handler(secure)

    return wrapped


# ---- the status line -----------------------------------------------------------------------------------------------


async def test_only_the_status_line_is_read_so_broken_headers_after_it_do_not_matter(nursery: trio.Nursery) -> None:
    """run_single_check reads one line (sock:receive()) and never parses the headers: a 200 status line followed by
    something that is not a header is a success."""
    port = await serve(nursery, answering(b"HTTP/1.1 200 OK\r\nthis is not a header\r\n\r\n"))
    assert await probe("127.0.0.1", port, http()) is Event.SUCCESS


async def test_a_status_line_is_classified_at_once_even_if_the_headers_never_come(nursery: trio.Nursery) -> None:
    """The status line alone decides: a 500 line and then silence is an HTTP failure, not a timeout."""
    port = await serve(nursery, answering(b"HTTP/1.1 500 Internal Server Error\r\n", then_wait=True))
    with trio.fail_after(5):
        assert await probe("127.0.0.1", port, http(timeout_s=0.5)) is Event.HTTP_FAILURE


async def test_an_interim_1xx_line_is_the_status_read_and_is_in_neither_list(nursery: trio.Nursery) -> None:
    """The first line is the status, even a 100 Continue: it is in neither http_statuses list, so the probe says
    nothing (report_http_status returns without counting), whatever follows."""
    interim_then_500 = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"
    port = await serve(nursery, answering(interim_then_500))
    assert await probe("127.0.0.1", port, http()) is None


@pytest.mark.parametrize("line", [b"http/1.1 200 OK", b"HTTP/1.0    200", b"HTTP/2.0 200 OK", b"HTTP/1.1 200 OK\n"])
async def test_the_status_line_is_matched_as_kongs_regex(line: bytes, nursery: trio.Nursery) -> None:
    """`^HTTP/\\d+\\.\\d+\\s+(\\d+)` with ngx.re's "joi" flags: any case, any version digits, any white space."""
    port = await serve(nursery, answering(line.rstrip(b"\n") + b"\r\n\r\n"))
    assert await probe("127.0.0.1", port, http()) is Event.SUCCESS


async def test_a_line_that_is_not_a_status_line_is_an_http_failure(nursery: trio.Nursery) -> None:
    """No match: the status is 0, which report_http_status counts as an HTTP failure."""
    port = await serve(nursery, answering(b"SSH-2.0-OpenSSH_9.6\r\n"))
    assert await probe("127.0.0.1", port, http()) is Event.HTTP_FAILURE


def test_a_status_of_0_is_an_http_failure_whatever_the_lists() -> None:
    assert ActivePolicy().classify_status(0) is Event.HTTP_FAILURE
    assert ActivePolicy(unhealthy_statuses=frozenset()).classify_status(0) is Event.HTTP_FAILURE


async def test_a_connection_closed_before_the_end_of_the_status_line_is_a_tcp_failure(nursery: trio.Nursery) -> None:
    """sock:receive() returns nil, "closed": report_tcp_failure."""
    port = await serve(nursery, answering(b"HTTP/1.1 200 OK"))
    assert await probe("127.0.0.1", port, http()) is Event.TCP_FAILURE


async def test_every_cr_in_the_status_line_is_dropped_as_ngx_receive_drops_it(nursery: trio.Nursery) -> None:
    """ngx_http_lua_read_line ignores each "\\r" of the line (lua-nginx-module ngx_http_lua_input_filters.c), so
    `HTTP/1.1 2\\r00 OK` is status 200 for Kong's checker."""
    port = await serve(nursery, answering(b"HTTP/1.1 2\r00 OK\r\nContent-Length: 0\r\n\r\n"))
    assert await probe("127.0.0.1", port, http()) is Event.SUCCESS


async def test_a_status_line_longer_than_64k_is_read_to_its_end(nursery: trio.Nursery) -> None:
    """ngx's receive() has no cap on a line: a long one is still a status line once its "\\n" comes."""
    port = await serve(nursery, answering(b"HTTP/1.1 200 " + b"x" * 70000 + b"\r\n\r\n"))
    assert await probe("127.0.0.1", port, http()) is Event.SUCCESS


async def test_a_status_line_cut_by_a_close_past_64k_is_a_tcp_failure(nursery: trio.Nursery) -> None:
    """However long the line, a close before its "\\n" is sock:receive()'s nil, "closed": report_tcp_failure
    (lua-resty-healthcheck 3.1.0 healthcheck.lua:1085-1092), never a status read from a piece of it."""
    port = await serve(nursery, answering(b"HTTP/1.1 200 " + b"x" * 70000))
    assert await probe("127.0.0.1", port, http()) is Event.TCP_FAILURE


# ---- https: the handshake and its timeout --------------------------------------------------------------------------


async def test_a_tls_handshake_that_times_out_is_a_tcp_failure(nursery: trio.Nursery) -> None:
    """sslhandshake gives no session (here: its timeout): report_tcp_failure, not report_timeout. With timeouts
    not counted (0) and tcp_failures counted, such a target goes down in Kong."""

    async def silent(stream: trio.abc.Stream) -> None:
        await trio.sleep_forever()  # accepts the connection, never answers the ClientHello

    port = await serve(nursery, silent)
    with trio.fail_after(5):
        assert await probe("127.0.0.1", port, https(timeout_s=0.2)) is Event.TCP_FAILURE


async def test_each_socket_operation_has_the_whole_timeout(nursery: trio.Nursery) -> None:
    """sock:settimeout applies to each operation: a handshake and an answer that each take less than the timeout
    make a success, even though together they take longer."""
    port = await serve(nursery, tls(answering_after(0.6, b"HTTP/1.1 200 OK\r\n\r\n"), handshake_delay=0.6))
    assert await probe("127.0.0.1", port, https(timeout_s=1.0)) is Event.SUCCESS


async def test_a_plain_http_answer_slower_than_the_timeout_is_a_timeout(nursery: trio.Nursery) -> None:
    port = await serve(nursery, answering_after(0.5, b"HTTP/1.1 200 OK\r\n\r\n"))
    assert await probe("127.0.0.1", port, http(timeout_s=0.2)) is Event.TIMEOUT


async def test_the_timeout_bounds_each_wait_for_the_status_line_not_the_whole_line(nursery: trio.Nursery) -> None:
    """sock:receive() (lua-resty-healthcheck 3.1.0 healthcheck.lua:1085) waits with the read timeout re-armed after
    each wait that returned data (lua-nginx-module v0.10.27 ngx_http_lua_socket_tcp.c:2874-2875 `if (rev->active)
    ngx_add_timer(rev, u->read_timeout)`): a status line that comes in pieces, each gap under the timeout, is read
    whole even though it takes longer. One fail_after around the whole line called it a timeout."""

    async def trickle(stream: trio.abc.Stream) -> None:
        await stream.receive_some(65536)
        for i, piece in enumerate((b"HTTP/1.1 ", b"2", b"00 OK\r\n")):
            if i:
                await trio.sleep(0.3)  # each gap 0.3 s < the 0.5 s timeout; the line takes 0.6 s
            await stream.send_all(piece)
        await trio.sleep_forever()

    port = await serve(nursery, trickle)
    with trio.fail_after(5):
        assert await probe("127.0.0.1", port, http(timeout_s=0.5)) is Event.SUCCESS


@pytest.mark.parametrize(("verify", "expected"), [(False, Event.SUCCESS), (True, Event.TCP_FAILURE)])
async def test_https_verify_certificate(verify: bool, expected: Event, nursery: trio.Nursery) -> None:
    """The spec's #https recovery test turns https_verify_certificate off for its self-signed backends; on, a
    certificate the gateway does not trust fails the handshake: a TCP failure."""
    port = await serve(nursery, tls(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")))
    assert await probe("127.0.0.1", port, https(https_verify_certificate=verify), "localhost") is expected


# ---- the timeout as ngx's sockets take it --------------------------------------------------------------------------


@pytest.mark.parametrize(("timeout", "socket_s"), [(1, 1.0), (0.5, 0.5), (0.0015, 0.001), (0.0005, 60.0), (0, 60.0)])
def test_the_probe_timeout_is_whole_milliseconds_and_0_is_ngxs_60_s_default(timeout: float, socket_s: float) -> None:
    """`sock:settimeout(timeout * 1000)`: ngx keeps whole milliseconds, and a timeout of 0 ms is the
    lua_socket_*_timeout default, 60 s (Kong's schema accepts a timeout of 0, `seconds` is between 0 and 65535)."""
    checks = Healthchecks(active=ActiveHealthcheck(timeout=timeout))
    assert ActivePolicy.from_config(checks).timeout_s == socket_s


# --- the schema: Kong's upstreams.lua -------------------------------------------------------------------------------


def _config_error(active: dict) -> str:
    from gateway.config import ConfigError, parse_config
    from gateway.runtime import compile_config

    doc = ('{"upstreams": [{"name": "up", "targets": [{"target": "127.0.0.1:9"}], "healthchecks": {"active": %s}}],'
           ' "services": [{"name": "s", "url": "http://up"}]}')
    import json

    with pytest.raises(ConfigError) as err:
        compile_config(parse_config(doc % json.dumps(active), "k.yml"), "k.yml")
    return str(err.value)


@pytest.mark.parametrize(("path", "message"), [
    ("health", "should start with: /"),
    ("//x", "must not have empty segments"),
    ("/a b", "invalid path: '/a b' (characters outside of the reserved list of RFC 3986 found)"),
    ("/a?b=1", "invalid path: '/a?b=1' (characters outside of the reserved list of RFC 3986 found)"),
    ("/a%zz", "invalid url-encoded value: '%zz'"),
])
def test_http_path_is_a_kong_path(path, message):
    """typedefs.path: a probe path that would not make a valid request line is refused at load, never sent."""
    assert f"upstreams[0].healthchecks.active: http_path: {message}" in _config_error({"http_path": path})


def test_probe_header_names_are_kong_header_names():
    assert "bad header name 'bad header'" in _config_error({"headers": {"bad header": ["x"]}})


@pytest.mark.parametrize(("sni", "message"), [("127.0.0.1", "must not be an IP"),
                                              ("example.com:443", "must not have a port")])
def test_https_sni_is_a_kong_sni(sni, message):
    assert f"https_sni: {message}" in _config_error({"type": "https", "https_sni": sni})


def test_the_counts_are_one_byte_integers():
    import msgspec

    assert "healthy.successes: expected int >= 0 and <= 255, got 256" in _config_error({"healthy": {"successes": 256}})
    assert msgspec.convert({"healthy": {"successes": 255}}, ActiveHealthcheck).healthy.successes == 255


@pytest.mark.parametrize("count", [("active", "healthy", "successes"), ("active", "unhealthy", "timeouts"),
                                   ("passive", "healthy", "successes"), ("passive", "unhealthy", "http_failures")])
def test_a_count_of_255_is_refused_on_an_upstream_that_uses_checks(count: tuple[str, str, str]) -> None:
    """lua-resty-healthcheck 3.1.0 `_M.new` asserts each count < 255 (healthcheck.lua:1602-1609: 8-bit counters);
    Kong builds that checker, without pcall, for an upstream that uses checks (healthcheckers.lua:226-236, 274), so
    such an upstream gets no balancer in Kong: refused at load, with Kong's reason."""
    check, state, field = count
    hc: dict = {"active": {"unhealthy": {"interval": 5}}, "passive": {}}
    hc[check].setdefault(state, {})[field] = 255
    error = str(_healthchecks_error(hc))
    assert f"healthchecks: {check}.{state}.{field}: must be at most 254 on an upstream that uses health checks" in error


def test_a_count_of_255_loads_on_an_upstream_without_checks() -> None:
    """Kong's schema takes 255 and Kong builds no checker for an upstream without checks: nothing to refuse."""
    import msgspec

    hc = msgspec.convert({"active": {"healthy": {"successes": 255}}}, Healthchecks)
    assert hc.active.healthy.successes == 255


def _healthchecks_error(hc: dict) -> Exception:
    from gateway.config import ConfigError, parse_config
    from gateway.runtime import compile_config

    doc = {"upstreams": [{"name": "up", "targets": [{"target": "127.0.0.1:9"}], "healthchecks": hc}],
           "services": [{"name": "s", "url": "http://up"}]}
    import json

    with pytest.raises(ConfigError) as err:
        compile_config(parse_config(json.dumps(doc), "k.yml"), "k.yml")
    return err.value


def test_a_zero_timeout_is_accepted_and_means_ngxs_default():
    import msgspec

    active = msgspec.convert({"timeout": 0}, ActiveHealthcheck)  # (0 to 65535: Kong's `seconds`)
    assert ActivePolicy.from_config(Healthchecks(active=active)).timeout_s == 60.0


# --- healthcheckers.lua: the client certificate of an https probe ----------------------------------------------------


async def test_an_https_probe_presents_the_upstreams_certificate_else_client_ssl(nursery: trio.Nursery,
                                                                                 tmp_path) -> None:  # noqa: ANN001
    """kong/runloop/balancer/healthcheckers.lua: the healthchecker gets the upstream's client_certificate as its
    ssl_cert / ssl_key, else kong.conf's client_ssl pair: an upstream that requires a client certificate stays
    healthy; without either, its handshake fails (a TCP failure)."""
    pki = Pki()
    backend = HttpsEcho(pki.issue("localhost", "127.0.0.1"), client_ca=pki.ca_pem)
    await nursery.start(backend.serve)
    cert, key = pki.issue("client.test")
    cert_id = "6e0a3f5c-1d2b-4c3d-8e4f-5a6b7c8d9e31"
    active = {"active": {"type": "https", "https_verify_certificate": False, "healthy": {"interval": 5}}}
    doc = {"certificates": [{"id": cert_id, "cert": cert, "key": key}],
           "upstreams": [{"name": "own", "client_certificate": {"id": cert_id}, "healthchecks": active},
                         {"name": "none", "healthchecks": active}]}
    plain = {u.name: u.policy for u in upstreams_from_config(build_config(doc, "h11"))}
    files = pki.files(tmp_path, "global", "global.test")
    with_ssl = {u.name: u.policy for u in upstreams_from_config(
        build_config(doc, "h11", client_ssl=True, client_ssl_cert=files[0], client_ssl_cert_key=files[1]))}
    with trio.fail_after(10):
        assert await probe("127.0.0.1", backend.port, plain["own"], "localhost") is Event.SUCCESS
        assert await probe("127.0.0.1", backend.port, plain["none"], "localhost") is Event.TCP_FAILURE
        assert await probe("127.0.0.1", backend.port, with_ssl["none"], "localhost") is Event.SUCCESS
    assert [r["client_cert"] for r in backend.requests] == ["client.test", "global.test"]


# --- lua-resty-healthcheck's incr_counter: one set of counters per target for both checks ----------------------------


async def test_a_passing_probe_clears_the_failures_real_traffic_counted(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Kong creates one checker per upstream (healthcheckers.lua create_healthchecker) and reports both its probes and
    the proxied traffic (balancer.report_http_status, check "passive") to it; lua-resty-healthcheck 3.1.0 keeps one
    multi-counter per target (incr_counter), the check only picks the threshold, and a success clears the failure
    counters whichever check saw it (MASK_SUCCESS). With passive http_failures 2: a failing request, passing probes,
    another failing request leave the target healthy (mostly healthy, still probed at healthy.interval), and it keeps
    its traffic. Counted apart, the probes never cleared the passive count and the second failure took it out, for
    unhealthy.interval (60 s)."""
    f = Backend("f")
    await nursery.start(f.serve)
    f.status = 500  # every real answer fails; its /health passes
    checks = {"active": {"type": "http", "http_path": "/health", "timeout": 1,
                         "healthy": {"interval": 0.1, "successes": 1},
                         "unhealthy": {"interval": 60, "http_failures": 1}},
              "passive": {"unhealthy": {"http_failures": 2, "http_statuses": [500]}}}
    gw = GatewayNode(tmp_path / "gw", {
        "upstreams": [{"name": "u", "healthchecks": checks, "targets": [{"target": f.target}]}],
        "services": [{"name": "s", "url": "http://u", "retries": 0, "routes": [{"name": "r", "paths": ["/"]}]}]})
    try:
        with trio.fail_after(30):
            await gw.start(workers=1)
            assert (await request(gw.port, "GET", "/x")).status == 500  # passive failure 1 of 2: mostly healthy
            await trio.sleep(0.6)  # several probes of /health pass meanwhile: the count is back to 0
            assert (await request(gw.port, "GET", "/x")).status == 500  # failure 1 of 2 again
            await trio.sleep(0.5)
            assert (await gw.targets())[f"u|{f.target}"]["healthy"] is True
            third = await request(gw.port, "GET", "/x")
            assert third.status == 500, "the target still gets traffic (not the 503 of no peer)"
    finally:
        gw.cleanup()


# --- healthcheckers.lua: the checks run however the gateway is started -----------------------------------------------


@pytest.mark.parametrize("http_codec", ["h11"])
async def test_gateway_run_probes_the_active_checks_it_accepts(gateway, nursery: trio.Nursery) -> None:  # noqa: ANN001
    """Kong runs the active checks of every upstream whose healthy or unhealthy interval is not 0, however it is
    started (kong/runloop/balancer/healthcheckers.lua 3.9.1:226-235 is_upstream_using_healthcheck, :274
    healthcheck.new, whose checker:start arms the probe timer). `gateway run` (one process, no bus: the `gateway`
    fixture's path) started no health checker: the config loaded, no probe was sent, the failing target kept its
    traffic. A /health answering 500 with unhealthy.http_failures 1 takes it out after one probe."""
    bad, good = Backend("bad"), Backend("good")
    for backend in (bad, good):
        await nursery.start(backend.serve)
    bad.health_status = 500
    checks = {"active": {"type": "http", "http_path": "/health", "timeout": 1,
                         "healthy": {"interval": 0.1, "successes": 1},
                         "unhealthy": {"interval": 0.1, "http_failures": 1}}}
    port = await gateway({
        "_format_version": "3.0",
        "upstreams": [{"name": "u", "healthchecks": checks,
                       "targets": [{"target": bad.target}, {"target": good.target}]}],
        "services": [{"name": "s", "url": "http://u", "routes": [{"name": "r", "paths": ["/"]}]}]})
    await trio.sleep(0.5)  # five healthy intervals
    statuses = [(await request(port, "GET", "/x")).status for _ in range(6)]
    assert bad.health_hits > 0, "no active probe was ever sent"
    assert statuses == [200] * 6 and bad.hits == 0, (bad.hits, good.hits)
