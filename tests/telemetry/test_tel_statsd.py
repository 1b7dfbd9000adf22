"""statsd through the gateway (in-process, real sockets) to a statsd server stand-in in the test, and its lines and
UDP packets without I/O. The cases follow Kong's spec (spec/03-plugins/06-statsd/01-log_spec.lua, 02-schema_spec.lua,
03-allow_status_codes_spec.lua): docstrings quote the `it(...)` they come from. Values Kong's spec matches with %d+
(sizes, latencies) are matched with \\d+ here; everything else is exact. Tags, which Kong emits in Lua's hash order,
are compared as sets, as Kong's spec leaves their order open."""

from __future__ import annotations

import json
import logging
import re
import socket

import msgspec
import pytest
import trio
import trio.testing
from backends import EchoBackend, UdpCollector, free_port, request, service, wait_until
from test_tel_datadog import unresolvable

from gateway.config import ConfigError, parse_config
from gateway.policies.statsd.handler import HOSTNAME, Statsd
from gateway.policies.statsd.lines import Formatter, Packer, rate_suffix
from gateway.policies.statsd.schema import DEFAULT_METRICS, StatsdConfig
from gateway.runtime import compile_config
from gateway.telemetry.batch import QUEUES, QueueConfig, Queues
from gateway.telemetry.sender import SendError
from gateway.telemetry.tcp_sender import TcpSender
from gateway.telemetry.udp_sender import UdpSender

TIMEOUT = 10
SERVICE_ID = "0b3f1a52-7c1e-4c55-9d2a-5a1f0c9e7a01"
ROUTE_ID = "6f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
WS = "0dc6f45b-8f8d-40d2-a504-473544ee190b"  # DB-less Kong's default workspace id (the serializer's workspace)
CONSUMER_ID = "c0ffee00-1234-4abc-8def-0123456789ab"
CONSUMER = {"id": CONSUMER_ID, "username": "bob", "custom_id": "robert", "keyauth_credentials": [{"key": "kong"}]}
HOST = socket.gethostname().replace(".", "_")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
KEY = "/request?apikey=kong"


@pytest.fixture
def http_codec() -> str:
    """One codec: what is checked here is above HTTP framing."""
    return "llhttp"


async def sent_out(port: int) -> None:
    """Once this returns, everything the in-process gateway queued for the collector on `port` has been sent and
    read: the queues sending to it are drained (what they hold goes out, the batches in flight are waited for), and,
    twice, every task of the test (the gateway's, the collector's) waits with nothing to read."""
    with trio.fail_after(TIMEOUT):
        for _ in range(2):
            for queue in list(QUEUES.queues.values()):
                sender = getattr(getattr(queue.handler, "__self__", None), "sender", None)
                if isinstance(sender, UdpSender | TcpSender) and sender.port == port:
                    await queue.drain()
            await trio.testing.wait_all_tasks_blocked()


class Collector(UdpCollector):
    """backends.UdpCollector, whose `received` waits until the gateway has nothing left to send it (`sent_out`)
    instead of a fixed pause in which no more may come."""

    async def received(self, n: int) -> list[str]:
        """The first `n` datagrams as text, once they came and nothing more is to come."""
        await wait_until(lambda: len(self.datagrams) >= n, f"{n} datagrams")
        await sent_out(self.port)
        assert len(self.datagrams) == n, self.datagrams
        return [d.decode() for d in self.datagrams]


class TcpCollector:
    """A statsd server stand-in on a TCP port: the newline-terminated lines of every connection."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.data = b""

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.abc.Stream) -> None:
        try:
            while chunk := await stream.receive_some(65536):
                self.data += chunk
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def statsd(port: int, **config: object) -> dict:
    return {"name": "statsd", "config": {"host": "127.0.0.1", "port": port, **config}}


async def proxied(nursery: trio.Nursery, gateway, collector_port: int, key_auth: bool = True,  # noqa: ANN001
                  name: str | None = "statsd1", service_fields: dict | None = None, **config: object) -> int:
    """An echo backend behind service `name` (None: unnamed), its route (ROUTE_ID) with statsd (and key-auth)."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    plugins = [statsd(collector_port, **config)] + ([{"name": "key-auth"}] if key_auth else [])
    routes = [{"id": ROUTE_ID, "paths": ["/"], "plugins": plugins}]
    svc = service(name or "x", f"http://127.0.0.1:{backend.port}", routes, id=SERVICE_ID, **(service_fields or {}))
    if name is None:
        del svc["name"]
    return await gateway({"services": [svc], "consumers": [CONSUMER]})


async def sent(nursery: trio.Nursery, gateway, n: int, target: str = KEY,  # noqa: ANN001
               **kwargs: object) -> list[str]:
    """The `n` datagrams statsd sends for one request to `target` through a gateway set up by `proxied`."""
    collector = Collector()
    await nursery.start(collector.serve)
    port = await proxied(nursery, gateway, collector.port, **kwargs)  # type: ignore[arg-type]
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", target)
    assert reply.status == 200, reply.body
    return await collector.received(n)


def matches(lines: list[str], expected: list[str]) -> None:
    """Each line fullmatches its expected form, in order: `{n}` is a number, `{uuid}` a UUID, the rest literal."""
    patterns = [re.escape(e).replace(re.escape("{n}"), r"\d+").replace(re.escape("{uuid}"), UUID) for e in expected]
    assert len(lines) == len(expected), lines
    for line, pattern, form in zip(lines, patterns, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, form)


# the shape of each tag style (statsd_logger.lua's create_statsd_message): name, tags, value and type
_TAGGED = {
    "dogstatsd": re.compile(r"(?P<name>[^:|#]+):(?P<value>[^|]+\|[a-z]+)\|#(?P<tags>.*)"),
    "influxdb": re.compile(r"(?P<name>[^,:]+),(?P<tags>.*):(?P<value>[^:|]+\|[a-z]+)"),
    "librato": re.compile(r"(?P<name>[^#:]+)#(?P<tags>.*):(?P<value>[^:|]+\|[a-z]+)"),
    "signalfx": re.compile(r"(?P<name>[^\[:]+)\[(?P<tags>.*)\]:(?P<value>[^:|]+\|[a-z]+)"),
}


