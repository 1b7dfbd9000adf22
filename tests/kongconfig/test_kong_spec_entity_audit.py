"""Kong 3.9.3's entity schema specs (spec/01-unit/01-db/01-schema/05-services_spec.lua, 06-routes_spec.lua,
08-targets_spec.lua, 09-upstreams_spec.lua, 11-snis_spec.lua, 14-consumers_spec.lua) replayed through the loader,
`it` by `it`, for the cases the permanent tests did not port yet: what Kong's schema accepts loads (and is obeyed),
what it refuses is refused naming the file's field. Unit level (parse_config + compile_config), plus two requests
through a real gateway for values that must be obeyed as written."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from backends import EchoBackend, request
from tls_helpers import Pki

from gateway.config import ConfigError, parse_config
from gateway.config.loader import read_config_text
from gateway.runtime import compile_config

A_UUID = "cbb297c0-a956-486d-ad1d-f9b42df9465a"
ANOTHER_UUID = "64a8670b-900f-44e7-a900-6ec7ef5aa4d3"


def _errors(document: dict[str, Any] | str) -> list[str]:
    """The loader's messages for a document (a dict under _format_version 3.0, or YAML text); [] when it loads."""
    text = document if isinstance(document, str) else json.dumps({"_format_version": "3.0", **document})
    try:
        compile_config(parse_config(text, "k.yml"), "k.yml")
    except ConfigError as e:
        return [m.removeprefix("k.yml: ") for m in e.messages]
    return []


def _service(**fields: Any) -> dict[str, Any]:
    return {"services": [{"name": "s", **fields, "routes": [{"paths": ["/"]}]}]}


