"""Services, upstreams, targets and consumers as Kong's schemas check them, and the typedefs they use (host, path,
utf8_name, tags, header and cookie names): Kong's spec/01-unit/01-db/01-schema/05-services_spec.lua,
08-targets_spec.lua, 09-upstreams_spec.lua, 14-consumers_spec.lua and 03-typedefs_spec.lua, with
kong/db/schema/entities/{services,upstreams,targets,consumers}.lua, kong/db/schema/typedefs.lua and
kong/tools/ip.lua's normalize_ip. Upstream health checks and the TLS fields of services are in their own files."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.runtime import ServiceRuntime, compile_config
from tests.kongconfig.test_kong_forms import errors, load

TAG_PROBLEM = "expected printable ascii (except `,` and `/`) or valid utf-8 sequences"


def service(fields: str) -> str:
    return f"services: [{{name: s, {fields}, routes: [{{paths: [/]}}]}}]"


# --- services -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["/example", ".example", "'example:'", "mock;bin", "example.com/org", "example-.org",
                                  "example.org-", "hello..example.com", "hello-.example.com", "'*example.com'",
                                  "'www.example*'", "'mock*bin.com'", "'1234'", "300.1.1.1"])
def test_a_service_host_that_is_no_host_name_or_ip_is_refused(host: str):
    value = host.strip("'")
    assert errors(service(f"host: {host}")) == [f"services[0].host: invalid value: {value}"]


@pytest.mark.parametrize("host", ["'example.com:80'", "'example.com:1000000'", "'1.2.3.4:80'", "'[::1]:80'"])
def test_a_service_host_with_a_port_is_refused(host: str):
    assert errors(service(f"host: {host}")) == ["services[0].host: must not have a port"]


def test_a_service_host_may_be_an_ipv6_address_in_brackets():
    runtime_services = _runtime(service("host: '[::1]', port: 9000"))
    assert [(t.host, t.port) for t in runtime_services["s"].group.targets] == [("::1", 9000)]


@pytest.mark.parametrize(("path", "problem"), [
    ("''", "length must be at least 1"),
    ("foo", "should start with: /"),
    ("/foo//bar", "must not have empty segments"),
    ("'/users/(this|foo/profile)'", "invalid path: '/users/(this|foo/profile)' (characters outside of the reserved "
                                    "list of RFC 3986 found)"),
    ("/some%2words", "invalid url-encoded value: '%2w'"),
    ("'/some%20words%'", "invalid url-encoded value: '%'"),
])
def test_a_service_path_is_checked_as_kongs_path_typedef(path: str, problem: str):
    assert errors(service(f"host: example.com, path: {path}")) == [f"services[0].path: {problem}"]


def test_a_service_path_may_hold_rfc_3986_sub_delims_and_percent_triplets():
    config = load(service("host: example.com, path: \"/hello/path$with$!&'()*+,;=stuff/%aa%FF~x/\""))
    assert config.services[0].path == "/hello/path$with$!&'()*+,;=stuff/%aa%FF~x/"


@pytest.mark.parametrize(("url", "problem"), [
    ("http://example.com/foo//bar", "invalid path in \"http://example.com/foo//bar\": must not have empty segments"),
    ("http://example.com/a%2w", "invalid path in \"http://example.com/a%2w\": invalid url-encoded value: '%2w'"),
    ("http://ex-.com/", "invalid host in \"http://ex-.com/\": invalid value: ex-.com"),
    ("http://exa*mple.com", "invalid host in \"http://exa*mple.com\": invalid value: exa*mple.com"),
])
def test_a_service_urls_host_and_path_are_checked_as_when_given_alone(url: str, problem: str):
    assert errors(service(f"url: '{url}'")) == [f"services[0].url: {problem}"]


def test_a_service_url_without_a_scheme_is_refused_as_not_absolute():
    assert errors(service("url: example.com")) == [
        'services[0].url: expected an absolute URL (e.g. "http://example.com:8080/path"), got "example.com"']


def test_a_service_urls_params_query_fragment_and_userinfo_are_dropped_as_kong_drops_them():
    runtime_services = _runtime(service("url: 'http://user:pw@example.com:81/p;x=1?q=2#f'"))
    assert runtime_services["s"].path == b"/p"
    assert [(t.host, t.port) for t in runtime_services["s"].group.targets] == [("example.com", 81)]


def test_a_service_urls_scheme_replaces_the_protocol_given_besides_it():
    runtime_services = _runtime(service("url: 'http://example.com:8443', protocol: https"))
    assert runtime_services["s"].tls is None


def test_a_service_url_replaces_the_port_and_path_given_besides_it():
    """Kong's own spec file (15-off_spec.lua) sets url and path: the url's (none) wins."""
    runtime_services = _runtime(service("url: 'http://example.com', port: 81, path: /x"))
    assert runtime_services["s"].path == b""
    assert [(t.host, t.port) for t in runtime_services["s"].group.targets] == [("example.com", 80)]


@pytest.mark.parametrize("name", ["'examp:le'", "'examp;le'", "examp/le", "'examp le'"])
def test_a_service_name_outside_kongs_utf8_name_is_refused(name: str):
    value = name.strip("'")
    assert errors(service(f"name: {name}, host: example.com").replace("name: s, ", "")) == [
        f"services[0].name: invalid value '{value}': the only accepted ascii characters are alphanumerics or ., "
        "-, _, and ~"]


def test_an_empty_service_name_is_refused():
    assert errors(service("name: '', host: example.com").replace("name: s, ", "")) == [
        "services[0].name: length must be at least 1"]


@pytest.mark.parametrize("name", ["~3..x4~.M-p~1__3_", "孔", "Конг", "🦍"])
def test_a_service_name_may_be_any_non_ascii_text(name: str):
    config = load(service(f"name: {name}, host: example.com").replace("name: s, ", ""))
    assert config.services[0].name == name


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("connect_timeout", 0, "expected int >= 1 and <= 2147483646, got 0"),
    ("read_timeout", 2147483647, "expected int >= 1 and <= 2147483646, got 2147483647"),
    ("retries", -1, "expected int >= 0 and <= 32767, got -1"),
    ("retries", 10000000000, "expected int >= 0 and <= 32767, got 10000000000"),
])
def test_service_timeouts_and_retries_keep_kongs_ranges(field: str, value: int, problem: str):
    assert errors(service(f"host: example.com, {field}: {value}")) == [f"services[0].{field}: {problem}"]


def test_a_whole_number_float_is_an_integer_as_in_kong():
    """Kong's integer is any number equal to its floor (kong/db/schema/init.lua, validate_field), and its YAML and
    JSON parsers read 8080.0 as the number 8080: such a file loads in Kong, nested entities included."""
    config = load("""
        _format_version: "3.0"
        services:
        - {name: s, host: example.com, port: 8080.0, retries: 5.0, routes: [{paths: [/], regex_priority: 2.0,
                                                                             https_redirect_status_code: 301.0}]}
        upstreams:
        - {name: u, targets: [{target: "127.0.0.1:80", weight: 100.0}]}
        """)
    assert (config.services[0].port, config.services[0].retries, config.targets[0].weight) == (8080, 5, 100)
    assert (config.routes[0].regex_priority, config.routes[0].https_redirect_status_code) == (2, 301)
    assert all(type(n) is int for n in (config.services[0].port, config.targets[0].weight))


@pytest.mark.parametrize(("value", "problem"), [
    ("'80'", 'expected int >= 0 and <= 65535, got "80"'),
    ("80.5", "expected int >= 0 and <= 65535, got 80.5"),
    ("70000.0", "expected int >= 0 and <= 65535, got 70000"),
])
def test_an_integer_field_still_refuses_a_string_a_fraction_and_an_out_of_range_float(value: str, problem: str):
    """Kong refuses "80" (a string is not a number) and 80.5; a whole float is then held to the field's range."""
    assert errors(service(f"host: example.com, port: {value}")) == [f"services[0].port: {problem}"]


