"""Request paths normalized as Kong's router normalizes them (kong/tools/uri.lua normalize, merge_slashes on)
before matching, and escaped again for the upstream: a route's plugins cannot be stepped around by spelling its
path otherwise."""

from __future__ import annotations

import pytest
import trio
from backends import EchoBackend, request, service

from gateway.routing import Router, RouteSpec
from gateway.routing.normalize import escape_path, nginx_refusal, nginx_uri, normalize_path


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


@pytest.mark.parametrize(("path", "uri"), [(b"/a#f", b"/a"), (b"/a/b#/../x", b"/a/b"), (b"/a/.#f", b"/a/"),
                                            (b"/a%23b", b"/a#b")])
def test_nginx_uri_ends_at_a_fragment(path, uri):
    """nginx release-1.27.1 src/http/ngx_http_parse.c:1339-1340 (ngx_http_parse_complex_uri, sw_usual: a `#` is
    `goto done`; sw_dot :1429-1431 drops the `.` first), while a `%23` decodes to a `#` kept in $uri (:1520-1524):
    Kong's hash_on path (var.uri) of `/a#f?x=1`, which Kong routes on as `/a#f`, is `/a`."""
    assert nginx_uri(path) == uri


@pytest.mark.parametrize("target", [
    b"/..", b"/../etc/passwd", b"/a/../../x", b"//..", b"/./..", b"/a/b/../../..",
    b"/%2e%2e/x", b"/.%2E", b"/a%2F..%2F..%2Fx",  # decoded, then read as if sent raw
    b"/..?x", b"/..#x",  # the ".." segment ends at "?" or "#" too
])
def test_nginx_refuses_a_dot_dot_segment_above_the_root(target):
    """nginx 1.27.1 src/http/ngx_http_parse.c:1444-1463 (ngx_http_parse_complex_uri, sw_dot_dot then "/", "?" or
    "#": `u -= 4; for (;;) { if (u < r->uri.data) return NGX_HTTP_PARSE_INVALID_REQUEST;`) and :1563-1568 (a final
    ".."); a decoded octet is read again in the state before its "%" (sw_quoted_second: `state = quoted_state`)."""
    assert nginx_refusal(target) is not None


@pytest.mark.parametrize("target", [b"/a%zz", b"/a%2", b"/a%", b"/a%%41", b"/a%2?x", b"/%25%g1", b"/%?x"])
def test_nginx_refuses_a_percent_without_two_hex_digits_in_the_path(target):
    """ngx_http_parse.c:1496-1514 and :1552 (sw_quoted, sw_quoted_second: a byte that is no hex digit, `?` and `#`
    too, `return NGX_HTTP_PARSE_INVALID_REQUEST;`) and :1556-1557 (the path ends after a "%")."""
    assert nginx_refusal(target) is not None


def test_nginx_refuses_an_encoded_nul_in_the_path():
    """ngx_http_parse.c:1526-1527 (sw_quoted_second: `} else if (ch == '\\0') { return
    NGX_HTTP_PARSE_INVALID_REQUEST; }`); "%2500" is "%" then "00" (a decoded "%" is not decoded again)."""
    assert nginx_refusal(b"/file.php%00.jpg") is not None
    assert nginx_refusal(b"/a%2500") is None


@pytest.mark.parametrize("target", [
    b"/a/../x", b"/a/./../b", b"/a/%2e%2e/b", b"/..a", b"/a..", b"/...", b"/a%25", b"/%2e",
    b"/x?q=%zz&p=/../..", b"/x?%00", b"/x#/../..", b"/x#%zz",  # the query and a fragment are not parsed
])
def test_nginx_takes_a_path_that_stays_under_the_root_with_whole_escapes(target):
    """ngx_http_parse_complex_uri parses the path up to the first "?" (`goto args`, which looks for "#" alone) or
    "#" (`goto done`); a ".." that has a segment to remove, and a segment that only starts or ends with dots, are
    taken."""
    assert nginx_refusal(target) is None
