"""statsd, datadog and prometheus against Kong's own source and spec (kong/plugins/{statsd,datadog,prometheus},
spec/03-plugins/06-statsd, 08-datadog, 26-prometheus): the behaviours the other telemetry tests leave open. Each
docstring names the Kong file the behaviour comes from.

Prometheus cases read Kong's families from this process's registry after a flush of the recorder: counters are
process-wide, so each case uses service and route names of its own."""

from __future__ import annotations

import itertools
import json
import socket
import struct

import pytest
import trio
from backends import EchoBackend, raw_exchange, request, service, wait_until
from backends import UdpCollector as Collector
from dns_server import serve_names
from prometheus_client import REGISTRY

from gateway.config import ConfigError, parse_config
from gateway.metrics import RECORDER
from gateway.runtime import compile_config

TIMEOUT = 10
KEY = [("apikey", "kong")]
CONSUMERS = [{"username": "alice", "custom_id": "robert", "id": "4fd6b3d8-6c3e-4a5a-9d09-0b6c1b2a9c01",
              "keyauth_credentials": [{"key": "kong"}]}]
_names = itertools.count()


@pytest.fixture
def http_codec() -> str:
    """One codec: what is checked here is above HTTP framing."""
    return "llhttp"


def unique(prefix: str) -> str:
    """A name no other case uses (the prometheus families are process-wide)."""
    return f"{prefix}-{next(_names)}-{id(_names) % 10000}"


def refused(name: str, config: dict) -> str:
    """The config error of a global `name` plugin with this config."""
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}],
           "plugins": [{"name": name, "config": config}]}
    with pytest.raises(ConfigError) as err:
        compile_config(parse_config(json.dumps(doc)))
    return str(err.value)


# --- datadog ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["prefix", "service_name_tag", "status_tag", "consumer_tag"])
def test_datadog_refuses_an_empty_string_as_kong_does(field):
    """Kong's schema strings have len_min 1 unless they say otherwise (kong/db/schema/init.lua: "empty strings
    are not accepted by default"); datadog's schema.lua sets none for prefix and the tag names."""
    assert field in refused("datadog", {field: ""})


async def _datadog(nursery: trio.Nursery, gateway, collector_port: int, **config: object) -> int:  # noqa: ANN001
    backend = EchoBackend()
    await nursery.start(backend.serve)
    plugins = [{"name": "datadog", "config": {"host": "127.0.0.1", "port": collector_port, **config}}]
    return await gateway({"services": [service("dd1", f"http://127.0.0.1:{backend.port}", [
        {"name": "r", "paths": ["/"], "plugins": plugins}])]})


async def test_datadog_a_datagram_the_agent_refused_is_lost_and_the_batch_not_sent_again(nursery, gateway):
    """datadog/statsd_logger.lua's send_statsd logs a failed send and goes on; send_entries_to_datadog returns true,
    so Kong's queue never sends the batch again: with the agent's port closed, a request's lines are lost, and once
    the agent is back the next request's lines arrive once each (no earlier line repeated)."""
    first = Collector()
    await nursery.start(first.serve)
    port_no = first.port
    first.close()  # the port answers ICMP port unreachable: sends on the connected socket fail
    await trio.sleep(0.05)
    port = await _datadog(nursery, gateway, port_no, queue={"initial_retry_delay": 0.01, "max_retry_delay": 0.05,
                                                             "max_coalescing_delay": 0.01})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/first")).status == 200
    await trio.sleep(0.3)  # its lines were sent (and refused), or retried meanwhile
    again = Collector(port_no)
    await nursery.start(again.serve)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/second")).status == 200
    await wait_until(lambda: len(again.datagrams) >= 6, "6 datagrams")
    await trio.sleep(0.4)
    lines = [d.decode() for d in again.datagrams]
    assert len(lines) == 6, lines
    assert sum(line.startswith("kong.request.count:1|c|") for line in lines) == 1, lines


