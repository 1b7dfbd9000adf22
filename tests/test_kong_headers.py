"""kong.conf's `headers` and `headers_upstream`: what Kong adds to every response and to every proxied request
(kong/runloop/handler.lua), through the gateway on real sockets, and the setting's checks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from backends import EchoBackend, ScriptedBackend, free_port, request, service, wait_until
from conftest import build_config
from e2e_helpers import node_factory

from gateway.config import ConfigError
from gateway.http.dates import NOW
from gateway.http.kong_headers import SERVER_TOKEN, UPSTREAM_VIA, KongHeaders, enabled
from gateway.status import BaseStatusSource, StatusApp

TIMEOUT = 10
TOKEN = SERVER_TOKEN.decode()


async def _gateway(nursery, gateway, backend=None, **settings):  # noqa: ANN001, ANN003, ANN202
    backend = backend or EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [{"paths": ["/api"]}])]},
                         **settings)
    return port, backend


# --- defaults: server_tokens, latency_tokens, X-Kong-Request-Id -----------------------------------------------------


async def test_a_proxied_answer_gets_via_server_and_both_latencies_by_default(nursery, gateway):
    port, _ = await _gateway(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/api/x")
    assert reply.status == 200
    assert reply.header("via") == f"1.1 {TOKEN}"
    assert reply.header("server") == TOKEN  # the upstream sent none
    assert re.fullmatch(r"\d+", reply.header("x-kong-upstream-latency"))
    assert re.fullmatch(r"\d+", reply.header("x-kong-proxy-latency"))
    assert reply.header("x-kong-response-latency") is None
    assert reply.header("x-kong-upstream-status") is None  # not among the defaults


async def test_an_upstreams_via_is_extended_and_its_server_kept(nursery, gateway):
    backend = EchoBackend()
    backend.extra_headers = [(b"via", b"1.1 upstream-proxy"), (b"server", b"uvicorn")]
    port, _ = await _gateway(nursery, gateway, backend)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/api/x")
    assert [v for k, v in reply.headers if k == "via"] == [f"1.1 upstream-proxy, 1.1 {TOKEN}"]
    assert [v for k, v in reply.headers if k == "server"] == ["uvicorn"]


async def test_an_answer_of_the_gateways_own_gets_server_and_response_latency(nursery, gateway):
    port, _ = await _gateway(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/nowhere")
    assert reply.status == 404
    assert reply.header("server") == TOKEN
    assert re.fullmatch(r"\d+", reply.header("x-kong-response-latency"))
    assert reply.header("via") is None and reply.header("x-kong-upstream-latency") is None


async def test_an_upstream_failure_has_the_headers_of_a_proxied_response(nursery, gateway):
    """Kong's spec 14-server_tokens "should be returned with 502 errors": KONG_PROXIED is set before the balancer,
    so a failed upstream's 502 has the upstream and proxy latencies, Via and Server, no response latency."""
    port = await gateway({"services": [service("dead", f"http://127.0.0.1:{free_port()}", retries=0)]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/")
    assert reply.status == 502
    assert reply.header("server") == TOKEN and reply.header("via") == f"1.1 {TOKEN}"
    assert reply.header("x-kong-upstream-latency").isdigit() and reply.header("x-kong-proxy-latency").isdigit()
    assert reply.header("x-kong-response-latency") is None


async def test_x_kong_request_id_is_the_id_of_the_request_both_ways(nursery, gateway):
    port, backend = await _gateway(nursery, gateway)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/api/x", headers=[("x-kong-request-id", "forged")])
    rid = reply.header("x-kong-request-id")
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert rid == reply.header("x-request-id")
    assert backend.requests[0].header("x-kong-request-id") == rid  # the client's was replaced


# --- the setting --------------------------------------------------------------------------------------------------


async def test_headers_off_adds_nothing(nursery, gateway):
    port, backend = await _gateway(nursery, gateway, headers="off", headers_upstream="off")
    with trio.fail_after(TIMEOUT):
        proxied = await request(port, "GET", "/api/x", headers=[("x-kong-request-id", "client's")])
        own = await request(port, "GET", "/nowhere")
    for reply in (proxied, own):
        names = {k for k, _ in reply.headers}
        assert not names & {"via", "server", "x-kong-request-id", "x-kong-upstream-latency",
                            "x-kong-proxy-latency", "x-kong-response-latency"}
    assert backend.requests[0].header("x-kong-request-id") == "client's"  # passed on as any header


async def test_single_headers_can_be_chosen_in_kongs_comma_separated_form(nursery, gateway):
    port, _ = await _gateway(nursery, gateway, headers="Via, X-Kong-Upstream-Status")
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/api/x")
    assert reply.header("via") == f"1.1 {TOKEN}"
    assert reply.header("x-kong-upstream-status") == "200"
    assert reply.header("server") is None and reply.header("x-kong-upstream-latency") is None
    assert reply.header("x-kong-request-id") is None


def test_an_unknown_header_name_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"headers: invalid entry 'X-Kong-Nonsense'"):
        build_config({"services": []}, "h11", headers=["server_tokens", "X-Kong-Nonsense"])


def test_headers_upstream_takes_only_x_kong_request_id():
    with pytest.raises(ConfigError, match=r"headers_upstream: invalid entry 'Via'"):
        build_config({"services": []}, "h11", headers_upstream="Via")


@pytest.mark.parametrize(("setting", "expected"), [
    ([], set()), (["off"], set()), (["off", "Via"], set()), ("Server", {"server"}),
    (["server_tokens"], {"server_tokens", "via", "server"}),
    (["latency_tokens"], {"latency_tokens", "x-kong-proxy-latency", "x-kong-response-latency",
                          "x-kong-admin-latency", "x-kong-upstream-latency"}),
    (["Via", "off"], {"via"})])
def test_enabled_headers_are_kongs(setting, expected):
    """kong/conf_loader/init.lua 914-931: off first means none; the two groups stand for their members
    (latency_tokens for X-Kong-Admin-Latency too)."""
    assert enabled(setting) == expected


def test_no_header_enabled_adds_only_nginxs_date_and_removes_a_plugins_server_from_an_own_answer():
    """`headers: off` takes Kong's headers away, not nginx's Date (its header filter writes one whatever Kong sets)
    nor its charset (nginx_http_charset's)."""
    for setting in ("off", ["X-Kong-Admin-Latency"]):  # (the status server's alone: nothing on the proxy's)
        kong = KongHeaders.from_setting(setting)
        own = SimpleNamespace(tries=None, state=None, status=200)
        headers = [(b"content-type", b"text/plain"), (b"server", b"plugin")]
        assert kong.add(own, headers, 200) == NOW.line
        assert headers == [(b"content-type", b"text/plain; charset=UTF-8")]
        proxied = SimpleNamespace(tries=[object()], state=None, status=200)
        headers = [(b"server", b"upstream")]
        assert kong.add(proxied, headers, 200) == NOW.line and headers == [(b"server", b"upstream")]


async def test_a_log_plugin_sees_the_headers_kong_added(nursery, gateway):
    """Kong's serializer reads the response headers as sent: Via, the latencies and the request id among them."""
    backend, collector = EchoBackend(), EchoBackend("collector")
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")], "plugins": [
        {"name": "http-log", "config": {"http_endpoint": f"http://127.0.0.1:{collector.port}/logs"}}]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/x")
    await wait_until(lambda: collector.requests, "a log entry")
    logged = json.loads(collector.requests[0].body)["response"]["headers"]
    assert logged["x-kong-request-id"] == reply.header("x-kong-request-id")
    assert logged["via"] == f"1.1 {TOKEN}"
    assert logged["x-kong-upstream-latency"] == reply.header("x-kong-upstream-latency")


