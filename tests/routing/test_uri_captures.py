"""The groups of a matched regex route path (Kong's `router_matches.uri_captures`: by number, 0 the whole match, and
by name), and Kong's PCRE named group syntax read by Python's re."""

from __future__ import annotations

import re

import pytest

from gateway.routing import Match, Router, RouteSpec
from gateway.routing.router import CaptureMatch, python_regex


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


@pytest.mark.parametrize(("kong", "python"), [
    ("/u/(?<id>\\d+)", "/u/(?P<id>\\d+)"),
    ("/u/(?P<id>\\d+)", "/u/(?P<id>\\d+)"),
    ("/\\(?<x>\\)", "/\\(?<x>\\)"),  # an escaped parenthesis is no group
    ("/[(?<x>]", "/[(?<x>]"),  # nor is one in a character class
    ("/[]\\]](?<x>a+)", "/[]\\]](?P<x>a+)"),  # a class's first "]" and an escaped one do not end it
    ("/plain/\\d+", "/plain/\\d+"),
])
def test_python_regex_reads_pcre_named_groups(kong: str, python: str):
    assert python_regex(kong) == python
    re.compile(python_regex(kong))
