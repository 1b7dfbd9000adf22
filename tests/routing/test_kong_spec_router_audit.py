"""Kong 3.9.3's router specs, `it` by `it`, for the cases tests/routing/ did not port:
spec/01-unit/08-router_spec.lua (the blocks that run for traditional_compatible, Kong 3.x's default) and
spec/02-integration/05-proxy/02-router_spec.lua.

The unit cases go through the gateway's own config path (parse_config + compile_config, as tests/routing/
test_path_handling.py does), each route given the spec's own id (e8fb37f1-...-6608a6bb81NN): ties between routes of
equal priority are then broken as Kong's ATC router breaks them (the greater id), so the spec's expected route is the
one Kong picks, not one of random-id luck. The integration cases that check what reaches the upstream run end to end."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from backends import EchoBackend, raw_exchange, request, service

from gateway.config import ConfigError
from gateway.config.loader import parse_config
from gateway.runtime import compile_config

ID = "e8fb37f1-102d-461e-9c51-6608a6bb81{}"


def kong_router(routes: list[tuple[int | str, dict[str, Any]]], *, serviceless: tuple[int | str, ...] = ()) -> Any:
    """The gateway's router of these routes (route n: id e8fb37f1-...-6608a6bb81nn, name "rn"; a str n is the id's
    last two hex digits as given, e.g. "0f")."""
    def one(n: int | str, fields: dict[str, Any]) -> dict[str, Any]:
        rid = ID.format(f"{n:02d}" if isinstance(n, int) else n)
        return {"name": f"r{n}", "id": rid, **fields}
    served = [one(n, f) for n, f in routes if n not in serviceless]
    doc: dict[str, Any] = {"_format_version": "3.0", "services": [
        {"name": "s", "url": "http://127.0.0.1:9", "routes": served}]}
    alone = [one(n, f) for n, f in routes if n in serviceless]
    if alone:
        doc["routes"] = alone
    return compile_config(parse_config(json.dumps(doc))).router


def sel(r: Any, method: str = "GET", target: str = "/", host: str | None = None,
        headers: list[tuple[str, str]] | None = None, port: int | None = None) -> str | None:
    """Kong's select(method, uri, host, ..., headers): the name of the route chosen, or None."""
    hdrs = [(k.lower().encode(), v.encode()) for k, v in headers or []]
    m = r.match(method.encode(), target.encode(), host.encode() if host is not None else None, hdrs, None, port)
    return None if m is None else m.payload.name


# --- spec/01-unit/08-router_spec.lua, describe "select()": its 15 use cases, with their ids -------------------------

USE_CASES: list[tuple[int | str, dict[str, Any]]] = [
    (1, {"hosts": ["domain-1.org", "domain-2.org"]}),
    (2, {"methods": ["TRACE"]}),
    (3, {"paths": ["/my-route"]}),
    (4, {"paths": ["/route-4"], "hosts": ["domain-1.org", "domain-2.org"]}),
    (5, {"hosts": ["domain-1.org", "domain-2.org"], "methods": ["POST", "PUT", "PATCH"]}),
    (6, {"methods": ["POST", "PUT", "PATCH"], "paths": ["/route-6"]}),
    (7, {"hosts": ["domain-with-uri-1.org", "domain-with-uri-2.org"], "methods": ["POST", "PUT", "PATCH"],
         "paths": ["/my-route-uri"]}),
    (8, {"paths": ["/serviceless"]}),
    (9, {"headers": {"location": ["my-location-1", "my-location-2"]}}),
    (10, {"headers": {"location": ["my-location-1"], "version": ["v1", "v2"]}}),
    (11, {"headers": {"location": ["my-location-1", "my-location-2"]}, "paths": ["/headers-uri"]}),
    (12, {"hosts": ["domain-with-headers-1.org", "domain-with-headers-2.org"],
          "headers": {"location": ["my-location-1", "my-location-2"]}, "methods": ["POST", "PUT", "PATCH"],
          "paths": ["/headers-host-uri-method"]}),
    (13, {"hosts": ["domain-1.org:321", "domain-2.org"]}),
    (14, {"hosts": ["domain-3.org:321"]}),
    (15, {"headers": {"user_agent": ["~*windows|linux|os\\s+x\\s*[\\d\\._]+|solaris|bsd"]}}),
]