def tagged(style: str, line: str) -> tuple[str, str, set[str]]:
    """(name, value|type, the tags as "key=value") of a line in `style`; fails when the line has another shape."""
    m = _TAGGED[style].fullmatch(line)
    assert m is not None, (style, line)
    tags = m["tags"].split(",")
    if style == "dogstatsd":
        tags = [t.replace(":", "=", 1) for t in tags]
    return m["name"], m["value"], set(tags)


def kong_message(**changes: object) -> dict:
    """A message as log.lua reads Kong's serializer table: service statsd1, a route, consumer bob (robert)."""
    message = {"service": {"id": SERVICE_ID, "name": "statsd1", "host": "backend.test"}, "route": {"id": ROUTE_ID},
               "consumer": {"id": CONSUMER_ID, "username": "bob", "custom_id": "robert"},
               "request": {"size": 120}, "response": {"status": 200, "size": 340},
               "latencies": {"request": 12, "proxy": 7, "kong": 3}, "workspace": WS,
               "workspace_name": "default"}
    message.update(changes)
    return message


def formatter(**config: object) -> Formatter:
    return Formatter(msgspec.convert(config, StatsdConfig), "node_1")


def refused(config: dict) -> str:
    """The config error of a global statsd plugin with this config."""
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}],
           "plugins": [{"name": "statsd", "config": config}]}
    with pytest.raises(ConfigError) as err:
        compile_config(parse_config(json.dumps(doc)))
    return str(err.value)


DEFAULT_LINES = [
    "kong.service.statsd1.request.count:1|c",
    "kong.service.statsd1.latency:{n}|ms",
    "kong.service.statsd1.request.size:{n}|c",
    "kong.service.statsd1.status.200:1|c",
    "kong.service.statsd1.response.size:{n}|c",
    "kong.service.statsd1.user.uniques:robert|s",
    "kong.service.statsd1.user.robert.request.count:1|c",
    "kong.service.statsd1.upstream_latency:{n}|ms",
    "kong.service.statsd1.kong_latency:{n}|ms",
    "kong.service.statsd1.user.robert.status.200:1|c",
    f"kong.service.statsd1.workspace.{WS}.status.200:1|c",
    f"kong.route.{ROUTE_ID}.user.robert.status.200:1|c",
]


# --- through the gateway, over UDP ---------------------------------------------------------------------------------


async def test_logs_over_udp_with_default_metrics(nursery, gateway):
    """"logs over UDP with default metrics" and "won't send the same metric multiple times": Kong's 12 lines (its
    shdict_usage gauges are not sent: the gateway has no shared dicts), a datagram each, in the metrics' order."""
    matches(await sent(nursery, gateway, 12), DEFAULT_LINES)


async def test_the_route_and_consumer_ids_are_kongs_declarative_ids_when_the_config_has_none(nursery, gateway):
    """Kong's spec matches the route of status_count_per_user_per_route with a UUID pattern: entities without an id
    get the one Kong's declarative loader would give them."""
    collector = Collector()
    await nursery.start(collector.serve)
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("statsd1", f"http://127.0.0.1:{backend.port}", [
        {"paths": ["/"], "plugins": [statsd(collector.port, metrics=[
            {"name": "status_count_per_user_per_route", "stat_type": "counter", "sample_rate": 1,
             "consumer_identifier": "consumer_id"}]), {"name": "key-auth"}]}])],
        "consumers": [{"username": "bob", "keyauth_credentials": [{"key": "kong"}]}]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", KEY)).status == 200
    matches(await collector.received(1), ["kong.route.{uuid}.user.{uuid}.status.200:1|c"])


@pytest.mark.parametrize("style", ["dogstatsd", "influxdb", "librato", "signalfx"])
async def test_logs_over_udp_with_default_metrics_with_a_tag_style(nursery, gateway, style):
    """"logs over UDP with default metrics with <style> tag_style": the six metrics log.lua does not skip in tag
    mode, named without a scope, tagged with the service, route (its id: it has no name), workspace, consumer,
    node and status."""
    lines = await sent(nursery, gateway, 6, tag_style=style)
    tags = {"service=statsd1", f"route={ROUTE_ID}", f"workspace={WS}", "consumer=robert", f"node={HOST}",
            "status=200"}
    parsed = [tagged(style, line) for line in lines]
    assert [name for name, _, _ in parsed] == ["kong.request.count", "kong.latency", "kong.request.size",
                                               "kong.response.size", "kong.upstream_latency", "kong.kong_latency"]
    assert all(t == tags for _, _, t in parsed), parsed
    assert [re.sub(r"\d+", "N", value) for _, value, _ in parsed] == ["N|c", "N|ms", "N|c", "N|c", "N|ms", "N|ms"]
    assert parsed[0][1] == "1|c"


async def test_logs_over_udp_with_default_metrics_and_new_prefix(nursery, gateway):
    """"logs over UDP with default metrics and new prefix"."""
    lines = await sent(nursery, gateway, 12, prefix="prefix")
    matches(lines, [line.replace("kong.", "prefix.", 1) for line in DEFAULT_LINES])


async def test_logs_over_udp_with_default_metrics_and_new_prefix_with_a_tag_style(nursery, gateway):
    """"logs over UDP with default metrics and new prefix with dogstatsd tag_style"."""
    lines = await sent(nursery, gateway, 6, prefix="prefix", tag_style="dogstatsd")
    assert [tagged("dogstatsd", line)[0] for line in lines] == [
        "prefix.request.count", "prefix.latency", "prefix.request.size", "prefix.response.size",
        "prefix.upstream_latency", "prefix.kong_latency"]


