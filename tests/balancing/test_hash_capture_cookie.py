"""Consistent hashing on `uri_capture` and on `cookie`, and the hash keys of `header` and `query_arg`, as Kong's
get_value_to_hash (kong/runloop/balancer/init.lua) takes them; the cookie as Kong's balancer.set_cookie sets it.

The first part runs the gateway in-process (see conftest.py) over echo backends; the second calls the hashing code
directly.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from backends import EchoBackend, request, service, upstream

from gateway.pipeline.hashing import balancer_key, drop_new_cookie
from gateway.routing import Router, RouteSpec

TIMEOUT = 10
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


async def cluster(nursery: trio.Nursery, gateway: Any, count: int, routes: list[dict[str, Any]] | None = None,
                  ports: list[int] | None = None, **up_fields: Any) -> tuple[list[EchoBackend], int]:
    backends = []
    for i in range(count):
        backend = EchoBackend(f"b{i}")
        await nursery.start(backend.serve)
        backends.append(backend)
    port = await gateway({"services": [service("svc", "http://cluster", routes)],
                          "upstreams": [upstream("cluster", (ports or []) + [b.port for b in backends],
                                                 **up_fields)]})
    return backends, port


async def names_by_key(port: int, requests: list[tuple[str, str, list[tuple[str, str]]]]) -> dict[str, set[str]]:
    """key -> the backends that answered the requests (target, headers) made for that key."""
    seen: dict[str, set[str]] = {}
    with trio.fail_after(TIMEOUT):
        for key, target, headers in requests:
            reply = await request(port, "GET", target, headers=headers)
            assert reply.status == 200, reply.body
            seen.setdefault(key, set()).add(reply.json()["name"])
    return seen


def set_cookies(reply: Any) -> list[str]:
    return [v for k, v in reply.headers if k == "set-cookie"]


# --- uri_capture ----------------------------------------------------------------------------------------------------

CAPTURE_ROUTES = [{"paths": ["~/users/(?<uid>[^/]+)(/(?<tab>[a-z]+))?"]}, {"paths": ["~/plain/\\d+"]},
                  {"paths": ["/prefix"]}]


async def test_uri_capture_keeps_a_capture_value_on_one_target_and_spreads_values(nursery, gateway):
    _, port = await cluster(nursery, gateway, 4, CAPTURE_ROUTES, algorithm="consistent-hashing",
                            hash_on="uri_capture", hash_on_uri_capture="uid")
    # the rest of the path and the query differ; only the capture is the key
    plan = [(f"u{n}", f"/users/u{n}{rest}", []) for n in range(24) for rest in ("", "/posts", "/likes?page=2")]
    seen = await names_by_key(port, plan)
    assert all(len(names) == 1 for names in seen.values()), seen
    assert len(set().union(*seen.values())) >= 3  # 24 values over 4 targets: a fixed hash, and no single bucket


async def test_uri_capture_falls_back_when_the_route_is_no_regex_or_lacks_the_group(nursery, gateway):
    _, port = await cluster(nursery, gateway, 4, CAPTURE_ROUTES, algorithm="consistent-hashing",
                            hash_on="uri_capture", hash_on_uri_capture="tab", hash_fallback="header",
                            hash_fallback_header="x-key")
    plan = []
    for n in range(12):
        key = [("x-key", f"k{n}")]
        plan += [(f"prefix k{n}", f"/prefix/{i}", key) for i in range(3)]  # a prefix route: no captures
        plan += [(f"plain k{n}", f"/plain/{i}", key) for i in range(3)]  # a regex without the group
        plan += [(f"absent k{n}", f"/users/{i}", key) for i in range(3)]  # the group took no part in the match
    seen = await names_by_key(port, plan)
    assert all(len(names) == 1 for names in seen.values()), seen
    for n in range(12):  # the fallback key alone decides: the same target whatever the route
        assert seen[f"prefix k{n}"] == seen[f"plain k{n}"] == seen[f"absent k{n}"]
    # the capture wins over the fallback once the group takes part
    tabs = await names_by_key(port, [(t, f"/users/{i}/{t}", [("x-key", f"k{i}")]) for t in ("ab", "cd", "ef")
                                     for i in range(4)])
    assert all(len(names) == 1 for names in tabs.values()), tabs


async def test_uri_capture_without_a_fallback_hashes_the_empty_key_as_kong_does(nursery, gateway):
    """Kong's `get_value_to_hash(...) or ""`: every request without a key goes to the one target "" hashes to."""
    _, port = await cluster(nursery, gateway, 3, CAPTURE_ROUTES, algorithm="consistent-hashing",
                            hash_on="uri_capture", hash_on_uri_capture="uid")
    seen = await names_by_key(port, [("prefix", "/prefix", []) for _ in range(6)])
    assert len(seen["prefix"]) == 1


