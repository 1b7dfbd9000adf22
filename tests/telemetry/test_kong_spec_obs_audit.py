"""Kong 3.9.3's spec tests of the observability plugins, `it` by `it`, for the ones no other test ports
(spec/03-plugins/01-tcp-log .. 37-opentelemetry), with a real gateway and real collectors; and the error lines of a
send that failed, worded as Kong's plugins word them (kong/plugins/http-log/handler.lua:137,150,
zipkin/reporter.lua:42,44, opentelemetry/utils.lua:25-30, tcp-log/handler.lua:29,44), after the queue's "handler
could not process entries: " (kong/tools/queue.lua:337).

Gateways in one pytest process share gateway/telemetry/batch.py's QUEUES registry, so an earlier test's failing
queue may still be logging: a test reads only the lines that name its own collector's port."""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from backends import Client, EchoBackend, ScriptedBackend, UdpCollector, free_port, request, service, wait_until
from e2e_helpers import node_factory
from e2e_helpers import request as node_request
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import REGISTRY

from gateway.metrics import RECORDER
from gateway.policies.http_log.handler import HttpLog
from gateway.policies.http_log.schema import HttpLogConfig
from gateway.policies.opentelemetry.handler import OpenTelemetry
from gateway.policies.opentelemetry.schema import OpenTelemetryConfig
from gateway.policies.zipkin.handler import Zipkin
from gateway.policies.zipkin.schema import ZipkinConfig
from gateway.status.collect import encode_text
from gateway.telemetry import otlp
from gateway.telemetry.batch import Queues
from gateway.telemetry.sender import BODY_SHOWN, SendError
from gateway.telemetry.tcp_sender import TcpSender
from gateway.telemetry.tracing import TracingSettings

TIMEOUT = 10
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ANSWER_500 = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"


@pytest.fixture
def http_codec() -> str:
    """One codec: what is checked here is above HTTP framing."""
    return "llhttp"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Any]:
    with node_factory(tmp_path) as make:
        yield make


def _entries(collector: EchoBackend) -> list[dict[str, Any]]:
    """Every log entry the http-log collector received (a batch is a JSON array)."""
    out: list[dict[str, Any]] = []
    for seen in collector.requests:
        doc = json.loads(seen.body)
        out.extend(doc if isinstance(doc, list) else [doc])
    return out


def _failed_sends(caplog: pytest.LogCaptureFixture, port: int) -> list[str]:
    """The queue's lines of a failed send that name the collector at 127.0.0.1:`port` (in the queue's name or the
    message)."""
    return [r.getMessage() for r in caplog.records
            if "could not process entries" in r.getMessage() and f"127.0.0.1:{port}" in r.getMessage()]


async def _answering(nursery: trio.Nursery, answer: bytes) -> int:
    """The port of a collector that answers every request with `answer` and closes the connection."""
    collector = ScriptedBackend([answer])
    return await nursery.start(collector.serve)


# --- 03-http-log/01-log_spec.lua --------------------------------------------------------------------------------


async def _http_log_gateway(nursery: trio.Nursery, gateway: Any, config: dict[str, Any], **doc: Any
                            ) -> tuple[EchoBackend, int]:
    """(collector, gateway port) of a route with an http-log whose string settings may hold the collector's {port}."""
    collector = EchoBackend("collector")
    await nursery.start(collector.serve)
    backend = EchoBackend()
    await nursery.start(backend.serve)
    cfg = {k: (v.format(port=collector.port) if isinstance(v, str) else v) for k, v in config.items()}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "r", "paths": ["/"], "plugins": [{"name": "http-log", "config": cfg}]}])], **doc})
    return collector, port


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
async def test_http_log_sends_the_configured_content_type(nursery, gateway, content_type):
    """03-http-log/01-log_spec.lua "logs to HTTP with content-type 'application/json'" and "... 'application/json;
    charset=utf-8'": the collector's request has that Content-Type, the entry the client's address."""
    collector, port = await _http_log_gateway(nursery, gateway, {
        "http_endpoint": "http://127.0.0.1:{port}/post_log/http2", "content_type": content_type})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/status/200")).status == 200
    await wait_until(lambda: collector.requests, "the entry")
    (seen,) = collector.requests
    assert seen.header("content-type") == content_type
    assert _entries(collector)[0]["client_ip"] == "127.0.0.1"