@pytest.mark.parametrize("style", ["dogstatsd", "influxdb", "librato", "signalfx"])
async def test_request_size_customer_identifier_with_a_tag_style(nursery, gateway, style):
    """"request_size customer identifier with <style> tag_style": the metric's own identifiers name the tags."""
    metric = {"name": "request_size", "stat_type": "counter", "sample_rate": 1, "service_identifier": "service_id",
              "workspace_identifier": "workspace_name", "consumer_identifier": "consumer_id"}
    [line] = await sent(nursery, gateway, 1, tag_style=style, metrics=[metric])
    name, value, tags = tagged(style, line)
    assert (name, re.sub(r"\d+", "N", value)) == ("kong.request.size", "N|c")
    assert tags == {f"service={SERVICE_ID}", f"route={ROUTE_ID}", "workspace=default", f"consumer={CONSUMER_ID}",
                    f"node={HOST}", "status=200"}


def _metric(name: str, stat_type: str = "counter", **fields: object) -> dict:
    if stat_type in ("counter", "gauge"):
        fields.setdefault("sample_rate", 1)
    return {"name": name, "stat_type": stat_type, **fields}


@pytest.mark.parametrize(("metric", "line"), [
    pytest.param(_metric("request_count"), "kong.service.statsd1.request.count:1|c", id="request_count"),
    pytest.param(_metric("status_count"), "kong.service.statsd1.status.200:1|c", id="status_count"),
    pytest.param(_metric("request_size"), "kong.service.statsd1.request.size:{n}|c", id="request_size"),
    pytest.param(_metric("latency", "timer"), "kong.service.statsd1.latency:{n}|ms", id="latency"),
    pytest.param(_metric("response_size"), "kong.service.statsd1.response.size:{n}|c", id="response_size"),
    pytest.param(_metric("upstream_latency", "timer"), "kong.service.statsd1.upstream_latency:{n}|ms",
                 id="upstream_latency"),
    pytest.param(_metric("kong_latency", "timer"), "kong.service.statsd1.kong_latency:{n}|ms", id="kong_latency"),
    pytest.param(_metric("unique_users", "set", consumer_identifier="custom_id"),
                 "kong.service.statsd1.user.uniques:robert|s", id="unique_users"),
    pytest.param(_metric("status_count_per_user", consumer_identifier="custom_id"),
                 "kong.service.statsd1.user.robert.status.200:1|c", id="status_count_per_user"),
    pytest.param(_metric("request_per_user", consumer_identifier="username"),
                 "kong.service.statsd1.user.bob.request.count:1|c", id="request_per_user"),
    pytest.param(_metric("latency", "gauge"), "kong.service.statsd1.latency:{n}|g", id="latency as gauge"),
    pytest.param(_metric("unique_users", "set", consumer_identifier="consumer_id"),
                 f"kong.service.statsd1.user.uniques:{CONSUMER_ID}|s", id="consumer by consumer_id"),
    pytest.param(_metric("status_count_per_user_per_route", consumer_identifier="username"),
                 f"kong.route.{ROUTE_ID}.user.bob.status.200:1|c", id="status_count_per_user_per_route"),
    pytest.param(_metric("status_count_per_workspace", workspace_identifier="workspace_id"),
                 f"kong.service.statsd1.workspace.{WS}.status.200:1|c", id="status_count_per_workspace by id"),
    pytest.param(_metric("status_count_per_workspace", workspace_identifier="workspace_name"),
                 "kong.service.statsd1.workspace.default.status.200:1|c", id="status_count_per_workspace by name"),
    pytest.param(_metric("request_size", "histogram"), "kong.service.statsd1.request.size:{n}|h", id="histogram"),
    pytest.param(_metric("response_size", "meter"), "kong.service.statsd1.response.size:{n}|m", id="meter"),
    pytest.param(_metric("request_count", "set"), "kong.service.statsd1.request.count:1|s", id="set"),
    pytest.param(_metric("request_count", sample_rate=0.5), "kong.service.statsd1.request.count:1|c|@0.5",
                 id="sample_rate"),
    pytest.param(_metric("unique_users", "set", sample_rate=0.5), "kong.service.statsd1.user.uniques:robert|s",
                 id="a set's sample_rate is not written"),
])
async def test_each_metric(nursery, gateway, metric, line):
    """Kong's "request_count", "status_count", ..., "consumer by consumer_id", "status_count_per_user_per_route",
    "status_count_per_workspace" (its ids name them here), and each stat type and a sample rate."""
    matches(await sent(nursery, gateway, 1, metrics=[metric]), [line])


async def test_the_consumer_identifier_default_names_the_user(nursery, gateway):
    """consumer_identifier_default (Kong's default custom_id) for metrics that name none."""
    metrics = [_metric("request_per_user"), _metric("unique_users", "set")]
    lines = await sent(nursery, gateway, 2, metrics=metrics, consumer_identifier_default="username")
    assert lines == ["kong.service.statsd1.user.bob.request.count:1|c", "kong.service.statsd1.user.uniques:bob|s"]


async def test_per_user_metrics_need_a_consumer_with_the_identifier(nursery, gateway):
    """No consumer (no key-auth), or a consumer without the identifier: the per-user metrics are not sent."""
    metrics = [_metric("request_per_user"), _metric("unique_users", "set"), _metric("status_count_per_user"),
               _metric("status_count_per_user_per_route"), _metric("request_count")]
    assert await sent(nursery, gateway, 1, "/", key_auth=False, metrics=metrics) == [
        "kong.service.statsd1.request.count:1|c"]


SERVICE_LINES = ["kong.service.{0}.request.count:1|c", "kong.service.{0}.status.200:1|c"]


@pytest.mark.parametrize(("identifier", "name", "scope"), [
    pytest.param("service_id", "statsd1", SERVICE_ID, id="logs service by service_id"),
    pytest.param("service_name", "statsd1", "statsd1", id="logs service by service_name"),
    pytest.param("service_host", "statsd1", "127_0_0_1", id="logs service by service_host"),
    pytest.param("service_name_or_host", "statsd1", "statsd1", id="logs service by service_name_or_host"),
    pytest.param("service_name_or_host", None, "127_0_0_1",
                 id="service_name_or_host falls back to service host when service name is not set"),
    pytest.param("service_name", None, "unnamed", id="service_name emits unnamed if service name is not set"),
    pytest.param("service_name", "my.api.v1", "my_api_v1", id="dots in the name are written as underscores"),
])
async def test_service_identifiers(nursery, gateway, identifier, name, scope):
    """Kong's "logs service by ..." cases: the scope is the service's id, name, host (dots as "_"), or unnamed."""
    metrics = [_metric("request_count", service_identifier=identifier),
               _metric("status_count", service_identifier=identifier)]
    lines = await sent(nursery, gateway, 2, name=name, metrics=metrics)
    assert lines == [line.format(scope) for line in SERVICE_LINES]