@pytest.mark.parametrize("upstream", [[], [(b"server", b"uvicorn")], [(b"via", b"1.1 lb")],
                                      [(b"via", b"1.1 lb"), (b"server", b"uvicorn")]],
                         ids=["bare", "server", "via", "both"])
@pytest.mark.parametrize("answered", [True, False], ids=["proxied", "own"])
def test_the_defaults_own_code_says_what_the_general_code_says(upstream, answered):
    kong = KongHeaders.from_setting(["server_tokens", "latency_tokens", "X-Kong-Request-Id"])
    assert kong.add == kong._add_defaults
    last = SimpleNamespace(head_at=10.0042 if answered else 0.0, started=10.0011)
    results = []
    for add in (kong._add_defaults, kong._add_any):
        ex = SimpleNamespace(request_id=b"rid", tries=[last] if answered else [], started=10.0 if answered else 0.0,
                             request=None, state=None, status=200, phases=None)
        headers = [(b"content-type", b"text/plain"), *upstream]
        results.append((add(ex, headers, 200), headers))
    assert results[0] == results[1]


def _proxied(phases: object) -> SimpleNamespace:
    last = SimpleNamespace(head_at=10.0042, started=10.0011)
    return SimpleNamespace(request_id=b"rid", tries=[last], started=10.0, request=None, state=None, status=201,
                           phases=phases)


