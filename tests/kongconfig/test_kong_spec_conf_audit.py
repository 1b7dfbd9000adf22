"""Kong 3.9.3's spec/01-unit/03-conf_loader_spec.lua and 04-prefix_handler_spec.lua, `it` by `it`, for the kong.conf
keys the `gateway:` section takes (gateway/config/kong_conf.py, loader.py, listen.py): the blocks no other test
ported, and how a listen entry's words are read (kong/conf_loader/listeners.lua) and when ssl_cert / ssl_cert_key
are checked (kong/conf_loader/parse.lua)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from tls_helpers import ca_and_leaf, self_signed

from gateway.config import ConfigError, parse_config
from gateway.config.listen import listen_flags
from gateway.runtime import compile_config
from gateway.worker import listen_addresses


def problems(gateway: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    """The messages refusing a file with this `gateway:` section (compiled as check-config does), [] when it loads."""
    try:
        compile_config(parse_config(json.dumps({"gateway": gateway}), "f", environ=environ or {}), "f")
    except ConfigError as e:
        return [m.removeprefix("f: ") for m in e.messages]
    return []


def settings(gateway: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
    return parse_config(json.dumps({"gateway": gateway}), "f", environ=environ or {}).gateway


# --- ssl_cert / ssl_cert_key without a TLS listener (parse.lua:314-371) ---------------------------------------------


@pytest.mark.parametrize("gateway", [
    {"listen": "127.0.0.1:8123", "ssl_cert": "/path/cert.pem"},
    {"listen": "127.0.0.1:8123", "ssl_cert_key": "/path/key.pem"},
    {"listen": "127.0.0.1:8123", "ssl_cert": "/path/a.pem,/path/b.pem", "ssl_cert_key": "/path/a.key"},
    {"ssl_cert": "/path/cert.pem"},  # the gateway's default listen, 127.0.0.1:8000, terminates no TLS
])
def test_ssl_cert_and_key_are_not_checked_when_no_listener_terminates_tls(gateway: dict[str, Any]):
    """03-conf_loader_spec "does not check SSL cert and key if SSL is off" (proxy_listen = 127.0.0.1:123 with
    ssl_cert = /path/cert.pem alone: no error). kong/conf_loader/parse.lua:314-371 checks ssl_cert / ssl_cert_key
    (the pair, their counts, their files) only `if ssl_enabled`, i.e. some proxy_listen (or stream_listen) entry has
    the ssl flag: without one they serve nothing and are accepted."""
    assert problems(gateway) == []


def test_ssl_cert_alone_is_refused_when_a_listener_terminates_tls():
    """parse.lua:329-331 with ssl_enabled: "ssl_cert_key must be specified". A leading `ssl` makes a TLS listener too
    (listeners.lua:44-78 takes it wherever it stands); parse.lua:317's text search `%sssl[%s,]` misses it, but
    nginx_kong.lua:120-124 then writes the certificate without its key and nginx does not start: refused at load."""
    assert problems({"listen": "ssl 127.0.0.1:8443", "ssl_cert": "/path/cert.pem"}) == [
        "gateway.ssl_cert_key must be specified"]


# --- a listen entry's words (listeners.lua:44-130) -------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "backlog"), [
    ("reuseport 127.0.0.1:8123", None),
    ("backlog=77 127.0.0.1:8123", 77),
    ("deferred 127.0.0.1:8123 reuseport", None),
])
def test_listen_flags_are_taken_wherever_they_stand_in_the_entry(entry: str, backlog: int | None):
    """03-conf_loader_spec "extracts flags, ports and listen ips from proxy_listen": listeners.lua:44-78
    parse_option_flags pads the entry with spaces and gsub()s each flag `%s(flag)%s` out of it wherever it stands,
    the remainder being the address (listeners.lua:107-126), and writes nginx's listen line as address + flags
    (listeners.lua:129-130): `backlog=77 127.0.0.1:8123` is nginx's `listen 127.0.0.1:8123 backlog=77`."""
    assert problems({"listen": entry}) == []
    [address] = listen_addresses(parse_config(json.dumps({"gateway": {"listen": entry}}), "f"))
    assert tuple(address) == ("127.0.0.1", 8123)
    if backlog is not None:
        assert address.options.backlog == backlog