async def test_the_service_identifier_default_applies_to_metrics_that_name_none(nursery, gateway):
    metrics = [_metric("request_count"), _metric("status_count", service_identifier="service_name")]
    lines = await sent(nursery, gateway, 2, metrics=metrics, service_identifier_default="service_id")
    assert lines == [f"kong.service.{SERVICE_ID}.request.count:1|c", "kong.service.statsd1.status.200:1|c"]


async def test_an_unnamed_service_with_an_id_is_unnamed(nursery, gateway):
    """The loader names an unnamed service by its id (gateway.config.loader); statsd still sees no name."""
    lines = await sent(nursery, gateway, 1, name=None, metrics=[_metric("request_count",
                                                                        service_identifier="service_name")])
    assert lines == ["kong.service.unnamed.request.count:1|c"]


GLOBAL_UNMATCHED = [
    "kong.global.unmatched.request.count:1|c",
    "kong.global.unmatched.latency:{n}|ms",
    "kong.global.unmatched.request.size:{n}|c",
    "kong.global.unmatched.status.404:1|c",
    "kong.global.unmatched.response.size:{n}|c",
    "kong.global.unmatched.kong_latency:{n}|ms",
    f"kong.global.unmatched.workspace.{WS}.status.404:1|c",
]


async def _global(nursery: trio.Nursery, gateway, **config: object) -> Collector:  # noqa: ANN001
    """A global statsd (and key-auth) in front of a service whose only route is /api; then a request no route
    matches, with a valid key."""
    collector = Collector()
    await nursery.start(collector.serve)
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("statsd1", f"http://127.0.0.1:{backend.port}", [{"paths": ["/api"]}])],
                          "consumers": [CONSUMER], "plugins": [statsd(collector.port, **config), {"name": "key-auth"}]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/nowhere?apikey=kong")).status == 404
    return collector


async def test_configured_globally_sends_default_metrics_with_global_unmatched_namespace(nursery, gateway):
    """"sends default metrics with global.matched namespace": no service, no consumer (authentication never ran),
    no upstream latency. Kong's spec counts 6 lines but its UDP server stops reading at 6: log.lua also sends
    status_count_per_workspace (the workspace is known), so 7 lines here."""
    collector = await _global(nursery, gateway)
    matches(await collector.received(7), GLOBAL_UNMATCHED)


async def test_configured_globally_in_batches(nursery, gateway):
    """"Plugin: statsd (log) in batches": queue_size 2 (Kong's deprecated form of queue.max_batch_size): a lone
    request's lines go out after the coalescing delay (1 s)."""
    collector = await _global(nursery, gateway, queue_size=2)
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: len(collector.datagrams) >= 7, "the batch")
    matches(await collector.received(7), GLOBAL_UNMATCHED)


async def test_allow_status_codes_sends_only_the_statuses_in_its_ranges(nursery, gateway):
    collector = Collector()
    await nursery.start(collector.serve)
    port = await proxied(nursery, gateway, collector.port, key_auth=False, allow_status_codes=["200-204", "400-404"],
                         metrics=[_metric("status_count")])
    with trio.fail_after(TIMEOUT):
        for status in (205, 301, 500, 404, 201):
            assert (await request(port, "GET", f"/?status={status}")).status == status
    assert await collector.received(2) == ["kong.service.statsd1.status.404:1|c",
                                           "kong.service.statsd1.status.201:1|c"]


async def test_an_empty_allow_status_codes_sends_nothing(nursery, gateway):
    """As log.lua's is_in_range: an empty list is not "no list"; no status is in it."""
    collector = Collector()
    await nursery.start(collector.serve)
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("statsd1", f"http://127.0.0.1:{backend.port}", [
        {"paths": ["/none"], "plugins": [statsd(collector.port, allow_status_codes=[])]},
        {"paths": ["/all"], "plugins": [statsd(collector.port, metrics=[_metric("request_count")])]}])]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/none")).status == 200
        assert (await request(port, "GET", "/all")).status == 200
    assert await collector.received(1) == ["kong.service.statsd1.request.count:1|c"]


async def test_shdict_usage_sends_nothing(nursery, gateway):
    """Kong's shdict_usage reports nginx's shared dicts; the gateway has none, so it is accepted and sends nothing."""
    lines = await sent(nursery, gateway, 1, metrics=[_metric("shdict_usage", "gauge"), _metric("request_count")])
    assert lines == ["kong.service.statsd1.request.count:1|c"]


METRICS_3 = [_metric("request_count"), _metric("upstream_latency", "timer"), _metric("kong_latency", "timer")]


async def test_combines_udp_packets(nursery, gateway):
    """"combines udp packets": udp_packet_size 500 takes the three lines in one datagram."""
    [datagram] = await sent(nursery, gateway, 1, name="statsd19", metrics=METRICS_3, udp_packet_size=500)
    matches(datagram.split("\n"), ["kong.service.statsd19.request.count:1|c",
                                   "kong.service.statsd19.upstream_latency:{n}|ms",
                                   "kong.service.statsd19.kong_latency:{n}|ms"])


async def test_combines_and_splits_udp_packets(nursery, gateway):
    """"combines and splits udp packets": up to 100 bytes, two lines, then the third alone."""
    first, second = await sent(nursery, gateway, 2, name="statsd20", metrics=METRICS_3, udp_packet_size=100)
    matches(first.split("\n"), ["kong.service.statsd20.request.count:1|c",
                                "kong.service.statsd20.upstream_latency:{n}|ms"])
    matches([second], ["kong.service.statsd20.kong_latency:{n}|ms"])