async def test_http_log_adds_basic_authorization_from_userinfo_and_the_configured_headers(nursery, gateway):
    """03-http-log/01-log_spec.lua "adds authorization if userinfo and/or header is present"."""
    collector, port = await _http_log_gateway(nursery, gateway, {
        "http_endpoint": "http://testuser:testpassword@127.0.0.1:{port}/post_log/basic_auth",
        "headers": {"Hello-World": "hi there"}})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/status/200")).status == 200
    await wait_until(lambda: collector.requests, "the entry")
    (seen,) = collector.requests
    assert seen.header("authorization") == "Basic dGVzdHVzZXI6dGVzdHBhc3N3b3Jk"
    assert seen.header("hello-world") == "hi there"


async def test_http_log_dereferences_an_env_vault_header_value(nursery, gateway, monkeypatch):
    """03-http-log/01-log_spec.lua "should dereference config.headers value": `{vault://env/http-log-key2}` is the
    value of HTTP_LOG_KEY2."""
    monkeypatch.setenv("HTTP_LOG_KEY2", "the secret")
    collector, port = await _http_log_gateway(nursery, gateway, {
        "http_endpoint": "http://127.0.0.1:{port}/post_log/vault_header",
        "headers": {"key1": "value1", "key2": "{vault://env/http-log-key2}"}})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/status/200")).status == 200
    await wait_until(lambda: collector.requests, "the entry")
    (seen,) = collector.requests
    assert (seen.header("key1"), seen.header("key2")) == ("value1", "the secret")


async def test_http_log_host_header_is_the_endpoints_host_and_port(nursery, gateway):
    """03-http-log/01-log_spec.lua "http client implicitly adds Host header": host:port (port not 80)."""
    collector, port = await _http_log_gateway(nursery, gateway, {
        "http_endpoint": "http://127.0.0.1:{port}/post_log/http_host_header"})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/status/200")).status == 200
    await wait_until(lambda: collector.requests, "the entry")
    (seen,) = collector.requests
    assert seen.header("host") == f"127.0.0.1:{collector.port}"


async def test_http_log_concurrency_limit_minus_one_sends_each_entry(nursery, gateway):
    """03-http-log/01-log_spec.lua "should not use queue when queue.concurrency_limit is -1"."""
    collector, port = await _http_log_gateway(nursery, gateway, {
        "http_endpoint": "http://127.0.0.1:{port}/post_log/http", "queue": {"concurrency_limit": -1}})
    with trio.fail_after(TIMEOUT):
        for _ in range(3):
            assert (await request(port, "GET", "/status/200")).status == 200
    await wait_until(lambda: len(collector.requests) >= 3, "3 entries")
    await trio.sleep(0.1)
    assert len(collector.requests) == 3
    assert all(isinstance(json.loads(s.body), dict) for s in collector.requests)


async def test_http_log_two_queues_do_not_mix_their_entries(nursery, gateway):
    """03-http-log/01-log_spec.lua "does not mix buffers" (and "logs to HTTP with a buffer"): two routes' http-log
    with max_batch_size 5 to two endpoints; each endpoint gets its own route's entries only, all of them (20
    each here, Kong's 200)."""
    collector = EchoBackend("collector")
    await nursery.start(collector.serve)
    backend = EchoBackend()
    await nursery.start(backend.serve)

    def plugin(name: str) -> list[dict[str, Any]]:
        return [{"name": "http-log", "config": {
            "queue": {"max_batch_size": 5, "max_coalescing_delay": 0.1},
            "http_endpoint": f"http://127.0.0.1:{collector.port}/post_log/{name}"}}]

    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "q1", "hosts": ["http_queue_logging.test"], "plugins": plugin("http_queue")},
        {"name": "q2", "hosts": ["http_queue_logging2.test"], "plugins": plugin("http_queue2")}])]})
    n = 20
    with trio.fail_after(TIMEOUT):
        for i in range(n):
            async with await Client.connect(port, "http_queue_logging.test") as c:
                assert (await c.request("GET", f"/?status={200 + i % 10}")).status == 200 + i % 10
            async with await Client.connect(port, "http_queue_logging2.test") as c:
                assert (await c.request("GET", f"/?status={300 + i % 10}")).status == 300 + i % 10

    def by(name: str) -> list[dict[str, Any]]:
        out = []
        for s in collector.requests:
            if s.target == f"/post_log/{name}":
                doc = json.loads(s.body)
                out.extend(doc if isinstance(doc, list) else [doc])
        return out

    await wait_until(lambda: len(by("http_queue")) >= n and len(by("http_queue2")) >= n, "all entries")
    await trio.sleep(0.3)
    one, two = by("http_queue"), by("http_queue2")
    assert sorted(e["response"]["status"] for e in one) == sorted(200 + i % 10 for i in range(n))
    assert sorted(e["response"]["status"] for e in two) == sorted(300 + i % 10 for i in range(n))
    assert all(len(json.loads(s.body)) <= 5 for s in collector.requests if s.body.startswith(b"["))


