"""Two kong.conf readings of Kong 3.9.3's conf loader (kong/conf_loader/init.lua, parse.lua, constants.lua): a
setting given under both of Kong's names of it (from the file, KONG_* variables, or both), and an empty item of a
comma-separated array."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from tls_helpers import self_signed

from gateway.config import ConfigError, kong_conf, parse_config
from gateway.kong_array import kong_array
from gateway.tls_runtime import compile_server_tls


def settings(gateway: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
    """The `gateway:` settings of a file with `gateway`, the KONG_ variables read from `environ`."""
    return parse_config(json.dumps({"gateway": gateway}), "f", environ=environ or {}).gateway


def problems(gateway: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    """The messages refusing a file with `gateway` ([] when it loads)."""
    try:
        parse_config(json.dumps({"gateway": gateway}), "f", environ=environ or {})
    except ConfigError as e:
        return [m.removeprefix("f: ") for m in e.messages]
    return []


# --- 1. one setting under both of Kong's names -------------------------------------------------------------------
# init.lua:344-353: user_conf is the file and the KONG_* variables merged name by name (parse.lua:898-941, overrides:
# a variable beats the file for its own name only), then aliased_properties (init.lua:62-78) copies an alias to its
# replacement only when that is nil, and dynamic_properties (:107-124) fills a directive only when it is not given.

# (the file's or variables' two names, our field, what Kong's nginx gets)
BOTH_NAMES = [
    # constants.lua:324-329: real_ip_header's replacement, written in the proxy server block (nginx_kong.lua:135)
    ({"real_ip_header": "X-Forwarded-For", "nginx_proxy_real_ip_header": "X-Real-IP"}, "real_ip_header",
     "X-Real-IP"),
    ({"real_ip_recursive": "on", "nginx_proxy_real_ip_recursive": "off"}, "real_ip_recursive", False),  # :330-335
    ({"opentelemetry_tracing": "all", "tracing_instrumentations": "request"}, "tracing_instrumentations",
     "request"),  # :529-537
    ({"opentelemetry_tracing_sampling_rate": 0.5, "tracing_sampling_rate": 0.25}, "tracing_sampling_rate",
     0.25),  # :543-551
    ({"nginx_worker_processes": 4, "nginx_main_worker_processes": 2}, "workers", 2),  # :305-310
    ({"ssl_session_tickets": "off", "nginx_http_ssl_session_tickets": "on"}, "ssl_session_tickets", True),  # :449-455
    ({"ssl_cipher_suite": "custom", "ssl_protocols": "TLSv1.3", "nginx_http_ssl_protocols": "TLSv1.2"},
     "ssl_protocols", "TLSv1.2"),  # :428-434
    # nginx_kong.lua:42 (http block) and :135 (Kong's proxy server block): the server block's directive wins
    ({"nginx_http_proxy_buffer_size": "4k", "nginx_proxy_proxy_buffer_size": "8k"}, "proxy_buffer_size", 8192),
]


@pytest.mark.parametrize(("gateway", "field", "kong"), BOTH_NAMES)
def test_both_of_kongs_names_in_the_file_load_the_one_kong_obeys(gateway: dict[str, Any], field: str, kong: Any):
    """init.lua:62-78 and :107-124: the replacement (the directive) keeps its value; the older name's is unused."""
    assert getattr(settings(gateway), field) == kong


@pytest.mark.parametrize(("gateway", "field", "kong"), BOTH_NAMES)
def test_both_of_kongs_names_from_the_environment_load_the_one_kong_obeys(gateway: dict[str, Any], field: str,
                                                                          kong: Any):
    """parse.lua:918-933 reads `KONG_<KEY>` per key: both variables set both names, then init.lua:62-124 settles."""
    environ = {f"KONG_{key.upper()}": str(value) for key, value in gateway.items()}
    assert getattr(settings({}, environ), field) == kong


