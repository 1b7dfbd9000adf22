"""The datadog plugin through the gateway (in-process, real sockets) to a DogStatsD agent stand-in on UDP: the lines
Kong's spec expects (spec/03-plugins/08-datadog/01-log_spec.lua), a datagram each."""

from __future__ import annotations

import re

import msgspec
import pytest
import trio
from backends import EchoBackend, request, service, wait_until
from backends import UdpCollector as Collector

import gateway.telemetry.udp_sender as udp_sender
from gateway.http.net import NameNotResolved
from gateway.policies.datadog.handler import Datadog
from gateway.policies.datadog.schema import DatadogConfig
from gateway.telemetry.batch import Queues
from gateway.telemetry.sender import SendError

TIMEOUT = 10
CONSUMERS = [{"username": "foo", "custom_id": "bar", "id": "4fd6b3d8-6c3e-4a5a-9d09-0b6c1b2a9c01",
              "keyauth_credentials": [{"key": "kong"}]}]


async def _gateway(nursery: trio.Nursery, gateway, config: dict, key_auth: bool = True,  # noqa: ANN001
                   name: str = "dd1") -> tuple[int, Collector]:
    backend = EchoBackend()
    await nursery.start(backend.serve)
    collector = Collector()
    await nursery.start(collector.serve)
    plugins = [{"name": "datadog", "config": {"host": "127.0.0.1", "port": collector.port, **config}}]
    if key_auth:
        plugins.append({"name": "key-auth", "config": {}})
    port = await gateway({"services": [service(name, f"http://127.0.0.1:{backend.port}", [
        {"name": "r", "paths": ["/"], "plugins": plugins}])], "consumers": CONSUMERS})
    return port, collector


async def _lines(port: int, collector: Collector, count: int, headers: list | None = None) -> list[str]:
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/", headers=[("apikey", "kong")] if headers is None else headers)
                ).status == 200
    await wait_until(lambda: len(collector.datagrams) >= count, f"{count} datagrams")
    await trio.sleep(0.05)
    return [d.decode() for d in collector.datagrams]


def _matches(lines: list[str], pattern: str) -> bool:
    return any(re.fullmatch(pattern, line) for line in lines)


async def test_logs_metrics_over_udp(nursery, gateway):
    port, collector = await _gateway(nursery, gateway, {})
    lines = await _lines(port, collector, 6)
    assert len(lines) == 6  # a datagram per metric
    assert "kong.request.count:1|c|#name:dd1,status:200,consumer:bar,app:kong" in lines
    for stat in ("latency", "request\\.size", "response\\.size", "upstream_latency", "kong_latency"):
        assert _matches(lines, rf"kong\.{stat}:\d+\|ms\|#name:dd1,status:200,consumer:bar,app:kong"), (stat, lines)


async def test_logs_metrics_over_udp_with_custom_prefix(nursery, gateway):
    port, collector = await _gateway(nursery, gateway, {"prefix": "prefix"}, name="dd4")
    lines = await _lines(port, collector, 6)
    assert "prefix.request.count:1|c|#name:dd4,status:200,consumer:bar,app:kong" in lines
    assert _matches(lines, r"prefix\.latency:\d+\|ms\|#name:dd4,status:200,consumer:bar,app:kong")


async def test_logs_metrics_over_udp_with_custom_tag_names(nursery, gateway):
    port, collector = await _gateway(nursery, gateway, {"service_name_tag": "upstream", "status_tag": "http_status",
                                                        "consumer_tag": "user"}, name="dd6")
    lines = await _lines(port, collector, 6)
    assert "kong.request.count:1|c|#upstream:dd6,http_status:200,user:bar,app:kong" in lines


async def test_logs_only_given_metrics(nursery, gateway):
    port, collector = await _gateway(nursery, gateway, {"metrics": [
        {"name": "request_count", "stat_type": "counter", "sample_rate": 1}]}, name="dd2")
    lines = await _lines(port, collector, 1)
    assert lines == ["kong.request.count:1|c|#name:dd2,status:200"]


