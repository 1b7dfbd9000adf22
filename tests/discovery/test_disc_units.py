"""Pure pieces of discovery: target values, index rules, backoff, the once-per-change log, registration payloads."""

from __future__ import annotations

import logging
import random

import pytest

from gateway.config import parse_config
from gateway.config.discovery import RegistrationSettings
from gateway.config.schema import GatewaySettings
from gateway.discovery import Backoff, LinkState, TargetInfo, config_targets, resolve_registration
from gateway.discovery.consul import next_index, parse_health_entries
from gateway.discovery.etcd import parse_target_value, prefix_range_end
from gateway.discovery.http import Endpoint, TransportError
from gateway.discovery.registration import ipv6_only_warning
from gateway.discovery.types import normalise, parse_host_port


def test_target_info() -> None:
    assert TargetInfo("10.0.0.1", 80, 5).name == "10.0.0.1:80" and TargetInfo("::1", 80).name == "[::1]:80"
    assert TargetInfo("h", 1) == TargetInfo("h", 1, 100)
    assert normalise([TargetInfo("b", 1), TargetInfo("a", 2), TargetInfo("b", 1, 7)]) == [
        TargetInfo("a", 2), TargetInfo("b", 1, 7)]
    assert parse_host_port("[::1]:8080") == ("::1", 8080) and parse_host_port("h:0") is None
    assert parse_host_port("h") is None and parse_host_port("h:1:2") is None


@pytest.mark.parametrize("value, expected", [
    (b'{"target": "10.0.0.1:8080", "weight": 5}', TargetInfo("10.0.0.1", 8080, 5)),
    (b'{"target": "10.0.0.1:8080", "id": "x", "tags": []}', TargetInfo("10.0.0.1", 8080, 42)),
    (b'{"target": "10.0.0.1:8080", "weight": 0}', TargetInfo("10.0.0.1", 8080, 0)),
    (b"10.0.0.1:8080", TargetInfo("10.0.0.1", 8080, 42)),
    (b"  mcp-1.internal:9000\n", TargetInfo("mcp-1.internal", 9000, 42)),
    (b'"[fe80::1]:9000"', TargetInfo("fe80::1", 9000, 42)),
])
def test_etcd_values(value: bytes, expected: TargetInfo) -> None:
    assert parse_target_value(value, 42) == expected