@pytest.fixture(scope="module")
def use_cases() -> Any:
    return kong_router(USE_CASES, serviceless=(8,))


@pytest.mark.parametrize(("it", "method", "target", "host", "headers", "expected"), [
    ("[host]", "GET", "/", "domain-1.org", [], "r1"),
    ("[host] ignores default port", "GET", "/", "domain-1.org:80", [], "r1"),
    ("[host] matches specific port", "GET", "/", "domain-1.org:321", [], "r13"),
    ("[host] matches specific port on port-only route", "GET", "/", "domain-3.org:321", [], "r14"),
    ("[host] fails just because of port on port-only route", "GET", "/", "domain-3.org:123", [], None),
    ("[uri]", "GET", "/my-route", "domain.org", [], "r3"),
    ("[uri + empty host]", "GET", "/my-route-uri", "", [], "r3"),
    ("[method]", "TRACE", "/", "domain.org", [], "r2"),
    ("[host + uri]", "GET", "/route-4", "domain-1.org", [], "r4"),
    ("[host + method]", "POST", "/", "domain-1.org", [], "r5"),
    ("[uri + method]", "PUT", "/route-6", "domain.org", [], "r6"),
    ("[host + uri + method]", "PUT", "/my-route-uri", "domain-with-uri-2.org", [], "r7"),
    ("[headers + uri]", "GET", "/headers-uri", None, [("location", "my-location-2")], "r11"),
    ("[host + headers + uri + method]", "PUT", "/headers-host-uri-method", "domain-with-headers-1.org",
     [("location", "my-location-2")], "r12"),
    ("[serviceless]", "GET", "/serviceless", None, [], "r8"),
    ("[uri prefix] matches when given [uri] is in request URI prefix", "GET", "/my-route/some/path", "domain.org", [],
     "r3"),
    ("single [headers] value", "GET", "/", None, [("location", "my-location-1")], "r9"),
    ("single [headers] value", "GET", "/", None, [("location", "my-location-3"), ("location", "my-location-2")],
     "r9"),
    ("single [headers] value", "GET", "/", None, [("user_agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
                                                                "(KHTML, like Gecko) Chrome/83.0.4103.116")], "r15"),
    ("multiple [headers] values", "GET", "/", None, [("location", "my-location-1"), ("version", "v2")], "r10"),
    ("multiple [headers] values", "GET", "/", None,
     [("location", "my-location-3"), ("location", "my-location-2"), ("version", "v2")], "r9"),
    ("misses: invalid [host]", "GET", "/", "domain-3.org", [], None),
    ("misses: invalid host in [host + uri]", "GET", "/route-4", "domain-3.org", [], None),
    ("misses: invalid method in [host + uri + method]", "GET", "/some-uri", "domain-with-uri-2.org", [], None),
    ("misses: invalid uri in [host + uri + method]", "PUT", "/some-uri-foo", "domain-with-uri-2.org", [], None),
    ("misses: [uri] in URI but not in prefix", "GET", "/some-other-prefix/my-route", "domain.org", [], None),
    ("misses: invalid [headers]", "GET", "/", None, [("location", "invalid-location")], None),
    ("misses: invalid headers in [headers + uri]", "GET", "/headers-uri", None, [("location", "invalid-location")],
     None),
    ("misses: invalid headers in [headers + uri + method]", "PUT", "/headers-uri-method", None,
     [("location", "invalid-location")], None),
    ("misses: invalid headers in [headers + host + uri + method]", "PUT", "/headers-host-uri-method", None,
     [("location", "invalid-location"), ("host", "domain-with-headers-1.org")], None),
])
def test_select_use_cases_with_kongs_route_ids(use_cases, it, method, target, host, headers, expected):
    """spec/01-unit/08-router_spec.lua, describe "select()" (`it` titles in the parameters), its routes carrying the
    spec's ids: route 13 (domain-1.org:321) and route 1 (domain-1.org) tie, the greater id wins on port 321."""
    assert sel(use_cases, method, target, host, headers) == expected, it


