"""The values of the kong.conf keys the `gateway:` section takes, read as Kong's conf loader reads them
(kong/conf_loader/init.lua, parse.lua, constants.lua's CONF_PARSERS; spec/01-unit/03-conf_loader_spec.lua): booleans
as on/off/true/false strings, numbers as their text, arrays as comma-separated strings, "off" for none."""

from __future__ import annotations

import json

import pytest
from test_kong_conf_keys import outcome

from gateway.config import ConfigError, parse_config


def settings(gateway: dict[str, object], environ: dict[str, str] | None = None) -> object:
    """The `gateway:` settings of a file with `gateway`, the KONG_ variables read from `environ` when given."""
    return parse_config(json.dumps({"gateway": gateway}), "f", environ=environ).gateway


def problems(gateway: dict[str, object], environ: dict[str, str]) -> list[str]:
    """The messages refusing a file with `gateway` under the KONG_ variables `environ` ([] when it loads)."""
    try:
        parse_config(json.dumps({"gateway": gateway}), "f", environ=environ)
    except ConfigError as e:
        return [m.removeprefix("f: ") for m in e.messages]
    return []


# --- types: parse.lua's parse_value -----------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "text", "value"), [
    ("client_ssl", "on", True), ("client_ssl", "true", True), ("client_ssl", "off", False),
    ("client_ssl", "false", False), ("ssl_session_tickets", "off", False), ("ssl_session_tickets", " on ", True),
    ("real_ip_recursive", "on", True), ("real_ip_recursive", "off", False),
])
def test_booleans_are_read_from_on_off_true_false(key: str, text: str, value: bool):
    """parse_value: `boolean` (client_ssl) is true for "on"/"true", `ngx_boolean` (ssl_session_tickets,
    real_ip_recursive) is on for "on"; the spec's "infer booleans (on/off/true/false strings)" and "infer
    ngx_boolean"; values are stripped first."""
    assert getattr(settings({key: text}), key) is value


@pytest.mark.parametrize(("key", "text", "field", "value"), [
    ("upstream_keepalive_max_requests", "20", "upstream_keepalive_max_requests", 20),
    ("upstream_keepalive_pool_size", "10", "upstream_keepalive", 10),
    ("upstream_keepalive_idle_timeout", "30", "upstream_idle_timeout_s", 30),
    ("upstream_keepalive_pool_size", "0", "upstream_keepalive", 0),
    ("tracing_sampling_rate", "0.5", "tracing_sampling_rate", 0.5),
    ("opentelemetry_tracing_sampling_rate", " 0.25 ", "tracing_sampling_rate", 0.25),
    ("nginx_http_keepalive_requests", "1000", "keepalive_requests", 1000),
])
def test_numbers_are_read_from_their_text(key: str, text: str, field: str, value: float):
    """parse_value: a `number` key's string is tonumber()'d (kong.conf's values are all text); the spec's "upstream
    keepalive properties are accepted" / "accepts upstream_keepalive_pool_size = 0"."""
    assert getattr(settings({key: text}), field) == value


def test_a_number_key_given_a_word_is_still_refused_naming_it():
    [message] = outcome({"upstream_keepalive_max_requests": "many"})
    assert message.startswith("gateway.upstream_keepalive_max_requests: ")


def test_the_text_of_a_string_key_is_stripped_a_kong_variables_too():
    """kong/conf_loader/parse.lua:69-71 parse_value: `if type(value) == "string" then value = strip(value) end`, for
    every key whatever its type, before the enum check (parse.lua:228-234): KONG_ERROR_DEFAULT_TYPE="application/json "
    is application/json, and KONG_REAL_IP_HEADER=" X-Forwarded-For" is X-Forwarded-For."""
    environ = {"KONG_ERROR_DEFAULT_TYPE": "application/json ", "KONG_REAL_IP_HEADER": " X-Forwarded-For"}
    gw = settings({}, environ)
    assert (gw.error_default_type, gw.real_ip_header) == ("application/json", "X-Forwarded-For")  # type: ignore[attr-defined]
    assert settings({"error_default_type": " text/plain "}, {}).error_default_type == "text/plain"  # type: ignore[attr-defined]


def test_dns_valid_ttl_none_is_unset_as_kongs_default_is():
    """kong.conf.default's `#dns_valid_ttl = NONE` and kong_defaults.lua:167: a `number` key (constants.lua's
    CONF_PARSERS) whose text NONE parse_value (parse.lua:87-88) makes tonumber("NONE"), nil: not set, each record's
    own TTL holds. Uncommenting the default line, or KONG_DNS_VALID_TTL=NONE, loads."""
    assert settings({"dns_valid_ttl": "NONE"}, {}).dns_valid_ttl_s is None  # type: ignore[attr-defined]
    assert settings({"dns_valid_ttl": 30}, {"KONG_DNS_VALID_TTL": " NONE"}).dns_valid_ttl_s is None  # type: ignore[attr-defined]


# --- listeners: listeners.lua's parse_listeners -------------------------------------------------------------------