def test_of_two_backlogs_in_one_entry_the_first_is_nginxs():
    """listeners.lua:52-60: `value:match("%s(backlog=%d+)%s")` finds the first backlog= of the entry, which becomes the
    flag written to nginx's listen line, and gsub() removes every backlog=N (not touching another flag between
    them): `127.0.0.1:8123 backlog=10 so_keepalive=on backlog=16384` is nginx's `listen 127.0.0.1:8123 backlog=10
    so_keepalive=on`."""
    [address] = listen_addresses(parse_config(json.dumps(
        {"gateway": {"listen": "127.0.0.1:8123 backlog=10 so_keepalive=on backlog=16384"}}), "f"))
    assert address.options.backlog == 10


def test_listen_flags_come_in_kongs_order_as_nginxs_listen_line():
    """listeners.lua:17-23 and 62-73: the sanitized flags follow subsystem_flags' order (ssl, http2, proxy_protocol,
    deferred, bind, reuseport, backlog=, ipv6only=, so_keepalive=), each once, whatever the entry's order."""
    assert listen_flags("backlog=9 [::1]:8443 so_keepalive=on ipv6only=off ssl reuseport ssl") == (
        "[::1]:8443", ("ssl", "reuseport", "backlog=9", "ipv6only=off", "so_keepalive=on"))


@pytest.mark.parametrize(("entry", "flag"), [
    ("127.0.0.1:8123 deferred deferred", "deferred"),
    ("deferred deferred 127.0.0.1:8123", "deferred"),
    ("127.0.0.1:8123 backlog=10 backlog=20", "backlog=20"),
])
def test_a_flag_written_twice_in_a_row_is_refused(entry: str, flag: str):
    """listeners.lua:63 `value:gsub("%s(flag)%s", " ")`: the match of the first takes the space the second needs,
    so the second stays in the remainder, which then is no `host:port` (the "must be of form" usage error; before
    the address Kong's name form takes `deferred 127.0.0.1` as the host, and nginx refuses the listen line)."""
    [message] = problems({"listen": entry})
    assert message.startswith(f'gateway.listen: expected "host:port" or "host:port ssl" (e.g. "127.0.0.1:8443 ssl"), '
                              f'got "{entry}" ("{flag}" right after the same flag: ')


def test_a_flag_twice_apart_is_taken_once():
    """listeners.lua:63: gsub() removes every occurrence not sharing a space with the one before."""
    assert problems({"listen": "deferred 127.0.0.1:8123 deferred"}) == []
    assert listen_flags("deferred 127.0.0.1:8123 deferred") == ("127.0.0.1:8123", ("deferred",))


def test_an_unknown_word_before_the_address_is_refused_by_name():
    """An unknown word stays in Kong's remainder (listeners.lua:107-126), which nginx then cannot read: the gateway
    names the word, wherever it stands."""
    assert problems({"listen": "fastopen=5 127.0.0.1:8123"}) == [
        'gateway.listen: the listen option "fastopen=5" is not supported (ssl, proxy_protocol, reuseport, backlog=N, '
        "deferred, bind, ipv6only=on|off and so_keepalive=on|off|[keepidle]:[keepintvl]:[keepcnt] are)"]


def test_status_listen_flags_are_taken_wherever_they_stand():
    """kong/conf_loader/init.lua:898 parses status_listen with the same listeners.lua (http flags)."""
    assert problems({"status_listen": "reuseport backlog=16384 127.0.0.1:8007"}) == []


# --- 03-conf_loader_spec blocks not ported before (these pass) ------------------------------------------------------


@pytest.mark.parametrize("entry", ["127.0.0.1", ""])
def test_a_listen_entry_without_a_port_or_empty_is_refused(entry: str):
    """03-conf_loader_spec "enforces listen addresses format" (proxy_listen = 127.0.0.1) and "rejects empty string in
    listen addresses" (proxy_listen = ""): listeners.lua's "must be of form" usage error."""
    assert problems({"listen": entry}) == [
        f'gateway.listen: expected "host:port" or "host:port ssl" (e.g. "127.0.0.1:8443 ssl"), got "{entry}"']