async def test_http_log_global_logs_a_request_no_route_matched(nursery, gateway):
    """03-http-log/01-log_spec.lua "executes successfully when route does not exist": a global http-log logs the
    404 of a request no route matched."""
    collector = EchoBackend("collector")
    await nursery.start(collector.serve)
    port = await gateway({"services": [service("svc", "http://127.0.0.1:1", [{"paths": ["/api"]}])],
                          "plugins": [{"name": "http-log", "config": {
                              "http_endpoint": f"http://127.0.0.1:{collector.port}/post_log/http"}}]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/nonexistant/proxy/path")).status == 404
    await wait_until(lambda: collector.requests, "the entry")
    (entry,) = _entries(collector)
    assert entry["client_ip"] == "127.0.0.1"
    assert entry["response"]["status"] == 404
    assert "route" not in entry and "service" not in entry


async def test_http_log_layer4_failure_is_logged_as_kong_words_it(nursery, gateway, caplog):
    """03-http-log/01-log_spec.lua:514-529 "gracefully handles layer 4 failures": the request is answered 200 and
    the queue's handler logs "handler could not process entries: failed request to HOST:PORT: timeout"
    (handler.lua:137; a collector that accepts and never answers, timeout 1 ms in Kong's, 50 ms here)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    with trio.socket.socket() as silent:
        await silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        silent_port = silent.getsockname()[1]
        port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
            {"name": "r", "paths": ["/"], "plugins": [{"name": "http-log", "config": {
                "http_endpoint": f"http://127.0.0.1:{silent_port}/post_log/faulty", "timeout": 50,
                "queue": {"max_retry_time": 0.01}}}]}])]})
        with trio.fail_after(TIMEOUT):
            assert (await request(port, "GET", "/status/200")).status == 200
        lines = await wait_until(lambda: _failed_sends(caplog, silent_port), "the handler's error")
    expected = f"handler could not process entries: failed request to 127.0.0.1:{silent_port}: timeout"
    assert any(expected in line for line in lines), lines


async def test_http_log_a_refused_send_is_a_failed_request_to_host_and_port(nursery):
    """kong/plugins/http-log/handler.lua:136-138: request_uri's error after "failed request to HOST:PORT: ", the
    cosocket's "connection refused" for a port nothing listens on."""
    closed = free_port()
    plugin = HttpLog(msgspec.convert({"http_endpoint": f"http://127.0.0.1:{closed}/log"}, HttpLogConfig), Queues())
    with trio.fail_after(TIMEOUT), pytest.raises(SendError) as raised:
        await plugin.send([b"{}"])
    assert str(raised.value) == f"failed request to 127.0.0.1:{closed}: connection refused"


async def test_http_log_a_non_2xx_answer_is_its_status_code_and_body(nursery):
    """kong/plugins/http-log/handler.lua:147-151: "request to HOST:PORT returned status code N and body BODY"."""
    port = await _answering(nursery, ANSWER_500)
    plugin = HttpLog(msgspec.convert({"http_endpoint": f"http://127.0.0.1:{port}/log"}, HttpLogConfig), Queues())
    with trio.fail_after(TIMEOUT), pytest.raises(SendError) as raised:
        await plugin.send([b"{}"])
    assert str(raised.value) == f"request to 127.0.0.1:{port} returned status code 500 and body oops"


async def test_a_failed_answers_body_is_quoted_escaped_and_cut(nursery):
    """Kong quotes the whole body (handler.lua:150), which nginx cuts with the line at NGX_MAX_ERROR_STR (2048
    bytes): here its first BODY_SHOWN bytes, "..." after, and its control characters escaped, so a collector's
    answer cannot forge error log lines."""
    body = b"line one\r\nline two " + b"x" * BODY_SHOWN
    port = await _answering(nursery, b"HTTP/1.1 503 Busy\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
    plugin = HttpLog(msgspec.convert({"http_endpoint": f"http://127.0.0.1:{port}/log"}, HttpLogConfig), Queues())
    with trio.fail_after(TIMEOUT), pytest.raises(SendError) as raised:
        await plugin.send([b"{}"])
    shown = "line one\\x0d\\x0aline two " + "x" * (BODY_SHOWN - len("line one\r\nline two ")) + "..."
    assert str(raised.value) == f"request to 127.0.0.1:{port} returned status code 503 and body {shown}"


# --- 04-file-log/01-log_spec.lua ----------------------------------------------------------------------------------


async def _file_log_request(nursery: trio.Nursery, gateway: Any, path: str) -> None:
    """One request through a route whose file-log writes to `path`."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "r", "paths": ["/"], "plugins": [{"name": "file-log", "config": {"path": path, "reopen": True}}]}])]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/status/200")).status == 200


@pytest.mark.parametrize(("where", "why"), [("missing/file", "No such file or directory"), ("dir/", "Is a directory")])
async def test_file_log_a_path_it_cannot_open_is_an_error_with_the_systems_reason(nursery, gateway, caplog, tmp_path,
                                                                                  where, why):
    """04-file-log/01-log_spec.lua "does not create log file if directory doesn't exist" and "the given path is not
    a file but a directory": the request is answered, and the error log says why the file could not be opened
    (Kong: "[file-log] failed to open the file: <strerror>")."""
    (tmp_path / "dir").mkdir()
    path = str(tmp_path / where)
    await _file_log_request(nursery, gateway, path)
    await wait_until(lambda: any(why in r.getMessage() and path in r.getMessage() for r in caplog.records
                                 if r.levelno == logging.ERROR), "the open error")
    assert not (tmp_path / "missing").exists()


async def test_file_log_to_a_character_device_writes_without_error(nursery, gateway, caplog):
    """04-file-log/01-log_spec.lua "the given path is a character device file": /dev/null opens and takes the
    line, no error logged."""
    await _file_log_request(nursery, gateway, "/dev/null")
    await trio.sleep(0.2)
    assert not [r for r in caplog.records if "/dev/null" in r.getMessage() and r.levelno >= logging.ERROR]


# --- 08-datadog/01-log_spec.lua -----------------------------------------------------------------------------------


async def test_datadog_referenceable_host_and_no_more_lines_than_its_metrics(nursery, gateway, monkeypatch):
    """08-datadog/01-log_spec.lua "referenceable fields works" (host "{vault://env/kong-datadog-agent-host-test}")
    and "no more messages than expected" (queue_size 2: one request gives the 6 default metrics, once each)."""
    monkeypatch.setenv("KONG_DATADOG_AGENT_HOST_TEST", "127.0.0.1")
    collector = UdpCollector()
    await nursery.start(collector.serve)
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("dd8", f"http://127.0.0.1:{backend.port}", [
        {"name": "r", "paths": ["/"], "plugins": [{"name": "datadog", "config": {
            "host": "{vault://env/kong-datadog-agent-host-test}", "port": collector.port, "queue_size": 2}}]}])]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/test_schema")).status == 200
    lines = await collector.received(6)
    assert sum(line.startswith("kong.request.count:1|c|#name:dd8,status:200") for line in lines) == 1, lines


# --- 26-prometheus/02-access_spec.lua, 04-status_api_spec.lua -------------------------------------------------------


async def test_prometheus_counts_proxied_requests_and_logs_no_error_for_an_unmatched_one(nursery, gateway, caplog):
    """26-prometheus/02-access_spec.lua "increments the count for proxied requests" and "does not log error if no
    service was matched": a 200 and a 400 through the route are one sample each of kong_http_requests_total (the
    exposition /metrics writes), and a 404 no route matched logs no error (other tests' queues apart)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    svc, route = "obs-audit-service", "obs-audit-route"
    port = await gateway({"services": [{"name": svc, "url": f"http://127.0.0.1:{backend.port}", "routes": [
        {"name": route, "protocols": ["http"], "paths": ["/"], "methods": ["GET"]}]}],
        "plugins": [{"name": "prometheus", "config": {"status_code_metrics": True}}]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/?status=200")).status == 200
        assert (await request(port, "GET", "/?status=400")).status == 400
        assert (await request(port, "POST", "/no-route-match-in-kong")).status == 404
    want = [f'kong_http_requests_total{{service="{svc}",route="{route}",code="{code}",source="service",'
            f'workspace="default",consumer=""}} 1' for code in (200, 400)]

    def exposition() -> str | None:
        RECORDER.flush()
        text = encode_text(REGISTRY).decode()
        return text if all(line in text.splitlines() for line in want) else None

    await wait_until(exposition, "both requests counted")
    assert not [r.getMessage() for r in caplog.records
                if r.levelno >= logging.ERROR and not r.getMessage().startswith("queue ")]


async def test_prometheus_status_listener_metrics_as_kongs_access_spec(nursery, node):
    """26-prometheus/02-access_spec.lua (and 04-status_api_spec.lua) "does not log error during a scrape", "scrape
    response has metrics and comments only", "exposes db reachability metrics", "exposes Lua worker VM stats",
    "exposes nginx timer metrics", "does not expose consumer status": the status listener's /metrics of a node
    with the plugin has kong_nginx_metric_errors_total 0, kong_datastore_reachable 1, the worker VM gauge by node_id,
    pid, kong_subsystem="http", both timer states, no http_consumer_status, and no error logged after a 404 no route
    matched and a scrape."""
    doc = {"services": [service("mock-service", "http://127.0.0.1:1", [{"name": "r", "paths": ["/api"]}])],
           "plugins": [{"name": "prometheus", "config": {"status_code_metrics": True, "latency_metrics": True,
                                                         "bandwidth_metrics": True, "upstream_health_metrics": True}}]}
    gw = node(doc)
    await gw.start(workers=1)
    with trio.fail_after(TIMEOUT):
        assert (await request(gw.port, "POST", "/no-route-match-in-kong")).status == 404
        reply = await node_request(gw.status_port, "GET", "/metrics")
    assert reply.status == 200
    body = reply.body.decode()
    for line in body.splitlines():
        if line:
            assert re.match(r"^[#|kong]", line), line  # Kong's pattern, as its spec writes it
    assert "kong_nginx_metric_errors_total 0" in body
    assert "kong_datastore_reachable 1" in body
    assert re.search(rf'kong_memory_workers_lua_vms_bytes{{node_id="{UUID}",pid="\d+",kong_subsystem="http"}} \d+',
                     body), body
    assert re.search(r'kong_nginx_timers{state="running"} \d+', body)
    assert re.search(r'kong_nginx_timers{state="pending"} \d+', body)
    assert "http_consumer_status" not in body
    assert "[error]" not in gw.log() and " ERROR " not in gw.log(), gw.log()[-2000:]


# --- 34-zipkin/zipkin_spec.lua ------------------------------------------------------------------------------------


def _zipkin_spans(collector: EchoBackend) -> list[dict[str, Any]]:
    """Every span the zipkin collector received."""
    out: list[dict[str, Any]] = []
    for seen in collector.requests:
        out += json.loads(seen.body)
    return out


def _zipkin(url: str, **config: Any) -> Zipkin:
    """A zipkin plugin sending to `url`, with a queue registry of its own."""
    return Zipkin(msgspec.convert({"http_endpoint": url, **config}, ZipkinConfig), "p", queues=Queues())


async def test_zipkin_a_route_plugin_with_sample_ratio_1_traces_beside_a_global_one_with_0(nursery, gateway):
    """34-zipkin/zipkin_spec.lua "#generates traces when several plugins exist and one of them has sample_ratio = 0
    but not the other": the route's instance (sample_ratio 1) sends the request, proxy and balancer spans, a 32-hex
    trace id, localEndpoint kong."""
    backend, collector = EchoBackend(), EchoBackend("zipkin")
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    endpoint = f"http://127.0.0.1:{collector.port}/api/v2/spans"
    queue = {"max_coalescing_delay": 0.01}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "r", "hosts": ["http-route"], "plugins": [{"name": "zipkin", "config": {
            "sample_ratio": 1, "http_endpoint": endpoint, "default_header_type": "b3-single", "queue": queue}}]}])],
        "plugins": [{"name": "zipkin", "config": {"sample_ratio": 0, "http_endpoint": endpoint,
                                                  "default_header_type": "b3-single", "queue": queue}}]})
    async with await Client.connect(port, "http-route") as c:
        with trio.fail_after(TIMEOUT):
            assert (await c.request("GET", "/", headers=[("x-b3-sampled", "1"),
                                                         ("zipkin-tags", "foo=bar; baz=qux")])).status == 200
    spans = await wait_until(lambda: len(_zipkin_spans(collector)) >= 3 and _zipkin_spans(collector), "3 spans")
    names = {s["name"]: s for s in spans}
    assert {"GET", "GET (proxy)"} <= set(names), names
    assert len(names["GET"]["traceId"]) == 32
    assert names["GET"]["localEndpoint"] == {"serviceName": "kong"}


