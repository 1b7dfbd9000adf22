"""Which plugin instances run, and in which phases, as Kong's own spec tests state it
(spec/02-integration/05-proxy/04-plugins_triggering_spec.lua, 29-collect-plugin-errors_spec.lua) and the Kong source
they exercise (kong/runloop/plugins_iterator.lua, kong/init.lua: execute_collecting_plugins_iterator,
flush_delayed_response, handle_error). Kong's test plugins are mapped to real ones doing the same thing:
error-generator -> a real plugin whose access step raises, dummy / error-handler-log (header_filter and body_filter)
-> response-transformer, the log phase -> file-log, short-circuit -> request-termination, rate-limiting and key-auth
(with anonymous) as in the spec."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from backends import BadBackend, Client, EchoBackend, free_port, parse_raw_response, raw_exchange, service
from plugin_helpers import (
    TIMEOUT,
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    plugin,
)

PHASE_HEADER = "log-plugin-phases"  # what Kong's error-handler-log / dummy set in header_filter


def filters(**scope: Any) -> dict:
    """response-transformer standing in for Kong's error-handler-log and dummy plugins: a header from its
    header_filter, a JSON field from its body_filter."""
    return {"name": "response-transformer", **scope,
            "config": {"add": {"headers": [f"{PHASE_HEADER}:header_filter"], "json": ["phase:body_filter"]}}}


def file_log(path: Any, **scope: Any) -> dict:
    return {"name": "file-log", **scope, "config": {"path": str(path)}}


async def lines(path: Any, n: int = 1) -> list[dict]:
    """The first n lines of a file-log file, waiting (bounded) for the writer task."""
    with trio.fail_after(TIMEOUT):
        while True:
            text = path.read_text() if path.exists() else ""
            found = text.splitlines()
            if len(found) >= n:
                return [json.loads(line) for line in found]
            await trio.sleep(0.02)


async def echo(nursery: trio.Nursery) -> EchoBackend:
    backend = EchoBackend()
    await nursery.start(backend.serve)
    return backend


# --- which instance: Kong's lookup order, the anonymous consumer ----------------------------------------------------


async def test_the_instance_kong_picks_for_each_scope_combination(nursery, gateway):
    """04-plugins_triggering "checks global / api specific / global consumer / consumer specific / anonymous consumer
    specific configuration": the X-RateLimit-Limit-Hour of the rate-limiting instance that applied."""
    backend = await echo(nursery)
    url = f"http://127.0.0.1:{backend.port}"

    def rl(hour: int, **scope: Any) -> dict:
        return {"name": "rate-limiting", **scope, "config": {"policy": "local", "hour": hour}}

    port = await gateway({
        "services": [
            service("global1", url, [{"name": "r-global1", "hosts": ["global1.test"]}]),
            service("api1", url, [{"name": "route1", "hosts": ["api1.test"]}]),
            service("api2", url, [{"name": "route2", "hosts": ["api2.test"]}]),
            service("api3", url, [{"name": "route3", "hosts": ["api3.test"]}]),
        ],
        "consumers": [{"username": "consumer1", "keyauth_credentials": [{"key": "secret1"}]},
                      {"username": "consumer2", "keyauth_credentials": [{"key": "secret2"}]},
                      {"username": "anonymous"}],
        "plugins": [
            {"name": "key-auth"}, rl(1),
            rl(2, route="route1", service="api1"),
            rl(3, consumer="consumer2"),
            rl(4, route="route2", consumer="consumer2"),
            {"name": "key-auth", "route": "route3", "service": "api3",
             "config": {"anonymous": "anonymous"}},
            rl(5, route="route3", service="api3", consumer="anonymous"),
        ]})

    async def limit(host: str, target: str = "/status/200") -> tuple[int, str | None]:
        with trio.fail_after(TIMEOUT):
            async with await Client.connect(port, host) as client:
                reply = await client.request("GET", target)
        return reply.status, reply.header("x-ratelimit-limit-hour")

    assert (await limit("global1.test"))[0] == 401
    assert await limit("global1.test", "/status/200?apikey=secret1") == (200, "1")
    assert await limit("api1.test", "/status/200?apikey=secret1") == (200, "2")
    assert await limit("global1.test", "/status/200?apikey=secret2") == (200, "3")
    assert await limit("api2.test", "/status/200?apikey=secret2") == (200, "4")
    assert await limit("api3.test") == (200, "5")


