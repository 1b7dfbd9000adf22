"""The groups of a matched regex route path (Kong's `router_matches.uri_captures`: by number, 0 the whole match, and
by name), and Kong's named group syntax as the router's PCRE2 reads it."""

from __future__ import annotations

import pytest

from gateway.routing import Match, Router, RouteSpec
from gateway.routing.kong_regex import pcre2_pattern, problem
from gateway.routing.router import CaptureMatch


def router(*paths: str, **fields) -> Router:  # noqa: ANN003
    return Router([RouteSpec(p, paths=[p], **fields) for p in paths])


def test_named_groups_of_the_matched_regex_path():
    r = router("~/users/(?<uid>[^/]+)(/(?<tab>[a-z]+))?", "/users")
    m = r.match(b"GET", b"/users/42/posts?x=1", b"h", [])
    assert isinstance(m, CaptureMatch)
    assert m.payload == "~/users/(?<uid>[^/]+)(/(?<tab>[a-z]+))?"
    assert m.captures == {0: b"/users/42/posts", 1: b"42", 2: b"/posts", 3: b"posts", "uid": b"42", "tab": b"posts"}
    assert m.query == b"x=1"
    other = r.match(b"GET", b"/users/7", b"h", [])
    assert other.captures == {0: b"/users/7", 1: b"7", 2: None, 3: None, "uid": b"7", "tab": None}  # (no part: None)


def test_unnamed_groups_are_captured_by_number():
    m = router("~/n/(\\d+)/(\\w+)$").match(b"GET", b"/n/1/ab", b"h", [])
    assert m.captures == {0: b"/n/1/ab", 1: b"1", 2: b"ab"}


def test_prefix_routes_and_regexes_without_groups_have_no_captures():
    r = router("~/n/\\d+$", "/p", "/")
    for target in (b"/n/1", b"/p/x", b"/other"):
        m = r.match(b"GET", target, b"h", [])
        assert type(m) is Match and m.captures is None, target


def test_captures_are_of_the_normalized_path_and_remembered_per_target():
    r = router("~/f/(?<name>[^/]+)$")
    first = r.match(b"GET", b"/f/%61b", b"h", [])
    assert first.captures["name"] == b"ab"  # Kong matches (and captures from) the normalized path
    assert r.match(b"GET", b"/f/%61b", b"h", []) is first  # the memory: the same answer for the same target
    assert r.match(b"GET", b"/f/cd", b"h", []).captures["name"] == b"cd"
    assert first.captures["name"] == b"ab"


def test_a_prefix_route_that_wins_over_a_regex_has_no_captures():
    r = Router([RouteSpec("regex", paths=["~/a/(?<x>.+)"]), RouteSpec("prefix", paths=["/a"])])
    m = r.match(b"GET", b"/a/", b"h", [])
    assert m.payload == "prefix" and m.captures is None  # the regex does not match "/a/"
    m = r.match(b"GET", b"/a/c", b"h", [])
    assert m.payload == "regex" and m.captures == {0: b"/a/c", 1: b"c", "x": b"c"}


@pytest.mark.parametrize(("kong", "pcre2"), [
    ("/u/(?<id>\\d+)", "/u/(?<id>\\d+)"),
    ("/u/(?P<id>\\d+)", "/u/(?<id>\\d+)"),
    ("/\\(?<x>\\)", "/\\(?<x>\\)"),  # an escaped parenthesis is no group
    ("/[(?<x>]", "/[(?<x>]"),  # nor is one in a character class
    ("/[]\\]](?<x>a+)", "/[]\\]](?<x>a+)"),  # a class's first "]" and an escaped one do not end it
    ("/plain/\\d+", "/plain/\\d+"),
])
def test_named_groups_are_read_in_both_syntaxes(kong: str, pcre2: str):
    assert pcre2_pattern(kong) == pcre2
    assert problem(kong) is None


# --- `~*` header regexes: atc-router gathers every regex's groups into one map (src/interpreter.rs:76-93) -----------


def test_a_header_regex_with_groups_gives_uri_captures():
    """kong/router/atc.lua:388 (`c:get_result("http.path")` returns the expression's whole capture map) and :404
    (kept when it holds more than the whole match): a prefix route `/api` with the header value `~*v(\\d+)`, request
    `X-Version: V2`, has {0: "v2", 1: "2"} (lower-cased: the regex ran on lower(http.headers.x_version))."""
    r = Router([RouteSpec("r", paths=["/api"], headers={"x-version": ["~*v(\\d+)"]})])
    m = r.match(b"GET", b"/api/items", b"example.test", [(b"x-version", b"V2")])
    assert isinstance(m, CaptureMatch)
    assert m.captures == {0: b"v2", 1: b"2"}


def test_a_header_regex_replaces_the_path_regex_captures_of_the_same_number():
    """Path `~/users/(?<id>\\d+)` then header `~*v(\\d+)`: the path's {0: "/users/12", 1: "12", id: "12"} is
    overwritten at 0 and 1 by the header's groups (atc-router src/interpreter.rs:86, a HashMap insert, evaluated in
    kong/router/transform.lua:415-445's order: the path, then the headers), leaving {0: "v2", 1: "2", id: "12"}."""
    r = Router([RouteSpec("r", paths=["~/users/(?<id>\\d+)"], headers={"x-version": ["~*v(\\d+)"]})])
    m = r.match(b"GET", b"/users/12", b"example.test", [(b"x-version", b"v2")])
    assert m is not None
    assert m.captures == {0: b"v2", 1: b"2", "id": b"12"}


def test_a_header_group_that_took_no_part_leaves_the_paths():
    """atc-router src/interpreter.rs:83 (`if let Some(c) = c`: a group that took no part is not inserted)."""
    r = Router([RouteSpec("r", paths=["~/u/(\\d+)/(\\w+)"], headers={"x-v": ["~*(a)|(b)"]})])
    m = r.match(b"GET", b"/u/1/x", b"h", [(b"x-v", b"A")])
    assert m is not None
    assert m.captures == {0: b"a", 1: b"a", 2: b"x"}


def test_only_the_whole_match_gives_no_captures():
    """kong/router/atc.lua:352-358 (has_capture: more than one key) with src/interpreter.rs:83 (no key for a group
    that took no part): `~/a(x)?` matching `/a` has only its whole match, so no uri_captures."""
    m = router("~/a(x)?").match(b"GET", b"/a", b"h", [])
    assert type(m) is Match and m.captures is None
    header_only = Router([RouteSpec("r", paths=["/"], headers={"x-v": ["~*v2"]})])
    m = header_only.match(b"GET", b"/", b"h", [(b"x-v", b"v2")])
    assert type(m) is Match and m.captures is None