@pytest.mark.parametrize(("it", "target", "expected"), [
    ("request with [method]", "/", "r0f"),
    ("does not supersede another route", "/my-route", "r3"),
    ("does not supersede another route", "/my-route/hello/world", "r3"),
    ("acts as a catch-all route", "/foobar/baz", "r0f"),
])
def test_root_uri_with_the_use_cases(it, target, expected):
    """spec/01-unit/08-router_spec.lua, "edge-cases" / "root / [uri]": the use cases plus a route `/` (id ...810f)."""
    r = kong_router([("0f", {"paths": ["/"]}), *USE_CASES], serviceless=(8,))
    assert sel(r, "GET", target, "domain.org") == expected, it


def test_multiple_routes_of_same_category_with_conflicting_values():
    """spec/01-unit/08-router_spec.lua, "multiple routes of same category with conflicting values" / "matches correct
    route": five [host + uri] routes on /my-uri (ids ...8111-8115) and one on /my-target-uri (...8121)."""
    extra = [(10 + i, {"hosts": ["domain.org"], "paths": ["/my-uri"]}) for i in range(1, 6)]
    r = kong_router([*[(n, f) for n, f in USE_CASES if n not in (11, 12, 13, 14, 15)], *extra,
                     (21, {"hosts": ["domain.org"], "paths": ["/my-target-uri"]})], serviceless=(8,))
    assert sel(r, "GET", "/my-target-uri", "domain.org") == "r21"
    assert sel(r, "GET", "/my-uri", "domain.org") == "r15"  # (the greatest id of the five ties)


# --- [uri prefix], [uri regex] --------------------------------------------------------------------------------------


def test_a_longer_uri_is_not_superseded_while_methods_or_hosts_are_also_defined():
    """spec/01-unit/08-router_spec.lua, "does not supersede another route with a longer [uri] while [methods] are also
    defined" and "does not superseds another route with a longer [uri] while [hosts] are also defined"."""
    for extra in ({"methods": ["POST", "PUT", "GET"]}, {"hosts": ["domain.org"]}):
        r = kong_router([(1, {**extra, "paths": ["/my-route"]}), (2, {**extra, "paths": ["/my-route/hello"]})])
        got = [sel(r, "GET", t, "domain.org") for t in ("/my-route/hello", "/my-route/hello/world", "/my-route",
                                                        "/my-route/world")]
        assert got == ["r2", "r2", "r1", "r1"], extra


def test_uri_regex_routes():
    """spec/01-unit/08-router_spec.lua, "matches with [uri regex]", "matches the right route when several ones have a
    [uri regex]", "matches a [uri regex] even if a [prefix uri] got a match"."""
    r = kong_router([(1, {"paths": ["~/users/\\d+/profile"]})])
    assert sel(r, "GET", "/users/123/profile", "domain.org") == "r1"
    r = kong_router([(1, {"paths": ["~/route/persons/\\d{3}"]}), (2, {"paths": ["~/route/persons/\\d{3}/following"]}),
                     (3, {"paths": ["~/route/persons/\\d{3}/[a-z]+"]})])
    assert sel(r, "GET", "/route/persons/456", "domain.org") == "r1"
    r = kong_router([(1, {"paths": ["/route/persons"]}), (2, {"paths": ["~/route/persons/\\d+/profile"]})])
    assert sel(r, "GET", "/route/persons/123/profile", "domain.org") == "r2"


# --- [wildcard host] ------------------------------------------------------------------------------------------------

WILD = [(1, {"hosts": ["*.route.com"]}), (2, {"hosts": ["route.*"]})]