async def test_a_consumer_instance_of_a_plugin_that_runs_before_authentication_never_applies(nursery, gateway):
    """plugins_iterator.lua get_next_and_collect: each plugin's instance is looked up, for every phase it has, when
    the access loop reaches it, with the consumer authenticated so far. correlation-id (priority 100001) is reached
    before key-auth (1250) authenticates anyone, so the global instance is the one whose header_filter runs, for
    bob too; bob's own instance never applies."""
    backend = await echo(nursery)
    port = await gateway({
        "services": [service("svc", f"http://127.0.0.1:{backend.port}",
                             [{"name": "r", "paths": ["/"], "plugins": [{"name": "key-auth"}]}])],
        "consumers": [{"username": "bob", "keyauth_credentials": [{"key": "bob-key"}],
                       "plugins": [plugin("correlation-id", header_name="X-Corr", echo_downstream=True)]}],
        "plugins": [plugin("correlation-id", header_name="X-Corr", echo_downstream=False)]})
    reply = await call(port, headers=[("apikey", "bob-key")])
    assert reply.status == 200
    sent = dict((k, v) for k, v in reply.json()["headers"])
    assert sent.get("x-corr")  # the global instance's access step ran
    assert reply.header("x-corr") is None  # ... and its header_filter (no echo), not bob's


async def test_a_consumer_instance_of_a_logger_that_runs_before_authentication_never_logs(nursery, gateway):
    """As above for the log phase (plugins_iterator.lua collects a plugin's `log` with its access): zipkin
    (priority 100000) is collected before key-auth authenticates bob, so the global instance logs bob's request."""
    backend = await echo(nursery)
    collector = await echo(nursery)
    endpoint = f"http://127.0.0.1:{collector.port}/api/v2/spans"

    def zipkin(name: str) -> dict:
        return plugin("zipkin", http_endpoint=endpoint, sample_ratio=1, local_service_name=name,
                      queue={"max_coalescing_delay": 0.01})

    port = await gateway({
        "services": [service("svc", f"http://127.0.0.1:{backend.port}",
                             [{"name": "r", "paths": ["/"], "plugins": [{"name": "key-auth"}]}])],
        "consumers": [{"username": "bob", "keyauth_credentials": [{"key": "bob-key"}], "plugins": [zipkin("bob")]}],
        "plugins": [zipkin("global")]})
    assert (await call(port, headers=[("apikey", "bob-key")])).status == 200
    with trio.fail_after(TIMEOUT):
        while not collector.requests:
            await trio.sleep(0.02)
    names = {span["localEndpoint"]["serviceName"] for seen in collector.requests for span in json.loads(seen.body)}
    assert names == {"global"}


# --- a plugin that raises: Kong's delayed 500, the chain's other phases still run -------------------------------


@pytest.fixture
def raising(monkeypatch):  # noqa: ANN001,ANN201
    """request-size-limiting's access step raises, as Kong's error-generator plugin does (access = true)."""
    from gateway.policies.request_size_limiting.handler import RequestSizeLimiting

    async def boom(self, ex):  # noqa: ANN001,ANN202
        raise RuntimeError("[error-generator] access")

    monkeypatch.setattr(RequestSizeLimiting, "access", boom)