async def test_udp_packet_size_too_small_sends_each_line_alone(nursery, gateway):
    """"throws an error if udp_packet_size is too small" (its spec checks the lines, not an error): with 1 byte,
    each line is larger than a packet and goes in a datagram of its own."""
    lines = await sent(nursery, gateway, 3, name="statsd21", metrics=METRICS_3, udp_packet_size=1)
    matches(lines, ["kong.service.statsd21.request.count:1|c", "kong.service.statsd21.upstream_latency:{n}|ms",
                    "kong.service.statsd21.kong_latency:{n}|ms"])


async def test_a_batchs_entries_share_the_udp_packets(nursery, gateway):
    """Kong makes one logger per batch of its queue: lines of two requests combine in one datagram."""
    collector = Collector()
    await nursery.start(collector.serve)
    port = await proxied(nursery, gateway, collector.port, key_auth=False, metrics=[_metric("status_count")],
                         udp_packet_size=1000, queue={"max_batch_size": 2, "max_coalescing_delay": 5})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/?status=201")).status == 201
        assert (await request(port, "GET", "/?status=202")).status == 202
    assert await collector.received(1) == ["kong.service.statsd1.status.201:1|c\nkong.service.statsd1.status.202:1|c"]


async def test_hostname_in_prefix_prefixes_metric_names_with_the_hostname(nursery, gateway):
    """"prefixes metric names with the hostname" (hostname_in_prefix): <prefix>.node.<hostname, dots as _>."""
    assert HOSTNAME == HOST
    lines = await sent(nursery, gateway, 1, metrics=[_metric("request_count")], hostname_in_prefix=True)
    assert lines == [f"kong.node.{HOST}.service.statsd1.request.count:1|c"]


async def test_hostname_in_prefix_does_not_work_in_tag_style_mode(nursery, gateway):
    """"hostname_in_prefix not work in tag_style mode": the name keeps the plain prefix; the node is a tag."""
    [line] = await sent(nursery, gateway, 1, metrics=[_metric("request_count")], hostname_in_prefix=True,
                        tag_style="influxdb")
    name, value, tags = tagged("influxdb", line)
    assert (name, value, f"node={HOST}" in tags) == ("kong.request.count", "1|c", True)


async def test_tag_style_without_the_service_identifier_sends_untagged_lines(nursery, gateway):
    """get_tags gives nothing when the service has no such identifier (unnamed, by service_name): the line is
    create_statsd_message's plain form."""
    lines = await sent(nursery, gateway, 1, name=None, tag_style="dogstatsd", service_identifier_default="service_name",
                       metrics=[_metric("request_count")])
    assert lines == ["kong.request.count:1|c"]


async def test_the_values_are_the_serialized_entrys(nursery, gateway):
    """Sizes and latencies are those of Kong's serializer table: the same request's udp-log entry says them."""
    collector, entries = Collector(), Collector()
    await nursery.start(collector.serve)
    await nursery.start(entries.serve)
    backend = EchoBackend()
    await nursery.start(backend.serve)
    metrics = [_metric("request_size"), _metric("response_size"), _metric("latency", "timer"),
               _metric("upstream_latency", "timer"), _metric("kong_latency", "timer")]
    port = await gateway({"services": [service("statsd1", f"http://127.0.0.1:{backend.port}", [
        {"paths": ["/"], "plugins": [statsd(collector.port, metrics=metrics),
                                     {"name": "udp-log", "config": {"host": "127.0.0.1", "port": entries.port}}]}])]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "POST", "/?bytes=3000", body=b"x" * 500)).status == 200
    lines = await collector.received(5)
    [entry] = [json.loads(d) for d in await entries.received(1)]
    values = {line.split(":")[0].removeprefix("kong.service.statsd1."): int(line.split(":")[1].split("|")[0])
              for line in lines}
    assert values == {"request.size": entry["request"]["size"], "response.size": entry["response"]["size"],
                      "latency": entry["latencies"]["request"], "upstream_latency": entry["latencies"]["proxy"],
                      "kong_latency": entry["latencies"]["kong"]}
    assert values["response.size"] > 3000 and values["request.size"] > 500


async def test_lines_sent_while_the_server_is_down_are_lost_and_the_next_request_is_sent(nursery, gateway, caplog):
    """Over UDP, as in Kong: lines sent while the server's port is closed are lost (the refusals the kernel reports
    are logged), never in a request's way; once the server is back, the next request's lines all arrive (Kong's
    fresh socket per batch hears nothing of earlier datagrams; the kept one's refused send is made again)."""
    collector = Collector()
    await nursery.start(collector.serve)
    port = await proxied(nursery, gateway, collector.port)
    collector.close()
    await trio.sleep(0.05)
    with trio.fail_after(TIMEOUT):
        started = trio.current_time()
        for _ in range(3):
            assert (await request(port, "GET", KEY)).status == 200
        took = trio.current_time() - started
        assert took < TIMEOUT / 2, f"{took:.1f}s"  # (milliseconds; seconds on a busy host)
    await wait_until(lambda: any("datagram(s) sent to it were lost" in r.getMessage() and r.levelno == logging.WARNING
                                 for r in caplog.records), "a refusal logged")
    await sent_out(collector.port)  # every line of the three requests was sent while the port was closed
    back = Collector(collector.port)
    await nursery.start(back.serve)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", KEY)).status == 200
    matches(await back.received(12), DEFAULT_LINES)


# --- over TCP -------------------------------------------------------------------------------------------------------


async def _tcp(nursery: trio.Nursery, gateway, collector_port: int, **config: object) -> int:  # noqa: ANN001
    return await proxied(nursery, gateway, collector_port, use_tcp=True, **config)


async def test_logs_over_tcp_with_one_metric(nursery, gateway):
    """"logs over TCP with one metric": the line and a newline."""
    collector = TcpCollector()
    await nursery.start(collector.serve)
    port = await _tcp(nursery, gateway, collector.port, metrics=[_metric("request_count")])
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", KEY)).status == 200
    await wait_until(lambda: collector.data, "the line")
    await sent_out(collector.port)
    assert collector.data == b"kong.service.statsd1.request.count:1|c\n"