def _route(**fields: Any) -> dict[str, Any]:
    return {"services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [fields]}]}


def _refused_at(document: dict[str, Any] | str, field: str) -> None:
    """Refused, and a message names `field` (a path such as services[0].path)."""
    problems = _errors(document)
    assert problems, "loaded, Kong refuses it"
    assert any(m.startswith(field) for m in problems), problems


# --- 05-services_spec.lua ---------------------------------------------------------------------------------------------


def test_a_valid_service_with_id_name_path_and_timeouts_loads() -> None:
    """05-services_spec.lua:31 "validates a valid service"."""
    assert _errors(_service(id=A_UUID, protocol="http", host="example.com", port=80, path="/foo",
                            connect_timeout=50, write_timeout=100, read_timeout=100)) == []


@pytest.mark.parametrize(("fields", "field"), [
    ({"host": "example.com", "protocol": None}, "services[0].protocol"),   # :47 "null protocol produces error"
    ({"host": "example.com", "protocol": "ftp"}, "services[0].protocol"),  # :67 "invalid protocol produces error"
    ({}, "services[0]"),                                                   # :76 "missing host produces error"
    ({"host": "example.com", "write_timeout": 0}, "services[0].write_timeout"),  # :124 "should not be zero"
    ({"host": "example.com", "path": False}, "services[0].path"),          # :161 path "must be a string"
    ({"host": "example.com", "path": "/foo/bar//"}, "services[0].path"),   # :181 "must not have empty segments"
    ({"host": "example.com", "path": "//foo/bar"}, "services[0].path"),
    ({"host": "example.com", "path": "/users/|foo/profile"}, "services[0].path"),  # :199 "rejects regular expressions"
    ({"host": "example.com", "path": "/some%0Xwords"}, "services[0].path"),  # :231 "rejects badly percent-encoded"
    ({"host": "example.com", "path": "/some%2Gwords"}, "services[0].path"),
    ({"host": "example.com", "path": "/some%20words%a"}, "services[0].path"),
    ({"host": "example.com", "path": "/some%20words%ax"}, "services[0].path"),
    ({"host": False}, "services[0].host"),                                 # :316 host "must be a string"
    ({"host": ""}, "services[0].host"),                                    # :326 host "must be a non-empty string"
    ({"host": "example.com", "name": False}, "services[0].name"),          # :409 name "must be a string"
    ({"host": "x.y", "protocol": "grpc"}, "services[0].protocol"),         # :505-530 grpc/grpcs: not built
    ({"host": "x.y", "protocol": "grpcs"}, "services[0].protocol"),
    ({"host": "x.y", "protocol": "tcp", "path": "/"}, "services[0].protocol"),  # :560 stream + path: not built
])
def test_what_the_services_spec_refuses_is_refused_at_its_field(fields: dict[str, Any], field: str) -> None:
    """05-services_spec.lua's refusals (line of each `it` beside its case); the gateway refuses what it does not
    build (grpc, stream services) by name."""
    if "name" in fields:
        _refused_at({"services": [{**fields}]}, field)
    else:
        _refused_at(_service(**fields), field)


@pytest.mark.parametrize("fields", [
    {"protocol": "https", "connect_timeout": 1, "read_timeout": 10, "write_timeout": 100, "enabled": True},  # :142
    {"path": "/abcd%aa%10%ff%AA%FF"},  # :267 "accepts properly percent-encoded values"
    {"path": "/"},  # :250 "accepts an apex '/'"
    {"path": "/abcd~user~2"},  # :258 "accepts unreserved characters from RFC 3986"
    {"path": "/ovo/"},  # :284 "accepts trailing slash"
])
def test_what_the_services_spec_accepts_loads(fields: dict[str, Any]) -> None:
    """05-services_spec.lua's acceptances."""
    assert _errors(_service(host="example.com", port=80, **fields)) == []


@pytest.mark.parametrize("host", [
    "hello.com", "hello.fr", "test.hello.com", "1991.io", "hello.COM", "HELLO.com", "123helloWORLD.com", "example.123",
    "example-api.com", "hello.abcd", "example_api.com", "localhost", "example.test.", "3B-ww4c5e180e575a65lsy2b",
    "-with-SUPER-MONKEYS-pc58ag80a8qai00g7n9n", "Hello-Another-Way--fc4qua05auwb3674vfr0b", "2-u9tlzr9756bt3uc0v",
    "MajiKoi5-783gue6qz075azm5e", "de-jg4avhby1noc0d", "d9juau41awczczp"])
def test_a_service_host_the_services_spec_accepts_loads(host: str) -> None:
    """05-services_spec.lua:357 "accepts valid hosts" (RFC 3492's punycode labels, a final dot, an underscore)."""
    assert _errors(_service(protocol="http", host=host, port=80, enabled=True)) == []


def test_a_service_name_of_invalid_utf8_is_refused_naming_the_file(tmp_path: Any) -> None:
    """05-services_spec.lua:419 / 06-routes_spec.lua:728 "rejects invalid names" (`string.char(105, 213, 205,
    149)`, no UTF-8): a file holding those bytes is refused, naming the file."""
    path = tmp_path / "k.yml"
    path.write_bytes(b'services: [{name: "i\xd5\xcd\x95", url: "http://a.test"}]')
    with pytest.raises(ConfigError) as info:
        read_config_text(path)
    assert info.value.messages == [f"{path}: not UTF-8 text: invalid continuation byte at byte 20"]


@pytest.mark.parametrize("name", ["example", "EXAMPLE", "exa.mp.le", "3x4mp13", "3x4-mp-13", "3x4_mp_13", "~3x4~mp~13"])
def test_service_route_and_consumer_names_the_specs_accept_load(name: str) -> None:
    """05-services_spec.lua:440, 06-routes_spec.lua:750, 14-consumers_spec.lua:9 "accepts valid names" (the ASCII
    ones; the others are ported already)."""
    assert _errors({"services": [{"name": name, "host": "example.com", "routes": [{"name": name, "paths": ["/"]}]}],
                    "consumers": [{"username": name}]}) == []


# --- 06-routes_spec.lua (flavor traditional_compatible, Kong's default) ----------------------------------------------


def test_a_valid_route_with_every_matching_field_loads() -> None:
    """06-routes_spec.lua:59 "validates a valid route" / :1444 "validates a valid http route"."""
    assert _errors({"services": [{"id": ANOTHER_UUID, "name": "s", "url": "http://127.0.0.1:9"}],
                    "routes": [{"id": A_UUID, "name": "my_route", "protocols": ["http"], "methods": ["GET", "POST"],
                                "hosts": ["example.com"], "headers": {"location": ["location-1"]}, "paths": ["/ovo"],
                                "regex_priority": 1, "strip_path": False, "preserve_host": True,
                                "service": {"id": ANOTHER_UUID}}]}) == []


@pytest.mark.parametrize("service", [None, "absent"])
def test_a_route_without_a_service_loads(service: Any) -> None:
    """06-routes_spec.lua:81 "it does not fail when service is null", :89 "... is missing"."""
    route: dict[str, Any] = {"paths": ["/"]}
    if service != "absent":
        route["service"] = service
    assert _errors({"routes": [route]}) == []


@pytest.mark.parametrize(("document", "field"), [
    ({"services": [{"id": ANOTHER_UUID, "url": "http://127.0.0.1:9"}],
      "routes": [{"service": {"id": None}, "paths": ["/"]}]}, "routes[0].service"),  # :97 "service.id is null"
    ({"routes": [{"protocols": None, "paths": ["/"]}]}, "routes[0].protocols"),  # :105 "protocol is missing"
    ({"routes": [{"protocols": ["http"], "paths": ["/foo"], "service": {"id": "blergh"}}]},
     "routes[0].service"),  # :212 "validates the foreign key in entities"
])
def test_what_the_routes_spec_refuses_at_top_level_is_refused(document: dict[str, Any], field: str) -> None:
    """06-routes_spec.lua's refusals of a route's service and protocols."""
    _refused_at(document, field)


ROUTE = "services[0].routes[0]"


@pytest.mark.parametrize(("fields", "field"), [
    ({"protocols": ["http"], "methods": ["get"]}, f"{ROUTE}.methods[0]"),  # :113 "fails given an invalid method"
    ({"protocols": ["http"]}, ROUTE),  # :124 "missing method, host, headers, path & service", :1085 "no L7 ..."
    ({"protocols": ["https"]}, ROUTE),  # :1085 "errors if no L7 matching attribute set" (https)
    ({"protocols": ["http"], "paths": [], "hosts": [], "methods": []}, ROUTE),  # is_nonempty: [] is not set
    ({"protocols": ["https"], "snis": []}, ROUTE),
    ({"protocols": ["ftp"], "paths": ["/"]}, f"{ROUTE}.protocols"),  # :148 "invalid protocols produces error"
    ({"protocols": ["http", "tls"], "paths": ["/"]}, f"{ROUTE}.protocols"),  # :161 "conflicting protocols"
    ({"protocols": ["https", "tcp"], "paths": ["/"]}, f"{ROUTE}.protocols"),
    ({"protocols": ["https", "tls"], "paths": ["/"]}, f"{ROUTE}.protocols"),
    ({"paths": [False]}, f"{ROUTE}.paths[0]"),  # :235 "must be a string"
    ({"paths": [""]}, f"{ROUTE}.paths[0]"),  # :246 "must be a non-empty string"
    ({"paths": ["foo"]}, f"{ROUTE}.paths[0]"),  # :257 "must start with /"
    ({"paths": ["~/[abc/*/user$"]}, f"{ROUTE}.paths[0]"),  # :1481 "fails when path is invalid"
    ({"hosts": [False]}, f"{ROUTE}.hosts[0]"),  # :396 "must be a string"
    ({"hosts": [""]}, f"{ROUTE}.hosts[0]"),  # :407 "must be a non-empty string"
    ("services: [{name: s, url: 'http://h', routes: [{headers: {false: [a]}}]}]", f"{ROUTE}.headers"),  # :565
    ({"paths": ["/"], "headers": {"host": ["example.com"]}}, f"{ROUTE}.headers"),  # :576 "cannot contain 'host'"
    ({"paths": ["/"], "headers": {"Host": ["example.com"]}}, f"{ROUTE}.headers"),
    ({"headers": {"location": True}}, f"{ROUTE}.headers"),  # :592 "value must be an array"
    ({"headers": {"location": [True]}}, f"{ROUTE}.headers"),  # :603 "values must be a string"
    ({"methods": [False]}, f"{ROUTE}.methods[0]"),  # :628 "must be a string"
    ({"methods": [""]}, f"{ROUTE}.methods[0]"),  # :639 "must be a non-empty string"
    ({"methods": [" GET"]}, f"{ROUTE}.methods[0]"),  # :650 "rejects invalid values"
    ({"name": False, "paths": ["/"]}, f"{ROUTE}.name"),  # :706 "must be a string"
    ({"protocols": ["https"], "snis": ["127.0.0.1"]}, f"{ROUTE}.snis[0]"),  # :1030 "rejects invalid SNIs"
    ({"protocols": ["https"], "snis": ["example.org:80"]}, f"{ROUTE}.snis[0]"),
    ({"protocols": ["http"], "paths": ["/"], "snis": ["example.org"]}, f"{ROUTE}.snis"),  # :1049 snis without https
    ({"protocols": ["tcp"], "sources": [{"ip": "1.2.3.4", "port": 80}]}, f"{ROUTE}.sources"),  # :1466 stream
    ({"protocols": ["grpc"], "methods": ["GET"], "paths": ["/foo"]}, f"{ROUTE}.protocols"),  # :1143 grpc: not built
    ({"protocols": ["grpc"], "hosts": ["foo.grpc.test"], "strip_path": True}, f"{ROUTE}.protocols"),  # :1197
    ({"protocols": ["tls", "tls_passthrough"], "snis": ["foo.grpc.test"]}, f"{ROUTE}.protocols"),  # :1224
    ({"protocols": ["https"], "snis": ["foo.*.test"]}, f"{ROUTE}.snis[0]"),  # :1560 "rejects invalid wildcard"
    ({"protocols": ["https"], "snis": ["foo*.test"]}, f"{ROUTE}.snis[0]"),
    ({"protocols": ["http"], "hosts": ["example.com"], "expression": '(http.method == "GET")', "priority": 100},
     f"{ROUTE}.expression"),  # :1812 traditional_compatible: "unknown field"
])
def test_what_the_routes_spec_refuses_is_refused_at_its_field(fields: dict[str, Any] | str, field: str) -> None:
    """06-routes_spec.lua's refusals under traditional_compatible (line of each `it` beside its case;
    routes_subschemas.lua's http entity check counts a field set only when it is non-empty, schema/init.lua:429-438
    is_nonempty); the gateway refuses what it does not build (stream, grpc, expressions) by name."""
    _refused_at(fields if isinstance(fields, str) else _route(**fields), field)


@pytest.mark.parametrize("fields", [
    {"protocols": ["http"], "paths": ["/foo"]},  # :189 "produces defaults"
    {"protocols": ["http"], "methods": ["GET"]},  # :124, the cases that pass
    {"protocols": ["http"], "hosts": ["x.y"]},
    {"protocols": ["http"], "headers": {"location": ["location-1"]}},
    {"protocols": ["http"], "methods": [], "hosts": [], "paths": ["/"]},  # :332 "accepts an apex '/'"
    {"protocols": ["http"], "methods": [], "hosts": [], "paths": ["/abcd~user~2"]},  # :346
    {"protocols": ["http"], "methods": [], "hosts": [], "paths": ["/ovo/"]},  # :379 "accepts trailing slash"
    {"protocols": ["http"], "paths": [], "hosts": [], "methods": ["CUSTOM"]},  # :681 "accepts valid HTTP methods"
    {"protocols": ["http"], "paths": [], "hosts": [], "methods": ["POST"]},
    {"protocols": ["https"], "snis": ["example.org"]},  # :1016 "accepts valid SNIs for https Routes"
    {"protocols": ["https"], "snis": ["www.example.org"]},
    {"protocols": ["https"], "snis": ["*.example.org"]},  # :1534 "accepts leftmost wildcard"
    {"protocols": ["https"], "snis": ["*.foo.bar.test"]},
    {"protocols": ["https"], "snis": ["example.*"]},  # :1547 "accepts rightmost wildcard"
    {"protocols": ["https"], "snis": ["foo.bar.*"]},
    {"paths": ["/%25"]},  # :1252 "errors for not-normalized prefix path": /%25 is normalized
])
def test_what_the_routes_spec_accepts_loads(fields: dict[str, Any]) -> None:
    """06-routes_spec.lua's acceptances under traditional_compatible."""
    assert _errors(_route(**fields)) == []


@pytest.mark.parametrize("host", [
    "hello.com", "hello.fr", "test.hello.com", "HELLO.com", "123helloWORLD.com", "example-api.com", "hello.abcd",
    "3B-ww4c5e180e575a65lsy2b", "Hello-Another-Way--fc4qua05auwb3674vfr0b", "2-u9tlzr9756bt3uc0v",
    "MajiKoi5-783gue6qz075azm5e", "de-jg4avhby1noc0d", "d9juau41awczczp"])
def test_a_route_host_the_routes_spec_accepts_loads_beside_empty_methods_and_paths(host: str) -> None:
    """06-routes_spec.lua:495 "accepts valid hosts" (the hosts not ported yet), with `methods = {}, paths = {}`."""
    assert _errors(_route(protocols=["http"], methods=[], paths=[], hosts=[host])) == []


# --- 08-targets_spec.lua, 09-upstreams_spec.lua -----------------------------------------------------------------------


def _upstream(**fields: Any) -> dict[str, Any]:
    return {"upstreams": [{"name": "x", **fields}]}


def test_an_upstream_hashing_on_a_header_with_a_cookie_fallback_loads() -> None:
    """09-upstreams_spec.lua:36 "validates a valid load upstream" (what it does: tests/balancing/
    test_hash_capture_cookie.py)."""
    assert _errors({"upstreams": [{"id": A_UUID, "name": "my_service", "hash_on": "header",
                                   "hash_on_header": "X-Balance", "hash_fallback": "cookie",
                                   "hash_on_cookie": "a_cookie"}]}) == []


@pytest.mark.parametrize(("fields", "field"), [
    ({"hash_on": "ip", "hash_fallback": "header"}, "upstreams[0].hash_fallback"),  # :122 needs hash_fallback_header
    ({"hash_fallback": "cookie"}, "upstreams[0].hash_fallback"),  # :134 hash_fallback cookie needs hash_on_cookie
    ({"hash_on": "none", "hash_fallback": "header", "hash_fallback_header": "x"}, "upstreams[0].hash_fallback"),
    ({"hash_on": "cookie", "hash_on_cookie": "c", "hash_fallback": "header", "hash_fallback_header": "x"},
     "upstreams[0].hash_fallback"),  # :146 "hash_on = 'cookie' requires that hash_fallback is also none"
    ({"hash_on": "ip", "hash_fallback": "query_arg"}, "upstreams[0].hash_fallback"),  # :170
    ({"hash_on": "query_arg", "hash_on_query_arg": "ok", "hash_fallback": "query_arg",
      "hash_fallback_query_arg": ""}, "upstreams[0].hash_fallback_query_arg"),  # :189
    ({"hash_on": "uri_capture", "hash_on_uri_capture": "same", "hash_fallback": "uri_capture",
      "hash_fallback_uri_capture": "same"}, "upstreams[0].hash_fallback_uri_capture"),  # :209
    ({"hash_on": "uri_capture", "hash_on_uri_capture": "ok", "hash_fallback": "uri_capture",
      "hash_fallback_uri_capture": ""}, "upstreams[0].hash_fallback_uri_capture"),  # :222
])
def test_what_the_upstreams_spec_refuses_of_hashing_is_refused(fields: dict[str, Any], field: str) -> None:
    """09-upstreams_spec.lua's hash_on / hash_fallback refusals (upstreams.lua entity_checks) not ported yet."""
    problems = _errors(_upstream(**fields))
    assert any(m.startswith(field) or m.startswith(f"{field} ") for m in problems), problems


def test_an_upstream_without_a_name_is_refused() -> None:
    """09-upstreams_spec.lua:310 "requires a valid name with no port": {} gives "required field missing"."""
    _refused_at({"upstreams": [{}]}, "upstreams[0].name")


@pytest.mark.parametrize("host_header", ["ahostname", "a.hostname.test"])
def test_an_upstream_host_header_the_spec_accepts_loads(host_header: str) -> None:
    """09-upstreams_spec.lua:364 "accepts valid hostnames"."""
    assert _errors(_upstream(name="host.test", host_header=host_header)) == []


def test_an_upstream_name_the_spec_accepts_loads_with_use_srv_name() -> None:
    """09-upstreams_spec.lua:242 "produces set use_srv_name flag", :329 "accepts valid names"."""
    assert _errors({"upstreams": [{"name": "www.example.com", "use_srv_name": True},
                                  {"name": "valid.host.name"}]}) == []


def _active(**fields: Any) -> dict[str, Any]:
    return {"active": fields}


def _passive(**fields: Any) -> dict[str, Any]:
    return {"passive": fields}


HC_REFUSED = [
    _active(timeout=-1), _active(timeout=1e42), _active(concurrency=0.5), _active(concurrency=0),
    _active(concurrency=-10), _active(http_path=""), _active(http_path="ovo"), _active(https_verify_certificate="ovo"),
    _active(headers=0), _active(headers=[0]), _active(headers=[""]), _active(headers={"x-header": 123}),
    _active(healthy={"interval": -1}), _active(healthy={"interval": 1e42}), _active(healthy={"http_statuses": 404}),
    _active(healthy={"http_statuses": ["ovo"]}), _active(healthy={"http_statuses": [-1]}),
    _active(healthy={"http_statuses": [99]}), _active(healthy={"http_statuses": [1000]}),
    _active(healthy={"http_statuses": [111.314]}), _active(healthy={"successes": 0.5}),
    {**_active(unhealthy={"timeouts": 1}), "threshold": -1}, {**_active(unhealthy={"timeouts": 1}), "threshold": 101},
    {**_active(unhealthy={"timeouts": 1}), "threshold": "50"},
    {**_active(unhealthy={"timeouts": 1}), "threshold": True},
    _active(healthy={"successes": -1}), _active(healthy={"successes": 256}), _active(unhealthy={"interval": -1}),
    _active(unhealthy={"interval": 1e42}), _active(unhealthy={"http_statuses": 404}),
    _active(unhealthy={"http_statuses": ["ovo"]}), _active(unhealthy={"http_statuses": [-1]}),
    _active(unhealthy={"http_statuses": [99]}), _active(unhealthy={"http_statuses": [1000]}),
    _active(unhealthy={"tcp_failures": 0.5}), _active(unhealthy={"tcp_failures": 256}),
    _active(unhealthy={"tcp_failures": -1}), _active(unhealthy={"timeouts": 0.5}), _active(unhealthy={"timeouts": 256}),
    _active(unhealthy={"timeouts": -1}), _active(unhealthy={"http_failures": 0.5}),
    _active(unhealthy={"http_failures": -1}), _active(unhealthy={"http_failures": 256}),
    _passive(healthy={"http_statuses": 404}), _passive(healthy={"http_statuses": ["ovo"]}),
    _passive(healthy={"http_statuses": [-1]}), _passive(healthy={"http_statuses": [99]}),
    _passive(healthy={"http_statuses": [1000]}), _passive(healthy={"successes": 0.5}),
    _passive(healthy={"successes": -1}), _passive(unhealthy={"http_statuses": 404}),
    _passive(unhealthy={"http_statuses": ["ovo"]}), _passive(unhealthy={"http_statuses": [-1]}),
    _passive(unhealthy={"http_statuses": [99]}), _passive(unhealthy={"http_statuses": [1000]}),
    _passive(unhealthy={"tcp_failures": 0.5}), _passive(unhealthy={"tcp_failures": -1}),
    _passive(unhealthy={"tcp_failures": 256}), _passive(unhealthy={"timeouts": 0.5}),
    _passive(unhealthy={"timeouts": 256}), _passive(unhealthy={"timeouts": -1}),
    _passive(unhealthy={"http_failures": 0.5}), _passive(unhealthy={"http_failures": -1}),
    _passive(unhealthy={"http_failures": 256}),
    {**_passive(unhealthy={"timeouts": 1}), "threshold": -1}, {**_passive(unhealthy={"timeouts": 1}), "threshold": 101},
    {**_passive(unhealthy={"timeouts": 1}), "threshold": "50"},
    {**_passive(unhealthy={"timeouts": 1}), "threshold": True},
]


@pytest.mark.parametrize("healthchecks", HC_REFUSED, ids=json.dumps)
def test_a_health_check_the_upstreams_spec_refuses_is_refused(healthchecks: dict[str, Any]) -> None:
    """09-upstreams_spec.lua:383 "rejects invalid configurations" (the cases other than https_sni, which
    test_schema_specs_replay.py ports), and :72-108 "invalid healthchecks.active.* produces error"."""
    _refused_at(_upstream(healthchecks=healthchecks), "upstreams[0].healthchecks")


HC_ACCEPTED = [
    _active(timeout=0.5), _active(timeout=1), _active(concurrency=2), _active(http_path="/"),
    _active(http_path="/test"), _active(https_sni="example.com"), _active(https_verify_certificate=False),
    _active(healthy={"interval": 0}), _active(healthy={"http_statuses": [200, 300]}), _active(healthy={"successes": 2}),
    _active(healthy={"successes": 255}), _active(unhealthy={"interval": 0}),
    _active(unhealthy={"http_statuses": [404]}), _active(unhealthy={"tcp_failures": 3}),
    _active(unhealthy={"tcp_failures": 255}), _active(unhealthy={"timeouts": 9}), _active(unhealthy={"timeouts": 255}),
    _active(unhealthy={"http_failures": 2}), {**_active(unhealthy={"http_failures": 2}), "threshold": 0},
    {**_active(unhealthy={"http_failures": 2}), "threshold": 50.5},
    {**_active(unhealthy={"http_failures": 2}), "threshold": 100},
    _passive(healthy={"http_statuses": [200, 201]}), _passive(healthy={"successes": 2}),
    _passive(healthy={"successes": 255}), _passive(unhealthy={"http_statuses": [400, 500]}),
    _passive(unhealthy={"tcp_failures": 8}), _passive(unhealthy={"timeouts": 1}),
    _passive(unhealthy={"http_failures": 2}), {**_passive(unhealthy={"http_failures": 2}), "threshold": 0},
    {**_passive(unhealthy={"http_failures": 2}), "threshold": 50.5},
    {**_passive(unhealthy={"http_failures": 2}), "threshold": 100},
]


@pytest.mark.parametrize("healthchecks", HC_ACCEPTED, ids=json.dumps)
def test_a_health_check_the_upstreams_spec_accepts_loads(healthchecks: dict[str, Any]) -> None:
    """09-upstreams_spec.lua:509 "accepts inputs with the correct values" (but the passive counts of 255, which the
    gateway refuses on an upstream that uses checks, as documented: README "Health checks and discovery")."""
    assert _errors(_upstream(healthchecks=healthchecks)) == []


def test_the_upstream_defaults_are_kongs() -> None:
    """09-upstreams_spec.lua:255 "produces defaults"."""
    config = parse_config(json.dumps({"upstreams": [{"name": "www.example.com"}]}), "k.yml")
    up = config.upstreams[0]
    assert (up.hash_on, up.hash_fallback, up.hash_on_cookie_path, up.slots, up.use_srv_name) == (
        "none", "none", "/", 10000, False)
    active, passive = up.healthchecks.active, up.healthchecks.passive
    assert (active.type, active.timeout, active.concurrency, active.http_path, active.https_verify_certificate) == (
        "http", 1, 10, "/", True)
    assert (active.healthy.interval, active.healthy.http_statuses, active.healthy.successes) == (0, [200, 302], 0)
    assert (active.unhealthy.interval, active.unhealthy.http_statuses, active.unhealthy.tcp_failures,
            active.unhealthy.timeouts, active.unhealthy.http_failures) == (
        0, [429, 404, 500, 501, 502, 503, 504, 505], 0, 0, 0)
    assert passive.type == "http"
    assert passive.healthy.http_statuses == [200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303,
                                             304, 305, 306, 307, 308]
    assert (passive.unhealthy.http_statuses, passive.unhealthy.tcp_failures, passive.unhealthy.timeouts,
            passive.unhealthy.http_failures, passive.healthy.successes) == ([429, 500, 503], 0, 0, 0, 0)


# --- 11-snis_spec.lua -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert_pair() -> tuple[str, str]:
    return Pki().issue("a.test")


@pytest.mark.parametrize(("name", "problem"), [
    ("foo.*.wildcard.com", "wildcard must be leftmost or rightmost character"),  # :71
    ("*.foo.*.wildcard.com", "only one wildcard must be specified"),  # :82
    ("wildcard.*:80", "wildcard must be leftmost or rightmost character"),  # :93 "rejects wildcard with port"
    ("test.wildcard.*:80", "wildcard must be leftmost or rightmost character"),
    ("test.wildcard.com:*", "invalid value: test.wildcard.com:wildcard"),
    ("foo.valid.name:443", "must not have a port"),  # :107 "rejects a hostname with a port"
    ("10.0.0.1", "must not be an IP"),  # :118 "rejects a hostname with an IP"
    ("10.0.0.1:8001", "must not be an IP"),
])
def test_an_sni_the_snis_spec_refuses_is_refused_in_kongs_words(cert_pair: tuple[str, str], name: str,
                                                                 problem: str) -> None:
    """11-snis_spec.lua's refusals not ported yet (typedefs.wildcard_host's messages)."""
    cert, key = cert_pair
    assert _errors({"certificates": [{"cert": cert, "key": key, "snis": [name]}]}) == [
        f'certificates[0].snis[0].name: {problem}, got "{name}"']


def test_an_sni_the_snis_spec_accepts_loads(cert_pair: tuple[str, str]) -> None:
    """11-snis_spec.lua:36 "accepts a hostname" (bar.foo.valid.name)."""
    cert, key = cert_pair
    assert _errors({"certificates": [{"cert": cert, "key": key, "snis": ["bar.foo.valid.name"]}]}) == []


# --- accepted values obeyed ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/hello/path$with$!&'()*+,;=stuff", "/abcd%aa%10%ff%AA%FF"])
async def test_a_service_path_the_spec_accepts_reaches_the_upstream_as_written(gateway, nursery: trio.Nursery,
                                                                                path: str) -> None:
    """05-services_spec.lua:212 "accepts sub-delims characters from RFC 3986 (#6125)", :267 "accepts properly
    percent-encoded values": kong/runloop/handler.lua:1324 `var.upstream_uri = escape(match_t.upstream_uri)`, and
    kong/tools/uri.lua's escape leaves `!#$&'()*+,/:;=?@[]`, letters, digits, `-_.~` and `%` as they are."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [{"name": "s", "host": "127.0.0.1", "port": echo.port, "path": path,
                                        "routes": [{"paths": ["/"]}]}]})
    with trio.fail_after(5):
        reply = await request(port, "GET", "/x")
    assert reply.status == 200, reply.body
    assert reply.json()["path"] == f"{path}/x"


def test_the_service_and_route_defaults_are_kongs() -> None:
    """05-services_spec.lua:96 "produces defaults" (protocol http, retries 5, timeouts 60000 ms; port 80: ported in
    tests/test_kong_spec_tls.py) and 06-routes_spec.lua:189 "produces defaults" (regex_priority 0, strip_path true,
    preserve_host false, https_redirect_status_code 426, protocols http and https when not given)."""
    config = parse_config(json.dumps({"services": [{"host": "www.example.com", "routes": [
        {"protocols": ["http"], "paths": ["/foo"]}, {"paths": ["/bar"]}]}]}), "k.yml")
    svc, route, other = config.services[0], config.routes[0], config.routes[1]
    assert (svc.protocol, svc.host, svc.path, svc.retries) == ("http", "www.example.com", None, 5)
    assert (svc.connect_timeout, svc.write_timeout, svc.read_timeout) == (60000, 60000, 60000)
    assert (route.protocols, route.methods, route.headers, route.paths) == (["http"], [], {}, ["/foo"])
    assert (route.regex_priority, route.strip_path, route.preserve_host, route.https_redirect_status_code) == (
        0, True, False, 426)
    assert other.protocols == ["http", "https"]