def test_wildcard_hosts_leftmost_rightmost_and_any_port():
    """spec/01-unit/08-router_spec.lua, [wildcard host]: "matches leftmost wildcards", "matches rightmost wildcards",
    "matches any port in request"."""
    r = kong_router(WILD)
    assert sel(r, host="foo.route.com") == "r1"
    assert sel(r, host="route.org") == "r2"
    assert sel(r, host="route.org:123") == "r2"
    assert sel(r, host="foo.route.com:123") == "r1"


def test_wildcard_hosts_with_ports():
    """spec/01-unit/08-router_spec.lua, [wildcard host]: "matches port-specific routes", "prefers port-specific even
    for http default port", "prefers port-specific even for https default port". The spec's `route.*:123` (a
    rightmost wildcard with a port) is a host Kong's schema refuses (typedefs.hosts: the patterns `^%*%.`, `%.%*$`,
    `^[^*]*$`), so the gateway's check-config too; the leftmost one with a port stands for it."""
    r = kong_router([*WILD, (3, {"hosts": ["*.route.net:123"]}), (4, {"hosts": ["*.route.com:123"]})])
    assert sel(r, host="foo.route.net:123") == "r3"
    assert sel(r, host="foo.route.net:456") is None
    assert sel(r, host="foo.route.com:123") == "r4"  # port-specific is higher priority (the greater id, here)
    assert sel(r, host="foo.route.com:124") == "r1"
    for default in (80, 443):
        r = kong_router([*WILD, (3, {"hosts": [f"*.route.com:{default}"]})])
        assert sel(r, host="foo.route.com:123") == "r1"
        assert sel(r, host=f"foo.route.com:{default}") == "r3"
    with pytest.raises(ConfigError, match="invalid wildcard: must be placed at leftmost or rightmost label"):
        kong_router([(4, {"hosts": ["route.*:123"]})])


def test_a_wildcard_host_does_not_take_precedence_over_a_plain_host():
    """spec/01-unit/08-router_spec.lua, [wildcard host] "does not take precedence over a plain host"."""
    r = kong_router([(3, {"hosts": ["plain.route.com"]}), *WILD, (4, {"hosts": ["route.com"]})])
    assert [sel(r, host=h) for h in ("route.com", "route.org", "plain.route.com", "foo.route.com")] == \
        ["r4", "r2", "r3", "r1"]


def test_wildcard_and_plain_hosts_with_paths_and_methods():
    """spec/01-unit/08-router_spec.lua, [wildcard host]: "matches [wildcard host + path] even if a similar [plain host]
    exists", "matches [plain host + path] even if a matching [wildcard host] exists", "submatch_weight [wildcard host
    port] > [wildcard host]", "matches a [wildcard host + port] even if a [wildcard host] matched", "matches
    [wildcard/plain + uri + method]"; [wildcard host] + [uri regex] "matches"."""
    r = kong_router([(1, {"hosts": ["*.route.com"], "paths": ["/path1"]}),
                     (2, {"hosts": ["plain.route.com"], "paths": ["/path2"]})])
    assert sel(r, "GET", "/path1", "plain.route.com") == "r1"
    assert sel(r, "GET", "/path2", "plain.route.com") == "r2"
    # (with leftmost wildcards: Kong's schema refuses `route.*:80`)
    r = kong_router([(1, {"hosts": ["*.route.com"]}), (2, {"hosts": ["*.route.com:80", "*.com.route"]})])
    assert sel(r, host="a.route.com:80") == "r2"
    r = kong_router([(1, {"hosts": ["*.route.com"]}), (2, {"hosts": ["*.route.com:123"]}),
                     (3, {"hosts": ["*.route.com:80"]})])
    assert sel(r, host="a.route.com:123") == "r2"
    r = kong_router([*WILD, (5, {"hosts": ["*.domain.com", "example.com"], "paths": ["/path"],
                                 "methods": ["GET", "TRACE"]})])
    assert sel(r, "POST", "/path", "foo.domain.com") is None
    assert sel(r, "GET", "/path", "foo.domain.com") == "r5"
    assert sel(r, "TRACE", "/path", "example.com") == "r5"
    r = kong_router([(1, {"hosts": ["*.example.com"], "paths": ["~/users/\\d+/profile"]}),
                     (2, {"hosts": ["*.example.com"], "paths": ["/users"]})])
    assert sel(r, "GET", "/users/123/profile", "test.example.com") == "r1"
    assert sel(r, "GET", "/users", "test.example.com") == "r2"