def test_listen_takes_kong_conf_comma_separated_form():
    """proxy_listen is an `array`: "0.0.0.0:8000, 0.0.0.0:8443 ssl" is two listeners (the spec's "parses IPv6
    from proxy_listen": "[::]:8000, [::]:8443 ssl")."""
    assert settings({"listen": "127.0.0.1:8000, [::1]:8443"}).listen == ["127.0.0.1:8000", "[::1]:8443"]  # type: ignore[attr-defined]
    assert outcome({"listen": "127.0.0.1:8000,  127.0.0.1:8001"}) == []
    # a trailing comma is an empty last entry (Penlight's split), which listeners.lua refuses ("must be of form")
    assert outcome({"listen": "127.0.0.1:8000,  127.0.0.1:8001 ,"}) == [
        'gateway.listen[2]: expected "host:port" or "host:port ssl" (e.g. "127.0.0.1:8443 ssl"), got ""']


@pytest.mark.parametrize("value", ["off", False, "off, 127.0.0.1:9000", " off "])
def test_status_listen_off_is_no_status_server(value: object):
    """status_listen is a listener `array`: "off" as its first entry gives no listener (listeners.lua; the spec's
    "extracts 'off' from proxy_listen/admin_listen/admin_gui_listen", with multiple entries too); YAML's unquoted
    off is false."""
    assert settings({"status_listen": value}).status_listen is None  # type: ignore[attr-defined]
    assert outcome({"status_listen": value}) == []


def test_status_listen_one_entry_in_kong_array_form():
    assert settings({"status_listen": "127.0.0.1:9100"}).status_listen == "127.0.0.1:9100"  # type: ignore[attr-defined]
    assert settings({"status_listen": ["127.0.0.1:9100"]}).status_listen == "127.0.0.1:9100"  # type: ignore[attr-defined]
    assert outcome({"status_listen": "127.0.0.1:9100,"}) != []  # an empty second entry, refused as in Kong
    assert settings({"status_listen": "offshore.test:9100"}).status_listen == "offshore.test:9100"  # type: ignore[attr-defined]


def test_status_listen_options_and_several_addresses_are_refused_by_name():
    """Kong takes the listen flags and several status listeners; the gateway serves one plain-HTTP address: each
    refusal names the option, not "expected host:port"."""
    assert outcome({"status_listen": "127.0.0.1:8100 ssl"}) == [
        'gateway.status_listen: the listen option "ssl" is not supported (the status server takes one "host:port", '
        "plain HTTP, with reuseport, backlog=N and proxy_protocol)"]
    assert outcome({"status_listen": "127.0.0.1:8100, 127.0.0.1:8101"}) == [
        'gateway.status_listen: one address only (the status server takes one "host:port"), got "127.0.0.1:8100, '
        '127.0.0.1:8101"']


def test_kong_default_status_listen_loads():
    """kong_defaults.lua: status_listen = 127.0.0.1:8007 reuseport backlog=16384."""
    assert outcome({"status_listen": "127.0.0.1:8007 reuseport backlog=16384"}) == []


# --- TLS: parse.lua's ssl_cipher_suite block ----------------------------------------------------------------------


def test_ssl_ciphers_with_a_named_suite_is_overridden_not_refused():
    """parse.lua: with a suite other than custom, conf.ssl_ciphers = suite.ciphers (the spec's "defines ssl_ciphers by
    default"): a given ssl_ciphers is replaced, as ssl_protocols is, not an error."""
    assert outcome({"ssl_ciphers": "foo:bar"}) == []
    assert outcome({"ssl_cipher_suite": "modern", "ssl_ciphers": "ECDHE-RSA-AES128-GCM-SHA256"}) == []


def test_custom_suite_without_ssl_ciphers_is_nginx_default():
    """The spec's "doesn't override ssl_ciphers when undefined": custom with no ssl_ciphers loads, and nginx_kong.lua
    then writes no ssl_ciphers directive: nginx's default, HIGH:!aNULL:!MD5."""
    assert outcome({"ssl_cipher_suite": "custom"}) == []
    assert settings({"ssl_cipher_suite": "custom"}).ssl_ciphers == "HIGH:!aNULL:!MD5"  # type: ignore[attr-defined]


def test_invalid_ssl_cipher_suite_is_refused():
    """The spec's "errors on invalid ssl_cipher_suite" (Undefined cipher suite foo)."""
    [message] = outcome({"ssl_cipher_suite": "foo"})
    assert message.startswith("gateway.ssl_cipher_suite: ") and '"foo"' in message


# --- trusted_ips, tracing -------------------------------------------------------------------------------------------


def test_trusted_ips_takes_unix():
    """parse.lua: each entry is an IP, a CIDR or 'unix:' (trust UNIX-domain peers); the gateway listens on TCP
    only, so 'unix:' trusts no peer of it, as Kong's does with no unix listener."""
    assert outcome({"trusted_ips": "0.0.0.0/0, ::/0, unix:"}) == []
    assert settings({"trusted_ips": "10.0.0.0/8,unix:"}).trusted_ips == ["10.0.0.0/8"]  # type: ignore[attr-defined]
    assert outcome({"trusted_ips": "unix:/run/x.sock"}) != []