# --- cookie ---------------------------------------------------------------------------------------------------------

async def test_cookie_is_created_and_sticks(nursery, gateway):
    _, port = await cluster(nursery, gateway, 4, algorithm="consistent-hashing", hash_on="cookie",
                            hash_on_cookie="sticky")
    with trio.fail_after(TIMEOUT):
        firsts = []
        for _ in range(12):
            first = await request(port, "GET", "/a")
            assert first.status == 200
            [cookie] = set_cookies(first)
            m = re.fullmatch(rf"sticky=({UUID}); Path=/; Same-Site=Lax; HttpOnly", cookie)
            assert m, cookie
            firsts.append((m.group(1), first.json()["name"]))
        assert len({value for value, _ in firsts}) == 12  # a new value each time
        for value, name in firsts:
            for target in ("/a", "/b?x=1", "/c/d"):
                again = await request(port, "GET", target, headers=[("cookie", f"other=1; sticky={value}")])
                assert again.json()["name"] == name  # where the first request went
                assert set_cookies(again) == []  # the client has it: nothing to set
                sent = [v for k, v in again.json()["headers"] if k == "cookie"]
                assert sent == [f"other=1; sticky={value}"]  # and it reaches the upstream as sent
    assert len({name for _, name in firsts}) >= 2  # 12 random values over 4 targets


async def test_a_given_cookie_value_sticks(nursery, gateway):
    _, port = await cluster(nursery, gateway, 4, algorithm="consistent-hashing", hash_on="cookie",
                            hash_on_cookie="sticky")
    plan = [(f"v{n}", "/", [("cookie", f"sticky=v{n}")]) for n in range(16) for _ in range(3)]
    plan += [(f"v{n}", "/", [("cookie", "a=b"), ("cookie", f"STICKY=v{n}; c=d")]) for n in range(16)]
    seen = await names_by_key(port, plan)
    assert all(len(names) == 1 for names in seen.values()), seen
    assert len(set().union(*seen.values())) >= 2


async def test_cookie_path_and_fallback_cookie(nursery, gateway):
    _, port = await cluster(nursery, gateway, 2, algorithm="consistent-hashing", hash_on="header",
                            hash_on_header="x-user", hash_fallback="cookie", hash_on_cookie="sticky",
                            hash_on_cookie_path="/api")
    with trio.fail_after(TIMEOUT):
        keyed = await request(port, "GET", "/", headers=[("x-user", "alice")])
        assert set_cookies(keyed) == []  # hash_on found its key
        fresh = await request(port, "GET", "/")
    [cookie] = set_cookies(fresh)
    assert re.fullmatch(rf"sticky={UUID}; Path=/api; Same-Site=Lax; HttpOnly", cookie), cookie


async def test_a_new_cookie_is_set_once_and_its_key_stays_on_its_target_even_a_dead_one(nursery, gateway):
    """Kong's consistent_hashing getPeer retries from the key's own point (handle.hashValue), so a key whose target
    refuses connections is answered 502 after its retries, again with the same cookie (no health checks here to
    take the target out); a key on the live target gets 200. Either way the generated cookie is set once."""
    with trio.socket.socket() as closed:  # a port nothing listens on: the tries there fail at connect
        await closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    _, port = await cluster(nursery, gateway, 1, ports=[dead], algorithm="consistent-hashing", hash_on="cookie",
                            hash_on_cookie="sticky")
    with trio.fail_after(TIMEOUT):
        for _ in range(6):
            reply = await request(port, "GET", "/")
            assert reply.status in (200, 502)
            assert reply.status == 502 or reply.json()["name"] == "b0"
            [cookie] = set_cookies(reply)  # one cookie, whichever target the key is on
            again = await request(port, "GET", "/", headers=[("cookie", cookie.split(";")[0])])
            assert again.status == reply.status and set_cookies(again) == []