def test_a_free_form_value_keeps_its_float():
    """Only fields the schema types as integers are changed: a plugin's config is left for its own schema."""
    config = parse_config(service("host: example.com, plugins: [{name: rate-limiting, config: {minute: 5.0}}]"),
                          "kong.yml")
    assert type(config.plugins[0].config["minute"]) is float


@pytest.mark.parametrize("protocol", ["tcp", "tls", "udp"])
def test_a_stream_service_is_refused_saying_it_is_not_built(protocol: str):
    assert errors(service(f"host: x.y, protocol: {protocol}")) == [
        f"services[0].protocol: a {protocol} service is not supported by the gateway (http and https only)"]


# --- tags (typedefs.tags) -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("tag", "problem"), [
    ("a,b", f"invalid tag 'a,b': {TAG_PROBLEM}"),
    ("a/b", f"invalid tag 'a/b': {TAG_PROBLEM}"),
    ("", "length must be at least 1"),
])
@pytest.mark.parametrize(("text", "where"), [
    (service("host: example.com, tags: [ok, {tag}]"), "services[0]"),
    ("upstreams: [{name: u, tags: [ok, {tag}]}]", "upstreams[0]"),
    ("consumers: [{username: c, tags: [ok, {tag}]}]", "consumers[0]"),
])
def test_a_tag_outside_kongs_tag_typedef_is_refused(text: str, where: str, tag: str, problem: str):
    assert errors(text.replace("{tag}", f"'{tag}'")) == [f"{where}.tags[1]: {problem}"]