async def test_a_plugin_that_raises_in_access_gets_kongs_500_and_the_chain_still_filters_and_logs(
        nursery, gateway, tmp_path, raising):
    """29-collect-plugin-errors "delays the error response" and 04-plugins_triggering "builds complete plugins
    iterator even when plugin errors" / FTI-3200: the plugin's error becomes kong.response.error(500, "An unexpected
    error occurred") (init.lua flush_delayed_response: the Accept header's format, JSON by default), the header_filter
    and body_filter of the route's plugins after it still run (the collecting iterator went on), so does the log
    phase, and kong.response.get_source() is "error" (ctx.KONG_UNEXPECTED)."""
    backend = await echo(nursery)
    log = tmp_path / "file.log"
    port = await gateway({"services": [service("service-error", f"http://127.0.0.1:{backend.port}", [
        {"name": "r", "hosts": ["error.test"], "plugins": [
            plugin("request-size-limiting", allowed_payload_size=1), filters(), file_log(log)]}])]})
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port, "error.test") as client:
            reply = await client.request("GET", "/get")
    assert reply.status == 500
    assert reply.header("content-type") == "application/json; charset=utf-8"
    body = reply.json()
    assert body["message"] == "An unexpected error occurred"
    assert body["phase"] == "body_filter"
    assert reply.header(PHASE_HEADER) == "header_filter"
    assert not backend.requests
    (line,) = await lines(log)
    assert line["response"]["status"] == 500 and line["source"] == "kong"
    assert line["response"]["headers"][PHASE_HEADER] == "header_filter"


# --- short-circuited requests -----------------------------------------------------------------------------------


async def test_a_short_circuited_request_runs_the_header_body_and_log_phases(nursery, gateway, tmp_path):
    """04-plugins_triggering "short-circuited requests": key-auth answers 401, and the route's header_filter
    (dummy), body_filter (dummy's append_body) and log (file-log) plugins still run, those after key-auth too."""
    backend = await echo(nursery)
    log = tmp_path / "file.log"
    port = await gateway({"services": [service("example", f"http://127.0.0.1:{backend.port}", [
        {"name": "r", "hosts": ["mock_upstream"], "plugins": [{"name": "key-auth"}, filters(), file_log(log)]}])]})
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port, "mock_upstream") as client:
            reply = await client.request("GET", "/status/200", headers=[("x-uuid", "u-401")])
    assert reply.status == 401
    assert reply.header(PHASE_HEADER) == "header_filter"
    assert reply.json()["phase"] == "body_filter"
    (line,) = await lines(log)
    assert line["request"]["headers"]["x-uuid"] == "u-401" and line["response"]["status"] == 401
    assert line["source"] == "kong"


async def test_a_plugins_exit_stops_access_but_the_runloop_goes_on(nursery, gateway, tmp_path):
    """04-plugins_triggering "responses.send stops plugin but runloop continues": a plugin's kong.response.exit
    (request-termination's 404 here) ends the access phase; header_filter, body_filter and log still run."""
    backend = await echo(nursery)
    log = tmp_path / "file.log"
    port = await gateway({"services": [service("example_err", f"http://127.0.0.1:{backend.port}", [
        {"name": "r", "hosts": ["mock_upstream_err"], "plugins": [
            plugin("request-termination", status_code=404, message="Not found"), filters(), file_log(log)]}])]})
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port, "mock_upstream_err") as client:
            reply = await client.request("GET", "/status/200?send_error=1", headers=[("x-uuid", "u-404")])
    assert reply.status == 404
    assert reply.json() == {"message": "Not found", "phase": "body_filter"}
    assert reply.header(PHASE_HEADER) == "header_filter"
    assert not backend.requests
    (line,) = await lines(log)
    assert line["request"]["headers"]["x-uuid"] == "u-404" and line["response"]["status"] == 404