async def test_over_tcp_each_line_ends_with_a_newline_and_no_packets_are_combined(nursery, gateway):
    """use_tcp: each default metric's line and "\\n"; udp_packet_size has no effect."""
    collector = TcpCollector()
    await nursery.start(collector.serve)
    port = await _tcp(nursery, gateway, collector.port, udp_packet_size=500)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", KEY)).status == 200
    await wait_until(lambda: collector.data.count(b"\n") >= 12, "12 lines")
    await sent_out(collector.port)
    assert collector.data.endswith(b"\n")
    matches(collector.data.decode().split("\n")[:-1], DEFAULT_LINES)


async def test_over_tcp_a_batch_whose_connection_failed_is_retried(nursery, gateway, caplog):
    """Kong's logger cannot be made when the connection fails, and its queue retries the batch: the lines of a
    request made while the server was down arrive once it is up."""
    collector = TcpCollector(free_port())
    port = await _tcp(nursery, gateway, collector.port, metrics=[_metric("request_count")])
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", KEY)).status == 200
    await wait_until(lambda: any("could not process entries" in r.getMessage() for r in caplog.records),
                     "a try that failed")
    await nursery.start(collector.serve)
    await wait_until(lambda: collector.data, "the retried batch")
    await sent_out(collector.port)
    assert collector.data == b"kong.service.statsd1.request.count:1|c\n"


async def test_over_udp_a_batch_whose_host_does_not_resolve_is_failed_to_the_queue(monkeypatch):
    """kong/plugins/statsd/statsd_logger.lua:95-109 (setpeername cannot resolve the name: statsd_logger:new fails) and
    kong/plugins/statsd/log.lua:370-374 (send_entries_to_upstream_server returns false, err): the queue retries the
    batch (kong/tools/queue.lua). Only a send on a made logger that fails is logged and lost."""
    unresolvable(monkeypatch)
    config = msgspec.convert({"host": "statsd.example.invalid", "port": 8125}, StatsdConfig)
    plugin = Statsd(config, "p1", Queues())
    failed = r"^failed to connect to statsd\.example\.invalid:8125: DNS resolution failed: "  # Kong's words
    with trio.fail_after(2), pytest.raises(SendError, match=failed):
        await plugin.send([b"kong.service.s.request.count:1|c"])


# --- the lines, without I/O (log.lua, statsd_logger.lua) ------------------------------------------------------------


def test_each_tag_style_is_create_statsd_messages_in_get_tags_order():
    """The four formats of statsd_logger.lua, with the tags in the order get_tags adds them (documented: Lua's
    order is its hash order), and a sample rate where it goes."""
    metric = [_metric("request_count", sample_rate=0.25)]
    tags = f"service=statsd1,route={ROUTE_ID},workspace={WS},consumer=robert,node=node_1,status=200"
    assert formatter(tag_style="dogstatsd", metrics=metric).lines(kong_message()) == [
        f"kong.request.count:1|c|@0.25|#{tags.replace('=', ':')}"]
    assert formatter(tag_style="influxdb", metrics=metric).lines(kong_message()) == [
        f"kong.request.count,{tags}:1|c|@0.25"]
    assert formatter(tag_style="librato", metrics=metric).lines(kong_message()) == [
        f"kong.request.count#{tags}:1|c|@0.25"]
    assert formatter(tag_style="signalfx", metrics=metric).lines(kong_message()) == [
        f"kong.request.count[{tags}]:1|c|@0.25"]


def test_the_route_tag_is_the_routes_name_else_its_id():
    f = formatter(tag_style="influxdb", metrics=[_metric("request_count")])
    [named] = f.lines(kong_message(route={"id": ROUTE_ID, "name": "orders"}))
    assert ",route=orders," in named
    [no_route] = f.lines(kong_message(route=None, consumer=None))
    assert no_route == f"kong.request.count,service=statsd1,workspace={WS},node=node_1,status=200:1|c"


def test_tag_mode_skips_the_metrics_log_lua_skips():
    """unique_users, request_per_user, status_count, status_count_per_user, status_count_per_workspace,
    status_count_per_user_per_route (and shdict_usage) send nothing in tag mode."""
    assert [line.split("|#")[0] for line in formatter(tag_style="dogstatsd").lines(kong_message())] == [
        "kong.request.count:1|c", "kong.latency:12|ms", "kong.request.size:120|c", "kong.response.size:340|c",
        "kong.upstream_latency:7|ms", "kong.kong_latency:3|ms"]


def test_the_default_metrics_of_a_kong_message_exactly():
    assert formatter().lines(kong_message()) == [
        "kong.service.statsd1.request.count:1|c", "kong.service.statsd1.latency:12|ms",
        "kong.service.statsd1.request.size:120|c", "kong.service.statsd1.status.200:1|c",
        "kong.service.statsd1.response.size:340|c", "kong.service.statsd1.user.uniques:robert|s",
        "kong.service.statsd1.user.robert.request.count:1|c", "kong.service.statsd1.upstream_latency:7|ms",
        "kong.service.statsd1.kong_latency:3|ms", "kong.service.statsd1.user.robert.status.200:1|c",
        f"kong.service.statsd1.workspace.{WS}.status.200:1|c",
        f"kong.route.{ROUTE_ID}.user.robert.status.200:1|c"]


def test_a_latency_of_minus_one_or_missing_is_not_sent():
    """log.lua sends a value only when it is not nil and not -1 (no upstream answered: proxy latency -1)."""
    f = formatter(metrics=[_metric("upstream_latency", "timer"), _metric("latency", "timer"),
                           _metric("kong_latency", "timer")])
    assert f.lines(kong_message(latencies={"request": 5, "proxy": -1})) == ["kong.service.statsd1.latency:5|ms"]


@pytest.mark.parametrize(("rate", "written"), [(None, ""), (1, ""), (1.0, ""), (0.5, "|@0.5"), (2, "|@2"),
                                               (0.1, "|@0.1"), (1e-05, "|@1e-05"), (1 / 3, "|@0.33333333333333")])
def test_the_sample_rate_is_written_as_lua_writes_the_number(rate, written):
    """"|@" .. sample_rate: Lua's %.14g; nothing for 1."""
    assert rate_suffix(rate) == written