def test_ssl_in_a_host_name_is_no_ssl_flag():
    """03-conf_loader_spec "extracts ssl flags properly when hostnames contain them": ssl.myname.test:8000 is a plain
    listener (the flag is the word ` ssl`), and ssl_myname.test:8000 ssl a TLS one."""
    assert problems({"listen": "ssl.myname.test:8000"}) == []
    [address] = listen_addresses(parse_config(json.dumps({"gateway": {"listen": "ssl.myname.test:8000"}}), "f"))
    assert tuple(address) == ("ssl.myname.test", 8000)
    assert problems({"listen": "ssl:23"}) == []  # "does not check SSL cert and key if SSL is off": a host named ssl
    assert problems({"listen": "ssl_myname.test:8000 ssl"}) == [
        "gateway.listen: ssl_myname.test:8000 terminates TLS but there is no certificate: set gateway.ssl_cert and "
        "gateway.ssl_cert_key, or add certificates with snis"]


def test_kongs_default_plain_proxy_listen_entry_loads():
    """03-conf_loader_spec "loads the defaults": proxy_listen's first entry, `0.0.0.0:8000 reuseport backlog=16384`."""
    [address] = listen_addresses(parse_config(json.dumps(
        {"gateway": {"listen": "127.0.0.1:8000 reuseport backlog=16384"}}), "f"))
    assert address.options.backlog == 16384


@pytest.mark.parametrize(("value", "ok"), [
    ("1.2.3.4:53;4.3.2.1", False), ("198.51.100.0:53", True), ("[::1]:53", True),
    ("198.51.100.0,1.2.3.4:53,::1,[::1]:53", True),
])
def test_dns_resolver_is_a_list_of_ip_or_ip_port(value: str, ok: bool):
    """03-conf_loader_spec "errors when dns_resolver is not a list in ipv4/6[:port] format" (parse.lua:504-514)."""
    expected = [] if ok else [f"gateway: dns_resolver must be a comma separated list in the form of IPv4/6 or "
                              f"IPv4/6:port, got '{value}'"]
    assert problems({"dns_resolver": value}) == expected


def test_dns_hostsfile_must_exist(tmp_path: Path):
    """03-conf_loader_spec "errors when the hosts file does not exist" / "accepts an existing hosts file"
    (parse.lua:516-520: `dns_hostsfile: file does not exist`)."""
    [message] = problems({"dns_hostsfile": "/a_file_that_does_not_exist"})
    assert message.startswith("gateway: dns_hostsfile: file does not exist")
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    assert problems({"dns_hostsfile": str(hosts)}) == []
    assert settings({"dns_hostsfile": str(hosts)}).dns_hostsfile == str(hosts)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("dns_order", "A,CXAME,SRV", "gateway: dns_order: invalid entry 'CXAME'"),
    ("headers", "server_tokens,Foo-Bar", "gateway: headers: invalid entry 'Foo-Bar'"),
])
def test_a_bad_entry_of_a_list_is_refused_naming_it(key: str, value: str, message: str):
    """03-conf_loader_spec "errors on bad entries in the order list" and "errors on bad entries in headers"
    (parse.lua:486-493, 522-532)."""
    [got] = problems({key: value})
    assert got.startswith(message)


@pytest.mark.parametrize(("key", "value", "field", "expected"), [
    ("dns_order", " LAST , SRV,A ", "dns_order", ["LAST", "SRV", "A"]),
    ("dns_order", "last,srv,a", "dns_order", ["last", "srv", "a"]),  # parse.lua:527: upper(name)
    ("trusted_ips", " 10.0.0.0/8 , ::1 ", "trusted_ips", ["10.0.0.0/8", "::1"]),
])
def test_array_values_are_split_on_commas_and_trimmed(key: str, value: str, field: str, expected: list[str]):
    """03-conf_loader_spec "infer arrays (comma-separated strings)" and "trims array values" (parse.lua:91-100:
    split on "," and strip each); dns_order's entries are compared upper-cased."""
    assert problems({key: value}) == []
    assert getattr(settings({key: value}), field) == expected