async def test_a_plugins_401_leaves_nothing_behind_on_a_kept_alive_connection(nursery, gateway):
    """04-plugins_triggering "anonymous reports execution": on one connection, key-auth's 401, then the same route
    with the key, proxied."""
    backend = await echo(nursery)
    port = await gateway({
        "services": [service("example", f"http://127.0.0.1:{backend.port}", [
            {"hosts": ["mock_upstream"], "plugins": [{"name": "key-auth"}]}])],
        "consumers": [{"username": "bob", "keyauth_credentials": [{"key": "abcd"}]}]})
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port, "mock_upstream") as client:
            assert (await client.request("GET", "/status/200")).status == 401
            assert (await client.request("GET", "/status/200", headers=[("apikey", "abcd")])).status == 200


async def test_a_terminated_route_leaves_nothing_behind_on_a_kept_alive_connection(nursery, gateway):
    """04-plugins_triggering "certificate phase clears context, fix #7054": on one connection, request-termination's
    201 on /route-1, then /route-2 proxied (Kong keeps the connection: there is no body to discard)."""
    backend = await echo(nursery)
    port = await gateway({"services": [service("mock", f"http://127.0.0.1:{backend.port}", [
        {"paths": ["/route-1"], "plugins": [plugin("request-termination", status_code=201)]},
        {"paths": ["/route-2"]}])]})
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port) as client:
            assert (await client.request("GET", "/route-1/status/200")).status == 201
            assert (await client.request("GET", "/route-2/status/200")).status == 200


@pytest.mark.parametrize("code", [426, 301])
async def test_an_https_only_route_answers_plain_http_with_only_the_global_plugins(nursery, gateway, tmp_path, code):
    """runloop/handler.lua access.before: the https redirect (426, or https_redirect_status_code) is answered before
    ctx.route is set and before any plugin is collected, so, as for a 404, only the global plugins' header_filter,
    body_filter and log run (plugins_iterator.lua get_collected_iterator -> get_global_iterator), and the log entry
    has no route, service or tries."""
    backend = await echo(nursery)
    global_log, route_log = tmp_path / "global.log", tmp_path / "route.log"
    port = await gateway({
        "services": [service("svc", f"http://127.0.0.1:{backend.port}", [
            {"name": "secure", "paths": ["/"], "protocols": ["https"], "https_redirect_status_code": code,
             "plugins": [file_log(route_log), plugin("response-transformer", add={"headers": ["x-route:1"]})]}])],
        "plugins": [file_log(global_log), filters()]})
    reply = await call(port, "/x")
    assert reply.status == code
    assert reply.header(PHASE_HEADER) == "header_filter" and reply.header("x-route") is None
    (line,) = await lines(global_log)
    assert line["response"]["status"] == code
    assert "route" not in line and "service" not in line and "tries" not in line
    await trio.sleep(0.2)
    assert not route_log.exists() or route_log.read_text() == ""
    assert not backend.requests


# --- errors nginx makes: 502, 503, 504 (proxy), 400, 414 (client) -----------------------------------------------


async def test_log_plugins_run_on_a_bad_gateway_and_see_the_same_request(nursery, gateway, tmp_path):
    """04-plugins_triggering "executes a log plugin on Bad Gateway (HTTP 502)" and "log plugins sees same request in
    error_page handler (HTTP 502)": a service-scoped file-log logs the 502 with the request as it came."""
    log = tmp_path / "file.log"
    port = await gateway({"services": [service("conn_refused", f"http://127.0.0.1:{free_port()}",
                                               [{"hosts": ["refused"]}], retries=0)],
                          "plugins": [file_log(log, service="conn_refused")]})
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port, "refused") as client:
            reply = await client.request("POST", "/status/200?foo=bar", headers=[("x-uuid", "u-502")])
    assert reply.status == 502
    (line,) = await lines(log)
    assert line["request"]["headers"]["host"] == "refused" and line["request"]["headers"]["x-uuid"] == "u-502"
    assert line["request"]["method"] == "POST" and line["request"]["querystring"] == {"foo": "bar"}
    assert line["upstream_uri"] == "/status/200?foo=bar"
    assert line["response"]["status"] == 502 and line["source"] == "kong"
    assert line["response"]["headers"]["content-type"].startswith("text/plain")