def test_a_targets_tag_is_checked_too():
    assert errors("upstreams: [{name: u, targets: [{target: 'a:1', tags: ['a,b']}]}]") == [
        "upstreams[0].targets[0].tags[0]: invalid tag 'a,b': expected printable ascii (except `,` and `/`) or valid "
        "utf-8 sequences"]


def test_a_tag_may_hold_spaces_punctuation_and_non_ascii():
    config = load(service("host: example.com, tags: ['team a', 'env:prod', 'x=1;y#2', 'Конг']"))
    assert config.services[0].tags == ["team a", "env:prod", "x=1;y#2", "Конг"]


# --- upstreams ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "problem"), [
    ("'1234'", "must be a valid hostname"),
    ("'fafa fafa'", "must be a valid hostname"),
    ("'\\\\bad\\\\////name////'", "must be a valid hostname"),
    ("192.168.0.1", "no ip addresses allowed"),
    ("'::1'", "no ip addresses allowed"),
    ("'myserver:8000'", "no port allowed"),
])
def test_an_upstream_name_must_be_a_host_name(name: str, problem: str):
    value = name.strip("'")
    assert errors(f"upstreams: [{{name: {name}}}]") == [f"upstreams[0].name: Invalid name ('{value}'); {problem}"]


@pytest.mark.parametrize("host_header", ["http://ahostname.test", "ahostname-", "a hostname"])
def test_an_upstream_host_header_must_be_a_host_name(host_header: str):
    assert errors(f"upstreams: [{{name: u, host_header: '{host_header}'}}]") == [
        f"upstreams[0].host_header: invalid hostname: {host_header}"]


def test_an_upstream_host_header_with_a_port_is_refused_saying_what_kong_would_send():
    assert errors("upstreams: [{name: u, host_header: 'a.test:8080'}]") == [
        'upstreams[0].host_header: a port is not supported here (Kong takes one, then adds the target\'s port after '
        'it unless that is the scheme\'s own, sending a Host such as "name:8080:9000"); give the host name alone, '
        'got "a.test:8080"']


@pytest.mark.parametrize("kind", ["consumer", "ip", "path"])
def test_hash_fallback_must_differ_from_hash_on(kind: str):
    assert errors(f"upstreams: [{{name: u, hash_on: {kind}, hash_fallback: {kind}}}]") == [
        f"upstreams[0].hash_fallback: must differ from upstreams[0].hash_on (both {kind})"]


@pytest.mark.parametrize("kind", ["header", "query_arg"])
def test_hash_on_and_hash_fallback_name_different_headers_and_query_args(kind: str):
    text = (f"upstreams: [{{name: u, hash_on: {kind}, hash_on_{kind}: same, hash_fallback: {kind}, "
            f"hash_fallback_{kind}: same}}]")
    assert errors(text) == [f"upstreams[0].hash_fallback_{kind}: must differ from upstreams[0].hash_on_{kind}"]