def test_empty_tracing_instrumentations_is_none_and_skips_the_rate_check():
    """parse.lua checks tracing types and tracing_sampling_rate only `if conf.tracing_instrumentations and
    #conf.tracing_instrumentations > 0`: an empty array (kong.conf's `tracing_instrumentations =`) is none."""
    assert outcome({"tracing_instrumentations": ""}) == []
    assert outcome({"tracing_instrumentations": [], "tracing_sampling_rate": 2}) == []
    assert outcome({"tracing_instrumentations": "off", "tracing_sampling_rate": 2}) == [
        "gateway: tracing_sampling_rate must be between 0 and 1"]


# --- nginx directives a key of ours stands for: constants.lua's alias / directives ---------------------------------


@pytest.mark.parametrize(("key", "value", "field", "expected"), [
    ("nginx_proxy_real_ip_header", "X-Forwarded-For", "real_ip_header", "X-Forwarded-For"),
    ("nginx_proxy_real_ip_recursive", "on", "real_ip_recursive", True),
    ("nginx_http_ssl_session_tickets", "off", "ssl_session_tickets", False),
    ("nginx_http_ssl_protocols", "TLSv1.3", "ssl_protocols", "TLSv1.3"),
])
def test_the_nginx_directive_a_key_stands_for_sets_it(key: str, value: str, field: str, expected: object):
    """CONF_PARSERS: real_ip_header and real_ip_recursive are aliases of nginx_proxy_real_ip_header and
    nginx_proxy_real_ip_recursive (the directives nginx reads), and ssl_protocols / ssl_session_tickets fill
    nginx_http_ssl_protocols / nginx_http_ssl_session_tickets (`directives`): the directive, given, is the
    setting."""
    assert getattr(settings({key: value}), field) == expected


# --- nginx's worker_processes: kong_defaults.lua:81 and 85, constants.lua's alias ----------------------------------


@pytest.mark.parametrize(("gateway", "environ"), [
    ({"nginx_worker_processes": "auto"}, {}), ({"nginx_main_worker_processes": "auto"}, {}),
    ({}, {"KONG_NGINX_WORKER_PROCESSES": "auto"}), ({"workers": 3}, {"KONG_NGINX_MAIN_WORKER_PROCESSES": " auto"}),
])
def test_worker_processes_auto_is_one_worker_per_cpu(gateway: dict[str, object], environ: dict[str, str]):
    """kong_defaults.lua:81 and 85, `nginx_worker_processes = auto` (Kong's older name of nginx_main_worker_processes,
    constants.lua's alias): nginx 1.27.1 reads `worker_processes auto;` as ngx_ncpu (src/core/nginx.c:1566-1568),
    sysconf(_SC_NPROCESSORS_ONLN) (src/os/unix/ngx_posix_init.c:61-65): one worker per online CPU, what `workers`
    unset is. The variable beats the file's `workers` (parse.lua's overrides: the environment beats the file)."""
    assert settings(gateway, environ).workers is None  # type: ignore[attr-defined]


def test_worker_processes_given_a_number_is_that_many_workers():
    """nginx.c:1571-1575: any other value is ngx_atoi's number of workers; `NONE` writes no directive (parse.lua:951,
    parse_nginx_directives), so nginx's default, 1 (nginx.c:1148 ngx_conf_init_value), holds."""
    assert settings({"nginx_worker_processes": 4}, {}).workers == 4  # type: ignore[attr-defined]
    assert settings({}, {"KONG_NGINX_MAIN_WORKER_PROCESSES": "2"}).workers == 2  # type: ignore[attr-defined]
    assert settings({"nginx_main_worker_processes": "NONE"}, {}).workers == 1  # type: ignore[attr-defined]


def test_worker_processes_under_two_names_in_one_file():
    """One setting (`workers` here): Kong's two names in the file load, the replacement winning (conf_loader's
    dynamic_properties fill nginx_main_worker_processes only when unset); `workers` beside Kong's name is a
    contradiction the file must settle."""
    assert problems({"nginx_main_worker_processes": "auto", "nginx_worker_processes": 2}, {}) == []
    assert settings({"nginx_main_worker_processes": "auto", "nginx_worker_processes": 2}, {}).workers is None  # type: ignore[attr-defined]
    assert problems({"workers": 3, "nginx_worker_processes": "auto"}, {}) == [
        "gateway.nginx_worker_processes and gateway.workers: set one of them (kong.conf's nginx_worker_processes is "
        "workers here, under either name)"]


def test_worker_processes_that_is_neither_auto_nor_a_number_is_refused_saying_what_it_takes():
    assert problems({}, {"KONG_NGINX_WORKER_PROCESSES": "lots"}) == [
        'gateway.nginx_worker_processes: expected auto or a number of worker processes, got "lots" (set by the '
        "environment variable KONG_NGINX_WORKER_PROCESSES, which overrides the file)"]
