"""Route regexes (`~` paths, `~*` header values) read as Kong 3.x's router reads them: its default flavor,
traditional_compatible, runs them with Rust's regex crate (atc-router compiles each with Regex::new, after
kong/router/transform.lua adds `^` and rewrites `?<` to `?P<`); gateway.routing.kong_regex writes that syntax for
PCRE2 (UTF, UCP) and refuses what Rust's regex refuses, which Kong's config check refuses ("Router Expression failed
validation"), and what PCRE2 would read otherwise."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest

from gateway.config.errors import ConfigError
from gateway.config.loader import parse_config
from gateway.config.patterns import regex_problem
from gateway.config.typedefs import router_path_problem
from gateway.policies.pcre2 import CaptureRegex
from gateway.routing import Router, RouteSpec
from gateway.routing.kong_regex import OPTIONS, pcre2_pattern
from gateway.routing.router import MAX_REQ_HEADERS


def _pick(r: Router[str], target: str, headers: list[tuple[bytes, bytes]] | None = None) -> str | None:
    m = r.match(b"GET", target.encode(), b"api.test", headers or [])
    return None if m is None else m.payload


def _matches(kong: str, text: str) -> bool:
    """Whether the Kong regex matches all of `text`, as the router's PCRE2 reads it."""
    return CaptureRegex(f"^(?:{pcre2_pattern(kong)})\\z", OPTIONS).find(text.encode()) is not None


# --- inline flags: Rust applies `(?i)` to the rest of its group, later alternatives included ----------------------


@pytest.mark.parametrize(("kong", "matching", "not_matching"), [
    ("/(?i)users", ["/USERS", "/users"], ["/USER"]),
    ("(x(?i)y|z)w", ["xYw", "Zw"], ["xyW", "Xyw"]),  # to its group's end, later alternatives included
    ("/(?i)a(?-i)b|c", ["/Ab", "c"], ["/AB", "C", "/c"]),
    ("/(?is)x|(?i-s)y", ["/X", "Y"], ["/\nX"]),
    ("/(?i:a|b)c", ["/Ac", "/Bc"], ["/aC"]),  # a scoped group
    ("/[(|]x(?i)y\\|z", ["/(xY|Z", "/|xy|z"], ["/(xy", "z"]),  # a `(` or `|` in a class or escaped is a character
])
def test_inline_flags_last_to_the_end_of_their_group(kong: str, matching: list[str], not_matching: list[str]):
    assert [_matches(kong, t) for t in matching] == [True] * len(matching)
    assert [_matches(kong, t) for t in not_matching] == [False] * len(not_matching)


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
    r = Router([RouteSpec("m", paths=["~/(?m)a$"]), RouteSpec("scoped", paths=["~/(?m:b)$"])])
    assert _pick(r, "/a%0Ax") == "m"  # `$` before the line feed
    assert _pick(r, "/b%0Ax") is None  # `$` outside the group: the end of the path
    assert _pick(r, "/b") == "scoped"


def test_a_unicode_property_class_is_rusts():
    """Rust's regex takes `\\p{L}`, `\\pL`, `\\P{Greek}` (Unicode's properties), and so does PCRE2."""
    r = Router([RouteSpec("letters", paths=["~/\\p{L}+$"]), RouteSpec("greek", paths=["~/x/\\p{Greek}+$"])])
    assert _pick(r, "/Jos%C3%A9") == "letters"
    assert _pick(r, "/x/%CE%B1%CE%B2") == "greek"
    assert _pick(r, "/x/ab") is None


def test_a_property_name_the_gateway_does_not_know_is_refused():
    problem = router_path_problem("~/\\p{NoSuchProperty}")
    assert problem is not None and "unknown property" in problem


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
    assert regex_problem(b"^(?!curl)", header=True) is not None
    assert regex_problem(b"^curl/(?i)X|wget", header=True) is None  # an inline flag anywhere, as Rust
    r = Router([RouteSpec("curl", paths=["/"], headers={"user-agent": ["~*^curl/(?-i)x"]})])
    assert _pick(r, "/", [(b"user-agent", b"curl/X")]) == "curl"  # the value lower-cased, as Kong's


# --- POSIX classes: Rust reads `[[:alpha:]]` as the ASCII letters ---------------------------------------------------