@pytest.mark.parametrize("field", ["hash_on_header", "hash_fallback_header"])
def test_a_hash_header_must_be_a_kong_header_name(field: str):
    assert errors(f"upstreams: [{{name: u, hash_on: ip, {field}: 'x a'}}]") == [
        f"upstreams[0].{field}: bad header name 'x a', allowed characters are A-Z, a-z, 0-9, '_', and '-'"]


def test_hash_on_cookie_must_be_an_http_token():
    assert errors("upstreams: [{name: u, hash_on: cookie, hash_on_cookie: 'a cookie'}]") == [
        "upstreams[0].hash_on_cookie: contains one or more invalid characters. ASCII control characters (0-31;127), "
        "space, tab and the characters ()<>@,;:\\\"/?={}[] are not allowed."]


@pytest.mark.parametrize(("path", "problem"), [("foo", "should start with: /"),
                                               ("/a//b", "must not have empty segments")])
def test_hash_on_cookie_path_is_a_kong_path(path: str, problem: str):
    assert errors(f"upstreams: [{{name: u, hash_on_cookie_path: '{path}'}}]") == [
        f"upstreams[0].hash_on_cookie_path: {problem}"]


@pytest.mark.parametrize("field", ["hash_on_query_arg", "hash_on_uri_capture"])
def test_an_empty_hash_query_arg_or_uri_capture_is_refused(field: str):
    kind = field.removeprefix("hash_on_")
    assert errors(f"upstreams: [{{name: u, hash_on: {kind}, {field}: ''}}]") == [
        f"upstreams[0].{field}: length must be at least 1"]


def test_use_srv_name_loads():
    """upstreams.lua: a boolean, default false (what it does: tests/discovery/test_disc_dns.py)."""
    (up,) = parse_config("upstreams: [{name: u, use_srv_name: true}]").upstreams
    assert up.use_srv_name is True


# --- targets --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["\\\\bad\\\\////name////", "a b", "bad-.com", "300.1.1.1", "1.2.3", "host:",
                                    "[::1]:"])
def test_a_target_that_is_no_host_name_or_ip_is_refused(target: str):
    assert errors(f"upstreams: [{{name: u, targets: [{{target: '{target}'}}]}}]") == [
        f"upstreams[0].targets[0].target: Invalid target ('{target}'); not a valid hostname or ip address"]


def test_a_target_is_a_name_or_an_ip_with_or_without_a_port_weighted_100_by_default():
    config = load("upstreams: [{name: u, targets: [{target: valid.name}, {target: 'valid.name:8080'}, "
                  "{target: 12.34.56.78}, {target: '1.2.3.4:123'}, {target: '[::1]:80'}, {target: '::1'}]}]")
    assert [(t.target, t.weight) for t in config.targets] == [
        ("valid.name", 100), ("valid.name:8080", 100), ("12.34.56.78", 100), ("1.2.3.4:123", 100),
        ("[::1]:80", 100), ("::1", 100)]


def test_a_target_weight_is_0_to_65535():
    assert errors("upstreams: [{name: u, targets: [{target: 'a:1', weight: 65536}]}]") == [
        "upstreams[0].targets[0].weight: expected int >= 0 and <= 65535, got 65536"]


# --- consumers ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["username", "custom_id"])
def test_an_empty_consumer_username_or_custom_id_is_refused(field: str):
    assert errors(f"consumers: [{{{field}: ''}}]") == [f"consumers[0].{field}: must not be empty"]


@pytest.mark.parametrize("username", ["~3..x4~.M-p~1__3_", "孔", "Конг", "🦍"])
def test_a_consumer_username_may_be_any_text(username: str):
    assert load(f"consumers: [{{username: {username}}}]").consumers[0].username == username


def _runtime(text: str) -> dict[str, ServiceRuntime]:
    """The services as the runtime compiles them."""
    return compile_config(parse_config(text, "kong.yml"), "kong.yml").services