async def test_datadog_a_serviceless_route_tags_an_empty_service_name(nursery, gateway):
    """08-datadog/01-log_spec.lua "datadog plugin is triggered for serviceless routes": every line is sent, its
    service tag empty (`name:,`); request-termination answered, so the upstream latency is -1."""
    collector = Collector()
    await nursery.start(collector.serve)
    port = await gateway({"routes": [{"name": "serviceless", "paths": ["/serviceless"], "plugins": [
        {"name": "request-termination", "config": {"status_code": 200, "message": "OK"}},
        {"name": "datadog", "config": {"host": "127.0.0.1", "port": collector.port}}]}]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/serviceless")
    assert (reply.status, json.loads(reply.body)) == (200, {"message": "OK"})
    lines = await collector.received(6)
    assert all("|#name:,status:200,app:kong" in line for line in lines), lines
    assert "kong.upstream_latency:-1|ms|#name:,status:200,app:kong" in lines


async def test_datadog_a_request_no_route_matched_is_sent_without_a_service(nursery, gateway):
    """08-datadog/01-log_spec.lua "should not return a runtime error (regression)": a global datadog logs the 404
    of a request no route matched, with an empty service name tag."""
    collector = Collector()
    await nursery.start(collector.serve)
    port = await gateway({"services": [service("dd1", "http://127.0.0.1:1", [{"paths": ["/api"]}])],
                          "plugins": [{"name": "datadog", "config": {
                              "host": "127.0.0.1", "port": collector.port,
                              "metrics": [{"name": "request_count", "stat_type": "counter", "sample_rate": 1}]}}]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/NonMatch")).status == 404
    assert await collector.received(1) == ["kong.request.count:1|c|#name:,status:404"]


async def test_statsd_and_datadog_send_to_the_agents_new_address_once_its_ttl_passed(nursery, gateway):
    """kong/plugins/statsd/log.lua:369-370 and datadog/handler.lua:52 make a new logger for every batch, whose UDP
    socket's setpeername (statsd_logger.lua:103, datadog/statsd_logger.lua:30) Kong resolves with its DNS client
    (kong/globalpatches.lua:567 `client.toip`, cached for the record's TTL): once an agent's record changed and
    its TTL passed, the metrics go to the agent's new address."""
    names = await serve_names(nursery, {"statsd.test": ["127.0.0.1"], "datadog.test": ["127.0.0.1"]}, ttl=1)
    backend = EchoBackend()
    await nursery.start(backend.serve)
    metric = {"name": "request_count", "stat_type": "counter", "sample_rate": 1}
    agents, routes = {}, []
    for plugin in ("statsd", "datadog"):
        old = Collector(0, "127.0.0.1")
        await nursery.start(old.serve)
        new = Collector(old.port, "127.0.0.2")
        await nursery.start(new.serve)
        agents[plugin] = (old, new)
        config = {"host": f"{plugin}.test", "port": old.port, "metrics": [metric]}
        routes.append({"paths": [f"/{plugin}"], "plugins": [{"name": plugin, "config": config}]})
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}", routes)]},
                         **names.settings)
    with trio.fail_after(TIMEOUT):
        for plugin, (old, _) in agents.items():
            assert (await request(port, "GET", f"/{plugin}")).status == 200
            await wait_until(lambda old=old: old.datagrams, f"{plugin}'s first datagram")
    names.names = {"statsd.test": ["127.0.0.2"], "datadog.test": ["127.0.0.2"]}  # the agents moved
    with trio.move_on_after(6):  # the TTL is 1 s: Kong's resolver has the new address well before this
        while not all(new.datagrams for _, new in agents.values()):
            for plugin in agents:
                assert (await request(port, "GET", f"/{plugin}")).status == 200
            await trio.sleep(0.25)
    assert {plugin: bool(new.datagrams) for plugin, (_, new) in agents.items()} == {"statsd": True, "datadog": True}


# --- prometheus ----------------------------------------------------------------------------------------------------


def sample(name: str, **labels: str) -> float | None:
    RECORDER.flush()
    return REGISTRY.get_sample_value(name, labels)


async def logged(route: str, n: int) -> None:
    """Wait until the log phase has run for `n` requests of the gateway's route `route` (its own
    gateway_requests_total is counted in the same step as the plugins' log steps)."""

    def count() -> float:
        RECORDER.flush()
        return sum(s.value for m in REGISTRY.collect() if m.name == "gateway_requests" for s in m.samples
                   if s.name.endswith("_total") and s.labels.get("route") == route)

    await wait_until(lambda: count() >= n, f"{n} requests of {route} logged")


async def _prometheus(nursery: trio.Nursery, gateway, config: dict, *, svc: str, route: str,  # noqa: ANN001
                      key_auth: bool = False, others: tuple[dict, ...] = ()) -> int:
    """An echo backend behind route `route` of service `svc` with a prometheus plugin of `config` (and key-auth,
    and the `others` plugins): the gateway's port."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    plugins = [*others, {"name": "prometheus", "config": config}] + ([{"name": "key-auth"}] if key_auth else [])
    return await gateway({"services": [service(svc, f"http://127.0.0.1:{backend.port}", [
        {"name": route, "paths": ["/"], "plugins": plugins}])], "consumers": CONSUMERS})


def requests_total(svc: str, route: str, code: str, source: str, consumer: str = "") -> float | None:
    return sample("kong_http_requests_total", service=svc, route=route, code=code, source=source,
                  workspace="default", consumer=consumer)


async def test_prometheus_counts_proxied_requests_by_status_and_source(nursery, gateway):
    """02-access_spec.lua "increments the count for proxied requests": code 200 and 400 answered by the upstream,
    source "service", workspace "default", consumer "" (per_consumer off)."""
    svc, route = unique("svc"), unique("route")
    port = await _prometheus(nursery, gateway, {"status_code_metrics": True}, svc=svc, route=route)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/status")).status == 200
        assert (await request(port, "GET", "/status?status=400")).status == 400
    await logged(route, 2)
    assert requests_total(svc, route, "200", "service") == 1
    assert requests_total(svc, route, "400", "service") == 1


async def test_prometheus_per_consumer_labels_the_username_and_a_refused_request_has_none(nursery, gateway):
    """02-access_spec.lua "per-consumer metrics": consumer="alice" for her requests; "behave correctly if consumer is
    not found": key-auth's 401 is counted with source "kong" and consumer ""."""
    svc, route = unique("svc"), unique("route")
    port = await _prometheus(nursery, gateway, {"per_consumer": True, "status_code_metrics": True,
                                                "bandwidth_metrics": True}, svc=svc, route=route, key_auth=True)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/", headers=KEY)).status == 200
        assert (await request(port, "GET", "/")).status == 401
    await logged(route, 2)
    assert requests_total(svc, route, "200", "service", "alice") == 1
    assert requests_total(svc, route, "401", "kong") == 1
    assert requests_total(svc, route, "200", "service") is None
    assert (sample("kong_bandwidth_bytes", service=svc, route=route, direction="ingress", workspace="default",
                   consumer="alice") or 0) > 0


async def test_prometheus_a_serviceless_route_is_labelled_with_an_empty_service(gateway):
    """05-metrics_spec.lua "expose metrics in no service route": service="", the route's name, source "kong"
    (request-termination answered)."""
    route = unique("serverless")
    port = await gateway({"routes": [{"name": route, "paths": ["/serverless"], "plugins": [
        {"name": "request-termination", "config": {"status_code": 200, "message": "terminated"}},
        {"name": "prometheus", "config": {"status_code_metrics": True}}]}]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/serverless")).status == 200
    await logged(route, 1)
    assert requests_total("", route, "200", "kong") == 1


async def test_prometheus_an_unnamed_service_is_its_host_and_an_unnamed_route_its_id(nursery, gateway):
    """exporter.lua's log: service label `service.name or service.host`, route label `route.name or route.id`."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    route_id = "6f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
    host = f"h{next(_names)}.localhost"
    port = await gateway({"services": [{"host": host, "port": backend.port, "protocol": "http", "routes": [
        {"id": route_id, "paths": ["/"], "plugins": [{"name": "prometheus",
                                                      "config": {"status_code_metrics": True}}]}]}]})
    with trio.fail_after(TIMEOUT):
        await request(port, "GET", "/")

    def labelled() -> list[str]:
        RECORDER.flush()
        return [s.labels["service"] for m in REGISTRY.collect() if m.name == "kong_http_requests"
                for s in m.samples if s.labels.get("route") == route_id and s.labels["service"].startswith("h")]

    assert host in await wait_until(labelled, "the request counted")


async def test_prometheus_records_only_the_families_its_switches_turn_on(nursery, gateway):
    """02-access_spec.lua "granular metrics switch": latency_metrics alone records the three latency histograms
    (kong, upstream, request) and neither http_requests_total nor bandwidth_bytes."""
    svc, route = unique("svc"), unique("route")
    port = await _prometheus(nursery, gateway, {"latency_metrics": True}, svc=svc, route=route)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/")).status == 200
    await logged(route, 1)
    labels = {"service": svc, "route": route, "workspace": "default"}
    for family in ("kong_kong_latency_ms", "kong_upstream_latency_ms", "kong_request_latency_ms"):
        assert sample(f"{family}_count", **labels) == 1, family
    assert requests_total(svc, route, "200", "service") is None
    assert sample("kong_bandwidth_bytes", service=svc, route=route, direction="ingress", workspace="default",
                  consumer="") is None


async def test_prometheus_no_upstream_answer_observes_no_upstream_latency(nursery, gateway):
    """exporter.lua observes upstream_latency_ms only when latencies.proxy >= 0: a request a plugin answered has
    -1 (kong.log.serialize), so the request and kong latencies are observed, the upstream's not."""
    svc, route = unique("svc"), unique("route")
    port = await _prometheus(nursery, gateway, {"latency_metrics": True}, svc=svc, route=route, key_auth=True)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/")).status == 401
    await logged(route, 1)
    labels = {"service": svc, "route": route, "workspace": "default"}
    assert sample("kong_request_latency_ms_count", **labels) == 1
    assert sample("kong_kong_latency_ms_count", **labels) == 1
    assert sample("kong_upstream_latency_ms_count", **labels) is None


async def test_prometheus_bandwidth_counts_both_directions(nursery, gateway):
    """exporter.lua: bandwidth_bytes{direction="ingress"} grows by the request's size, egress by the response's;
    consumer "" without per_consumer."""
    svc, route = unique("svc"), unique("route")
    port = await _prometheus(nursery, gateway, {"bandwidth_metrics": True}, svc=svc, route=route)
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/", body=b"x" * 100)
    assert reply.status == 200
    await logged(route, 1)
    common = {"service": svc, "route": route, "workspace": "default", "consumer": ""}
    assert (sample("kong_bandwidth_bytes", direction="ingress", **common) or 0) > 100
    assert (sample("kong_bandwidth_bytes", direction="egress", **common) or 0) > len(reply.body)


CACHE = {"name": "proxy-cache", "config": {"strategy": "memory", "content_type": ["*"]}}
LARGE = "/?bytes=7000000"  # an echo answer larger than the kernel's buffers on both sides (net.core.wmem_max: 4 MiB)


async def _cached_large_answer(port: int, route: str) -> None:
    """LARGE fetched once (a Miss, stored by proxy-cache): the next request of it is a Hit."""
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", LARGE)).header("x-cache-status") == "Miss"
    await logged(route, 1)


def _slow_client() -> trio.socket.SocketType:
    """A client socket whose receive buffer holds 4 KB: a large answer waits in the gateway's write, not here."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_prometheus_a_proxy_cache_hit_is_observed_in_upstream_latency(nursery, gateway):
    """A hit counts as proxied in Kong: kong/plugins/proxy-cache/handler.lua:334 `nctx.KONG_PROXIED = true` before
    its exit, so kong/init.lua:1630-1633 (header_filter) sets KONG_WAITING_TIME (about 0), kong/pdk/log.lua:921
    serializes it as latencies.proxy, and kong/plugins/prometheus/exporter.lua:360-362 observes
    kong_upstream_latency_ms when it is >= 0: a miss and a hit are two observations."""
    svc, route = unique("svc"), unique("route")
    port = await _prometheus(nursery, gateway, {"latency_metrics": True}, svc=svc, route=route, others=(CACHE,))
    with trio.fail_after(TIMEOUT):
        miss = await request(port, "GET", "/")
        hit = await request(port, "GET", "/")
    assert (miss.header("x-cache-status"), hit.header("x-cache-status")) == ("Miss", "Hit")
    await logged(route, 2)
    labels = {"service": svc, "route": route, "workspace": "default"}
    assert sample("kong_request_latency_ms_count", **labels) == 2
    assert sample("kong_upstream_latency_ms_count", **labels) == 2


async def test_prometheus_kong_latency_of_a_gateways_answer_ends_at_its_head_not_when_the_client_read_it(
        nursery, gateway):
    """kong_kong_latency_ms observes latencies.kong = `KONG_PROXY_LATENCY or KONG_RESPONSE_LATENCY` (kong/pdk/
    log.lua:920), which kong/init.lua sets before a byte of the body goes: in header_filter (1636-1638 for a hit,
    KONG_PROXIED; 1641-1643 otherwise) or at the end of access (1214, a plugin's exit). The time a slow client takes
    to read a large cached answer is in the request latency only."""
    svc, route = unique("svc"), unique("route")
    port = await _prometheus(nursery, gateway, {"latency_metrics": True}, svc=svc, route=route, others=(CACHE,))
    await _cached_large_answer(port, route)
    labels = {"service": svc, "route": route, "workspace": "default"}
    kong_before = sample("kong_kong_latency_ms_sum", **labels) or 0.0
    request_before = sample("kong_request_latency_ms_sum", **labels) or 0.0
    with trio.fail_after(TIMEOUT):
        sock = _slow_client()
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        try:
            await stream.send_all(f"GET {LARGE} HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n".encode())
            await trio.sleep(1)  # reads nothing for a second
            received = bytearray()
            while chunk := await stream.receive_some(1 << 20):
                received += chunk
        finally:
            await stream.aclose()
    assert b"x-cache-status: hit" in bytes(received).partition(b"\r\n\r\n")[0].lower()
    assert len(received) > 7_000_000
    await logged(route, 2)
    request_ms = (sample("kong_request_latency_ms_sum", **labels) or 0.0) - request_before
    kong_ms = (sample("kong_kong_latency_ms_sum", **labels) or 0.0) - kong_before
    assert request_ms >= 800  # the send to the slow client is in the request's latency, as in Kong
    assert kong_ms < 400, f"kong latency of a cache hit {kong_ms:.0f} ms: the slow client's read time"


async def test_prometheus_ingress_is_the_head_the_client_sent_not_the_headers_a_plugin_changed(nursery, gateway):
    """kong/plugins/prometheus/handler.lua:46 `serialized.ingress_size = tonumber(message.request.size)`, which
    kong/pdk/log.lua:909 takes from nginx's $request_length: the bytes read from the client (release-1.27.1
    src/http/ngx_http_request.c:1124 the request line, :1454, :1519 each header line as read). A header
    request-transformer adds for the upstream was never received, and one it removes was."""
    svc, route = unique("svc"), unique("route")
    transformer = {"name": "request-transformer", "config": {"add": {"headers": ["x-added:" + "a" * 1000]},
                                                             "remove": {"headers": ["x-gone"]}}}
    port = await _prometheus(nursery, gateway, {"bandwidth_metrics": True}, svc=svc, route=route,
                             others=(transformer,))
    raw = b"GET / HTTP/1.1\r\nhost: gw.test\r\nx-gone: 1\r\nconnection: close\r\n\r\n"
    assert await _ingress_of(port, raw, svc, route) == len(raw)


async def _ingress_of(port: int, raw: bytes, svc: str, route: str) -> float | None:
    """The route's ingress bytes once the request `raw` was answered 200 and logged."""
    received, _ = await raw_exchange(port, raw, timeout=TIMEOUT)
    assert received.startswith(b"HTTP/1.1 200 ")
    await logged(route, 1)
    return sample("kong_bandwidth_bytes", service=svc, route=route, direction="ingress", workspace="default",
                  consumer="")


async def test_prometheus_ingress_counts_a_chunked_bodys_framing(nursery, gateway):
    """nginx's $request_length (Kong's ingress, as above) adds a body's bytes as read off the socket, before the
    chunked filter decodes them (release-1.27.1 src/http/ngx_http_request_body.c:120 the part read with the head,
    :397 `r->request_length += n` per read): chunk-size lines and CRLFs count. Twenty 1-byte chunks are 125 bytes
    on the wire, not 20."""
    svc, route = unique("svc"), unique("route")
    port = await _prometheus(nursery, gateway, {"bandwidth_metrics": True}, svc=svc, route=route)
    raw = (b"POST / HTTP/1.1\r\nhost: gw.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
           + b"1\r\nx\r\n" * 20 + b"0\r\n\r\n")
    assert await _ingress_of(port, raw, svc, route) == len(raw)


async def test_prometheus_egress_of_an_aborted_download_is_what_the_kernel_took(nursery, gateway):
    """kong/plugins/prometheus/handler.lua:45 `serialized.egress_size = tonumber(message.response.size)`, from
    nginx's $bytes_sent (kong/pdk/log.lua:917): r->connection->sent (release-1.27.1 src/http/ngx_http_variables.c:
    1784), grown only by what writev() returned (src/os/unix/ngx_writev_chain.c:91 `c->sent += sent`). A client
    that reads 20 KB of a 7 MB hit and resets the connection got at most what the kernel's buffers took."""
    svc, route = unique("svc"), unique("route")
    port = await _prometheus(nursery, gateway, {"bandwidth_metrics": True}, svc=svc, route=route, others=(CACHE,))
    await _cached_large_answer(port, route)
    labels = {"service": svc, "route": route, "workspace": "default", "consumer": ""}
    before = sample("kong_bandwidth_bytes", direction="egress", **labels) or 0.0
    sock = _slow_client()
    try:
        with trio.fail_after(TIMEOUT):
            await sock.connect(("127.0.0.1", port))
            await sock.send(f"GET {LARGE} HTTP/1.1\r\nhost: gw.test\r\n\r\n".encode())
            received = bytearray()
            while len(received) < 20_000:
                received += await sock.recv(4096)
            await trio.sleep(0.5)  # the gateway's write fills the kernel's buffers, and waits
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset: a client killed
        sock.close()
    assert b"x-cache-status: hit" in bytes(received).partition(b"\r\n\r\n")[0].lower()
    await logged(route, 2)
    egress = (sample("kong_bandwidth_bytes", direction="egress", **labels) or 0.0) - before
    assert 20_000 <= egress < 7_000_000, f"{egress:.0f} bytes counted sent to a client that read {len(received)}"


WEIGHT_0 = """_format_version: '3.0'
upstreams:
  - name: prom-w0
    healthchecks: {active: {healthy: {interval: 5}, unhealthy: {interval: 5}}}
    targets: [{target: '127.0.0.1:9001', weight: 100}, {target: '127.0.0.1:9002', weight: 0}]
services:
  - {name: s, host: prom-w0}
routes:
  - {name: r, service: s, paths: ['/']}
plugins:
  - {name: prometheus, config: {upstream_health_metrics: true}}
"""


def test_prometheus_a_weight_0_target_of_a_checked_upstream_is_healthchecks_off():
    """healthcheckers.lua get_upstream_health: `if using_hc and target.weight > 0` HEALTHY / UNHEALTHY, else
    HEALTHCHECKS_OFF, which exporter.lua labels kong_upstream_target_health with (lowercased): a weight-0 target of
    an upstream that checks is healthchecks_off, as the Status API says too (08-targets_routes_spec)."""
    from gateway.keeper.state import Keeper
    from gateway.metrics import KONG_TARGET_HEALTH

    keeper = Keeper(parse_config(WEIGHT_0), workers=1)
    keeper.sample_metrics()
    states = {(labels[1], labels[3]): child._value.get()
              for labels, child in KONG_TARGET_HEALTH._metrics.items() if labels[0] == "prom-w0"}
    on = sorted(key for key, value in states.items() if value == 1)
    assert on == [("127.0.0.1:9001", "healthy"), ("127.0.0.1:9002", "healthchecks_off")]  # weight 100: checked