async def test_zipkin_local_service_name_is_the_spans_service_name(nursery, gateway):
    """34-zipkin/zipkin_spec.lua "#generates traces with configured serviceName if set": local_service_name
    "custom-service-name" is every span's localEndpoint.serviceName."""
    backend, collector = EchoBackend(), EchoBackend("zipkin")
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "r", "hosts": ["http-route"], "preserve_host": True}])],
        "plugins": [{"name": "zipkin", "config": {
            "sample_ratio": 1, "http_endpoint": f"http://127.0.0.1:{collector.port}/api/v2/spans",
            "default_header_type": "b3-single", "local_service_name": "custom-service-name",
            "queue": {"max_coalescing_delay": 0.01}}}]})
    async with await Client.connect(port, "http-route") as c:
        with trio.fail_after(TIMEOUT):
            assert (await c.request("GET", "/", headers=[("x-b3-sampled", "1")])).status == 200
    spans = await wait_until(lambda: len(_zipkin_spans(collector)) >= 3 and _zipkin_spans(collector), "3 spans")
    names = {s["name"]: s for s in spans}
    assert names["GET"]["localEndpoint"] == {"serviceName": "custom-service-name"}
    assert names["GET (proxy)"]["localEndpoint"] == {"serviceName": "custom-service-name"}