def test_headers_entries_are_case_insensitive():
    """parse.lua:486-493: `HEADER_KEY_TO_NAME[lower(token)]` (the spec's "errors on bad entries in headers" takes the
    other side): Server_Tokens and X-KONG-REQUEST-ID are Kong's tokens."""
    assert problems({"headers": "Server_Tokens, X-KONG-REQUEST-ID"}) == []


@pytest.mark.parametrize("key", ["upstream_keepalive_pool_size", "upstream_keepalive_max_requests",
                                 "upstream_keepalive_idle_timeout"])
@pytest.mark.parametrize("value", [-1, "-1"])
def test_negative_upstream_keepalive_values_are_refused(key: str, value: object):
    """03-conf_loader_spec "upstream keepalive properties" "rejects negative values" (`... must be 0 or greater`),
    from the file or as kong.conf's text."""
    [message] = problems({key: value})
    assert message.startswith(f"gateway.{key}: expected ")


@pytest.mark.parametrize("key", ["upstream_keepalive_pool_size", "upstream_keepalive_max_requests",
                                 "upstream_keepalive_idle_timeout"])
def test_upstream_keepalive_values_of_zero_are_taken(key: str):
    """03-conf_loader_spec "accepts upstream_keepalive_pool_size = 0" / max_requests / idle_timeout."""
    assert problems({key: 0}) == []


def test_tls_values_are_taken_as_base64_of_the_pem_text(tmp_path: Path):
    """03-conf_loader_spec SSL "accepts and decodes valid base64 values": ssl_cert, ssl_cert_key, client_ssl_cert,
    client_ssl_cert_key and lua_ssl_trusted_certificate may be the base64 of the PEM text (parse.lua's
    try_decode_base64)."""
    cert, key = self_signed("a.test", -1, 10)
    ca, _, _ = ca_and_leaf("b.test", ["b.test"])

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    assert problems({"listen": "127.0.0.1:8443 ssl", "ssl_cert": b64(cert), "ssl_cert_key": b64(key),
                     "client_ssl": "on", "client_ssl_cert": b64(cert), "client_ssl_cert_key": b64(key),
                     "lua_ssl_trusted_certificate": b64(ca)}) == []


def test_several_ca_files_in_lua_ssl_trusted_certificate(tmp_path: Path):
    """03-conf_loader_spec "accepts several CA certs in lua_ssl_trusted_certificate" (comma-separated files), and
    "expands the `system` property" beside a file; "requires trusted CA cert file to exist"."""
    one, two = tmp_path / "one.pem", tmp_path / "two.pem"
    one.write_text(ca_and_leaf("c.test", ["c.test"])[0])
    two.write_text(ca_and_leaf("d.test", ["d.test"])[0])
    assert problems({"lua_ssl_trusted_certificate": f"{one},{two}"}) == []
    assert problems({"lua_ssl_trusted_certificate": f"system,{one}"}) == []
    assert problems({"lua_ssl_trusted_certificate": "/path/cert.pem"}) == [
        "gateway.lua_ssl_trusted_certificate: failed loading certificate from /path/cert.pem"]


def test_both_ssl_files_missing_with_a_tls_listener_are_refused():
    """03-conf_loader_spec "requires SSL cert and key to exist" (with an ssl listener, parse.lua:343-369)."""
    [message] = problems({"listen": "127.0.0.1:8443 ssl", "ssl_cert": "/path/cert.pem",
                          "ssl_cert_key": "/path/cert_key.pem"})
    assert message.startswith("gateway.ssl_cert: ") and "/path/cert.pem" in message


@pytest.mark.parametrize(("environ", "field", "value"), [
    ({"KONG_REAL_IP_HEADER": "X-Test#123"}, "real_ip_header", "X-Test#123"),
    ({"KONG_REAL_IP_HEADER": "X-Test##12##3#"}, "real_ip_header", "X-Test##12##3#"),
])
def test_octothorpes_in_kong_variables_are_kept(environ: dict[str, str], field: str, value: str):
    """03-conf_loader_spec "escapes unescaped octothorpes in environment variables" / "does not modify existing
    octothorpes in environment variables": a variable's `#` is no comment."""
    assert getattr(settings({}, environ), field) == value


