"""prometheus against Kong's spec tests spec/03-plugins/26-prometheus/07-optional_fields_spec.lua (the gateway as
real processes: `gateway start`, its status listener's /metrics, a reload) and 08-unit_spec.lua (label values as
the exposition writes them).

07-optional_fields_spec disables (PATCH enabled=false) and removes (DELETE) the plugin through the Admin API; here the
config file is changed so and reloaded. Its kong_memory_lua_shared_dict_bytes is not checked: the gateway has no Lua
shared dicts. Not ported from 08-unit_spec: "check metric names" and "check metric label names" test what Kong's Lua
library refuses to register; the gateway's families and labels are fixed names in gateway/metrics.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import EchoBackend, request, service, wait_until
from e2e_helpers import GatewayNode, node_factory
from e2e_helpers import request as node_request
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import RECORDER
from gateway.status.collect import encode_text, gateway_registry

TIMEOUT = 10
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
CONNECTION_STATES = ("accepted", "active", "handled", "reading", "total", "waiting", "writing")
HIGH_COST = ("kong_http_requests_total", "kong_kong_latency_ms", "kong_upstream_latency_ms", "kong_request_latency_ms",
             "kong_bandwidth_bytes")
PROMETHEUS = {"name": "prometheus", "config": {"status_code_metrics": True, "latency_metrics": True,
                                               "bandwidth_metrics": True, "upstream_health_metrics": True}}


@pytest.fixture
def http_codec() -> str:
    """One codec for the in-process case: what is checked is the exposition."""
    return "llhttp"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Any]:
    with node_factory(tmp_path) as make:
        yield make


# --- 07-optional_fields_spec -------------------------------------------------------------------------------------


async def _metrics(gw: GatewayNode) -> str:
    reply = await node_request(gw.status_port, "GET", "/metrics")
    assert reply.status == 200
    return reply.body.decode()


def _has_normal_metrics(body: str) -> bool:
    """Kong's assert_normal_metrics: kong_nginx_connections_total of the node (a UUID), subsystem http, in every
    state, a whole number each (its labels in any order: see the label-order case below)."""
    states = {sample.labels.get("state") for family in text_string_to_metric_families(body)
              if family.name == "kong_nginx_connections_total" for sample in family.samples
              if re.fullmatch(UUID, sample.labels.get("node_id", "")) and sample.labels.get("subsystem") == "http"
              and sample.value == int(sample.value)}
    return states >= set(CONNECTION_STATES)


async def wait_until_metrics(gw: GatewayNode, predicate: Any, what: str) -> str:
    """The first /metrics body `predicate` holds for (polled; the workers flush their counts every second)."""
    with trio.fail_after(TIMEOUT):
        while not predicate(body := await _metrics(gw)):
            await trio.sleep(0.1)
    return body


@pytest.mark.parametrize("method", ["disabling", "removing"])
async def test_a_prometheus_plugin_disabled_or_removed_leaves_only_the_node_metrics(nursery, node, method: str):
    """07-optional_fields_spec "less metrics when disabling prometheus" / "... removing prometheus": with the plugin
    (every switch on) /metrics has the per-request families; once it is disabled or removed they are gone, and the
    node's connection metrics stay."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    upstream = {"name": "mock_upstream", "algorithm": "least-connections",
                "targets": [{"target": f"127.0.0.1:{backend.port}", "weight": 100}]}
    doc: dict[str, Any] = {"upstreams": [upstream], "plugins": [PROMETHEUS], "services": [
        {"name": "mock", "host": "mock_upstream", "routes": [{"hosts": ["mock"], "protocols": ["http"],
                                                                "paths": ["/"]}]}]}
    gw = node(doc)
    await gw.start(workers=1)
    with trio.fail_after(TIMEOUT):
        assert (await request(gw.port, "GET", "/", host="mock")).status == 200
    body = await wait_until_metrics(gw, lambda body: all(name in body for name in HIGH_COST), "the plugin's families")
    assert _has_normal_metrics(body)

    doc["plugins"] = [{**PROMETHEUS, "enabled": False}] if method == "disabling" else []
    gw.config.write_text(json.dumps({**gw.doc, **doc}))
    reload = await gw.acli("reload")
    assert reload.returncode == 0, reload.stderr
    body = await wait_until_metrics(gw, lambda body: not any(name in body for name in HIGH_COST), "no plugin families")
    assert _has_normal_metrics(body)


def test_the_node_connection_metric_has_its_labels_in_kongs_order(tmp_path: Path):
    """07-optional_fields_spec's assert_normal_metrics matches the text kong_nginx_connections_total{node_id="...",
    subsystem="...",state="..."} <integer>: the labels in the order exporter.lua declares them (prometheus_client's
    encoder sorts them; /metrics has its own, gateway.status.collect.encode_text)."""
    registry, _ = gateway_registry(str(tmp_path), node="n")
    body = encode_text(registry).decode()
    for state in CONNECTION_STATES:
        assert re.search(rf'^kong_nginx_connections_total{{node_id="{UUID}",subsystem="http",state="{state}"}} \d+$',
                         body, re.MULTILINE), state


# --- 08-unit_spec ------------------------------------------------------------------------------------------------


async def test_label_values_are_escaped_in_the_exposition(nursery, gateway):
    """08-unit_spec "emit metric data" (and "check metric full name"): a label value with a backslash or a double
    quote is written escaped, kong_user{name="\\"quote"}; here a per_consumer counter's consumer label, from a
    consumer username holding both."""
    backend = EchoBackend()
    await nursery.start(backend.serve)
    username = '"quote\\root'
    route = "escaped-labels"
    port = await gateway({
        "services": [service("escaped-svc", f"http://127.0.0.1:{backend.port}", [
            {"name": route, "paths": ["/"], "plugins": [
                {"name": "key-auth"},
                {"name": "prometheus", "config": {"status_code_metrics": True, "per_consumer": True}}]}])],
        "consumers": [{"username": username, "keyauth_credentials": [{"key": "k"}]}]})
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/", headers=[("apikey", "k")])).status == 200

    def exposition() -> str | None:
        RECORDER.flush()
        text = encode_text(REGISTRY).decode()  # what /metrics writes
        return text if f'route="{route}"' in text else None

    text = await wait_until(exposition, "the request counted")
    line = next(line for line in text.splitlines() if f'route="{route}"' in line)
    assert 'consumer="\\"quote\\\\root"' in line
    assert line.endswith(" 1")  # a Lua number, as Kong writes it