async def test_zipkin_a_refused_connection_is_logged_as_kong_words_it(nursery, gateway, caplog):
    """34-zipkin/zipkin_spec.lua:468-481 "connection refused if upstream zipkin server is not listening": the error
    log has "zipkin request failed: connection refused" (reporter.lua:42)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    closed = free_port()
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "r", "paths": ["/"], "plugins": [{"name": "zipkin", "config": {
            "sample_ratio": 1, "http_endpoint": f"http://127.0.0.1:{closed}/status/200",
            "default_header_type": "b3-single", "queue": {"max_coalescing_delay": 0.01,
                                                          "max_retry_time": 0.01}}}]}])]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/status/200")).status == 200
    lines = await wait_until(lambda: _failed_sends(caplog, closed), "the handler's error")
    assert any("handler could not process entries: zipkin request failed: connection refused" in line
               for line in lines), lines


async def test_zipkin_a_slow_collector_times_out_as_kong_words_it(nursery, gateway, caplog):
    """34-zipkin/zipkin_spec.lua:452-465 "times out if upstream zipkin server takes too long to respond": read_timeout
    10 ms against a collector that answers after 1 s: "zipkin request failed: timeout" (reporter.lua:42)."""
    backend, slow = EchoBackend(), EchoBackend("slow")
    await nursery.start(backend.serve)
    await nursery.start(slow.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [
        {"name": "r", "paths": ["/"], "plugins": [{"name": "zipkin", "config": {
            "sample_ratio": 1, "http_endpoint": f"http://127.0.0.1:{slow.port}/delay?delay=1",
            "default_header_type": "b3-single", "connect_timeout": 0, "send_timeout": 10, "read_timeout": 10,
            "queue": {"max_coalescing_delay": 0.01, "max_retry_time": 0.01}}}]}])]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/status/200")).status == 200
    lines = await wait_until(lambda: _failed_sends(caplog, slow.port), "the handler's error")
    assert any("handler could not process entries: zipkin request failed: timeout" in line for line in lines), lines


async def test_zipkin_a_connect_timeout_is_zipkin_request_failed_timeout():
    """34-zipkin/zipkin_spec.lua:436-449 "times out if connection times out to upstream zipkin server": a connect
    that does not complete within connect_timeout is "zipkin request failed: timeout" (reporter.lua:42). Here a
    listener whose accept queue is full: the kernel drops the SYN."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        queued = [socket.socket() for _ in range(3)]
        try:
            for s in queued:
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
            await trio.sleep(0.05)
            with trio.fail_after(TIMEOUT), pytest.raises(SendError) as raised:
                await _zipkin(f"http://127.0.0.1:{port}/api/v2/spans", connect_timeout=50).send([b"{}"])
        finally:
            for s in queued:
                s.close()
    assert re.fullmatch(r"zipkin request failed: timeout( \(.*\))?", str(raised.value)), raised.value