@pytest.mark.parametrize(("gateway", "environ", "field", "kong"), [
    ({"nginx_proxy_real_ip_header": "X-Real-IP"}, {"KONG_REAL_IP_HEADER": "X-Forwarded-For"}, "real_ip_header",
     "X-Real-IP"),
    ({"nginx_proxy_real_ip_recursive": "off"}, {"KONG_REAL_IP_RECURSIVE": "on"}, "real_ip_recursive", False),
    ({"tracing_instrumentations": "off"}, {"KONG_OPENTELEMETRY_TRACING": "all"}, "tracing_instrumentations", "off"),
    ({"nginx_main_worker_processes": 2}, {"KONG_NGINX_WORKER_PROCESSES": "4"}, "workers", 2),
    ({"nginx_proxy_proxy_buffer_size": "8k"}, {"KONG_NGINX_HTTP_PROXY_BUFFER_SIZE": "4k"}, "proxy_buffer_size", 8192),
])
def test_the_files_replacement_name_beats_the_old_name_from_the_environment(gateway: dict[str, Any],
                                                                           environ: dict[str, str], field: str,
                                                                           kong: Any):
    """parse.lua:918-933: the variable beats the file for its own name only (the old one); init.lua:62-78 then
    copies the old name into the replacement only when the replacement is nil, which the file's is not."""
    assert getattr(settings(gateway, environ), field) == kong


def test_the_environments_replacement_name_beats_the_old_name_from_the_file():
    """init.lua:62-78, the other way round: the variable's replacement is given, so the file's old name is unused."""
    assert settings({"real_ip_header": "X-Forwarded-For"},
                    {"KONG_NGINX_PROXY_REAL_IP_HEADER": "X-Real-IP"}).real_ip_header == "X-Real-IP"


def test_a_null_replacement_leaves_the_old_name_in_force():
    """init.lua:65: `conf[alias.replacement] == nil`; YAML's null is no value."""
    assert settings({"nginx_main_worker_processes": None, "nginx_worker_processes": 4}).workers == 4


def test_a_replacement_set_to_none_writes_no_directive_over_the_old_name():
    """dynamic_properties (init.lua:114) fills the directive only when `not conf[directive]`: NONE is text, so it
    stays, and parse.lua's parse_nginx_directives writes no directive: nginx's default (ssl_session_tickets on)."""
    assert settings({"nginx_http_ssl_session_tickets": "NONE", "ssl_session_tickets": "off"}).ssl_session_tickets


def test_a_kong_variable_still_beats_the_files_value_under_the_gateways_own_name():
    """`workers` is no kong.conf key: KONG_NGINX_WORKER_PROCESSES is the setting's only kong.conf value given, and the
    environment beats the file (parse.lua:918-933)."""
    assert settings({"workers": 2}, {"KONG_NGINX_WORKER_PROCESSES": "4"}).workers == 4


def test_the_gateways_own_name_beside_one_of_kongs_in_the_file_is_an_error():
    """Not Kong's: the file contradicts itself, and Kong has no rule for a name it does not read."""
    assert problems({"workers": 3, "nginx_worker_processes": "auto"}) == [
        "gateway.nginx_worker_processes and gateway.workers: set one of them (kong.conf's nginx_worker_processes is "
        "workers here, under either name)"]


def test_every_two_of_kongs_names_of_one_setting_have_the_one_kong_obeys():
    """Each pair of kong.conf keys the gateway reads as one setting is settled as Kong settles it (REPLACED_BY)."""
    names: dict[str, set[str]] = {}
    for alias, target in kong_conf.ALIASES.items():
        names.setdefault(target, {target}).add(alias)
    pairs = {frozenset(kong) for group in names.values() if len(kong := {n for n in group if kong_conf.is_kong_key(n)})
             > 1}
    assert pairs == {frozenset(pair) for pair in kong_conf.REPLACED_BY.items()}


