"""Route regexes (`~` paths, `~*` header values) read as Kong 3.x's router reads them: its default flavor,
traditional_compatible, runs them with Rust's regex crate (atc-router compiles each with Regex::new, after
kong/router/transform.lua adds `^` and rewrites `?<` to `?P<`); python_regex translates that syntax to Python's re and
refuses what Rust's regex refuses, which Kong's config check refuses ("Router Expression failed validation")."""

from __future__ import annotations

import re

import pytest

from gateway.config.errors import ConfigError
from gateway.config.loader import parse_config
from gateway.config.patterns import regex_problem
from gateway.config.typedefs import router_path_problem
from gateway.routing import Router, RouteSpec
from gateway.routing.router import MAX_REQ_HEADERS, python_regex


def _pick(r: Router[str], target: str, headers: list[tuple[bytes, bytes]] | None = None) -> str | None:
    m = r.match(b"GET", target.encode(), b"api.test", headers or [])
    return None if m is None else m.payload


def _matches(kong: str, text: str) -> bool:
    return re.compile(python_regex(kong)).fullmatch(text) is not None


# --- inline flags: Rust applies `(?i)` to the rest of its group, later alternatives included ----------------------


@pytest.mark.parametrize(("kong", "python"), [
    ("/(?i)users", "/(?i:users)"),
    ("a(?i)b|c", "a(?i:b)|(?i:c)"),  # reopened after each `|` of its group
    ("(x(?i)y|z)w", "(x(?i:y)|(?i:z))w"),  # closed at its group's end
    ("/(?i)a(?-i)b|c", "/(?i:a(?-i:b))|(?i:(?-i:c))"),
    ("/(?is)x|(?i-s)y", "/(?is:x)|(?is:(?i-s:y))"),
    ("/(?i:a|b)c", "/(?i:a|b)c"),  # a scoped group stays
    ("/[(|]x(?i)y\\|z", "/[(|]x(?i:y\\|z)"),  # a `(` or `|` in a class or escaped is a character
])
def test_python_regex_scopes_inline_flags(kong: str, python: str):
    assert python_regex(kong) == python


def test_an_inline_flag_carries_into_later_alternatives_of_its_group():
    assert [_matches("a(?i)b|c", s) for s in ("ab", "aB", "c", "C", "ac", "Ab")] == [True, True, True, True, False,
                                                                                     False]


def test_a_case_insensitive_regex_path_is_accepted_and_matches_any_case():
    assert router_path_problem("~/(?i)users") is None
    r = Router([RouteSpec("ci", paths=["~/(?i)users"]), RouteSpec("rest", paths=["/"])])
    assert _pick(r, "/USERS/1") == "ci"  # Rust's ^/(?i)users matches /USERS
    assert _pick(r, "/users") == "ci"
    assert _pick(r, "/Users") == "ci"
    assert _pick(r, "/user") == "rest"


def test_a_multi_line_flag_makes_dollar_a_line_end_in_its_group_only():
    assert python_regex("/(?m)a$") == "/(?m:a$)"
    assert python_regex("/(?m:a)$") == "/(?m:a)\\Z"


def test_a_unicode_property_class_is_refused_clearly():
    """Rust's regex (and PCRE) take `\\p{L}`; Python's re has no such class: refused, and the message says why."""
    for path in ("~/\\p{L}+$", "~/\\pL", "~/[\\P{Greek}]"):
        problem = router_path_problem(path)
        assert problem is not None and "Unicode property classes" in problem and "not supported" in problem


# --- what Rust's regex refuses, Kong's config check refuses -------------------------------------------------------


@pytest.mark.parametrize(("path", "what"), [
    ("~/users/(?!admin)\\w+", "look-around ((?!)"),
    ("~/users/(?=admin)", "look-around ((?=)"),
    ("~/(?<=/)x", "look-around ((?<=)"),
    ("~/(?<!/)x", "look-around ((?<!)"),
    ("~/(\\d+)/\\1", "back references (\\1)"),
    ("~/(?<id>\\d+)/\\k<id>", "back references (\\k)"),
    ("~/(?<id>\\d+)/\\k'id'", "back references (\\k)"),
    ("~/(?<id>\\d+)/\\k{id}", "back references (\\k)"),
    ("~/(\\d+)/\\g{1}", "back references (\\g)"),
    ("~/(?P<id>\\d+)/(?P=id)", "back references ((?P=name))"),
    ("~/a(?#note)", "comments"),
    ("~/(?>a)", "atomic groups"),
    ("~/(?'id'\\d+)", "named groups written (?'name'...)"),
])
def test_a_regex_path_rust_regex_cannot_compile_is_refused(path: str, what: str):
    problem = router_path_problem(path)
    assert problem is not None and what in problem and "not supported by Kong's router (Rust's regex" in problem


def test_a_refused_regex_path_names_its_field():
    config = ("_format_version: '3.0'\nservices:\n- name: s\n  url: http://127.0.0.1:9\n  routes:\n  - name: r\n"
              "    paths: ['~/users/(?!admin)\\w+']\n    headers:\n      user-agent: ['~*^(?!curl)']\n")
    with pytest.raises(ConfigError) as e:
        parse_config(config)
    text = str(e.value)
    assert "routes[0].paths[0]: invalid regex" in text and "routes[0].headers.user-agent[0]: invalid regex" in text
    assert text.count("look-around ((?!) is not supported by Kong's router") == 2


