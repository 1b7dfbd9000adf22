"""The `discovery:`, `gateway.registration:` and `healthchecks.check:` config blocks: defaults and error messages."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.discovery import consul_duration, parse_duration, valid_endpoint


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "f.yml")
    return e.value.messages


def test_discovery_defaults() -> None:
    config = parse_config("""
upstreams:
  - name: mcp
    discovery: {type: etcd}
  - name: erl
    discovery: {type: consul}
  - name: fixed
    discovery: {type: static}
    targets: [{target: "10.0.0.1:80"}]
  - name: none
""")
    etcd, consul, static, none = (u.discovery for u in config.upstreams)
    assert etcd.endpoint_list() == ["127.0.0.1:2379"] and etcd.etcd_prefix("mcp") == "/gateway/upstreams/mcp/"
    assert consul.endpoint_list() == ["127.0.0.1:8500"] and consul.consul_service("erl") == "erl"
    assert consul.consul_wait_s == 60 and consul.consul_passing_only is True
    assert static.type == "static" and none is None
    assert (etcd.registry_retry_initial_s, etcd.registry_retry_max_s, etcd.registry_timeout_s,
            etcd.registry_default_weight) == (0.5, 30.0, 5.0, 100)


def test_discovery_explicit() -> None:
    config = parse_config("""
upstreams:
  - name: erl
    discovery:
      type: consul
      endpoints: ["http://10.0.2.10:8500", "10.0.2.11:8500"]
      service: erlmcp
      tag: mcp
      datacenter: dc2
      passing_only: false
      wait_s: 30
      token: secret
""")
    d = config.upstreams[0].discovery
    assert d.endpoint_list() == ["http://10.0.2.10:8500", "10.0.2.11:8500"]
    assert (d.consul_service("erl"), d.tag, d.datacenter, d.consul_passing_only, d.consul_wait_s, d.token) == (
        "erlmcp", "mcp", "dc2", False, 30, "secret")


@pytest.mark.parametrize("block, message", [
    ('{type: zookeeper}', 'upstreams[0].discovery.type: expected one of "consul", "etcd", "static", got "zookeeper"'),
    ('{endpoints: ["a:1"]}', "upstreams[0].discovery.type: required field is missing"),
    ('{type: etcd, endpoints: []}', "upstreams[0].discovery: endpoints: expected at least one endpoint"),
    ('{type: etcd, endpoints: ["a:1", "b"]}',
     'upstreams[0].discovery: endpoints[1]: expected "host:port" or "http://host:port", got "b"'),
    ('{type: etcd, endpoints: ["a:70000"]}',
     'upstreams[0].discovery: endpoints[0]: expected "host:port" or "http://host:port", got "a:70000"'),
    ('{type: etcd, service: x}', "upstreams[0].discovery: service: not used with type etcd"),
    ('{type: consul, prefix: /x/}', "upstreams[0].discovery: prefix: not used with type consul"),
    ('{type: etcd, prefix: ""}', "upstreams[0].discovery: prefix: must not be empty"),
    ('{type: static, endpoints: ["a:1"]}',
     "upstreams[0].discovery: endpoints: not used with type static (targets come from the config)"),
    ('{type: consul, wait_s: 601}', "upstreams[0].discovery.wait_s: expected number > 0 and <= 600, got 601"),
    ('{type: etcd, timeout_s: 0}', "upstreams[0].discovery.timeout_s: expected number >= 0.001 and <= 2147483.646, "
                                   "got 0"),
    ('{type: etcd, default_weight: -1}', "upstreams[0].discovery.default_weight: expected int >= 0 and <= 65535, "
                                         "got -1"),
    ('{type: etcd, retry_initial_s: 2, retry_max_s: 1}',
     "upstreams[0].discovery: retry_max_s (1) must be >= retry_initial_s (2)"),
    ('{type: etcd, prefx: /x/}', "upstreams[0].discovery.prefx: unknown field (check the spelling; see the README's "
                                 "config reference)"),
])
def test_discovery_errors(block: str, message: str) -> None:
    assert errors(f"upstreams:\n  - name: u\n    discovery: {block}\n") == [f"f.yml: {message}"]


def test_registration_block() -> None:
    gw = parse_config("""
gateway:
  registration:
    backend: consul
    address: "127.0.0.1:8500"
    service: erlmcp-gateway
    id: gw-1
    check: http://10.0.1.10:8100/health
    check_interval: 10s
    check_timeout: 5s
    deregister_critical_after: 1m
    tags: [tcp, mcp]