async def test_log_plugins_run_on_an_upstreams_503(nursery, gateway, tmp_path):
    """04-plugins_triggering "executes a log plugin on Service Unavailable (HTTP 503)": the upstream's own 503."""
    backend = await echo(nursery)
    log = tmp_path / "file.log"
    port = await gateway({"services": [service("unavailable", f"http://127.0.0.1:{backend.port}",
                                               [{"hosts": ["unavailable"]}])],
                          "plugins": [file_log(log, service="unavailable")]})
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port, "unavailable") as client:
            reply = await client.request("GET", "/status/503?status=503", headers=[("x-uuid", "u-503")])
    assert reply.status == 503
    (line,) = await lines(log)
    assert line["request"]["headers"]["x-uuid"] == "u-503" and line["response"]["status"] == 503


async def test_a_gateway_timeout_runs_every_phase_and_its_log_sees_the_same_request(nursery, gateway, tmp_path):
    """04-plugins_triggering "executes a log plugin on Gateway Timeout (HTTP 504)", "log plugins sees same request in
    error_page handler (HTTP 504)", "executes plugins header_filter/body_filter on Nginx-produced server errors (HTTP
    5xx)" and "sees ctx introspection variables": the global filters and the service's log plugin run on the 504,
    which knows its service."""
    hang = BadBackend("hang")
    await nursery.start(hang.serve)
    log = tmp_path / "file.log"
    port = await gateway({"services": [service("timeout", f"http://127.0.0.1:{hang.port}",
                                               [{"hosts": ["connect_timeout"]}], read_timeout=200, retries=0)],
                          "plugins": [file_log(log, service="timeout"), filters()]})
    with trio.fail_after(TIMEOUT):
        async with await Client.connect(port, "connect_timeout") as client:
            reply = await client.request("POST", "/status/200?foo=bar",
                                         headers=[("x-uuid", "u-504"), ("accept", "application/json")])
    assert reply.status == 504
    assert reply.header(PHASE_HEADER) == "header_filter"
    assert reply.json()["phase"] == "body_filter"
    (line,) = await lines(log)
    assert line["request"]["headers"]["host"] == "connect_timeout"
    assert line["request"]["method"] == "POST" and line["request"]["querystring"] == {"foo": "bar"}
    assert line["upstream_uri"] == "/status/200?foo=bar"
    assert line["response"]["status"] == 504 and line["service"]["name"] == "timeout"
    assert line["response"]["headers"].get(PHASE_HEADER) == "header_filter"


@pytest.mark.parametrize("status", [400, 414])
async def test_global_filters_run_on_nginxs_client_errors(nursery, gateway, status):
    """04-plugins_triggering "executes plugins header_filter/body_filter on Nginx-produced client errors (HTTP
    4xx)": Kong's error page location runs Kong.header_filter and Kong.body_filter, and with no plugins collected
    (no access phase ran) the global plugins' (plugins_iterator.lua get_collected_iterator -> get_global_iterator)."""
    backend = await echo(nursery)
    port = await gateway({"services": [service("unavailable", f"http://127.0.0.1:{backend.port}",
                                               [{"hosts": ["unavailable"]}])],
                          "plugins": [filters()]}, error_default_type="application/json")
    if status == 400:
        data = b"GET / HTTP/1.1\r\nhost: unavailable\r\nx-large: " + b"a" * 10240 + b"\r\n\r\n"
    else:
        data = b"GET /?foo=" + b"a" * 10240 + b" HTTP/1.1\r\nhost: unavailable\r\n\r\n"
    received, _ = await raw_exchange(port, data)
    got, headers, body = parse_raw_response(received)
    assert got == status
    assert headers.get(PHASE_HEADER) == "header_filter"
    assert json.loads(body)["phase"] == "body_filter"