# --- [headers] ------------------------------------------------------------------------------------------------------


def test_routes_with_more_headers_first_and_values_case_insensitive():
    """spec/01-unit/08-router_spec.lua, [headers]: "evaluates Routes with more [headers] first" (a header sent twice,
    one of its values matching), "matches values in a case-insensitive way"."""
    r = kong_router([(1, {"headers": {"version": ["v1", "v2"], "user_agent": ["foo", "bar"]}}),
                     (2, {"headers": {"version": ["v1", "v2"], "user_agent": ["foo", "bar"],
                                      "location": ["east", "west"]}})])
    assert sel(r, headers=[("version", "v1"), ("user_agent", "foo"), ("location", "north"),
                           ("location", "west")]) == "r2"
    r = kong_router([(1, {"headers": {"user_agent": ["foo", "bar"]}}), (2, {"headers": {"user_agent": ["BAZ"]}})])
    assert sel(r, headers=[("user_agent", "FOO")]) == "r1"
    assert sel(r, headers=[("user_agent", "baz")]) == "r2"


def test_header_values_match_whatever_their_case_each_time():
    """spec/01-unit/08-router_spec.lua, "[cache hit should be case sensitive]": `Quote` matches QUOTE, again (from the
    router's memory), then QuoTe."""
    r = kong_router([(1, {"paths": ["/foo"], "headers": {"test1": ["Quote"]}})])
    assert [sel(r, "GET", "/foo", headers=[("test1", v)]) for v in ("QUOTE", "QUOTE", "QuoTe")] == ["r1"] * 3


# --- empty fields, raw strings, regex escapes (transform.lua get_expression) -----------------------------------------


@pytest.mark.parametrize("empty", [[], None, "absent"])
@pytest.mark.parametrize("field", ["methods", "hosts", "headers", "paths", "snis"])
def test_an_empty_route_field_is_no_condition(field, empty):
    """spec/01-unit/08-router_spec.lua, "check empty route fields": a route GET /foo with `field` empty ({}, null or
    missing) has the expression of the route without it."""
    route: dict[str, Any] = {"methods": ["GET"], "paths": ["/foo"], "protocols": ["http", "https"]}
    if empty == "absent":
        route.pop(field, None)
    else:
        route[field] = {} if field == "headers" and empty == [] else empty
    r = kong_router([(1, route)])
    if field == "methods":
        assert sel(r, "POST", "/foo", "a.test") == "r1"
    elif field == "paths":
        assert sel(r, "GET", "/other", "a.test") == "r1"
    else:
        assert sel(r, "GET", "/foo/x", "any.test") == "r1"
        assert sel(r, "POST", "/foo", "any.test") is None


@pytest.mark.parametrize(("path", "target", "matches"), [
    ('~/\\"/*$', "/%22//", True),  # "raw string": path has '"'
    ('~/\\"/*$', "/%22/x", False),
    ('~/\\"#/*$', '/%22#/', True),  # path has '"#' (Kong routes $request_uri, a raw "#" in it)
    ('~/\\"#/*$', "/%22%23/", False),  # (%23 stays encoded: a reserved character)
    ("~/\\\\/*$", "/%5C/", True),  # "check regex with '\\'": double '\\'
    ("~/\\d+", "/123", True),  # '\\d'
    ("~/\\d+", "/d", False),
])
def test_regex_paths_with_quotes_and_backslashes(path, target, matches):
    """spec/01-unit/08-router_spec.lua, "raw string" and "check regex with '\\'": Kong writes these regexes into its
    expression as raw strings (or escaped ones when `"#` is in them): the router takes them, and they match what the
    regex says."""
    r = kong_router([(1, {"methods": ["GET"], "paths": [path]})])
    assert (sel(r, "GET", target, "a.test") == "r1") is matches