async def test_no_cookie_when_no_target_can_be_picked(nursery, gateway):
    port = await gateway({"services": [service("svc", "http://idle")],
                          "upstreams": [upstream("idle", [1, 2], [0, 0], algorithm="consistent-hashing",
                                                 hash_on="cookie", hash_on_cookie="sticky")]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/")
    assert reply.status == 503
    assert set_cookies(reply) == []  # Kong's balancer fails before the request counts as proxied


async def test_no_fallback_cookie_when_no_target_can_be_picked(nursery, gateway):
    """hash_fallback: cookie makes a new cookie too, and Kong's 503 from the access phase (handler.lua 1451-1453,
    before KONG_PROXIED) sets neither it nor hash_on's."""
    port = await gateway({"services": [service("svc", "http://idle")],
                          "upstreams": [upstream("idle", [1, 2], [0, 0], algorithm="consistent-hashing",
                                                 hash_on="header", hash_on_header="x-key", hash_fallback="cookie",
                                                 hash_on_cookie="sticky")]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/")  # no x-key, no sticky cookie: the fallback makes one
    assert reply.status == 503
    assert reply.json()["message"] == "failure to get a peer from the ring-balancer"
    assert set_cookies(reply) == []


# --- header -------------------------------------------------------------------------------------------------------

async def test_repeated_header_is_hashed_joined(nursery, gateway):
    _, port = await cluster(nursery, gateway, 4, algorithm="consistent-hashing", hash_on="header",
                            hash_on_header="x-key")
    plan = []
    for n in range(12):
        plan += [(f"k{n}", "/", [("x-key", f"a{n}"), ("x-key", f"b{n}")]), (f"k{n}", "/", [("x-key", f"a{n}, b{n}")])]
    seen = await names_by_key(port, plan)
    assert all(len(names) == 1 for names in seen.values()), seen


async def test_header_names_match_with_dashes_and_underscores_the_same(nursery, gateway):
    """Kong hashes on var["http_x_key"] for hash_on_header X_Key, and nginx (underscores_in_headers on) reads both an
    X-Key and an x_key field as it: the same key goes to the same target whichever spelling carries it."""
    _, port = await cluster(nursery, gateway, 4, algorithm="consistent-hashing", hash_on="header",
                            hash_on_header="X_Key")
    plan = []
    for n in range(12):
        plan += [(f"k{n}", "/", [("X-Key", f"k{n}")]), (f"k{n}", "/", [("x_key", f"k{n}")])]
    seen = await names_by_key(port, plan)
    assert all(len(names) == 1 for names in seen.values()), seen
    assert len(set().union(*seen.values())) >= 2  # the keys spread: not all hashed as ""


# --- the keys, directly --------------------------------------------------------------------------------------------

class FakeExchange:
    def __init__(self, headers: list[tuple[bytes, bytes]] | None = None, client_ip: str = "10.0.0.1",
                 target: bytes = b"/") -> None:
        self.request = SimpleNamespace(headers=headers or [], target=target)
        self.client_ip = client_ip
        self.consumer = None
        self.response_lines = b""

    def add_response_lines(self, lines: bytes) -> None:
        self.response_lines += lines


def group(hash_on: tuple[str, bytes], fallback: tuple[str, bytes] = ("none", b""), cookie_path: str = "/") -> Any:
    return SimpleNamespace(algorithm="consistent-hashing", hash_on=hash_on, hash_fallback=fallback,
                           cookie_path=cookie_path)


def match_for(target: bytes, *paths: str) -> Any:
    router = Router([RouteSpec("r", paths=list(paths))])
    return router.match(b"GET", target, b"h", [])


def test_uri_capture_key_and_fallback():
    m = match_for(b"/u/42/x?q=1", "~/u/(?<id>\\d+)/(?<a>[a-z])?")
    assert balancer_key(group(("uri_capture", b"id")), FakeExchange(), m) == b"42"
    assert balancer_key(group(("uri_capture", b"nope"), ("ip", b"")), FakeExchange(), m) == b"10.0.0.1"
    empty = match_for(b"/u/42/", "~/u/(?<id>\\d+)/(?<a>[a-z]?)")
    assert balancer_key(group(("uri_capture", b"a"), ("ip", b"")), FakeExchange(), empty) == b""  # Lua's "" is true
    prefix = match_for(b"/u/42", "/u")
    assert balancer_key(group(("uri_capture", b"id"), ("path", b"")), FakeExchange(target=b"/u/42"), prefix) == \
        b"/u/42"  # the request's path (nginx's $uri), not the stripped upstream path


def test_header_key_joins_repeats_and_keeps_empty_values():
    m = match_for(b"/", "/")
    ex = FakeExchange([(b"x-k", b"a"), (b"other", b"z"), (b"x-k", b"b")])
    assert balancer_key(group(("header", b"x-k")), ex, m) == b"a, b"
    assert balancer_key(group(("header", b"x-k"), ("ip", b"")), FakeExchange([(b"x-k", b"")]), m) == b""
    assert balancer_key(group(("header", b"x-k"), ("ip", b"")), FakeExchange(), m) == b"10.0.0.1"


def test_header_key_reads_dashes_and_underscores_as_one_name():
    """nginx's $http_<name> (ngx_http_variable_unknown_header) lower-cases a field's name and reads "-" as "_", and
    Kong asks for http_ .. replace_dashes_lower(hash_on_header): every field so named counts, in request order."""
    m = match_for(b"/", "/")
    ex = FakeExchange([(b"x_k", b"a"), (b"other", b"z"), (b"x-k", b"b")])  # the codec lower-cases names
    assert balancer_key(group(("header", b"x-k")), ex, m) == b"a, b"
    assert balancer_key(group(("header", b"x_k")), ex, m) == b"a, b"
    assert balancer_key(group(("header", b"x-k-y")), FakeExchange([(b"x_k-y", b"v")]), m) == b"v"
    assert balancer_key(group(("header", b"x_k"), ("ip", b"")), FakeExchange([(b"xk", b"v")]), m) == b"10.0.0.1"


def test_header_key_of_a_name_nginx_defines_reads_only_the_dashed_field():
    """$http_user_agent, $http_x_forwarded_for, $http_cookie, ... are nginx's own variables over headers_in, which a
    field spelled with "_" never joins: hash_on_header user_agent reads User-Agent, not User_Agent."""
    m = match_for(b"/", "/")
    ex = FakeExchange([(b"user_agent", b"u1"), (b"user-agent", b"u2"), (b"x_forwarded_for", b"f1"),
                       (b"cookie", b"a=1"), (b"cookie", b"b=2")])
    assert balancer_key(group(("header", b"user_agent")), ex, m) == b"u2"
    assert balancer_key(group(("header", b"x-forwarded-for"), ("ip", b"")), ex, m) == b"10.0.0.1"
    assert balancer_key(group(("header", b"cookie")), ex, m) == b"a=1; b=2"


def test_query_arg_key_as_openresty_reads_it():
    g = group(("query_arg", b"k"), ("ip", b""))
    ex = FakeExchange()
    assert balancer_key(g, ex, match_for(b"/?k=b&x=1&k=a", "/")) == b"a,b"  # sorted, joined
    assert balancer_key(g, ex, match_for(b"/?k", "/")) == b"true"  # no "=": true
    assert balancer_key(g, ex, match_for(b"/?k=", "/")) == b""
    assert balancer_key(g, ex, match_for(b"/?k=a+b%2C", "/")) == b"a b,"
    assert balancer_key(g, ex, match_for(b"/?kk=1", "/")) == b"10.0.0.1"
    # Kong's spec (03-consistent-hashing_spec.lua): mixed and repeated arguments
    foo = group(("query_arg", b"foo"))
    assert balancer_key(foo, ex, match_for(b"/?foo=s&foo&foo=1&foo=", "/")) == b",1,s,true"
    assert balancer_key(foo, ex, match_for(b"/?foo&foo&", "/")) == b"true,true"
    assert balancer_key(foo, ex, match_for(b"/?foo=b&foo=a&foo=c", "/")) == b"a,b,c"
    odd = group(("query_arg", b"a&b=c d"))  # an escaped name
    assert balancer_key(odd, ex, match_for(b"/?a%26b%3Dc%20d=1", "/")) == b"1"


def test_query_arg_limit_counts_named_arguments_not_empty_pieces():
    """Kong's get_query_arg (kong/runloop/balancer/init.lua:62-99) reads ngx.req.get_uri_args(100): lua-nginx-module
    v0.10.28 src/ngx_http_lua_args.c ngx_http_lua_ffi_req_get_uri_args fills an entry only for a piece with a name
    (`if (out[i].key.len)`, `if (dst - q)`) and stops at the 100th entry, so empty pieces ("&&") and "=x" do not use
    up the 100: in `a=1&` x 99 + `&k=v`, k is the 100th named argument and the key is "v"."""
    g = group(("query_arg", b"k"))
    assert balancer_key(g, FakeExchange(), match_for(b"/?" + b"a=1&" * 99 + b"&k=v", "/")) == b"v"
    assert balancer_key(g, FakeExchange(), match_for(b"/?" + b"a=1&" * 99 + b"=x&k=v", "/")) == b"v"
    assert balancer_key(g, FakeExchange(), match_for(b"/?" + b"a=1&" * 100 + b"k=v", "/")) == b""  # the 101st


def test_query_arg_after_many_empty_pieces_is_found():
    """Same source: 100 leading "&" fill no entry, so `k=v` after them is the first argument and the key is "v"."""
    g = group(("query_arg", b"k"))
    assert balancer_key(g, FakeExchange(), match_for(b"/?" + b"&" * 100 + b"k=v", "/")) == b"v"


def test_uri_capture_as_kong_spec_routes_it():
    m = match_for(b"/my-namespace/123?a=1&b=2", "~/(?<namespace>[^/]+)/(?<id>[0-9]+)/?")
    assert balancer_key(group(("query_arg", b"hashme"), ("uri_capture", b"namespace")), FakeExchange(), m) \
        == b"my-namespace"
    assert balancer_key(group(("uri_capture", b"id")), FakeExchange(), m) == b"123"


def test_cookie_key_reads_the_cookie_or_makes_one():
    m = match_for(b"/", "/")
    g = group(("cookie", b"sticky"), cookie_path="/app")
    ex = FakeExchange([(b"cookie", b"a=1;  Sticky=v1; sticky=v2")])
    assert balancer_key(g, ex, m) == b"v1"  # nginx's $cookie_: the first, its name compared ignoring case
    assert ex.response_lines == b""
    empty = FakeExchange([(b"cookie", b"sticky=")])
    assert balancer_key(g, empty, m) == b"" and empty.response_lines == b""  # present, empty: still the key
    ex = FakeExchange([(b"cookie", b"other=1")])
    value = balancer_key(g, ex, m)
    assert value is not None and re.fullmatch(UUID.encode(), value)
    assert ex.response_lines == b"Set-Cookie: sticky=%s; Path=/app; Same-Site=Lax; HttpOnly\r\n" % value
    ex.response_lines = b"X-Other: 1\r\n" + ex.response_lines
    drop_new_cookie(g, ex)
    assert ex.response_lines == b"X-Other: 1\r\n"


def test_cookie_key_is_found_after_a_comma_and_no_new_cookie_is_set():
    """kong/runloop/balancer/init.lua:144 reads the key as `var["cookie_" .. upstream.hash_on_cookie]` and sets a new
    cookie only `if not identifier` (line 148). Kong 3.x bundles OpenResty 1.27.1 (.requirements), whose nginx
    evaluates $cookie_NAME with ngx_http_parse_multi_header_lines (release-1.27.1 src/http/ngx_http_variables.c:1081),
    which passes over another cookie up to the next ';' OR ',' (src/http/ngx_http_parse.c, its `skip:` loop). So for
    `Cookie: other=1, sticky=abc` Kong hashes "abc" and sets no cookie (the gateway split on ';' alone, as nginx
    1.29.6's ngx_http_parse_cookie_lines, and issued a new cookie to every such client)."""
    ex = FakeExchange([(b"cookie", b"other=1, sticky=abc")])
    assert balancer_key(group(("cookie", b"sticky")), ex, match_for(b"/", "/")) == b"abc"
    assert ex.response_lines == b""


@pytest.mark.parametrize(("cookie", "key"), [
    (b"sticky=abc, other=1", b"abc, other=1"),  # the value runs to the next ';' only
    (b"stickyx=1, sticky=2", b"2"),  # a longer name is another cookie
    (b"sticky;sticky=abc", None),  # the character after the name is consumed before the skip: a new key
], ids=["comma-in-value", "longer-name", "no-equals-sign"])
def test_cookie_key_is_read_as_nginx_1_27_reads_a_cookie(cookie, key):
    """The rest of ngx_http_parse_multi_header_lines (nginx release-1.27.1 src/http/ngx_http_parse.c): the name is
    compared with ngx_strncasecmp at the start of each pair, then spaces, then `*start++ != '='` (a pair whose name is
    followed by something else loses that character before skipping to the next ';' or ','), spaces, and the value
    up to the next ';'."""
    ex = FakeExchange([(b"cookie", cookie)])
    value = balancer_key(group(("cookie", b"sticky")), ex, match_for(b"/", "/"))
    found = value if ex.response_lines == b"" else None  # (a new cookie set: nginx found none)
    assert found == key


def test_drop_new_cookie_drops_the_fallback_cookie():
    """With hash_fallback: cookie the new cookie is named by hash_on_cookie, not by hash_on's header: a 503 with no
    target drops that line and keeps the others."""
    m = match_for(b"/", "/")
    g = group(("header", b"x-key"), ("cookie", b"sess"))
    ex = FakeExchange()
    value = balancer_key(g, ex, m)
    assert value is not None and re.fullmatch(UUID.encode(), value)
    assert ex.response_lines.startswith(b"Set-Cookie: sess=%s;" % value)
    ex.response_lines = b"X-Other: 1\r\n" + ex.response_lines
    drop_new_cookie(g, ex)
    assert ex.response_lines == b"X-Other: 1\r\n"


# --- path -----------------------------------------------------------------------------------------------------------

def test_hash_on_path_is_the_normalized_request_path_not_the_stripped_upstream_path():
    """Kong hashes nginx's $uri: /a/x and /b/x are two keys even when both routes strip to the upstream path /x."""
    match = SimpleNamespace(path=b"/x", query=b"", captures=None)
    keys = [balancer_key(group(("path", b"")), FakeExchange(target=target), match)  # type: ignore[arg-type]
            for target in (b"/a/x?q=1", b"/b//x", b"/a/./x")]
    assert keys == [b"/a/x", b"/b/x", b"/a/x"]


def test_hash_on_path_is_nginx_uri_so_an_escape_is_the_same_key_as_its_character():
    """Kong's get_value_to_hash takes var.uri for hash_on path (kong/runloop/balancer/init.lua): nginx decodes
    every %XX in it, so /users/a%40b goes where /users/a@b goes."""
    group: Any = SimpleNamespace(algorithm="consistent-hashing", hash_on=("path", b""), hash_fallback=("none", b""),
                                 cookie_path="/")
    router = Router([RouteSpec("r", paths=["/"])])

    def key(target: bytes) -> bytes | None:
        ex: Any = SimpleNamespace(request=SimpleNamespace(headers=[], target=target), client_ip="10.0.0.1",
                                  consumer=None)
        return balancer_key(group, ex, router.match(b"GET", target, b"h", []))

    assert key(b"/users/a%40b?x=1") == key(b"/users/a@b") == b"/users/a@b"