async def test_zipkin_a_non_2xx_answer_is_responded_unexpectedly_with_status_and_reason(nursery):
    """kong/plugins/zipkin/reporter.lua:43-44: "zipkin server responded unexpectedly: N REASON"."""
    port = await _answering(nursery, ANSWER_500)
    with trio.fail_after(TIMEOUT), pytest.raises(SendError) as raised:
        await _zipkin(f"http://127.0.0.1:{port}/api/v2/spans").send([b"{}"])
    assert str(raised.value) == "zipkin server responded unexpectedly: 500 Internal Server Error"


async def test_zipkin_endpoint_query_is_sent_as_lua_resty_http_request_uri_sends_it(nursery, gateway):
    """kong/plugins/zipkin/reporter.lua:35 httpc:request_uri(self.http_endpoint, ...): lua-resty-http's parse_uri
    keeps the query, so the collector is asked for /api/v2/spans?key=abc (the zipkin_spec slow case's /delay/1
    likewise)."""
    backend, collector = EchoBackend(), EchoBackend("zipkin")
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
                          "plugins": [{"name": "zipkin", "config": {
                              "sample_ratio": 1, "http_endpoint": f"http://127.0.0.1:{collector.port}/api/v2/spans"
                                                                  "?key=abc",
                              "queue": {"max_coalescing_delay": 0.01}}}]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/")).status == 200
    seen = await wait_until(lambda: collector.requests and collector.requests[0], "the spans")
    assert seen.target == "/api/v2/spans?key=abc"