@pytest.mark.parametrize(("kong", "pcre2"), [
    ("/[[:alpha:]]+$", "/[A-Za-z]+$"),
    ("/v[[:digit:]]+/", "/v[0-9]+/"),
    ("/[^[:digit:]_]", "/[^0-9_]"),
    ("/[[:alnum:][:punct:]]", "/[0-9A-Za-z!-/:-@\\[-`{-~]"),
    ("/[[:^alpha:]]", "/[^A-Za-z]"),  # a negated one alone in its class is exact
    ("/[^[:^alpha:]]", "/[A-Za-z]"),
    ("/[]a[:digit:]]", "/[]a0-9]"),  # a first `]` is a character
    ("/[\\[:alpha:]]", "/[\\[:alpha:]]"),  # an escaped `[` opens no class
])
def test_posix_classes_are_written_as_their_ascii_ranges(kong: str, pcre2: str):
    """PCRE2 with UCP reads `[[:alpha:]]` as Unicode's letters; Rust's regex as the ASCII ones: written as ranges."""
    assert pcre2_pattern(kong) == pcre2


@pytest.mark.parametrize(("name", "members"), [
    ("alnum", "09AZaz"), ("alpha", "AZaz"), ("ascii", "\x00\x7f"), ("blank", "\t "), ("cntrl", "\x00\x1f\x7f"),
    ("digit", "09"), ("graph", "!~"), ("lower", "az"), ("print", " ~"), ("punct", "!/:@[`{~_\\]"),
    ("space", "\t\n\x0b\x0c\r "), ("upper", "AZ"), ("word", "09AZaz_"), ("xdigit", "09AFaf"),
])
def test_every_ascii_posix_class_is_rusts(name: str, members: str):
    """regex-syntax's ClassAsciiKind ranges: these characters are in, the others of ASCII and a non-ASCII one out."""
    inside = {chr(c) for c in range(128) if _matches(f"[[:{name}:]]", chr(c))}
    assert set(members) <= inside
    assert not _matches(f"[[:{name}:]]", "é")
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
    problem = regex_problem(path[1:])  # (the router's check; a path meets Kong's PCRE2 dry run first)
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


# --- anchoring: Kong glues `^` to a `~` path's regex and searches (transform.lua path_val_transform) ---------------


def test_regex_alternatives_after_the_first_are_not_anchored():
    """kong/router/transform.lua:327 (`"^" .. p:sub(2)`: `^/foo|/bar`) and atc-router src/interpreter.rs:76
    (`is_match`, a search): the route `~/foo|/bar` matches `/x/bar`, its second alternative found inside the path."""
    r = Router([RouteSpec("r", paths=["~/foo|/bar"])])
    assert _pick(r, "/x/bar") == "r"
    assert _pick(r, "/x/foo") is None  # the first alternative is anchored


def test_an_unanchored_alternative_strips_the_length_of_what_it_matched():
    """kong/router/atc.lua:388/397 (the prefix is the regex's whole match, `/bar`) and atc.lua:339
    (`req_uri:sub(#request_prefix + 1)`: the postfix starts after as many bytes as the match has, from the start of
    the path: `ar/baz`), then utils.lua get_upstream_uri_v0 (`/` .. postfix): `/x/bar/baz` goes upstream as
    `/ar/baz`, with the match, `/bar`, as the stripped prefix (X-Forwarded-Prefix)."""
    m = Router([RouteSpec("r", paths=["~/foo|/bar"])]).match(b"GET", b"/x/bar/baz", b"api.test", [])
    assert m is not None
    assert (m.path, m.prefix) == (b"/ar/baz", b"/bar")


# --- bounded work: Rust's regex is linear in the input; PCRE2 runs under Kong's match limit --------------------------


