"""Kong 3.9.3's unit specs of its entity schemas (spec/01-unit/01-db/01-schema/) replayed through the loader: a
health check's https_sni as typedefs.sni checks it, and a regex route path through typedefs.router_path's PCRE2 dry
run."""

from __future__ import annotations

import json
import ssl
from typing import Any

import pytest
import trio
from tls_helpers import HttpsEcho, Pki

from gateway.config import ConfigError, parse_config
from gateway.config.schema import Config
from gateway.health.machine import Event
from gateway.health.policy import ActivePolicy
from gateway.health.probe import probe
from gateway.runtime import compile_config


def _load(document: dict[str, Any]) -> Config:
    config = parse_config(json.dumps({"_format_version": "3.0", **document}), "k.yml")
    compile_config(config, "k.yml")
    return config


def _errors(document: dict[str, Any]) -> list[str]:
    try:
        _load(document)
    except ConfigError as e:
        return [m.removeprefix("k.yml: ") for m in e.messages]
    return []


def _upstream_with_sni(sni: str, **active: Any) -> dict[str, Any]:
    return {"upstreams": [{"name": "x", "healthchecks": {"active": {"type": "https", "https_sni": sni, **active}}}]}


def _route_with_path(path: str) -> dict[str, Any]:
    return {"services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"paths": [path]}]}]}


# --- upstreams.healthchecks.active.https_sni: typedefs.sni ------------------------------------------------------------


@pytest.mark.parametrize("sni", ["example.com", "example.test.", "example_api.com"])
def test_a_health_check_sni_that_is_a_kong_host_name_loads(sni: str) -> None:
    """09-upstreams_spec.lua:509-517 "accepts inputs with the correct values" (`https_sni = "example.test."`):
    typedefs.sni (typedefs.lua:154-170, :422; upstreams.lua:142) is normalize_ip, whose check_hostname
    (kong/tools/ip.lua:224-249) takes `^[%d%a%-%.%_]+$` (an underscore too) and a final dot ("FQDN can end in dots")."""
    assert _errors(_upstream_with_sni(sni)) == []


@pytest.mark.parametrize("sni", ["/example", ".example", "example:", "mock;bin", "example.com/org", "example-.org",
                                 "example.org-", "hello..example.com", "hello-.example.com", "*.example.com", "a*b",
                                 "256.1.1.1"])
def test_a_health_check_sni_that_is_no_host_name_is_an_invalid_value(sni: str) -> None:
    """09-upstreams_spec.lua:383, :398-417 "rejects invalid configurations": "invalid value: <name>" for a name
    check_hostname refuses (kong/tools/ip.lua:243-247: a segment ending in "-", an empty segment but the last); `*`
    is no host name character, so a wildcard never reaches the probe's TLS server name; digits and dots are an IPv4
    address, and "256.1.1.1" none (normalize_ipv4's "invalid ipv4 address")."""
    assert _errors(_upstream_with_sni(sni)) == [f"upstreams[0].healthchecks.active: https_sni: invalid value: {sni}"]


@pytest.mark.parametrize(("sni", "message"), [("127.0.0.1", "must not be an IP"),
                                              ("127.0.0.1:8080", "must not be an IP"),
                                              ("[::1]:8080", "must not be an IP"),
                                              ("example.com:1234", "must not have a port"),
                                              ("01.02.03.04", "must not be an IP"),
                                              ("example.com:99999", "must not have a port"),
                                              ("1.2.3.4:99999", "must not have a port")])
def test_a_health_check_sni_is_refused_as_an_ip_or_for_its_port_in_kongs_order(sni: str, message: str) -> None:
    """09-upstreams_spec.lua:396-397, :418: typedefs.lua validate_sni says "must not be an IP" for an address with a
    port (its checks run in that order) and for what normalize_ip reads as IPv4 (leading zeros too), and "must not
    have a port" for a port out of range, an IP's too (normalize_ip then gives "invalid port number" only)."""
    assert _errors(_upstream_with_sni(sni)) == [f"upstreams[0].healthchecks.active: https_sni: {message}"]


class _SniEcho(HttpsEcho):
    """HttpsEcho that records the server name each TLS handshake asked for."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.snis: list[str | None] = []
        self.ctx.sni_callback = self._sni

    def _sni(self, _obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.snis.append(name)


async def test_a_health_check_sni_with_a_final_dot_is_sent_as_written(nursery: trio.Nursery) -> None:
    """lua-resty-healthcheck 3.1.0 (healthcheck.lua:1016-1025) passes `checks.active.https_sni` as it is to
    `sock:sslhandshake`, which gives it to SSL_set_tlsext_host_name (lua-nginx-module ngx_http_lua_socket_tcp.c):
    the probe's server name keeps the final dot."""
    backend = _SniEcho(Pki().issue("example.test"))
    await nursery.start(backend.serve)
    config = _load(_upstream_with_sni("example.test.", https_verify_certificate=False))  # (the test CA is untrusted)
    policy = ActivePolicy.from_config(config.upstreams[0].healthchecks)
    with trio.fail_after(5):
        assert await probe("127.0.0.1", backend.port, policy) == Event.SUCCESS
    assert backend.snis == ["example.test."]


async def test_a_health_check_sni_with_a_label_over_63_bytes_is_sent_as_written(nursery: trio.Nursery) -> None:
    """Kong's host names allow a label of any length (kong/tools/ip.lua check_hostname) and lua-resty-healthcheck
    sends it as it is; Python's idna codec refuses one over 63 bytes, which Trio's SSLStream skips for an ASCII name
    (trio._socket.encode_hostname): the probe sends it, nothing raises out of the health checker."""
    name = "a" * 64 + ".example.test"
    backend = _SniEcho(Pki().issue("example.test"))
    await nursery.start(backend.serve)
    config = _load(_upstream_with_sni(name, https_verify_certificate=False))
    policy = ActivePolicy.from_config(config.upstreams[0].healthchecks)
    with trio.fail_after(5):
        assert await probe("127.0.0.1", backend.port, policy) == Event.SUCCESS
    assert backend.snis == [name]


# --- routes.paths: typedefs.router_path's PCRE dry run ----------------------------------------------------------------


def test_a_regex_path_pcre2_refuses_is_refused_in_kongs_words() -> None:
    """06-routes_spec.lua:285-303 "must dry-run values that are considered regexes": typedefs.lua:500-530
    validate_path_with_regexes runs `ngx.re.find("", path, "aj")` and words its error so."""
    assert _errors(_route_with_path("~/users/(foo/profile")) == [
        "services[0].routes[0].paths[0]: invalid regex: '/users/(foo/profile' (PCRE returned: pcre2_compile() "
        'failed: missing closing parenthesis in "/users/(foo/profile")']


@pytest.mark.parametrize(("path", "reason"), [
    ("~/caf\\u{e9}", 'PCRE2 does not support \\F, \\L, \\l, \\N{name}, \\U, or \\u in "/caf\\u{e9}" at "{e9}"'),
    ("~/caf\\u00e9", 'PCRE2 does not support \\F, \\L, \\l, \\N{name}, \\U, or \\u in "/caf\\u00e9" at "00e9"'),
    ("~/\\U0001F600", 'PCRE2 does not support \\F, \\L, \\l, \\N{name}, \\U, or \\u in "/\\U0001F600" at "0001F600"'),
    ("~/\\x{263a}", 'character code point value in \\x{} or \\o{} is too large in "/\\x{263a}" at "}"'),
    ("~/(?u)abc", 'unrecognized character after (? or (?- in "/(?u)abc" at "u)abc"'),
])
def test_a_regex_path_only_rusts_regex_reads_is_refused_by_the_pcre2_dry_run(path: str, reason: str) -> None:
    """typedefs.lua:522 compiles the path on PCRE2 without UTF mode (the "aj" flags have no "u"), whatever the router
    reads later: Rust's `\\u{e9}`, `\\u00e9`, `\\U0001F600`, a `\\x{...}` above 0xFF and the flag `u` are refused
    at load, though Kong's router (Rust's regex crate) would have read them."""
    assert _errors(_route_with_path(path)) == [
        f"services[0].routes[0].paths[0]: invalid regex: '{path[1:]}' (PCRE returned: pcre2_compile() failed: "
        f"{reason})"]