""").gateway
    reg = gw.registration
    assert reg.backend == "consul" and reg.address_list() == ["127.0.0.1:8500"] and reg.tags == ["tcp", "mcp"]
    assert parse_config("gateway: {}").gateway.registration is None
    etcd = parse_config("gateway: {registration: {backend: etcd}}").gateway.registration
    assert etcd.address_list() == ["127.0.0.1:2379"] and etcd.etcd_prefix() == "/gateway/upstreams/mcp-gateway/"


@pytest.mark.parametrize("block, message", [
    ("{backend: zk}", 'gateway.registration.backend: expected one of "consul", "etcd", got "zk"'),
    ("{backend: consul, address: nohost}",
     'gateway.registration: address[0]: expected "host:port" or "http://host:port", got "nohost"'),
    ("{backend: consul, advertise: '10.0.0.1'}",
     'gateway.registration: advertise: expected "host:port", got "10.0.0.1"'),
    ("{backend: consul, check: 'tcp://x:1'}",
     'gateway.registration: check: expected an http:// or https:// URL, got "tcp://x:1"'),
    ("{backend: consul, check_interval: 10 seconds}",
     'gateway.registration: check_interval: expected a duration like "10s", "500ms" or "5m", got "10 seconds"'),
    ("{backend: consul, prefix: /x/}", "gateway.registration: prefix: not used with backend consul"),
    ("{backend: etcd, token: t}", "gateway.registration: token: not used with backend etcd"),
    ("{backend: etcd, ttl_s: 1}", "gateway.registration.ttl_s: expected int >= 2 and <= 3600, got 1"),
    ("{backend: etcd, service: ' '}", "gateway.registration: service: must not be empty"),
])
def test_registration_errors(block: str, message: str) -> None:
    assert errors(f"gateway:\n  registration: {block}\n") == [f"f.yml: {message}"]


def test_healthcheck_aliases() -> None:
    up = parse_config("""
upstreams:
  - name: erlmcp_cluster
    healthchecks:
      check: {interval: 3000, rise: 2, fall: 3, timeout: 1000, type: http, path: /health, expect_status: [200, "3xx"]}
""").upstreams[0]
    check = up.healthchecks.check
    assert (check.interval_s, check.timeout_s, check.rise, check.fall) == (3.0, 1.0, 2, 3)
    assert check.expected_statuses() == [200, *range(300, 400)]
    assert parse_config("upstreams: [{name: u, healthchecks: {check: {interval: 2s}}}]").upstreams[0] \
        .healthchecks.check.interval_s == 2.0


@pytest.mark.parametrize("block, message", [
    ("{interval: soon}", 'upstreams[0].healthchecks.check: interval: expected a duration like "10s", "500ms" or '
                         '"5m", got "soon"'),
    ("{timeout: 0}", "upstreams[0].healthchecks.check: timeout: expected a duration > 0, got 0"),
    ("{rise: 0}", "upstreams[0].healthchecks.check.rise: expected int >= 1, got 0"),
    ("{path: health}", 'upstreams[0].healthchecks.check: path: expected a path starting with "/", got "health"'),
    ("{expect_status: [200, 6xx]}",
     "upstreams[0].healthchecks.check: expect_status[1]: expected a status code (200) or class (\"2xx\"), got '6xx'"),
    ("{expect_status: []}", "upstreams[0].healthchecks.check: expect_status: expected at least one status"),
    ("{type: udp}", 'upstreams[0].healthchecks.check.type: expected one of "http", "https", "tcp", got "udp"'),
])
def test_healthcheck_alias_errors(block: str, message: str) -> None:
    assert errors(f"upstreams:\n  - name: u\n    healthchecks:\n      check: {block}\n") == [f"f.yml: {message}"]


def test_the_guides_kong_yml_still_loads() -> None:
    config = parse_config(open("configs/kong.yml", encoding="utf-8").read())
    assert config.upstreams[0].discovery is None and config.upstreams[0].healthchecks.check is None
    assert config.gateway.registration is None


def test_durations_and_endpoints() -> None:
    assert parse_duration("10s") == 10 and parse_duration("500ms") == 0.5 and parse_duration("5m") == 300
    assert parse_duration(3000, 0.001) == 3 and parse_duration("1h") == 3600 and parse_duration(2.5) == 2.5
    for bad in ("", "10 s x", "-1s", 0, True):
        with pytest.raises(ValueError):
            parse_duration(bad)  # type: ignore[arg-type]
    assert consul_duration(10) == "10s" and consul_duration(0.25) == "250ms" and consul_duration(1.5) == "1500ms"
    assert valid_endpoint("127.0.0.1:2379") and valid_endpoint("http://etcd-1:2379") and valid_endpoint("[::1]:1")
    assert not valid_endpoint("etcd") and not valid_endpoint("https://x:1") and not valid_endpoint("x:0")