def test_without_response_phases_the_upstream_status_is_a_line_added_after_the_head():
    """No header filter runs: before and after Kong's plugins' header filters are one place, so the line is added
    with the others (kong/runloop/handler.lua header_filter.before's header[X-Kong-Upstream-Status])."""
    kong = KongHeaders.from_setting(["X-Kong-Upstream-Status"])
    assert b"X-Kong-Upstream-Status: 201\r\n" in kong.add(_proxied(None), [(b"date", b"d")], 201)


def test_with_response_phases_the_upstream_status_is_left_to_them():
    """A request whose plugins filter the headers got X-Kong-Upstream-Status before the filters
    (gateway.pipeline.phases, Kong's header_filter.before): not added again after them, where a filter may have
    renamed or removed it."""
    kong = KongHeaders.from_setting(["X-Kong-Upstream-Status", "X-Kong-Request-Id"])
    lines = kong.add(_proxied(object()), [(b"date", b"d")], 201)
    assert lines == b"X-Kong-Request-Id: rid\r\n"


@pytest.mark.parametrize("name", ["X-Pad", "X-Accel-Expires", "X-Accel-Redirect", "X-Accel-Limit-Rate",
                                  "X-Accel-Buffering", "X-Accel-Charset"])
async def test_the_headers_nginx_hides_from_clients_do_not_reach_them(nursery, gateway, name):
    """nginx's proxy_hide_header defaults (ngx_http_proxy_module.c ngx_http_proxy_hide_headers), of which Kong's
    template passes only Date and Server: an upstream's X-Pad and X-Accel-* never reach Kong's clients."""
    backend = ScriptedBackend([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Kept: yes\r\n%s: 10\r\n\r\nok"
                               % name.encode()])
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")]})
    with trio.fail_after(10):
        reply = await request(port, "GET", "/x")
    assert (reply.status, reply.body, reply.header("x-kept")) == (200, b"ok", "yes")
    assert reply.header(name.lower()) is None, reply.headers



# --- after the plugins' header filters: Kong's assignments replace a plugin's lines ----------------------------------


def _filtered(tries: bool, state: dict | None = None) -> SimpleNamespace:
    """An exchange whose plugins filter the headers (phases set), proxied (`tries`) or answered by the gateway."""
    last = SimpleNamespace(head_at=10.0042, started=10.0011)
    return SimpleNamespace(request_id=b"rid", tries=[last] if tries else None, started=10.0, request=None,
                           state=state, status=200, phases=object())


@pytest.mark.parametrize("setting", [["server_tokens", "latency_tokens", "X-Kong-Request-Id"],
                                     ["Via", "X-Kong-Proxy-Latency", "X-Kong-Upstream-Latency", "X-Kong-Request-Id"]],
                         ids=["defaults", "chosen"])
def test_kongs_latencies_and_request_id_replace_a_plugins_on_a_proxied_answer(setting):
    """kong/runloop/handler.lua 1572-1578, 1632-1633 (header_filter.after, after the plugins' header filters):
    `header[headers.PROXY_LATENCY] = ctx.KONG_PROXY_LATENCY` ... `header[headers.REQUEST_ID] = rid`, assignments
    that replace every line of the name (lua-nginx-module's ngx_http_set_header_helper): a plugin's go."""
    kong = KongHeaders.from_setting(setting)
    headers = [(b"date", b"d"), (b"x-kong-proxy-latency", b"777"), (b"x-kong-upstream-latency", b"888"),
               (b"x-kong-request-id", b"forged"), (b"x-kong-response-latency", b"999")]
    lines = kong.add(_filtered(tries=True), headers, 200)
    assert headers == [(b"date", b"d"), (b"x-kong-response-latency", b"999")]  # (not Kong's on a proxied answer)
    assert re.search(rb"X-Kong-Proxy-Latency: \d+\r\n", lines) and b"X-Kong-Request-Id: rid\r\n" in lines
    assert b"777" not in lines and b"forged" not in lines