def test_a_regex_path_keeps_a_reserved_escape():
    """spec/01-unit/08-router_spec.lua, "normalization stopgap measurements" / "leave reserved characters alone in
    regex paths": `~/regex-reserved%2Fabc` matches /regex-reserved%2Fabc, not /regex-reserved/abc."""
    r = kong_router([(4, {"paths": ["~/regex-reserved%2Fabc"]})])
    assert sel(r, "GET", "/regex-reserved%2Fabc", "example.com") == "r4"
    assert sel(r, "GET", "/regex-reserved%2fabc", "example.com") == "r4"  # (normalizing upper-cases the triplet)
    assert sel(r, "GET", "/regex-reserved/abc", "example.com") is None


# --- exec() ----------------------------------------------------------------------------------------------------------


def test_exec_returns_the_matched_route():
    """spec/01-unit/08-router_spec.lua, exec() "returns matched_host + matched_uri + matched_method +
    matched_headers" (the route each request gets) and "returns no uri_captures from a [uri regex] match without
    groups"."""
    r = kong_router([(1, {"hosts": ["host.com"], "methods": ["GET"], "paths": ["/my-route"]}),
                     (2, {"hosts": ["host.com"], "paths": ["/my-route"]}),
                     (3, {"hosts": ["*.host.com"], "headers": {"location": ["my-location-1", "my-location-2"]}}),
                     (4, {"paths": ["~/users/\\d+/profile"]})])
    assert sel(r, "GET", "/my-route", "host.com") == "r1"
    assert sel(r, "GET", "/my-route/prefix/match", "host.com") == "r1"
    assert sel(r, "POST", "/my-route", "host.com") == "r2"
    assert sel(r, "GET", "/", "test.host.com", [("location", "my-location-1")]) == "r3"
    assert sel(r, "GET", "/users/123/profile", "domain.org") == "r4"
    m = r.match(b"GET", b"/users/1984/profile", b"domain.org", [])
    assert m.captures is None


# --- end to end: what reaches the upstream ---------------------------------------------------------------------------


@pytest.fixture
def http_codec() -> str:
    return "llhttp"