def test_which_of_two_names_was_taken_is_logged(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    monkeypatch.setattr(kong_conf, "_told", {})
    with caplog.at_level(logging.INFO, logger="gateway.config"):
        settings({"nginx_proxy_real_ip_header": "X-Real-IP"}, {"KONG_REAL_IP_HEADER": "X-Forwarded-For"})
    assert ("gateway.nginx_proxy_real_ip_header and gateway.real_ip_header are both given (in the file or by KONG_ "
            "variables): nginx_proxy_real_ip_header is taken, as Kong does, and real_ip_header is ignored"
            ) in caplog.text


# --- 2. an empty item of a comma-separated array -----------------------------------------------------------------
# parse.lua:91-100 parse_value: `split(value, ",")` (kong/tools/string.lua: Penlight 1.14's stringx.split, whose
# utils.split keeps an empty piece between two commas and stringx.split adds "" after a trailing comma), each item
# stripped, none dropped: the checks below then refuse the empty item.


@pytest.mark.parametrize(("text", "items"), [
    ("", []), (",", [""]), ("a", ["a"]), ("a,", ["a", ""]), (",a", ["", "a"]), ("a,,b", ["a", "", "b"]),
    (" a , , b ", ["a", "", "b"]), ("a,,", ["a", "", ""]),
])
def test_a_comma_separated_string_is_split_as_penlight_splits_it(text: str, items: list[str]):
    assert kong_array(text) == items


@pytest.mark.parametrize(("gateway", "message"), [
    ({"headers": "server_tokens,,latency_tokens"}, "gateway: headers: invalid entry ''"),  # parse.lua:486-493
    ({"headers_upstream": "X-Kong-Request-Id,"}, "gateway: headers_upstream: invalid entry ''"),  # :495-502
    ({"dns_resolver": "127.0.0.1,"}, "gateway: dns_resolver must be a comma separated list in the form of IPv4/6 or "
                                     "IPv4/6:port, got ''"),  # :504-515
    ({"dns_order": "LAST,,A"}, "gateway: dns_order: invalid entry ''"),  # :522-532
    ({"trusted_ips": "10.0.0.0/8,"}, "gateway.trusted_ips[1]: expected an IP address or a CIDR"),  # :570-576
    ({"tracing_instrumentations": "request,"}, "gateway: tracing_instrumentations: invalid tracing type: "),  # :826
    ({"listen": "127.0.0.1:8000,"}, "gateway.listen[1]: expected \"host:port\""),  # listeners.lua:129-131
    ({"status_listen": "127.0.0.1:8100,"}, "gateway.status_listen: "),  # listeners.lua:129-131
    ({"lua_ssl_trusted_certificate": "system,"},
     "gateway.lua_ssl_trusted_certificate: failed loading certificate from "),  # parse.lua:247-270
])
def test_an_empty_array_item_is_refused_naming_the_setting(gateway: dict[str, Any], message: str):
    [refused] = problems(gateway)
    assert refused.startswith(message)


def test_an_empty_item_of_a_yaml_list_is_refused_too():
    [refused] = problems({"trusted_ips": ["10.0.0.0/8", ""]})
    assert refused.startswith("gateway.trusted_ips[1]: expected an IP address or a CIDR")


def test_an_empty_item_of_ssl_cert_is_refused_naming_it(tmp_path: Path):
    """parse.lua:343-354: each ssl_cert entry is loaded ("" is no file, and its base64 no certificate): refused."""
    cert, key = self_signed("gw.test", -1, 30)
    (tmp_path / "c.pem").write_text(cert)
    (tmp_path / "k.pem").write_text(key)
    config = parse_config(json.dumps({"gateway": {"listen": ["127.0.0.1:8443 ssl"], "ssl_cert": f"{tmp_path}/c.pem,",
                                                  "ssl_cert_key": f"{tmp_path}/k.pem,"}}), "f", environ={})
    errors: list[str] = []
    assert compile_server_tls(config, errors) is None
    assert [e.split(":", 1)[0] for e in errors] == ["gateway.ssl_cert"]


def test_an_empty_string_is_no_items():
    """parse.lua:95: split("") is {} (utils.split makes a lone empty piece none), not one empty item."""
    gw = settings({"headers": "", "trusted_ips": "", "dns_resolver": ""})
    assert (list(gw.headers), list(gw.trusted_ips), list(gw.dns_resolver)) == ([], [], [])