def test_a_setting_that_leaves_a_header_off_leaves_a_plugins_line_of_it():
    """kong/runloop/handler.lua 1572-1578: each assignment is under `if enabled_headers[...]`; one off is never
    assigned, so a plugin's line of it stays."""
    kong = KongHeaders.from_setting(["Via"])
    headers = [(b"date", b"d"), (b"x-kong-proxy-latency", b"777"), (b"x-kong-request-id", b"mine")]
    kong.add(_filtered(tries=True), headers, 200)
    assert headers == [(b"date", b"d"), (b"x-kong-proxy-latency", b"777"), (b"x-kong-request-id", b"mine")]


async def test_kongs_response_latency_and_request_id_replace_a_plugins_on_its_own_answer():
    """kong/runloop/handler.lua 1609-1610, 1632-1633: on an answer Kong gives itself (not KONG_PROXIED),
    `header[headers.RESPONSE_LATENCY] = ctx.KONG_RESPONSE_LATENCY` and `header[headers.REQUEST_ID] = rid` replace
    what a plugin's header filter set (async: the latency reads Trio's clock)."""
    kong = KongHeaders.from_setting(["server_tokens", "latency_tokens", "X-Kong-Request-Id"])
    headers = [(b"date", b"d"), (b"x-kong-response-latency", b"777"), (b"x-kong-request-id", b"forged")]
    lines = kong.add(_filtered(tries=False), headers, 200)
    assert headers == [(b"date", b"d")]
    assert re.search(rb"X-Kong-Response-Latency: \d+\r\n", lines) and b"X-Kong-Request-Id: rid\r\n" in lines
    assert b"777" not in lines and b"forged" not in lines


@pytest.mark.parametrize("setting", [["server_tokens"], ["Via"]], ids=["defaults-group", "via"])
def test_a_plugins_via_gives_way_to_kongs_built_from_the_upstreams_own(setting):
    """kong/runloop/handler.lua 1597-1599: `header[headers.VIA] = resp_via and resp_via .. ", " ..
    kong_outbound_via or kong_outbound_via`, resp_via being $upstream_http_via (what the upstream sent, noted by
    the forwarder: UPSTREAM_VIA), assigned after every plugin's header filter: a plugin's Via is replaced."""
    kong = KongHeaders.from_setting(setting)
    headers = [(b"date", b"d"), (b"via", b"plugin-proxy")]
    lines = kong.add(_filtered(tries=True), headers, 200)
    assert headers == [(b"date", b"d")] and f"Via: 1.1 {TOKEN}\r\n".encode() in lines  # the upstream sent none
    headers = [(b"date", b"d"), (b"via", b"plugin-proxy")]
    lines = kong.add(_filtered(tries=True, state={UPSTREAM_VIA: b"1.1 lb"}), headers, 200)
    assert headers == [(b"date", b"d"), (b"via", f"1.1 lb, 1.1 {TOKEN}".encode())] and b"Via" not in lines