async def test_logs_metrics_with_tags(nursery, gateway):
    port, collector = await _gateway(nursery, gateway, {"metrics": [
        {"name": "request_count", "stat_type": "counter", "sample_rate": 1, "tags": ["T2:V2", "T3:V3", "T4"]},
        {"name": "latency", "stat_type": "gauge", "sample_rate": 1, "tags": ["T2:V2:V3", "T4"]},
        {"name": "request_size", "stat_type": "distribution", "sample_rate": 1, "tags": []}]}, name="dd3")
    lines = await _lines(port, collector, 3)
    assert "kong.request.count:1|c|#name:dd3,status:200,T2:V2,T3:V3,T4" in lines
    assert _matches(lines, r"kong\.latency:\d+\|g\|#name:dd3,status:200,T2:V2:V3,T4")
    assert _matches(lines, r"kong\.request\.size:\d+\|d\|#name:dd3,status:200")


async def test_a_sample_rate_other_than_1_is_written_as_lua_writes_it(nursery, gateway):
    port, collector = await _gateway(nursery, gateway, {"metrics": [
        {"name": "request_count", "stat_type": "counter", "sample_rate": 0.25, "consumer_identifier": "username"}]})
    assert await _lines(port, collector, 1) == ["kong.request.count:1|c|@0.25|#name:dd1,status:200,consumer:foo"]


async def test_a_consumer_id_is_tagged_with_underscores_for_dashes(nursery, gateway):
    port, collector = await _gateway(nursery, gateway, {"metrics": [
        {"name": "request_count", "stat_type": "counter", "sample_rate": 1, "consumer_identifier": "consumer_id"}]})
    assert await _lines(port, collector, 1) == [
        "kong.request.count:1|c|#name:dd1,status:200,consumer:4fd6b3d8_6c3e_4a5a_9d09_0b6c1b2a9c01"]


async def test_without_a_consumer_there_is_no_consumer_tag_and_the_status_is_the_answers(nursery, gateway):
    port, collector = await _gateway(nursery, gateway, {}, key_auth=False)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/status", headers=[])).status == 200
    await wait_until(lambda: len(collector.datagrams) >= 6, "6 datagrams")
    assert "kong.request.count:1|c|#name:dd1,status:200,app:kong" in [d.decode() for d in collector.datagrams]


async def test_a_request_answered_without_an_upstream_has_upstream_latency_minus_1(nursery, gateway):
    port, collector = await _gateway(nursery, gateway, {})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/")).status == 401  # key-auth answers: no upstream
    await wait_until(lambda: len(collector.datagrams) >= 6, "6 datagrams")
    lines = [d.decode() for d in collector.datagrams]
    assert "kong.upstream_latency:-1|ms|#name:dd1,status:401,app:kong" in lines


async def test_host_and_port_null_take_the_agent_from_the_environment(nursery, gateway, monkeypatch):
    """logs metrics to host/port defined via environment variables"""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    collector = Collector()
    await nursery.start(collector.serve)
    monkeypatch.setenv("KONG_DATADOG_AGENT_HOST", "127.0.0.1")
    monkeypatch.setenv("KONG_DATADOG_AGENT_PORT", str(collector.port))
    port = await gateway({"services": [service("dd5", f"http://127.0.0.1:{backend.port}", [
        {"paths": ["/"], "plugins": [{"name": "datadog", "config": {"host": None, "port": None}}]}])]})
    lines = await _lines(port, collector, 6, headers=[])
    assert "kong.request.count:1|c|#name:dd5,status:200,app:kong" in lines


async def test_queue_size_sends_in_batches_with_nothing_lost(nursery, gateway):
    """logs metrics in several batches (the deprecated queue_size maps onto queue.max_batch_size)"""
    port, collector = await _gateway(nursery, gateway, {"queue_size": 2, "flush_timeout": 0.05})
    with trio.fail_after(TIMEOUT):
        for _ in range(3):
            assert (await request(port, "GET", "/", headers=[("apikey", "kong")])).status == 200
    await wait_until(lambda: len(collector.datagrams) >= 18, "18 datagrams")
    await trio.sleep(0.1)
    assert sum(d.startswith(b"kong.request.count:1|c|") for d in collector.datagrams) == 3
    assert len(collector.datagrams) == 18