async def test_x_forwarded_path_is_the_path_as_sent(gateway, nursery):
    """spec/02-integration/05-proxy/02-router_spec.lua, "URI normalization": "matches against normalized URI with
    \"..\"" / "\"//\"" / "\"/./\"" / "percent-encoded characters": the route matched on the normalized path, and the
    upstream's X-Forwarded-Path is the path as the client sent it (kong/runloop/handler.lua: var.request_uri less its
    query)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    routes = [{"name": "foobar", "paths": ["/foo/bar"]}, {"name": "hello", "paths": ["/hello"]}]
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", routes)]})
    with trio.fail_after(10):
        for target in ("/foo/a/../bar", "/foo//bar", "/foo/./bar", "/h%65llo", "/foo/a/../bar?x=1"):
            reply = await request(port, "GET", target)
            assert reply.status == 200, target
            assert echo.requests[-1].target in ("/", "/?x=1"), target
            assert echo.requests[-1].header("x-forwarded-path") == target.partition("?")[0], target


async def test_the_router_memory_does_not_ignore_headers(gateway, nursery):
    """spec/02-integration/05-proxy/02-router_spec.lua, [#headers] "caching do not ignore headers (regression)"."""
    first, second = EchoBackend("first"), EchoBackend("second")
    await nursery.start(first.serve)
    await nursery.start(second.serve)
    port = await gateway({"services": [
        service("first", f"http://127.0.0.1:{first.port}",
                [{"hosts": ["example.test"], "paths": ["/test"], "headers": {"headertest": ["itsatest"]}}]),
        service("second", f"http://127.0.0.1:{second.port}", [{"hosts": ["example.test"], "paths": ["/test"]}])]})
    with trio.fail_after(10):
        for hdrs, backend in (([("headertest", "itsatest")], "first"), ([], "second"),
                              ([("headertest", "itsatest")], "first"), ([], "second")):
            reply = await request(port, "GET", "/test", host="example.test", headers=hdrs)
            assert reply.status == 200 and reply.header("x-backend") == backend, hdrs


async def test_a_remembered_match_sends_each_requests_own_path_and_host(gateway, nursery):
    """spec/01-unit/08-router_spec.lua, "[cache hit should have correct match_t.upstream_uri]" (a hosts-only
    preserve_host route: /foo then /bar) and "uses the request's Host header if an route with no host was cached"."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [
        {"name": "h", "hosts": ["example.com"], "preserve_host": True},
        {"name": "nohost", "paths": ["/nohost"], "preserve_host": True, "strip_path": False}])]})
    with trio.fail_after(10):
        for target, host in (("/foo", "example.com"), ("/bar", "example.com"), ("/nohost", "domain1.com"),
                             ("/nohost", "domain2.com")):
            assert (await request(port, "GET", target, host=host)).status == 200
            assert (echo.requests[-1].target, echo.requests[-1].header("host")) == (target, host)


async def test_a_serviceless_route_of_several_paths(gateway, nursery):
    """spec/01-unit/08-router_spec.lua, "[can create route with multiple paths and no service]": loaded, and its
    requests get Kong's 503."""
    port = await gateway({"routes": [{"name": "alone", "paths": ["/foo", "/foo/bar/baz"]}]})
    with trio.fail_after(10):
        for target in ("/foo", "/foo/bar/baz/x"):
            reply = await request(port, "GET", target)
            assert reply.status == 503 and reply.json()["message"] == "no Service found with those values"
        assert (await request(port, "GET", "/other")).status == 404


async def test_requests_without_a_host_header(gateway, nursery):
    """spec/02-integration/05-proxy/02-router_spec.lua, "requests without Host header": "HTTP/1.0 routes normally"
    (to the GET route: it has no hosts), "HTTP/1.1 is rejected by NGINX" (400, Kong's "Bad request" page)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}",
                                               [{"methods": ["GET"], "strip_path": False}])]})
    with trio.fail_after(10):
        data, _ = await raw_exchange(port, b"GET /get HTTP/1.0\r\nKong-Debug: 1\r\n\r\n")
        assert data.split(b" ", 2)[1] == b"200"
        assert echo.requests[-1].target == "/get"
        data, _ = await raw_exchange(port, b"GET /get HTTP/1.1\r\nKong-Debug: 1\r\n\r\n")
        assert data.split(b" ", 2)[1] == b"400"
        assert b"Bad request" in data
        assert len(echo.requests) == 1


async def test_routes_with_a_null_regex_priority(gateway, nursery):
    """spec/02-integration/05-proxy/02-router_spec.lua, "router rebuilds" / "when Routes have 'regex_priority = nil'"
    (Kong issue #4254)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", [
        {"methods": ["GET"], "regex_priority": 1}, {"methods": ["POST", "PUT"], "regex_priority": None}])]})
    with trio.fail_after(10):
        assert (await request(port, "GET", "/")).status == 200
        assert (await request(port, "POST", "/")).status == 200


