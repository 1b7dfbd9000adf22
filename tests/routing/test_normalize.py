"""Request paths normalized as Kong's router normalizes them (kong/tools/uri.lua normalize, merge_slashes on)
before matching, and escaped again for the upstream: a route's plugins cannot be stepped around by spelling its
path otherwise."""

from __future__ import annotations

import pytest
import trio
from backends import EchoBackend, request, service

from gateway.routing import Router, RouteSpec
from gateway.routing.normalize import escape_path, nginx_uri, normalize_path


@pytest.mark.parametrize(("raw", "normal"), [
    ("/t/Abc%20123%C3%B8%2f/parent/..//test/./", "/t/Abc 123ø%2F/test/"),  # Kong's PDK example (get_path)
    ("/fo%6F", "/foo"),  # an unreserved character's triplet is decoded (Kong's router docs)
    ("/foo%3a", "/foo%3A"),  # a reserved one's is upper-cased
    ("/foo/./bar/../baz", "/foo/baz"),
    ("//admin", "/admin"),
    ("/a/b/../../..", "/"),
    ("/%2e%2e/x", "/x"),  # decoded first, then the dot segment goes
    ("/%252e", "/%252e"),  # "%" is reserved: no double decoding
    ("/a%2F..", "/a%2F.."),  # an encoded slash ends no segment
    ("/a/..b", "/a/..b"),
    ("/a/", "/a/"),
    ("/", "/"),
])
def test_a_path_is_normalized_as_kong_does(raw, normal):
    assert normalize_path(raw.encode()) == normal.encode()


def test_a_path_with_nothing_to_normalize_is_returned_as_it_is():
    path = b"/api/v1/items"
    assert normalize_path(path) is path


def test_escaping_puts_back_what_normalizing_decoded_and_keeps_reserved_characters():
    assert escape_path("/t/Abc 123ø%2F/test/".encode()) == b"/t/Abc%20123%C3%B8%2F/test/"
    assert escape_path(b"/a|b\"c<d>") == b"/a%7Cb%22c%3Cd%3E"
    assert escape_path(b"/!$&'()*+,;=:@[]~-_.%41") == b"/!$&'()*+,;=:@[]~-_.%41"


@pytest.mark.parametrize("path", ["/%61dmin", "/public/../admin", "//admin", "/./admin", "/admin/", "/%2e/admin"])
def test_every_spelling_of_a_path_reaches_its_route(path):
    router = Router([RouteSpec("admin", paths=["/admin"]), RouteSpec("public", paths=["/"])])
    match = router.match(b"GET", path.encode(), None, [])
    assert match is not None and match.payload == "admin"


def test_a_regex_route_matches_the_normalized_path():
    router = Router([RouteSpec("users", paths=[r"~/users/\d+$"], strip_path=False)])
    match = router.match(b"GET", b"/users/%31%32", None, [])
    assert match is not None and match.path == b"/users/12"


def test_a_route_path_in_the_config_is_normalized_too():
    router = Router([RouteSpec("r", paths=["/caf%C3%A9"], strip_path=False)])
    for spelling in ("/caf%c3%a9/menu", "/café/menu"):
        match = router.match(b"GET", spelling.encode(), None, [])
        assert match is not None and match.payload == "r", spelling
        assert match.path == b"/caf%C3%A9/menu"  # as Kong sends it: escaped, upper-case


async def test_a_route_scoped_plugin_cannot_be_stepped_around(nursery, gateway):
    """request-termination on /admin (403) and a catch-all route: every spelling of /admin gets the 403; the
    upstream only ever sees what the catch-all route allows, normalized."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    routes = [{"name": "admin", "paths": ["/admin"],
               "plugins": [{"name": "request-termination", "config": {"status_code": 403}}]},
              {"name": "public", "paths": ["/"], "strip_path": False}]
    port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}", routes)]})
    with trio.fail_after(10):
        for path in ("/%61dmin", "/public/../admin", "//admin", "/public/%2e%2e/admin/x"):
            assert (await request(port, "GET", path)).status == 403, path
        reply = await request(port, "GET", "/public/a%20b/../c%2fd?q=%61")
    assert reply.status == 200
    assert [seen.target for seen in echo.requests] == ["/public/c%2Fd?q=%61"]  # (the query is left as it is)


@pytest.mark.parametrize(("path", "uri"), [
    (b"/users/a%40b", b"/users/a@b"),  # a reserved character decoded, unlike Kong's normalize
    (b"/v1/x%3Ay%2Cz", b"/v1/x:y,z"),
    (b"/a%2Fb", b"/a/b"),  # a decoded slash separates segments
    (b"/a/%2E%2E/b", b"/b"),  # a decoded dot segment is removed
    (b"/a//b/./c", b"/a/b/c"),
    (b"/%2541", b"/%41"),  # decoded once
    (b"/plain", b"/plain"),
])
def test_nginx_uri_decodes_every_escape_once_then_resolves_segments(path, uri):
    """Kong's hash_on path hashes nginx's $uri (ngx_http_parse_complex_uri), not its router's normalization: so
    `/users/a%40b` and `/users/a@b` are one key, as through Kong."""
    assert nginx_uri(path) == uri