async def test_kongs_headers_are_assigned_after_the_plugins_header_filters(nursery, gateway):
    """kong/runloop/handler.lua 1568-1634 (header_filter.after), end to end: Via is built from the upstream's own
    whatever response-transformer added or removed (the forwarder notes $upstream_http_via before the filters),
    and the latencies and request id are Kong's alone on a proxied answer and on the gateway's own
    (request-termination's)."""
    backend = EchoBackend()
    backend.extra_headers = [(b"via", b"1.1 upstream-proxy")]
    await nursery.start(backend.serve)
    routes = [{"name": n, "paths": [f"/{n}"]} for n in ("add", "rm", "term")]
    added = ["Via:plugin-proxy", "X-Kong-Proxy-Latency:777", "X-Kong-Response-Latency:777", "X-Kong-Request-Id:forged"]
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", routes)], "plugins": [
        {"name": "response-transformer", "route": "add", "config": {"add": {"headers": added}}},
        {"name": "response-transformer", "route": "rm", "config": {"remove": {"headers": ["Via"]}}},
        {"name": "response-transformer", "route": "term", "config": {"add": {"headers": added}}},
        {"name": "request-termination", "route": "term", "config": {"status_code": 200, "message": "done"}}]})
    with trio.fail_after(TIMEOUT):
        add, rm, term = [await request(port, "GET", f"/{n}") for n in ("add", "rm", "term")]
    for reply in (add, rm):
        assert reply.status == 200
        assert [v for k, v in reply.headers if k == "via"] == [f"1.1 upstream-proxy, 1.1 {TOKEN}"]
    assert [v for k, v in add.headers if k == "x-kong-proxy-latency"] != ["777"]
    assert len([v for k, v in add.headers if k == "x-kong-proxy-latency"]) == 1
    assert [v for k, v in add.headers if k == "x-kong-response-latency"] == ["777"]  # (Kong sets none when proxied)
    assert term.status == 200 and [v for k, v in term.headers if k == "via"] == ["plugin-proxy"]
    for reply in (add, term):
        rids = [v for k, v in reply.headers if k == "x-kong-request-id"]
        assert len(rids) == 1 and re.fullmatch(r"[0-9a-f]{32}", rids[0])
    latencies = [v for k, v in term.headers if k == "x-kong-response-latency"]
    assert len(latencies) == 1 and latencies[0] != "777"


# --- the status API (status_listen): Kong's admin_header_filter -------------------------------------------------------


async def _status_head(headers: object = None) -> dict[str, str]:
    """The head StatusApp answers GET /status/ready with (`headers`: kong.conf's setting; None: none given)."""
    app = StatusApp(BaseStatusSource(), headers=None if headers is None else (lambda: headers))
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app({"type": "http", "path": "/status/ready", "method": "GET", "headers": []}, receive, send)
    return {k.decode(): v.decode() for k, v in sent[0]["headers"]}


@pytest.mark.parametrize("setting", [None, ["server_tokens", "latency_tokens", "X-Kong-Request-Id"]],
                         ids=["none-given", "defaults"])
async def test_the_status_api_gets_server_and_x_kong_admin_latency_by_default(setting):
    """kong/init.lua 1972 `Kong.status_header_filter = Kong.admin_header_filter` (the status_listen server's
    header_filter_by_lua, kong/templates/nginx_kong.lua), and kong/init.lua 1930-1935: `header[ADMIN_LATENCY] =
    ctx.KONG_ADMIN_LATENCY` and `header[SERVER] = meta._SERVER_TOKENS` when enabled, as latency_tokens and
    server_tokens (the defaults) enable them (kong/conf_loader/init.lua 922-931)."""
    head = await _status_head(setting)
    assert head["server"] == TOKEN
    assert re.fullmatch(r"\d+", head["x-kong-admin-latency"])


@pytest.mark.parametrize(("setting", "server", "latency"), [
    ("off", False, False), (["Server"], True, False), (["X-Kong-Admin-Latency"], False, True),
    (["latency_tokens"], False, True)])
async def test_the_status_api_sends_only_the_admin_headers_the_setting_turns_on(setting, server, latency):
    """kong/init.lua 1930-1938: each under `if enabled_headers[...]`, Server else removed (`header[SERVER] = nil`)."""
    head = await _status_head(setting)
    assert ("server" in head, "x-kong-admin-latency" in head) == (server, latency)


async def test_a_nodes_status_server_reads_the_gateways_headers_setting(tmp_path: Path):
    """The root gives the status server kong.conf's `headers` as loaded (kong/init.lua admin_header_filter reads
    kong.configuration.enabled_headers): `headers: [Server]` gets Server and no X-Kong-Admin-Latency."""
    with node_factory(tmp_path) as make:
        gw = make({"services": []}, headers=["Server"])
        with trio.fail_after(TIMEOUT):
            await gw.start(workers=1)
            reply = await request(gw.status_port, "GET", "/status")
    assert reply.status == 200
    assert reply.header("server") == TOKEN and reply.header("x-kong-admin-latency") is None