def test_should_be_true_with_any_status_code_when_allow_status_codes_is_nil():
    f = formatter()
    assert all(f.allows(status) for status in (200, 201, 401, 500))


def test_should_be_true_when_status_code_is_in_allowed_status_code_range():
    f = formatter(allow_status_codes=["200-204"])
    assert all(f.allows(status) for status in (200, 201, 203, 204))


def test_should_be_false_when_status_code_is_not_in_between_two_configured_ranges():
    f = formatter(allow_status_codes=["200-204", "400-404"])
    assert not any(f.allows(status) for status in (205, 301, 500))
    assert f.allows(404)


def test_a_range_is_read_as_log_lua_reads_it():
    """log.lua reads the first "ddd-ddd" in a range (unanchored): "2000-2999" allows 0 to 299, as in Kong."""
    f = formatter(allow_status_codes=["2000-2999"])
    assert (f.allows(200), f.allows(299), f.allows(300)) == (True, True, False)


# --- UDP packets (statsd_logger.lua's buffer-and-send) --------------------------------------------------------------


def test_without_a_packet_size_each_line_is_a_datagram():
    packer = Packer(0)
    assert [packer.add(b"a:1|c"), packer.add(b"b:1|c"), packer.flush()] == [b"a:1|c", b"b:1|c", None]


def test_lines_are_combined_up_to_the_packet_size_then_a_new_packet_starts():
    packer = Packer(10)
    assert packer.add(b"aaaa") is None  # 4, and a newline: 5
    assert packer.add(b"bbbb") is None  # 9 <= 10
    assert packer.add(b"cc") == b"aaaa\nbbbb"  # 12 > 10: the buffer goes, "cc" starts the next
    assert packer.flush() == b"cc"
    assert packer.flush() is None


def test_a_buffer_restarted_by_an_overflow_does_not_count_its_first_newline():
    """statsd_logger.lua counts a line that restarts the buffer without its newline, so that datagram may be one
    byte over the packet size: kept, as Kong sends it."""
    packer = Packer(10)
    packer.add(b"aaaaaaaa")
    assert packer.add(b"cc") == b"aaaaaaaa"  # 9 + 2 > 10
    assert packer.add(b"dddddddd") is None  # counted 2 + 8 = 10
    assert packer.flush() == b"cc\ndddddddd"  # 11 bytes


def test_a_line_larger_than_the_packet_size_is_sent_alone_with_the_next_call():
    """The "truncated" case: a line over the size with an empty buffer is buffered, sent alone by the next add."""
    packer = Packer(5)
    assert packer.add(b"abcdefgh") is None
    assert packer.add(b"x") == b"abcdefgh"
    assert packer.flush() == b"x"


# --- the config (schema.lua) ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    pytest.param({}, id="accepts empty config"),
    pytest.param({"metrics": []}, id="accepts empty metrics"),
    pytest.param({"metrics": [_metric("request_count")]}, id="accepts just one metrics"),
    pytest.param({"metrics": [_metric("status_count")]}, id="accepts empty service identifier"),
    pytest.param({"metrics": [_metric("status_count", service_identifier="service_id")]},
                 id="accepts valid service identifier"),
    pytest.param({"metrics": [_metric("status_count_per_workspace", workspace_identifier="workspace_id")]},
                 id="accepts valid workspace identifier"),
    pytest.param({"allow_status_codes": []}, id="accepts empty allow status codes configuration parameter"),
    pytest.param({"allow_status_codes": ["200-299", "300-399"]},
                 id="accepts if allow status codes configuration parameter is given status codes in form of ranges"),
    pytest.param({"udp_packet_size": 0}, id="accepts valid udp_packet_size 0"),
    pytest.param({"udp_packet_size": 1}, id="accepts valid udp_packet_size 1"),
    pytest.param({"udp_packet_size": 10000}, id="accepts valid udp_packet_size 10000"),
    pytest.param({"consumer_identifier_default": "consumer_id", "service_identifier_default": "service_id",
                  "workspace_identifier_default": "workspace_id"}, id="accepts valid identifier_default"),
    pytest.param({"tag_style": "dogstatsd"}, id="accepts valid tag_style dogstatsd"),
    pytest.param({"tag_style": "influxdb"}, id="accepts valid tag_style influxdb"),
    pytest.param({"tag_style": "librato"}, id="accepts valid tag_style librato"),
    pytest.param({"tag_style": "signalfx"}, id="accepts valid tag_style signalfx"),
    pytest.param({"metrics": [_metric("latency", "timer", sample_rate=0.5)]}, id="a timer may have a sample rate"),
])
def test_the_schema_accepts(config):
    msgspec.convert(config, StatsdConfig)