def test_a_header_regex_is_read_as_the_router_reads_it():
    assert regex_problem(b"^(?!curl)", re.IGNORECASE) is not None
    assert regex_problem(b"^curl/(?i)X|wget", re.IGNORECASE) is None  # an inline flag anywhere, as Rust
    r = Router([RouteSpec("curl", paths=["/"], headers={"user-agent": ["~*^curl/(?-i)x"]})])
    assert _pick(r, "/", [(b"user-agent", b"curl/X")]) == "curl"  # the value lower-cased, as Kong's


# --- POSIX classes: Rust reads `[[:alpha:]]` as the ASCII letters ---------------------------------------------------


@pytest.mark.parametrize(("kong", "python"), [
    ("/[[:alpha:]]+$", "/[A-Za-z]+\\Z"),
    ("/v[[:digit:]]+/", "/v[0-9]+/"),
    ("/[^[:digit:]_]", "/[^0-9_]"),
    ("/[[:alnum:][:punct:]]", "/[0-9A-Za-z!-/:-@\\[-`{-~]"),
    ("/[[:^alpha:]]", "/[^A-Za-z]"),  # a negated one alone in its class is exact
    ("/[^[:^alpha:]]", "/[A-Za-z]"),
    ("/[]a[:digit:]]", "/[]a0-9]"),  # a first `]` is a character
    ("/[\\[:alpha:]]", "/[\\[:alpha:]]"),  # an escaped `[` opens no class
])
def test_python_regex_reads_posix_classes(kong: str, python: str):
    assert python_regex(kong) == python


@pytest.mark.parametrize(("name", "members"), [
    ("alnum", "09AZaz"), ("alpha", "AZaz"), ("ascii", "\x00\x7f"), ("blank", "\t "), ("cntrl", "\x00\x1f\x7f"),
    ("digit", "09"), ("graph", "!~"), ("lower", "az"), ("print", " ~"), ("punct", "!/:@[`{~_\\]"),
    ("space", "\t\n\x0b\x0c\r "), ("upper", "AZ"), ("word", "09AZaz_"), ("xdigit", "09AFaf"),
])
def test_every_ascii_posix_class_is_rusts(name: str, members: str):
    """regex-syntax's ClassAsciiKind ranges: these characters are in, the others of ASCII and a non-ASCII one out."""
    cls = re.compile(python_regex(f"[[:{name}:]]"))
    inside = {chr(c) for c in range(128) if cls.fullmatch(chr(c))}
    assert set(members) <= inside
    assert cls.fullmatch("é") is None
    assert len(inside) == {"alnum": 62, "alpha": 52, "ascii": 128, "blank": 2, "cntrl": 33, "digit": 10, "graph": 94,
                           "lower": 26, "print": 95, "punct": 32, "space": 6, "upper": 26, "word": 63,
                           "xdigit": 22}[name]


def test_a_posix_class_in_a_regex_path_is_kongs():
    r = Router([RouteSpec("alpha", paths=["~/[[:alpha:]]+$"]), RouteSpec("digits", paths=["~/v[[:digit:]]+/"])])
    assert _pick(r, "/abc") == "alpha"
    assert _pick(r, "/a]") is None
    assert _pick(r, "/v2/x") == "digits"


@pytest.mark.parametrize(("path", "what"), [
    ("~/[[:^alpha:]x]", "a negated POSIX class"),
    ("~/[x[:^digit:]]", "a negated POSIX class"),
    ("~/[[:letters:]]", "unknown POSIX class [:letters:]"),
])
def test_a_posix_class_re_cannot_express_is_refused(path: str, what: str):
    problem = router_path_problem(path)
    assert problem is not None and what in problem


# --- headers: Kong's router reads the first lua_max_req_headers (100) lines -----------------------------------------


def test_a_header_after_the_100th_line_does_not_route():
    r = Router([RouteSpec("default", paths=["/api"]),
                RouteSpec("v2", paths=["/api"], headers={"x-version": ["v2"]})])
    filler = [(b"x-filler-%d" % i, b"1") for i in range(MAX_REQ_HEADERS)]
    assert _pick(r, "/api", [*filler, (b"x-version", b"v2")]) == "default"  # the 101st line, unread
    assert _pick(r, "/api", [*filler[:99], (b"x-version", b"v2")]) == "v2"  # the 100th line is read


def test_a_header_not_utf8_after_the_100th_line_is_not_read():
    """Kong's router errs on a header value that is not UTF-8 (a 404), only for the lines it reads."""
    r = Router([RouteSpec("v2", paths=["/api"], headers={"x-version": ["v2"]})])
    filler = [(b"x-filler-%d" % i, b"1") for i in range(MAX_REQ_HEADERS - 1)]
    assert _pick(r, "/api", [(b"x-version", b"v2"), *filler, (b"x-version", b"\xff")]) == "v2"
    assert _pick(r, "/api", [(b"x-version", b"v2"), *filler[:-1], (b"x-version", b"\xff")]) is None