# --- 37-opentelemetry/04-exporter_spec.lua ------------------------------------------------------------------------


async def _otel_export(nursery: trio.Nursery, gateway: Any, config: dict[str, Any]) -> tuple[Any, Any]:
    """(the collector's first request, its decoded export) of one GET / with tracing_instrumentations all."""
    backend, collector = EchoBackend(), EchoBackend("collector")
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    cfg = {k: (v.format(port=collector.port) if isinstance(v, str) else v) for k, v in config.items()}
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
                          "plugins": [{"name": "opentelemetry", "config": {
                              "queue": {"max_coalescing_delay": 0.02}, "sampling_rate": 1, **cfg}}]},
                         tracing_instrumentations="all")
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/")).status == 200
    seen = await wait_until(lambda: collector.requests and collector.requests[0], "an export")
    return seen, ExportTraceServiceRequest.FromString(seen.body)


def _otel(port: int) -> OpenTelemetry:
    """An opentelemetry plugin exporting to 127.0.0.1:`port`, with a queue registry of its own."""
    config = msgspec.convert({"traces_endpoint": f"http://127.0.0.1:{port}/v1/traces"}, OpenTelemetryConfig)
    return OpenTelemetry(config, "obs-audit", queues=Queues(), tracing=TracingSettings("all", 1.0))


def _a_span() -> bytes:
    return otlp.span(otlp.trace_field(1), 2, 0, otlp.named("kong", 2), 1, 2, b"")