@pytest.mark.parametrize(("config", "message"), [
    pytest.param({"metrics": [{"name": "request_count", "sample_rate": 1}]},
                 "config.metrics[0].stat_type: required field is missing", id="rejects if stat not defined"),
    pytest.param({"metrics": [{"stat_type": "counter", "sample_rate": 1}]},
                 "config.metrics[0].name: required field is missing", id="rejects if name not defined"),
    pytest.param({"metrics": [{"name": "request_count", "stat_type": "counter"}]},
                 "config.metrics[0].sample_rate: required field missing (a counter needs one)",
                 id="rejects counters without sample rate"),
    pytest.param({"metrics": [{"name": "latency", "stat_type": "gauge"}]},
                 "config.metrics[0].sample_rate: required field missing (a gauge needs one)",
                 id="rejects gauges without sample rate"),
    pytest.param({"metrics": [_metric("latency", "timer", sample_rate=0)]},
                 "config.metrics[0].sample_rate: expected number > 0, got 0", id="rejects a sample rate of 0"),
    pytest.param({"metrics": [{"name": "invalid_name", "stat_type": "counter"}]},
                 'config.metrics[0].name: expected one of "kong_latency", ', id="rejects invalid metrics name"),
    pytest.param({"metrics": [{"name": "request_count", "stat_type": "invalid_stat"}]},
                 'config.metrics[0].stat_type: expected one of "counter", "gauge", "histogram", "meter", "set", '
                 '"timer", got "invalid_stat"', id="rejects invalid stat type"),
    pytest.param({"metrics": [_metric("status_count", service_identifier="fooo")]},
                 "config.metrics[0].service_identifier: expected one of ", id="rejects invalid service identifier"),
    pytest.param({"metrics": [_metric("status_count_per_workspace", workspace_identifier="fooo")]},
                 "config.metrics[0].workspace_identifier: expected one of ",
                 id="rejects invalid workspace identifier"),
    pytest.param({"metrics": [_metric("request_count", foo=1)]},
                 "config.metrics[0].foo: unknown field", id="rejects an unknown metric field"),
    pytest.param({"allow_status_codes": ["test"]}, "config.allow_status_codes[0]: invalid value: test",
                 id="rejects if allow status codes configuration is given as alphabet values"),
    pytest.param({"allow_status_codes": ["$%%"]}, "config.allow_status_codes[0]: invalid value: $%%",
                 id="rejects if allow status codes configuration is given as special characters"),
    pytest.param({"allow_status_codes": ["test-test"]}, "config.allow_status_codes[0]: invalid value: test-test",
                 id="rejects alphabet values with dash symbol"),
    pytest.param({"allow_status_codes": ["test-299", "300-test"]},
                 "config.allow_status_codes[0]: invalid value: test-299", id="rejects alphabet and numeric values"),
    pytest.param({"allow_status_codes": ["200-300", "test-test"]},
                 "config.allow_status_codes[1]: invalid value: test-test",
                 id="rejects if one of allow status codes configuration is invalid"),
    pytest.param({"allow_status_codes": ["200", "299"]}, "config.allow_status_codes[0]: invalid value: 200",
                 id="rejects numeric values without dash symbol"),
    pytest.param({"allow_status_codes": ["1-5"]},
                 "config.allow_status_codes[0]: invalid value: 1-5 (Kong reads a range as two 3-digit codes",
                 id="rejects a range Kong's log phase cannot read"),
    pytest.param({"udp_packet_size": -1}, "config.udp_packet_size: expected number >= 0 and <= 65507, got -1",
                 id="rejects invalid udp_packet_size -1"),
    pytest.param({"udp_packet_size": "a"}, 'config.udp_packet_size: expected number >= 0 and <= 65507, got "a"',
                 id="rejects invalid udp_packet_size a"),
    pytest.param({"udp_packet_size": 65508}, "config.udp_packet_size: expected number >= 0 and <= 65507, got 65508",
                 id="rejects invalid udp_packet_size 65508"),
    pytest.param({"consumer_identifier_default": "invalid type"},
                 'config.consumer_identifier_default: expected one of "consumer_id", "custom_id", "username"',
                 id="rejects invalid consumer identifier_default"),
    pytest.param({"service_identifier_default": "invalid type"},
                 'config.service_identifier_default: expected one of "service_host", "service_id", ',
                 id="rejects invalid service identifier_default"),
    pytest.param({"workspace_identifier_default": "invalid type"},
                 'config.workspace_identifier_default: expected one of "workspace_id", "workspace_name"',
                 id="rejects invalid workspace identifier_default"),
    pytest.param({"tag_style": "invalid type"},
                 'config.tag_style: expected one of "dogstatsd", "influxdb", "librato", "signalfx"',
                 id="rejects invalid tag_style"),
    pytest.param({"custom_fields_by_lua": {"a": "return 1"}},
                 "config.custom_fields_by_lua is not supported by the gateway's statsd plugin",
                 id="a key Kong's statsd does not have"),
    pytest.param({"host": "a b"}, 'config.host: invalid value: a b', id="host"),
    pytest.param({"port": 70000}, "config.port: expected int >= 1 and <= 65535, got 70000", id="port"),
    pytest.param({"prefix": ""}, 'config.prefix: length must be at least 1', id="an empty prefix"),
    pytest.param({"queue": {"max_batch_size": 0}}, "config.queue.max_batch_size: expected int >= 1",
                 id="queue"),
])
def test_config_errors_name_the_field(config, message):
    assert f"plugins[0].{message}" in refused(config)


def test_kongs_defaults():
    config = msgspec.convert({}, StatsdConfig)
    assert (config.host, config.port, config.prefix, config.udp_packet_size, config.use_tcp,
            config.hostname_in_prefix, config.tag_style, config.allow_status_codes) == (
        "localhost", 8125, "kong", 0, False, False, None, None)
    assert (config.consumer_identifier_default, config.service_identifier_default,
            config.workspace_identifier_default) == ("custom_id", "service_name_or_host", "workspace_id")
    assert config.queue == QueueConfig()
    assert [(m.name, m.stat_type, m.sample_rate) for m in config.metrics] == [
        ("request_count", "counter", 1), ("latency", "timer", None), ("request_size", "counter", 1),
        ("status_count", "counter", 1), ("response_size", "counter", 1), ("unique_users", "set", None),
        ("request_per_user", "counter", 1), ("upstream_latency", "timer", None), ("kong_latency", "timer", None),
        ("status_count_per_user", "counter", 1), ("status_count_per_workspace", "counter", 1),
        ("status_count_per_user_per_route", "counter", 1), ("shdict_usage", "gauge", 1)]
    assert config.metrics == list(DEFAULT_METRICS)


@pytest.mark.parametrize(("legacy", "queue"), [
    ({"queue_size": 5}, {"max_batch_size": 5}),
    ({"queue_size": 5, "queue": {"max_batch_size": 10}}, {"max_batch_size": 5}),
    ({"queue_size": 1, "queue": {"max_batch_size": 10}}, {"max_batch_size": 10}),
    ({"flush_timeout": 3}, {"max_coalescing_delay": 3}),
    ({"flush_timeout": 2}, {}),
    ({"flush_timeout": 0, "queue": {"max_coalescing_delay": 7}}, {"max_coalescing_delay": 0}),
])
def test_queue_size_and_flush_timeout_map_onto_the_queue_as_kongs_get_plugin_params(legacy, queue):
    """A deprecated value other than its old default (queue_size 1, flush_timeout 2) replaces the queue's."""
    config = msgspec.convert(legacy, StatsdConfig)
    assert config.queue == QueueConfig(**queue)