def test_kong_variables_that_name_no_key_are_ignored():
    """03-conf_loader_spec "strips extraneous properties (not in defaults)"."""
    assert problems({}, {"KONG_STUB_PROPERTY": "leave me alone"}) == []


@pytest.mark.parametrize(("gateway", "expected"), [
    ({"opentelemetry_tracing": "request,router"}, "request,router"),
    ({"opentelemetry_tracing": "request,router", "tracing_instrumentations": "balancer"}, "balancer"),
])
def test_opentelemetry_tracing_is_tracing_instrumentations_without_clobbering(gateway: dict[str, Any],
                                                                             expected: str):
    """03-conf_loader_spec deprecated properties "opentelemetry_tracing" (with its "no clobber" case)."""
    assert problems(gateway) == []
    got = settings(gateway).tracing_instrumentations
    assert (got if isinstance(got, str) else ",".join(got)) == expected


@pytest.mark.parametrize(("gateway", "expected"), [
    ({"opentelemetry_tracing_sampling_rate": 0.5}, 0.5),
    ({"opentelemetry_tracing_sampling_rate": 0.5, "tracing_sampling_rate": 0.75}, 0.75),
])
def test_opentelemetry_tracing_sampling_rate_without_clobbering(gateway: dict[str, Any], expected: float):
    """03-conf_loader_spec deprecated properties "opentelemetry_tracing_sampling_rate"."""
    assert settings(gateway).tracing_sampling_rate == expected


def test_all_errors_are_reported_at_once():
    """03-conf_loader_spec "returns all errors in ret value #3": worker_consistency = magical and ssl_cert_key alone
    (with an ssl listener: Kong's default proxy_listen has one) are two errors."""
    got = problems({"listen": "127.0.0.1:8443 ssl", "worker_consistency": "magical", "ssl_cert_key": "/x.key"})
    assert len(got) == 2 and "gateway.ssl_cert must be specified" in got


# --- 04-prefix_handler_spec ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("gateway", "header"), [
    ({"real_ip_header": "proxy_protocol"}, "proxy_protocol"),
    ({"nginx_proxy_real_ip_header": "proxy_protocol"}, "proxy_protocol"),
    ({}, "X-Real-IP"),
])
def test_proxy_protocol_listener_with_real_ip_header(gateway: dict[str, Any], header: str):
    """04-prefix_handler_spec "enables proxy_protocol" (both: real_ip_header and nginx_proxy_real_ip_header) and
    ngx_http_realip_module settings "defaults" (real_ip_header X-Real-IP, real_ip_recursive off)."""
    gw = settings({"listen": "127.0.0.1:8123 proxy_protocol", **gateway})
    assert gw.real_ip_header == header and gw.real_ip_recursive is False
    assert problems({"listen": "127.0.0.1:8123 proxy_protocol", **gateway}) == []


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("real_ip_recursive", True, True), ("nginx_proxy_real_ip_recursive", True, True),
    ("real_ip_recursive", False, False), ("nginx_proxy_real_ip_recursive", False, False),
])
def test_real_ip_recursive_from_either_name(key: str, value: bool, expected: bool):
    """04-prefix_handler_spec ngx_http_realip_module settings "real_ip_recursive on" / "off" (each under both
    names)."""
    assert settings({key: value}).real_ip_recursive is expected


@pytest.mark.parametrize("flag", ["deferred", "bind", "reuseport", "ipv6only=off", "so_keepalive=on",
                                  "so_keepalive=off", "so_keepalive=30m::10"])
def test_each_listen_flag_of_the_prefix_handler_spec_loads(flag: str):
    """04-prefix_handler_spec "enables deferred", "enables bind", "enables reuseport", "disables ipv6only",
    "enables/disables/configures so_keepalive"."""
    assert problems({"listen": f"127.0.0.1:8123 {flag}"}) == []


def test_ipv6only_on_an_ipv6_listener_loads():
    """04-prefix_handler_spec "enables ipv6only" ([::1]:9000 ipv6only=on)."""
    [address] = listen_addresses(parse_config(json.dumps({"gateway": {"listen": "[::1]:8123 ipv6only=on"}}), "f"))
    assert address.options.ipv6only is True