async def test_otel_resource_attributes_overwrite_service_name_and_add_their_own(nursery, gateway):
    """37-opentelemetry/04-exporter_spec.lua "overwrite resource attributes #http" "works": resource_attributes
    service.name kong_oss and os.version debian; the resource has exactly os.version, service.instance.id,
    service.name (kong_oss) and service.version."""
    seen, export = await _otel_export(nursery, gateway, {
        "traces_endpoint": "http://127.0.0.1:{port}/v1/traces",
        "resource_attributes": {"service.name": "kong_oss", "os.version": "debian"}})
    assert seen.header("content-type") == "application/x-protobuf"
    attrs = {kv.key: kv.value.string_value for kv in export.resource_spans[0].resource.attributes}
    assert sorted(attrs) == ["os.version", "service.instance.id", "service.name", "service.version"]
    assert (attrs["os.version"], attrs["service.name"]) == ("debian", "kong_oss")
    assert export.resource_spans[0].scope_spans


async def test_otel_referenceable_endpoint_and_headers_come_from_env_vault(nursery, gateway, monkeypatch):
    """37-opentelemetry/04-exporter_spec.lua "#referenceable fields" "works": endpoint and headers given as
    {vault://env/...} references are dereferenced (the export reaches the endpoint with the secrets)."""
    monkeypatch.setenv("TEST_OTEL_ACCESS_KEY", "secret-1")
    monkeypatch.setenv("TEST_OTEL_ACCESS_SECRET", "secret-2")
    backend, collector = EchoBackend(), EchoBackend("collector")
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    monkeypatch.setenv("TEST_OTEL_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", [{"paths": ["/"]}])],
                          "plugins": [{"name": "opentelemetry", "config": {
                              "endpoint": "{vault://env/test_otel_endpoint}",
                              "headers": {"X-Access-Key": "{vault://env/test_otel_access_key}",
                                          "X-Access-Secret": "{vault://env/test_otel_access_secret}"},
                              "queue": {"max_coalescing_delay": 0.02}, "sampling_rate": 1}}]},
                         tracing_instrumentations="all")
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/")).status == 200
    seen = await wait_until(lambda: collector.requests and collector.requests[0], "an export")
    assert seen.header("content-type") == "application/x-protobuf"
    assert (seen.header("x-access-key"), seen.header("x-access-secret")) == ("secret-1", "secret-2")


async def test_otel_a_refused_export_is_failed_to_send_request_and_an_otel_error_line(caplog):
    """kong/plugins/opentelemetry/utils.lua:25-26 "failed to send request: ERR", which traces.lua:139 also logs
    as an error with its "[otel] " prefix, before the queue's warning."""
    closed = free_port()
    with trio.fail_after(TIMEOUT), pytest.raises(SendError) as raised:
        await _otel(closed).send([_a_span()])
    assert str(raised.value) == "failed to send request: connection refused"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "[otel]" in r.getMessage()] == [
        "[otel] failed to send request: connection refused"]


async def test_otel_a_non_200_answer_is_a_response_error_with_status_and_body(nursery):
    """kong/plugins/opentelemetry/utils.lua:28-29: "response error: N, body: BODY" for any status but 200."""
    port = await _answering(nursery, ANSWER_500)
    with trio.fail_after(TIMEOUT), pytest.raises(SendError) as raised:
        await _otel(port).send([_a_span()])
    assert str(raised.value) == "response error: 500, body: oops"


# --- 01-tcp-log ---------------------------------------------------------------------------------------------------


async def test_tcp_log_a_failed_tls_handshake_is_failed_to_perform_tls_handshake(nursery):
    """kong/plugins/tcp-log/handler.lua:42-45: "failed to perform TLS handshake to HOST:PORT: ERR" (ngx_lua's
    "handshake failed"), for a collector that speaks no TLS (it closes the connection on the ClientHello)."""
    port = await _answering(nursery, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    sender = TcpSender("127.0.0.1", port, tls=True, timeout=TIMEOUT)
    with trio.fail_after(TIMEOUT), pytest.raises(SendError) as raised:
        await sender.send(b"{}\n")
    assert str(raised.value).startswith(f"failed to perform TLS handshake to 127.0.0.1:{port}: handshake failed")