@pytest.mark.parametrize("value, reason", [
    (b"{not json", "invalid JSON"),
    (b'{"host": "a"}', '"target"'),
    (b'{"target": "a:1", "weight": "5"}', "weight"),
    (b'{"target": "a:1", "weight": 70000}', "weight"),
    (b"a", "host:port"),
    (b"", "host:port"),
])
def test_etcd_bad_values(value: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_target_value(value, 100)


def test_prefix_range_end() -> None:
    assert prefix_range_end(b"/gateway/upstreams/mcp/") == b"/gateway/upstreams/mcp0"
    assert prefix_range_end(b"a\xff") == b"b" and prefix_range_end(b"\xff\xff") == b"\x00"


def test_consul_index_rules() -> None:
    assert next_index(0, "15") == 15
    assert next_index(15, "15") == 15 and next_index(15, "20") == 20
    assert next_index(20, "3") == 0, "an index that went backwards is reset"
    assert next_index(0, "0") == 1, "an index is never 0 once set (a 0 would make every query return at once)"
    with pytest.raises(TransportError):
        next_index(0, None)
    with pytest.raises(TransportError):
        next_index(0, "abc")


def _entry(sid: str, address: str, port: object, statuses: list[str], node_address: str = "10.9.9.9",
           weights: dict[str, int] | None = None) -> dict[str, object]:
    service: dict[str, object] = {"ID": sid, "Service": "s", "Address": address, "Port": port}
    if weights is not None:
        service["Weights"] = weights
    return {"Node": {"Node": "n", "Address": node_address}, "Service": service,
            "Checks": [{"CheckID": "serfHealth", "Status": "passing"}] + [{"Status": s} for s in statuses]}


def test_consul_entries() -> None:
    entries = [
        _entry("a", "10.0.0.1", 80, [], weights={"Passing": 3, "Warning": 1}),
        _entry("b", "", 81, ["passing"]),  # no service address: the node's
        _entry("c", "10.0.0.3", 82, ["warning"], weights={"Passing": 3, "Warning": 1}),
        _entry("d", "10.0.0.4", 83, ["critical"]),
        _entry("e", "10.0.0.5", "x", []),  # unusable port: skipped
        "garbage",
    ]
    assert parse_health_entries(entries, 100, True) == [TargetInfo("10.0.0.1", 80, 3), TargetInfo("10.9.9.9", 81)]
    assert parse_health_entries(entries, 100, False) == [
        TargetInfo("10.0.0.1", 80, 3), TargetInfo("10.0.0.3", 82, 1), TargetInfo("10.9.9.9", 81)]
    with pytest.raises(TransportError):
        parse_health_entries({"not": "a list"}, 100, True)


def test_endpoints() -> None:
    assert Endpoint.parse("http://127.0.0.1:2379") == Endpoint("127.0.0.1", 2379)
    assert Endpoint.parse("[::1]:8500").authority == "[::1]:8500" and str(Endpoint("h", 1)) == "http://h:1"
    with pytest.raises(ValueError):
        Endpoint.parse("nohost")


def test_backoff_grows_caps_and_jitters() -> None:
    b = Backoff(0.5, 4.0, jitter=0.5, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    bases = [0.5, 1, 2, 4, 4, 4, 4, 4]
    assert all(base * 0.5 <= d <= base for d, base in zip(delays, bases, strict=True))
    assert len(set(delays)) == len(delays), "jittered"
    b.reset()
    assert b.next_delay() <= 0.5
    exact = Backoff(1, 8, jitter=0)
    assert [exact.next_delay() for _ in range(5)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError):
        Backoff(2, 1)


def test_link_state_logs_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    link = LinkState("discovery: upstream u", logging.getLogger("test.link"))
    assert link.state == "starting"
    link.up("http://a:1")
    for _ in range(5):
        link.down("http://a:1", "connection refused")
    for _ in range(3):
        link.up("http://a:1")
    link.down("http://a:1", "reset")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4, messages
    assert "connected to http://a:1" in messages[0]
    assert "unreachable (connection refused)" in messages[1]
    assert "connected again to http://a:1 after 5 failed attempts" in messages[2]
    assert link.details()["state"] == "down" and link.details()["error"] == "reset"


def test_registration_resolution_and_payloads() -> None:
    gw = GatewaySettings(listen=["0.0.0.0:8080", "0.0.0.0:8443"], status_listen="0.0.0.0:8100")
    reg = resolve_registration(RegistrationSettings(backend="consul", id="erlmcp-gw", tags=["tcp", "mcp"],
                                                    deregister_critical_after="1m", meta={"v": "1"}), gw)
    assert reg.host == "" and reg.port == 8080, "a wildcard address: Consul fills in its node's address"
    assert reg.consul_payload() == {
        "ID": "erlmcp-gw", "Name": "mcp-gateway", "Tags": ["tcp", "mcp"], "Address": "", "Port": 8080,
        "Meta": {"v": "1"}, "Weights": {"Passing": 100, "Warning": 1},
        "Check": {"HTTP": "http://127.0.0.1:8100/status/ready", "Interval": "10s", "Timeout": "5s",
                  "DeregisterCriticalServiceAfter": "1m"}}
    etcd = resolve_registration(RegistrationSettings(backend="etcd", advertise="10.0.1.10:8080", weight=3,
                                                     check=""), gw)
    assert etcd.key.startswith("/gateway/upstreams/mcp-gateway/mcp-gateway-") and etcd.key.endswith("-8080")
    assert parse_target_value(etcd.etcd_value(), 100) == TargetInfo("10.0.1.10", 8080, 3)
    assert etcd.check_url is None
    no_status = resolve_registration(RegistrationSettings(backend="consul"),
                                     GatewaySettings(listen="10.0.0.1:80", status_listen=None))
    assert no_status.check_url is None and no_status.consul_payload()["Check"]["TTL"] == "15s", (
        "no status server to check: a TTL check of check_interval + check_timeout, passed by the gateway")


@pytest.mark.parametrize(("listen", "advertise", "status_listen", "check"), [
    ("[::]:8000", None, "[::]:8100", "http://[::1]:8100/status/ready"),
    ("0.0.0.0:8000", None, "[::]:8100", "http://[::1]:8100/status/ready"),
    ("0.0.0.0:8000", "10.0.0.1:8000", "[::]:8100", "http://[::1]:8100/status/ready"),
    ("0.0.0.0:8000", "[2001:db8::1]:8000", "[::]:8100", "http://[2001:db8::1]:8100/status/ready"),
    ("[::]:8000", "[2001:db8::1]:8000", "0.0.0.0:8100", "http://127.0.0.1:8100/status/ready"),
    ("0.0.0.0:8000", "gw1.internal:8000", "[::]:8100", "http://gw1.internal:8100/status/ready"),
])
def test_the_consul_check_of_a_wildcard_status_listener_is_an_address_of_its_family(
        listen: str, advertise: str | None, status_listen: str, check: str) -> None:
    """nginx 1.27.1 src/http/ngx_http_core_module.c:4000 `lsopt.ipv6only = 1;`: a `[::]:PORT` listener takes IPv6
    connections only, `0.0.0.0:PORT` IPv4 ones (the status server binds them so: gateway.http.net.unbound_listener).
    The check of a wildcard status listener names the advertised address when it is one of the listener's family
    (or a name), else that family's loopback: `status_listen: "[::]:8100"` was checked at 127.0.0.1, where nothing
    answers, and Consul held the gateway critical for ever."""
    gw = GatewaySettings(listen=listen, status_listen=status_listen)
    reg = resolve_registration(RegistrationSettings(backend="consul", advertise=advertise), gw)
    assert reg.check_url == check


def test_an_ipv6_only_wildcard_listen_registers_the_agents_address_and_says_to_advertise() -> None:
    """`listen: "[::]:8000"` registers Address "" as `0.0.0.0:8000` does (Consul's agent address stands for a
    wildcard: the gateway has no one address to name), but a `[::]` listener takes IPv6 connections only (nginx
    1.27.1 ngx_http_core_module.c:4000), so the start warns that the agent's address must be an IPv6 one and names
    registration.advertise; an advertised address, or an IPv4 wildcard, has nothing to warn about."""
    v6 = GatewaySettings(listen="[::]:8000", status_listen="[::]:8100")
    settings = RegistrationSettings(backend="consul")
    reg = resolve_registration(settings, v6)
    assert reg.host == "" and reg.consul_payload()["Address"] == ""
    warning = ipv6_only_warning(settings, v6, reg)
    assert warning is not None and "[::]:8000" in warning and "IPv6" in warning
    assert "gateway.registration.advertise" in warning
    advertised = RegistrationSettings(backend="consul", advertise="[2001:db8::1]:8000")
    assert ipv6_only_warning(advertised, v6, resolve_registration(advertised, v6)) is None
    v4 = GatewaySettings(listen="0.0.0.0:8000", status_listen="0.0.0.0:8100")
    assert ipv6_only_warning(settings, v4, resolve_registration(settings, v4)) is None


def test_config_targets() -> None:
    config = parse_config("""
upstreams:
  - name: u
    targets: [{target: "10.0.0.2:80", weight: 5}, {target: "mcp-1"}, {target: "[::1]:81"}]
  - name: v
    targets: [{target: "10.0.0.9:9"}]
""")
    assert config_targets(config, "u") == sorted([TargetInfo("10.0.0.2", 80, 5), TargetInfo("mcp-1", 8000),
                                                  TargetInfo("::1", 81)])
    assert config_targets(config, "nope") == []