def _within(seconds: float, call: Callable[[], Any]) -> Any:
    """`call()`, failing the test with TimeoutError after `seconds` (the router runs on a worker's event loop)."""
    def expired(*_: object) -> None:
        raise TimeoutError(f"the router took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return call()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_regex_path_that_would_backtrack_without_end_is_bounded_work():
    """atc-router src/parser.rs:225 (`Regex::new`: Rust's regex crate, no backtracking) and src/interpreter.rs:76:
    `~/files/([a-z0-9]+/?)*$` against `/files/` + 40 letters + `!` is a 404 at once in Kong; here too (PCRE2 stops
    at its match limit: no match)."""
    r = Router([RouteSpec("files", paths=["~/files/([a-z0-9]+/?)*$"])])
    assert _within(2.0, lambda: r.match(b"GET", b"/files/" + b"a" * 40 + b"!", b"api.test", [])) is None
    assert _pick(r, "/files/a/b") == "files"


def test_a_header_regex_that_would_backtrack_without_end_is_bounded_work():
    """kong/router/transform.lua:428-438 (`any(lower(http.headers.x_id)) ~ "..."`) run by atc-router's Rust regex
    (src/interpreter.rs:76): a `~*` header value with a nested quantifier against a client's 40 letters and `!`."""
    r = Router([RouteSpec("ids", headers={"x-id": ["~*^([a-z0-9]+-?)*$"]})])
    assert _within(2.0, lambda: r.match(b"GET", b"/", b"api.test", [(b"x-id", b"a" * 40 + b"!")])) is None
    assert _pick(r, "/", [(b"x-id", b"ab-cd")]) == "ids"


# --- Rust's syntax where PCRE2's differs --------------------------------------------------------------------------


@pytest.mark.parametrize(("kong", "matching", "not_matching"), [
    ("/a\\vb", ["/a\x0bb"], ["/a\nb"]),  # Rust's \v is the vertical tab (PCRE2's: any vertical space)
    ("/\\u{e9}\\u00e8\\x41", ["/éèA"], ["/eeA"]),
    ("/\\<ab\\>", ["/ab"], []),
    ("/x\\b{start}y", [], ["/xy"]),
    ("/\\w+\\d", ["/éa١"], ["/a-1"]),  # \w and \d are Unicode's
    ("/(?i)straße", ["/STRASSE".replace("SS", "ß"), "/Straße"], ["/strasse"]),  # simple case folding
    ("/a.b", ["/a\rb", "/aéb"], ["/a\nb"]),  # `.` is anything but a line feed, a character
    ("/(?u)x(?u:y)", ["/xy"], []),  # Unicode is on throughout
])
def test_rusts_syntax_is_read_as_rust_reads_it(kong: str, matching: list[str], not_matching: list[str]):
    assert [_matches(kong, t) for t in matching] == [True] * len(matching)
    assert [_matches(kong, t) for t in not_matching] == [False] * len(not_matching)


@pytest.mark.parametrize(("path", "what"), [
    ("~/[a[b]]", "a nested character class"),
    ("~/[a&&b]", "a class set operation (&&)"),
    ("~/[a--b]", "a class set operation (--)"),
    ("~/a*+", "a repeated repetition (*+)"),
    ("~/a{,3}", "a { that starts no repetition"),
    ("~/(?-u)a", "turning Unicode off"),
    ("~/(?R)a", "the CRLF flag"),
])
def test_a_regex_pcre2_would_read_otherwise_is_refused(path: str, what: str):
    problem = regex_problem(path[1:])  # (the router's check; a path meets Kong's PCRE2 dry run first)
    assert problem is not None and what in problem and "not supported by the gateway" in problem


@pytest.mark.parametrize(("path", "what"), [
    ("~/(*LF)a", "PCRE's verbs"),
    ("~/\\Qa\\E", "unrecognized escape \\Q"),
    ("~/(?|a)", "branch reset groups"),
    ("~/(?P>n)", "recursion"),
    ("~/[\\b]", "not allowed in a character class"),
])
def test_pcre_syntax_rusts_regex_has_not_is_refused(path: str, what: str):
    problem = regex_problem(path[1:])  # (the router's check; a path meets Kong's PCRE2 dry run first)
    assert problem is not None and what in problem


# --- header values: lower-cased by Lua on the route's side, by Rust on the request's ---------------------------------


def _city_matches(value: str, sent: str) -> bool:
    r = Router([RouteSpec("r", headers={"x-city": [value]})])
    return r.match(b"GET", b"/", b"api.test", [(b"x-city", sent.encode())]) is not None


def test_a_request_header_value_is_lower_cased_as_unicode():
    """atc-router src/interpreter.rs:42 (`s.to_lowercase()`): the request's `MÜNCHEN` is `münchen`, equal to the
    route's `münchen` (kong/router/transform.lua:438)."""
    assert _city_matches("münchen", "MÜNCHEN")


def test_a_route_header_value_is_lower_cased_as_ascii_only():
    """kong/router/transform.lua:438 (`escape_str(value:lower())`, Lua's byte-wise ASCII lower-casing): the route's
    `MÜNCHEN` is `mÜnchen`, which no request value lower-cased by Rust (atc-router src/interpreter.rs:42) equals."""
    assert not _city_matches("MÜNCHEN", "münchen")
    assert not _city_matches("MÜNCHEN", "MÜNCHEN")


def test_a_header_regex_is_searched_in_the_unicode_lower_cased_value():
    """atc-router src/interpreter.rs:42 then :76: `~*^ü` finds the request's `Über`, lower-cased `über`."""
    assert _city_matches("~*^ü", "Über")
