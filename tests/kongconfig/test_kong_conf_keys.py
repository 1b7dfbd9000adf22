"""kong.conf's keys in the `gateway:` section (gateway/config/kong_conf.py): every key of Kong's kong.conf.default
(the copy in real/kong.conf.default) is taken, as ours or as an alias of ours, or refused by name with what it is in
Kong and what to use here; never "unknown field"."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest

from gateway.cli import check_config
from gateway.config import ConfigError, parse_config
from gateway.config.kong_conf import ACCEPTED, ALIASES, KONG_CONF
from gateway.config.schema import GatewaySettings
from gateway.runtime import compile_config

KONG_CONF_DEFAULT = Path(__file__).parent / "real" / "kong.conf.default"
KONG_DEFAULTS = Path(__file__).parent / "real" / "kong_defaults.lua"  # every key Kong's conf loader takes
OURS = {f.encode_name for f in msgspec.structs.fields(GatewaySettings)}


def kong_conf_keys() -> list[tuple[str, str]]:
    """kong.conf.default's `#key = value  # comment` lines: (key, Kong's default, "" for none)."""
    rows = []
    for line in KONG_CONF_DEFAULT.read_text().splitlines():
        m = re.match(r"#([a-z_0-9]+) *=(.*)$", line)
        if m:
            rest = m.group(2).strip()
            rows.append((m.group(1), "" if rest.startswith("#") else re.split(r"\s+#", rest)[0].strip()))
    return rows


KEYS = kong_conf_keys()
# kong_defaults.lua's `key = value` lines: Kong takes these too, though kong.conf.default does not list them all
# (deprecated names such as router_consistency, privileged_worker; host_ports, kic, worker_events_max_payload, ...)
ALL_KEYS = sorted({m.group(1) for line in KONG_DEFAULTS.read_text().splitlines()
                   if (m := re.match(r"([a-z_0-9]+) = ", line))})


def as_yaml_value(text: str) -> object:
    """A kong.conf value as a YAML file would give it: on/off as booleans, numbers as numbers."""
    if text in ("on", "off"):
        return text == "on"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def outcome(gateway: dict[str, object]) -> list[str]:
    """The messages refusing a file whose `gateway:` section is `gateway` ([] when it loads), without the file name."""
    try:
        compile_config(parse_config(json.dumps({"gateway": gateway}), "f"), "f")
    except ConfigError as e:
        return [m.removeprefix("f: ") for m in e.messages]
    return []


def test_the_copy_is_kong_conf_default_with_its_178_keys():
    assert KONG_CONF_DEFAULT.read_text().startswith("# Source: https://github.com/Kong/kong/blob/")
    assert len(KEYS) == 178 and len({k for k, _ in KEYS}) == 178


def test_every_key_is_ours_an_alias_or_in_the_table():
    keys = {k for k, _ in KEYS}
    ours, aliases, table = keys & OURS, keys & set(ALIASES), keys & set(KONG_CONF)
    assert ours | aliases | table == keys
    assert not (ours & table) and not (aliases & table) and not (OURS & (set(ALIASES) | set(KONG_CONF)))
    assert set(ALIASES.values()) <= OURS
    assert set(ACCEPTED) <= set(KONG_CONF)
    assert (len(ours), len(aliases), len(table)) == (31, 11, 136)


PAIRED = {"ssl_cert_key": "ssl_cert"}  # kong/conf_loader/parse.lua: a key alone: "ssl_cert must be specified"


@pytest.mark.parametrize(("key", "default"), KEYS, ids=[k for k, _ in KEYS])
def test_no_key_of_kong_conf_is_an_unknown_field(key: str, default: str):
    """With Kong's default value (or "x" where it has none), each key loads or is refused naming it, never as an
    unknown field; one of Kong's that is not ours is refused with its kong.conf message, unless it is an alias or
    its value is the one that says what the gateway does."""
    messages = outcome({key: as_yaml_value(default or "x")})
    assert not any("unknown field" in m for m in messages), messages
    named = PAIRED.get(key, key)  # Kong's message for a lone key names the one missing
    assert not messages or any(f"gateway.{named}" in m or f"gateway: {named}" in m for m in messages), messages
    if key in KONG_CONF and messages:
        assert messages == [m for m in messages if m.startswith(f"gateway.{key}: kong.conf's {key} ")]
    if key in KONG_CONF and key not in ACCEPTED:
        assert len(messages) == 1, f"{key} with Kong's default must be refused"


@pytest.mark.parametrize("key", sorted(KONG_CONF))
def test_each_key_of_the_table_is_refused_by_name(key: str):
    [message] = outcome({key: "something else"})
    assert message.startswith(f"gateway.{key}: kong.conf's {key} ")
    assert "is not supported by the gateway: " in message or f"kong.conf's {key} is " in message


@pytest.mark.parametrize(("key", "message"), [
    ("proxy_listen", "gateway.proxy_listen: kong.conf's proxy_listen is `listen` here: `listen: [\"0.0.0.0:8000\", "
                     "\"0.0.0.0:8443 ssl\"]` (a list, or one \"host:port\"); its suffixes `ssl`, `proxy_protocol`, "
                     "`reuseport`, `backlog=N`, `deferred`, `bind`, `ipv6only=` and `so_keepalive=` are taken, "
                     "`http2` is not (HTTP/2 is not built: remove the word), and there is no off"),
    ("nginx_main_worker_rlimit_nofile", "gateway.nginx_main_worker_rlimit_nofile: kong.conf's "
                                        "nginx_main_worker_rlimit_nofile is `worker_rlimit_nofile` here: "
                                        "`worker_rlimit_nofile: 16384` (nginx's worker_rlimit_nofile); leave it unset "
                                        "in place of auto: the soft limit is then raised to the hard one (Kong's auto: "
                                        "ulimit -n, 1024 to 16384)"),
    ("pg_host", "gateway.pg_host: kong.conf's pg_host (the Postgres connection's host) is not supported by the "
                "gateway: the gateway has no database: its configuration is the file given to `gateway start "
                "--config` (Kong's declarative format, as DB-less Kong takes it), applied again by `gateway reload`"),
    ("nginx_http_client_header_buffer_size", "gateway.nginx_http_client_header_buffer_size: kong.conf's "
                                             "nginx_http_client_header_buffer_size (nginx's first buffer for a "
                                             "request head) is not supported by the gateway: nginx directives cannot "
                                             "be injected: the gateway is not nginx; a request head's limits are "
                                             "`max_header_bytes` and `max_header_line_bytes`"),
    ("cluster_control_plane", "gateway.cluster_control_plane: kong.conf's cluster_control_plane (a data plane's "
                              "control plane) is not supported by the gateway: hybrid mode (control plane and data "
                              "planes) is not built: each gateway loads its own configuration file, as a "
                              "traditional DB-less Kong node does (for several hosts, see README's 'Several "
                              "hosts')"),
    ("database", "gateway.database: kong.conf's database (the database Kong keeps its entities in) is not supported "
                 "by the gateway: the gateway has no database: its configuration is the file given to `gateway start "
                 "--config` (Kong's declarative format, as DB-less Kong takes it), applied again by `gateway "
                 "reload`; `database: off` is accepted (it is what the gateway does)"),
])
def test_exact_messages(key: str, message: str):
    value = {"proxy_listen": "0.0.0.0:8000", "nginx_main_worker_rlimit_nofile": "auto",
             "database": "postgres"}.get(key, "x")
    assert outcome({key: value}) == [message]


def test_keys_kong_conf_default_does_not_list_are_refused_by_family():
    messages = outcome({"nginx_proxy_keepalive_timeout": "75s", "nginx_upstream_keepalive": 60,
                        "nginx_stream_tcp_nodelay": "on", "cassandra_contact_points": "127.0.0.1",
                        "pluginserver_go_socket": "/tmp/go.sock", "admin_api_uri": "http://x"})
    assert messages == [
        "gateway.nginx_proxy_keepalive_timeout: kong.conf's nginx_proxy_keepalive_timeout (nginx's keepalive_timeout "
        "in Kong's proxy block) is not supported by the gateway: nginx directives cannot be injected: the gateway is "
        "not nginx; nginx's keepalive_timeout is `keepalive_timeout_s` (seconds) here",
        "gateway.nginx_upstream_keepalive: kong.conf's nginx_upstream_keepalive (nginx's keepalive in Kong's upstream "
        "block) is not supported by the gateway: nginx directives cannot be injected: the gateway is not nginx; "
        "nginx's keepalive is `upstream_keepalive` here",
        "gateway.nginx_stream_tcp_nodelay: kong.conf's nginx_stream_tcp_nodelay (nginx's tcp_nodelay in Kong's "
        "stream block) is not supported by the gateway: nginx directives cannot be injected: the gateway is not "
        "nginx; stream (TCP, TLS and UDP) proxying is not built: the gateway proxies HTTP and HTTPS only",
        "gateway.cassandra_contact_points: kong.conf's cassandra_contact_points (a Cassandra setting) is not "
        "supported by the gateway: the gateway has no database: its configuration is the file given to `gateway "
        "start --config` (Kong's declarative format, as DB-less Kong takes it), applied again by `gateway reload`",
        "gateway.pluginserver_go_socket: kong.conf's pluginserver_go_socket (a plugin server setting) is not "
        "supported by the gateway: external plugin servers (plugins written in Go, JavaScript or Python) are not "
        "built: the plugins are those the gateway builds (README's Plugins)",
        "gateway.admin_api_uri: kong.conf's admin_api_uri (an Admin API setting) is not supported by the gateway: "
        "Kong's Admin API is not built: the configuration is this file, applied by `gateway reload`; the gateway's "
        "own control endpoint is `admin` (ipc://, used by the `gateway` commands)",
    ]


def test_a_typo_of_ours_is_still_an_unknown_field():
    assert outcome({"listn": "127.0.0.1:8000"}) == [
        "gateway.listn: unknown field (check the spelling; see the README's config reference)"]


@pytest.mark.parametrize(("key", "value"), [
    ("database", False), ("database", "off"), ("role", "traditional"), ("stream_listen", False),
    ("admin_listen", "off"), ("router_flavor", "traditional_compatible"), ("vaults", "bundled"),
    ("vaults", "bundled,env"), ("vaults", ["env"]), ("plugins", "bundled"), ("lua_ssl_protocols", "TLSv1.2 TLSv1.3"),
    ("lua_ssl_protocols", "TLSv1.3,TLSv1.2"), ("new_dns_client", False), ("new_dns_client", "off"),
    ("lua_max_uri_args", 100), ("nginx_http_client_max_body_size", 0), ("nginx_http_client_max_body_size", "0m"),
    ("ssl_prefer_server_ciphers", True), ("allow_debug_header", "false"),
])
def test_the_value_that_says_what_the_gateway_does_passes(key: str, value: object):
    assert outcome({key: value}) == []


@pytest.mark.parametrize(("key", "value"), [
    ("database", "postgres"), ("role", "data_plane"), ("stream_listen", "0.0.0.0:5555"), ("vaults", "off"),
    ("vaults", "bundled,aws"), ("plugins", "bundled,my-plugin"), ("plugins", False), ("lua_ssl_protocols", "TLSv1.3"),
    ("router_flavor", "expressions"), ("new_dns_client", "on"), ("lua_max_uri_args", 500),
    ("nginx_http_client_max_body_size", "10m"), ("ssl_prefer_server_ciphers", False), ("request_debug", True),
])
def test_any_other_value_of_those_keys_is_refused_saying_which_passes(key: str, value: object):
    [message] = outcome({key: value})
    assert message.startswith(f"gateway.{key}: kong.conf's {key} (")
    assert message.endswith(f"; `{key}: {ACCEPTED[key][0]}` is accepted (it is what the gateway does)")


@pytest.mark.parametrize("key", ["nginx_location_proxy_ignore_headers", "nginx_proxy_proxy_ignore_headers",
                                 "nginx_http_proxy_ignore_headers"])
def test_proxy_ignore_headers_naming_headers_the_gateway_never_acts_on_passes(key: str):
    """Kong's spec sets `nginx_location_proxy_ignore_headers = X-Accel-Redirect` (spec/01-unit/04-prefix_handler_spec
    .lua:697): the gateway does not follow X-Accel-Redirect, nor cache by Expires, Cache-Control, Set-Cookie, Vary or
    X-Accel-Expires (nginx's proxy_cache, which Kong does not use), so ignoring them is what it does."""
    assert outcome({key: "X-Accel-Redirect"}) == []
    assert outcome({key: "X-Accel-Redirect X-Accel-Expires Expires Cache-Control Set-Cookie Vary"}) == []


def test_proxy_ignore_headers_naming_a_header_the_gateway_acts_on_is_refused():
    """X-Accel-Limit-Rate paces an answer and X-Accel-Buffering lifts that, here as in nginx: ignoring them is not
    built."""
    [message] = outcome({"nginx_location_proxy_ignore_headers": "X-Accel-Redirect X-Accel-Limit-Rate"})
    assert message.startswith("gateway.nginx_location_proxy_ignore_headers: kong.conf's "
                              "nginx_location_proxy_ignore_headers (nginx's proxy_ignore_headers in Kong's location")
    assert message.endswith("accepted naming only headers the gateway does not act on anyway: Cache-Control, "
                            "Expires, Set-Cookie, Vary, X-Accel-Expires, X-Accel-Redirect")


def test_a_refused_key_set_to_null_or_empty_configures_nothing():
    assert outcome({"pg_host": None, "nginx_http_client_body_buffer_size": "", "cluster_dp_labels": [],
                    "proxy_listen": None}) == []


def test_aliases_set_our_fields():
    config = parse_config(json.dumps({"gateway": {
        "opentelemetry_tracing": ["request", "router"], "opentelemetry_tracing_sampling_rate": 0.25,
        "upstream_keepalive_pool_size": 0, "upstream_keepalive_idle_timeout": 0,
        "nginx_http_keepalive_requests": 100}}))
    gw = config.gateway
    assert (gw.tracing_instrumentations, gw.tracing_sampling_rate) == (["request", "router"], 0.25)
    assert (gw.upstream_keepalive, gw.upstream_idle_timeout_s, gw.keepalive_requests) == (0, 0, 100)


def test_an_nginx_directive_set_to_none_is_nginx_default():
    """kong.conf's `nginx_<block>_<directive> = NONE` writes no directive (Kong's conf_loader/parse.lua,
    parse_nginx_directives: `if v ~= "NONE"`), so nginx's own default holds: charset off, keepalive_requests 1000
    (ngx_http_core_module.c), realip's X-Real-IP and recursive off, ssl_protocols TLSv1.2 TLSv1.3, tickets on."""
    config = parse_config(json.dumps({"gateway": {
        "nginx_http_charset": "NONE", "nginx_http_keepalive_requests": "NONE", "nginx_proxy_real_ip_header": "NONE",
        "nginx_proxy_real_ip_recursive": "NONE", "nginx_http_ssl_protocols": "NONE",
        "nginx_http_ssl_session_tickets": "NONE"}}))
    gw = config.gateway
    assert (gw.charset, gw.keepalive_requests, gw.real_ip_header, gw.real_ip_recursive) == (
        "off", 1000, "X-Real-IP", False)
    assert (gw.ssl_protocols, gw.ssl_session_tickets) == ("TLSv1.2 TLSv1.3", True)


def test_none_passes_for_a_refused_directive_whose_absence_is_what_the_gateway_does():
    """Kong's defaults set nginx_http_ssl_conf_command and the nginx_stream_* keys to NONE (kong_defaults.lua): no
    directive. One whose absence leaves nginx doing something the gateway does not stays refused."""
    assert outcome({"nginx_http_ssl_conf_command": "NONE", "nginx_http_proxy_ssl_conf_command": "NONE",
                    "nginx_stream_ssl_protocols": "NONE", "nginx_stream_ssl_session_tickets": "NONE"}) == []
    assert [m.split(": ", 1)[0] for m in outcome({"nginx_http_client_max_body_size": "NONE"})] == [
        "gateway.nginx_http_client_max_body_size"]  # nginx's default limit, 1m, is not built


def test_a_kong_name_with_the_gateways_own_is_an_error_and_a_bad_value_names_the_key_as_written():
    """(Two of Kong's names of one setting load, the one Kong obeys winning: test_kong_conf_aliases_and_lists.)"""
    assert outcome({"workers": 2, "nginx_worker_processes": 4,
                    "nginx_http_keepalive_requests": -1, "upstream_keepalive_pool_size": "many"}) == [
        "gateway.nginx_worker_processes and gateway.workers: set one of them (kong.conf's nginx_worker_processes is "
        "workers here, under either name)",
        "gateway.nginx_http_keepalive_requests: expected int >= 0, got -1",
        'gateway.upstream_keepalive_pool_size: expected int >= 0, got "many"',
    ]


def test_removed_keys_are_still_refused_with_their_own_message():
    messages = outcome({"trust_forwarded": True, "log_level": "debug"})
    assert [m.split(": ", 1)[0] for m in messages] == ["gateway.trust_forwarded", "gateway.log_level"]
    assert messages[0].startswith("gateway.trust_forwarded: removed: list the addresses of the balancers")


def test_check_config_prints_each_kong_key_on_its_own_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "kong.yml"
    path.write_text("gateway:\n  proxy_listen: 0.0.0.0:8000\n  nginx_worker_processes: lots\n  log_level: notice\n"
                    "  proxy_access_log: logs/access.log\n  resolver_address: 8.8.8.8\n  mem_cache_size: 128m\n"
                    "  port_maps: '80:8000'\n  database: off\n")
    assert check_config(str(path)) == 2
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 2)[1] for line in lines] == [
        "gateway.proxy_listen", "gateway.nginx_worker_processes", "gateway.log_level", "gateway.proxy_access_log",
        "gateway.resolver_address", "gateway.mem_cache_size", "gateway.port_maps"]
    assert all("unknown field" not in line for line in lines)


@pytest.mark.parametrize("key", [k for k in ALL_KEYS if k not in OURS and k not in ALIASES])
def test_every_key_kongs_conf_loader_takes_is_refused_by_name_not_as_unknown(key):
    """A Kong key outside kong.conf.default (a deprecated name, an internal one) is refused saying what it is in
    Kong, as the listed ones are: a Kong user's file never meets "unknown field (check the spelling)"."""
    [message] = outcome({key: "x"})
    assert message.startswith(f"gateway.{key}: kong.conf's {key} "), message