@pytest.mark.parametrize(("config", "message"), [
    ({"metrics": [{"name": "request_count", "stat_type": "counter"}]}, "sample_rate: required when stat_type is"),
    ({"metrics": [{"name": "nope", "stat_type": "counter", "sample_rate": 1}]}, "Invalid enum value 'nope'"),
    ({"metrics": [{"name": "latency", "stat_type": "timer", "sample_rate": 2}]}, "Expected `float` <= 1"),
    ({"metrics": [{"name": "latency", "stat_type": "timer", "tags": ["a:"]}]}, "tags: expected a tag that does not"),
    ({"host": "a b"}, 'host: invalid value: a b'),
    ({"custom_fields_by_lua": {}}, "unknown field `custom_fields_by_lua`"),
])
def test_config_errors_name_the_field(config: dict, message: str):
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(config, DatadogConfig)


def test_null_host_and_port_are_valid_config_without_the_agent_environment(monkeypatch):
    """spec/03-plugins/08-datadog/02-schema_spec.lua:11-15 "accepts null host and port", with no KONG_DATADOG_*
    variable set: the agent's address is read when a batch is sent (kong/plugins/datadog/statsd_logger.lua:23-29)."""
    monkeypatch.delenv("KONG_DATADOG_AGENT_HOST", raising=False)
    monkeypatch.delenv("KONG_DATADOG_AGENT_PORT", raising=False)
    config = msgspec.convert({"host": None, "port": None}, DatadogConfig)
    assert (config.host, config.port) == (None, None)


@pytest.mark.parametrize(("settings", "missing"), [
    ({"host": None}, "KONG_DATADOG_AGENT_HOST"),
    ({"host": "127.0.0.1", "port": None}, "KONG_DATADOG_AGENT_PORT"),
])
async def test_a_batch_with_no_agent_address_fails_naming_the_plugin_and_what_is_missing(monkeypatch, settings,
                                                                                          missing):
    """kong/plugins/datadog/statsd_logger.lua:26-35: with neither the config's host (port) nor the environment's,
    setpeername fails and so does statsd_logger:new; datadog/handler.lua:51-56 returns false, err and the queue
    retries the batch (kong/tools/queue.lua). Here the batch's send raises, saying what to set."""
    monkeypatch.delenv("KONG_DATADOG_AGENT_HOST", raising=False)
    monkeypatch.delenv("KONG_DATADOG_AGENT_PORT", raising=False)
    plugin = Datadog(msgspec.convert(settings, DatadogConfig), "p1", Queues())
    with trio.fail_after(2), pytest.raises(SendError, match=rf"^datadog: .*{missing} is not"):
        await plugin.send([[b"kong.request.count:1|c|#name:s,status:200"]])


async def test_a_batch_whose_agent_name_does_not_resolve_is_failed_to_the_queue(monkeypatch):
    """kong/plugins/datadog/statsd_logger.lua:26-35 (setpeername cannot resolve the name: no logger) and
    kong/plugins/datadog/handler.lua:51-56 (send_entries_to_datadog returns false, err): the queue retries the
    batch. Only a datagram that fails on a made socket is logged and lost."""
    unresolvable(monkeypatch)
    config = msgspec.convert({"host": "agent.example.invalid", "port": 8125}, DatadogConfig)
    plugin = Datadog(config, "p2", Queues())
    failed = r"^failed to connect to agent\.example\.invalid:8125: DNS resolution failed: "  # Kong's words
    with trio.fail_after(2), pytest.raises(SendError, match=failed):
        await plugin.send([[b"kong.request.count:1|c|#name:s,status:200"]])


def unresolvable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DNS client answers "name error" for every name (no network needed)."""

    async def resolve(host: str, port: int) -> tuple[str, int]:
        raise NameNotResolved(host, "3 name error")

    monkeypatch.setattr(udp_sender, "resolve", resolve)


def test_kongs_defaults():
    config = DatadogConfig()
    assert (config.host, config.port, config.prefix, config.service_name_tag, config.status_tag,
            config.consumer_tag) == ("localhost", 8125, "kong", "name", "status", "consumer")
    assert [(m.name, m.stat_type, m.tags, m.consumer_identifier, m.sample_rate) for m in config.metrics] == [
        ("request_count", "counter", ["app:kong"], "custom_id", 1),
        ("latency", "timer", ["app:kong"], "custom_id", None),
        ("request_size", "timer", ["app:kong"], "custom_id", None),
        ("response_size", "timer", ["app:kong"], "custom_id", None),
        ("upstream_latency", "timer", ["app:kong"], "custom_id", None),
        ("kong_latency", "timer", ["app:kong"], "custom_id", None)]