async def test_https_requests_are_routed_by_the_specs_snis(gateway, nursery):
    """spec/02-integration/05-proxy/02-router_spec.lua, "[snis] for HTTPs connections": "matches a route based on its
    'snis' attribute", "... its leftmost wildcard sni", "... its rightmost wildcard sni"; and "responds 503 if no
    service found" over https (a serviceless route of protocols http and https)."""
    from backends import free_port
    from tls_helpers import Pki, https_get

    pki = Pki()
    names = ["www.example.org", "example.org", "a.foo.test", "a.b.foo.test", "bar.x", "bar.y.z"]
    backends = {}
    for name in ("www", "apex", "wild", "bar"):
        backends[name] = EchoBackend(name)
        await nursery.start(backends[name].serve)
    cert, key = pki.issue(*names)
    tls_port = free_port()
    https = {"protocols": ["https"]}
    doc = {"services": [
        service("www", f"http://127.0.0.1:{backends['www'].port}", [{**https, "snis": ["www.example.org"]}]),
        service("apex", f"http://127.0.0.1:{backends['apex'].port}", [{**https, "snis": ["example.org"]}]),
        service("wild", f"http://127.0.0.1:{backends['wild'].port}", [{**https, "snis": ["*.foo.test"]}]),
        service("bar", f"http://127.0.0.1:{backends['bar'].port}", [{**https, "snis": ["bar.*"]}])],
        "routes": [{"name": "serviceless", "protocols": ["http", "https"],
                    "hosts": ["serviceless-route-http.test"]}],
        "certificates": [{"cert": cert, "key": key, "snis": names}]}
    await gateway(doc, listen=[f"127.0.0.1:{tls_port} ssl"])
    ctx = pki.client_context()
    expected = {"www.example.org": "www", "example.org": "apex", "a.foo.test": "wild", "a.b.foo.test": "wild",
                "bar.x": "bar", "bar.y.z": "bar"}
    with trio.fail_after(10):
        for sni, name in expected.items():
            for path in ("/status/200", "/status/201"):
                status, _, body, _ = await trio.to_thread.run_sync(lambda s=sni, p=path: https_get(tls_port, ctx, s, p))
                assert (status, json.loads(body)["name"]) == (200, name), (sni, path)
        status, _, body, _ = await trio.to_thread.run_sync(
            lambda: https_get(tls_port, ctx, "example.org", "/", host="serviceless-route-http.test"))
        assert status == 503 and json.loads(body)["message"] == "no Service found with those values"


# --- findings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "route"), [
    ("api.test:0x50", "plain"),  # tonumber("0x50") == 80
    ("api.test:1e2", "plain"),  # 100
    ("api.test:-1", "plain"),
    ("api.test:80.0", "plain"),
    ("p.test:0x141", "port"),  # 321: net.dst.port is the Host header's port, as a number
    ("p.test:321.0", "port"),
    ("p.test:+321", "port"),
])
def test_the_host_headers_port_is_what_luas_tonumber_reads(host, route):
    """kong/router/atc.lua:370 `split_host_port(req_host)` = kong/router/transform.lua:72-98: the Host header is cut
    at its first ":" whenever `tonumber(key:sub(p + 1))` is a number, and LuaJIT's tonumber (src/lj_strscan.c:383-396,
    lib_base.c:269 tonumber) reads a sign, hex (0x..), a decimal point and an exponent, not only ASCII digits; the
    port then goes into net.dst.port as an Int (atc-router lib/resty/router/context.lua:59-61, int_ = value).
    nginx takes such a Host (ngx_http_validate_host allows letters, digits, '.', '-', '+' after the ':'). So Kong
    routes `Host: api.test:0x50` by the host api.test; the gateway compares `api.test:0x50` whole (no route)."""
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [
        {"name": "plain", "hosts": ["api.test"]}, {"name": "port", "hosts": ["p.test:321"]}]}]}
    r = compile_config(parse_config(json.dumps(doc))).router
    m = r.match(b"GET", b"/", host.encode(), [], None, 8000)
    assert m is not None and m.payload.name == route


async def test_a_host_header_with_a_hex_port_reaches_its_route(gateway, nursery):
    """The same end to end: `Host: api.test:0x50` is the route host api.test for Kong (200 from the upstream, the Host
    header preserved as sent with preserve_host); the gateway answers 404."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}",
                                               [{"hosts": ["api.test"], "preserve_host": True}])]})
    with trio.fail_after(10):
        reply = await request(port, "GET", "/x", host="api.test:0x50")
    assert reply.status == 200
    assert echo.requests[-1].header("host") == "api.test:0x50"
