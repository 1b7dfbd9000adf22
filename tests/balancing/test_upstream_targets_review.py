"""Upstream targets as Kong 3.x's balancer takes them: the address its targets DAO stores (kong/db/dao/targets.lua
format_target over kong/tools/ip.lua normalize_ip), the same for the workers, the health process and discovery."""

from __future__ import annotations

import ipaddress
import json

import pytest
import trio
import yaml
from backends import EchoBackend, request, service

from gateway.config.loader import parse_config
from gateway.config.schema import Config
from gateway.discovery.dns import resolve_targets
from gateway.discovery.service import config_targets
from gateway.discovery.types import TargetInfo
from gateway.health.checker import upstreams_from_config
from gateway.runtime import compile_config

TIMEOUT = 8
EXPANDED_LOOPBACK = "[0000:0000:0000:0000:0000:0000:0000:0001]"


@pytest.fixture
def http_codec() -> str:
    """One codec: nothing here depends on how the client's request is parsed."""
    return "h11"


def _config(doc: dict) -> Config:
    return parse_config(yaml.safe_dump(doc, sort_keys=False), "<test config>")


async def test_ip_targets_are_proxied_to_as_the_addresses_kong_normalizes_them_to(nursery, gateway):
    """kong/db/dao/targets.lua:150-160 (select_by_upstream_raw, what the balancer loads:
    kong/runloop/balancer/targets.lua:85) replaces every target by format_target's result (targets.lua:30-35):

    - an IPv4 address as normalize_ipv4 writes it back (kong/tools/ip.lua:136-160, `fmt("%d.%d.%d.%d", ...)`), so
      `127.000.000.001:<port>` is 127.0.0.1 (the gateway took the text as a host name that resolved to nothing: 503
      "failure to get a peer from the ring-balancer");
    - an IPv6 address bracketed and expanded (ip.lua:167-218 normalize_ipv6, spec/01-unit/05-utils_spec.lua:661).
      An IP target has no hostHeader (kong/runloop/balancer/balancers.lua:332-334), so init.lua:357 `hostname =
      hostname or ip` and set_host_header (init.lua:441-455) send `Host: [0000:...:0001]:<port>` (the gateway sent
      `[::1]:<port>`)."""
    v4 = EchoBackend("v4")
    await nursery.start(v4.serve)
    v6 = EchoBackend("v6")
    v6.host = "::1"
    await nursery.start(v6.serve)
    port = await gateway({
        "services": [service("s4", "http://u4", [{"paths": ["/v4"]}]),
                     service("s6", "http://u6", [{"paths": ["/v6"]}])],
        "upstreams": [{"name": "u4", "targets": [{"target": f"127.000.000.001:{v4.port}"}]},
                      {"name": "u6", "targets": [{"target": f"[::1]:{v6.port}"}]}]})
    with trio.fail_after(TIMEOUT):
        four = await request(port, "GET", "/v4")
        six = await request(port, "GET", "/v6")
    assert (four.status, four.header("x-backend")) == (200, "v4"), four.body
    assert six.status == 200, six.body
    hosts = [v for k, v in json.loads(six.body)["headers"] if k.lower() == "host"]
    assert hosts == [f"{EXPANDED_LOOPBACK}:{v6.port}"]


def test_active_health_checks_probe_a_bare_ipv6_target():
    """A target may be a bare IPv6 address: kong/tools/ip.lua:167-218 (normalize_ipv6) takes it without brackets,
    port nil, and kong/db/dao/targets.lua:30-35 (format_target) gives it DEFAULT_PORT 8000; the health checker gets
    every address of every target (kong/runloop/balancer/healthcheckers.lua:53, hc:add_target). The health process
    starts from gateway.discovery.service.config_targets, which made "::1:8000" of it and dropped it: proxied to but
    never probed."""
    config = _config({"upstreams": [{"name": "u", "targets": [{"target": "::1"}, {"target": "127.0.0.1:9"}],
                                     "healthchecks": {"active": {"healthy": {"interval": 5},
                                                                 "unhealthy": {"interval": 5,
                                                                               "tcp_failures": 1}}}}]})
    checks = upstreams_from_config(config)
    assert [c.name for c in checks] == ["u"]
    assert TargetInfo("::1", 8000, 100) in checks[0].targets, checks[0].targets


async def test_a_bare_ipv6_target_beside_a_host_name_target_keeps_its_traffic():
    """Same Kong rules (ip.lua:167-218, targets.lua:30-35: "::1" is the target `[0000:...:0001]:8000`, one target of
    the balancer beside the name's addresses, targets.lua:145-149). An upstream with a host name among its targets
    is resolved by the discovery process (gateway.discovery.service.run_source -> run_dns), whose report replaces
    the workers' target list; its input is config_targets, which dropped the bare IPv6 target, so that target got
    no request at all."""
    config = _config({"upstreams": [{"name": "u", "targets": [{"target": "::1"}, {"target": "localhost:9"}]}]})
    with trio.fail_after(TIMEOUT):
        reported, _ = await resolve_targets(config_targets(config, "u"))
    assert any((t.host, t.port, t.weight) == ("::1", 8000, 100) for t in reported), reported


def test_the_workers_and_the_health_process_name_a_target_alike():
    """One target, one name: the workers' (gateway.runtime's TargetRuntime.name) and the health process's
    (config_targets) spelling of `127.000.000.001`, a bare IPv6 and a bracketed IPv6 written another way are the
    addresses Kong stores for them (kong/tools/ip.lua normalize_ipv4 / normalize_ipv6), so the health reports reach
    the targets the workers balance over."""
    config = _config({"services": [service("s", "http://u")],
                      "upstreams": [{"name": "u", "targets": [{"target": "127.000.000.001:81"},
                                                              {"target": "0::1"},
                                                              {"target": "[0:0::0:1]:82"}]}]})
    workers = sorted(t.name for t in compile_config(config).groups["u"].targets)
    health = sorted(t.name for t in config_targets(config, "u"))
    assert workers == health == ["127.0.0.1:81", "[::1]:8000", "[::1]:82"]


def test_a_bracketed_ipv6_target_with_a_leading_colon_compiles_as_kong_normalizes_it():
    """kong/tools/ip.lua:190-193 (normalize_ipv6) reads a leading ":" as "0:", so `[:1:2:3:4:5:6:7]:8080` is the
    address 0:1:...:7, port 8080 (kong/db/dao/targets.lua:31-37 format_target): the loader takes it, and the
    runtime balances to that address (it once died unpacking the None of an address it could not read)."""
    doc = {"services": [{"name": "s", "url": "http://u", "routes": [{"name": "r", "paths": ["/"]}]}],
           "upstreams": [{"name": "u", "targets": [{"target": "[:1:2:3:4:5:6:7]:8080"}]}]}
    config = parse_config(yaml.safe_dump(doc, sort_keys=False), "kong.yml")  # accepted, as Kong accepts it
    try:
        compiled = compile_config(config, "kong.yml")
    except TypeError as e:  # the traceback check-config prints
        raise AssertionError(f"compile_config crashed on a target Kong takes: {e!r}") from None
    [target] = compiled.groups["u"].targets
    assert (ipaddress.IPv6Address(target.host), target.port) == (ipaddress.IPv6Address("0:1:2:3:4:5:6:7"), 8080)
