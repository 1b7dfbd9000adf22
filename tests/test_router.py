"""Kong's route matching, as a unit (no sockets): paths, methods, hosts, headers, query, precedence, strip_path.

Precedence (gateway/routing/router.py): more constrained categories first; then by path: a prefix equal to the
whole path, then regexes by regex_priority, then the longest prefix; then the route defined first.
"""

from __future__ import annotations

from gateway.routing import NEEDS_MCP, Router, RouteSpec


def router(*routes: tuple[str, dict]) -> Router[str]:
    return Router([RouteSpec(name, **fields) for name, fields in routes])


def pick(r: Router[str], target: str = "/", method: str = "GET", host: str | None = "gw.test",
         headers: list[tuple[str, str]] | None = None) -> str | None:
    hdrs = [(k.lower().encode(), v.encode()) for k, v in headers or []]
    m = r.match(method.encode(), target.encode(), host.encode() if host is not None else None, hdrs)
    return None if m is None else m.payload


def matched_path(r: Router[str], target: str) -> tuple[bytes, bytes]:
    m = r.match(b"GET", target.encode(), b"gw.test", [])
    assert m is not None
    return m.path, m.query


# --- paths ---------------------------------------------------------------------------------------------------------


def test_prefix_path_matches_the_path_and_below():
    r = router(("api", {"paths": ["/api"]}))
    assert pick(r, "/api") == "api"
    assert pick(r, "/api/tools") == "api"
    assert pick(r, "/api?x=1") == "api"


def test_no_match_returns_none():
    r = router(("api", {"paths": ["/api"]}))
    assert pick(r, "/other") is None
    assert pick(r, "/") is None
    assert router().match(b"GET", b"/", None, []) is None


def test_query_string_is_not_part_of_the_path():
    r = router(("api", {"paths": ["/api"]}))
    assert pick(r, "/x?next=/api") is None


def test_longest_prefix_wins():
    r = router(("short", {"paths": ["/"]}), ("long", {"paths": ["/api/v1"]}), ("mid", {"paths": ["/api"]}))
    assert pick(r, "/api/v1/tools") == "long"
    assert pick(r, "/api/v2") == "mid"
    assert pick(r, "/health") == "short"


def test_regex_path_matches_from_the_start():
    r = router(("re", {"paths": [r"~/v\d+/tools$"]}))
    assert pick(r, "/v1/tools") == "re"
    assert pick(r, "/v10/tools") == "re"
    assert pick(r, "/x/v1/tools") is None
    assert pick(r, "/v1/tools/extra") is None


def test_regex_beats_a_longer_prefix():
    r = router(("prefix", {"paths": ["/users/profile"]}), ("regex", {"paths": [r"~/users/\w+"]}))
    assert pick(r, "/users/profile/photo") == "regex"


def test_a_regex_beats_any_prefix_even_one_equal_to_the_whole_path():
    """Kong 3.x's REGEX_URL_BIT: a regex path outranks every prefix path (nginx's `location =` rule is not Kong's)."""
    r = router(("regex", {"paths": [r"~/users/\w+$"]}), ("exact", {"paths": ["/users/me"]}))
    assert pick(r, "/users/me") == "regex"
    assert pick(r, "/users/me/") == "exact"  # the regex does not match this one


def test_plain_hosts_beat_a_wildcard_host():
    """Kong's PLAIN_HOST_ONLY_BIT: with the same categories, a route whose hosts are all plain wins."""
    r = router(("wild", {"hosts": ["*.example.test"], "paths": ["/"]}),
               ("plain", {"hosts": ["api.example.test"], "paths": ["/"]}))
    assert pick(r, "/", host="api.example.test") == "plain"
    assert pick(r, "/", host="web.example.test") == "wild"


def test_more_headers_beat_fewer():
    """Kong ranks by the number of header conditions, within the same categories."""
    r = router(("one", {"headers": {"x-a": ["1"]}, "paths": ["/"]}),
               ("two", {"headers": {"x-a": ["1"], "x-b": ["2"]}, "paths": ["/"]}))
    assert pick(r, "/", headers=[("x-a", "1"), ("x-b", "2")]) == "two"
    assert pick(r, "/", headers=[("x-a", "1")]) == "one"


def test_plain_hosts_outrank_more_headers_and_headers_outrank_a_regex():
    r = router(("regex", {"hosts": ["*.t"], "headers": {"x-a": ["1"]}, "paths": [r"~/r"]}),
               ("headers", {"hosts": ["*.t"], "headers": {"x-a": ["1"], "x-b": ["1"]}, "paths": ["/"]}),
               ("plain", {"hosts": ["a.t"], "headers": {"x-a": ["1"]}, "paths": ["/"]}))
    both = [("x-a", "1"), ("x-b", "1")]
    assert pick(r, "/r", host="a.t", headers=both) == "plain"
    assert pick(r, "/r", host="b.t", headers=both) == "headers"
    assert pick(r, "/r", host="b.t", headers=[("x-a", "1")]) == "regex"


def test_higher_regex_priority_wins():
    r = router(("low", {"paths": [r"~/items/\d+"], "regex_priority": 1}),
               ("high", {"paths": [r"~/items/"], "regex_priority": 5}))
    assert pick(r, "/items/42") == "high"


def test_equal_regex_priority_goes_to_the_route_defined_first():
    r = router(("first", {"paths": [r"~/items/"]}), ("second", {"paths": [r"~/items/\d+"]}))
    assert pick(r, "/items/42") == "first"


def test_identical_routes_go_to_the_one_defined_first():
    r = router(("a", {"paths": ["/x"]}), ("b", {"paths": ["/x"]}))
    assert pick(r, "/x/y") == "a"


def test_route_with_several_paths_matches_any_of_them():
    r = router(("multi", {"paths": ["/mcp", "/sse"]}))
    assert pick(r, "/mcp") == "multi"
    assert pick(r, "/sse/stream") == "multi"
    assert pick(r, "/other") is None


# --- methods, hosts ------------------------------------------------------------------------------------------------


def test_methods_restrict_a_route():
    r = router(("rw", {"paths": ["/mcp"], "methods": ["POST", "GET"]}))
    assert pick(r, "/mcp", "POST") == "rw"
    assert pick(r, "/mcp", "GET") == "rw"
    assert pick(r, "/mcp", "DELETE") is None


def test_route_constraining_more_categories_wins_over_a_longer_path():
    r = router(("deep", {"paths": ["/mcp/tools"]}), ("post", {"paths": ["/mcp"], "methods": ["POST"]}))
    assert pick(r, "/mcp/tools", "POST") == "post"
    assert pick(r, "/mcp/tools", "GET") == "deep"


def test_exact_host_matches_as_sent():
    """Kong 3.x compares hosts case-sensitively (documented since Kong/kong#7478; atc.lua reads the Host header)."""
    r = router(("h", {"hosts": ["api.example.com"]}))
    assert pick(r, host="api.example.com") == "h"
    assert pick(r, host="API.Example.COM") is None
    assert pick(r, host="other.example.com") is None
    assert pick(r, host=None) is None


def test_host_with_a_port_matches_the_host():
    r = router(("h", {"hosts": ["api.example.com"]}), ("v6", {"hosts": ["[::1]"]}))
    assert pick(r, host="api.example.com:8443") == "h"
    assert pick(r, host="[::1]") == "v6"
    assert pick(r, host="[::1]:8000") is None  # Kong's split_host_port: no port after an IPv6 literal's first ':'


def test_wildcard_host_matches_by_suffix_or_prefix_as_kong():
    """Kong (both router flavors): "*.example.com" is any host ending in ".example.com", so deeper labels too."""
    r = router(("wild", {"hosts": ["*.example.com"]}), ("suffix", {"hosts": ["mcp.*"]}))
    assert pick(r, host="a.example.com") == "wild"
    assert pick(r, host="b.example.com:80") == "wild"
    assert pick(r, host="example.com") is None
    assert pick(r, host="a.b.example.com") == "wild"
    assert pick(r, host="mcp.internal") == "suffix"


def test_host_route_beats_a_catch_all():
    r = router(("all", {"paths": ["/"]}), ("tenant", {"paths": ["/"], "hosts": ["tenant.example.com"]}))
    assert pick(r, host="tenant.example.com") == "tenant"
    assert pick(r, host="other.example.com") == "all"


# --- headers, query ------------------------------------------------------------------------------------------------


def test_header_selects_the_v2_service_over_the_default():
    """The reference guide: `api-version: v2` routes to the v2 service, all other requests to the default."""
    r = router(("v1", {"paths": ["/mcp"]}), ("v2", {"paths": ["/mcp"], "headers": {"api-version": ["v2"]}}))
    assert pick(r, "/mcp", "POST", headers=[("api-version", "v2")]) == "v2"
    assert pick(r, "/mcp", "POST", headers=[("Api-Version", "V2")]) == "v2"  # names and values: any case
    assert pick(r, "/mcp", "POST", headers=[("api-version", "v1")]) == "v1"
    assert pick(r, "/mcp", "POST") == "v1"


def test_header_with_several_values_matches_any_of_them():
    r = router(("h", {"headers": {"x-tier": ["gold", "silver"]}}))
    assert pick(r, headers=[("x-tier", "silver")]) == "h"
    assert pick(r, headers=[("x-tier", "bronze")]) is None


def test_header_regex_value():
    r = router(("re", {"headers": {"user-agent": ["~*^mcp-client/\\d"]}}))
    assert pick(r, headers=[("user-agent", "MCP-Client/2.1")]) == "re"
    assert pick(r, headers=[("user-agent", "curl/8")]) is None


def test_every_listed_header_must_match():
    r = router(("both", {"headers": {"x-a": ["1"], "x-b": ["2"]}}))
    assert pick(r, headers=[("x-a", "1"), ("x-b", "2")]) == "both"
    assert pick(r, headers=[("x-a", "1")]) is None


def test_query_argument_with_a_value():
    r = router(("any", {"paths": ["/mcp"]}), ("beta", {"paths": ["/mcp"], "query": {"channel": ["beta"]}}))
    assert pick(r, "/mcp?channel=beta") == "beta"
    assert pick(r, "/mcp?x=1&channel=beta") == "beta"
    assert pick(r, "/mcp?channel=stable") == "any"
    assert pick(r, "/mcp") == "any"


def test_query_argument_present_with_any_value():
    r = router(("debug", {"query": {"debug": []}}))
    assert pick(r, "/?debug") == "debug"
    assert pick(r, "/?debug=1") == "debug"
    assert pick(r, "/?nodebug=1") is None


# --- strip_path ----------------------------------------------------------------------------------------------------


def test_strip_path_removes_the_matched_prefix():
    r = router(("api", {"paths": ["/api"], "strip_path": True}))
    assert matched_path(r, "/api/tools?x=1") == (b"/tools", b"x=1")
    assert matched_path(r, "/api") == (b"/", b"")
    assert matched_path(r, "/api/") == (b"/", b"")


def test_strip_path_false_keeps_the_whole_path():
    r = router(("api", {"paths": ["/api"], "strip_path": False}))
    assert matched_path(r, "/api/tools?x=1") == (b"/api/tools", b"x=1")


def test_strip_path_with_a_regex_removes_the_matched_part():
    r = router(("re", {"paths": [r"~/v\d+"], "strip_path": True}))
    assert matched_path(r, "/v2/tools") == (b"/tools", b"")


def test_strip_path_without_paths_keeps_the_path():
    r = router(("host-only", {"hosts": ["gw.test"], "strip_path": True}))
    assert matched_path(r, "/a/b") == (b"/a/b", b"")


# --- remembered answers (as Kong's router's LRU cache) ---------------------------------------------------------------


def counting(r: Router[str]) -> list[bytes]:
    """The targets `r` really matches from now on (not answered from its memory)."""
    calls: list[bytes] = []
    real = r._match
    r._match = lambda method, target, *rest: calls.append(target) or real(method, target, *rest)  # type: ignore[method-assign]
    return calls


def test_an_answer_is_remembered_by_method_target_and_host():
    r = router(("api", {"paths": ["/api"], "strip_path": True}),
               ("other", {"hosts": ["other.test"], "paths": ["/api"]}))
    calls = counting(r)
    first = r.match(b"GET", b"/api/x?q=1", b"gw.test", [])
    assert r.match(b"GET", b"/api/x?q=1", b"gw.test", []) is first and calls == [b"/api/x?q=1"]
    assert (first.payload, first.path, first.query) == ("api", b"/x", b"q=1")
    assert pick(r, "/api/x?q=1", host="other.test") == "other"  # another Host: matched, not taken from memory
    assert pick(r, "/api/x?q=1", method="POST") == "api" and len(calls) == 3


def test_no_route_is_remembered_too():
    r = router(("api", {"paths": ["/api"]}))
    calls = counting(r)
    assert pick(r, "/nothing") is None and pick(r, "/nothing") is None
    assert calls == [b"/nothing"]


def test_an_answer_is_remembered_when_a_route_matches_on_headers():
    """Kong's router remembers its answers whatever the routes match on (kong/router/atc.lua:462-487: `cache_key =
    fields:get_cache_key(CACHE_PARAMS)`, the router run only when `self.cache:get(cache_key)` misses): one route
    on a header among many does not make every request match again (it walked all the routes: 4.6 ms a request
    with 10,000)."""
    r = Router([RouteSpec(f"r{i}", paths=[f"/api/res{i}"]) for i in range(200)]
               + [RouteSpec("versioned", paths=["/versioned"], headers={"x-version": ["v1"]})])
    calls = counting(r)
    for _ in range(20):
        assert pick(r, "/api/res199/items", headers=[("accept", "*/*")]) == "r199"
    assert calls == [b"/api/res199/items"]


def test_the_answer_key_holds_the_values_of_the_headers_routes_match_on_only():
    """Kong's cache key holds the value of each header the routes use (kong/router/fields.lua:402-415
    visit_for_cache_key, over the fields of the routes' expressions): requests with another value of such a header
    get their own answer, requests differing in a header no route names share one."""
    r = router(("v1", {"paths": ["/"], "headers": {"x-version": ["v1"]}}), ("any", {"paths": ["/"]}))
    calls = counting(r)
    assert pick(r, "/x", headers=[("x-version", "v1"), ("accept", "a")]) == "v1"
    assert pick(r, "/x", headers=[("accept", "b"), ("x-version", "v1"), ("user-agent", "c")]) == "v1"
    assert pick(r, "/x", headers=[("x-version", "v2"), ("accept", "a")]) == "any"
    assert pick(r, "/x", headers=[("x_version", "v1")]) == "v1"  # Kong's field reads x_version lines first
    assert pick(r, "/x", headers=[("accept", "a")]) == pick(r, "/x") == "any"
    assert len(calls) == 4


def test_routes_on_query_arguments_are_remembered_per_target():
    """The target (its query string whole) is in the key, as Kong's (atc.lua `CACHE_PARAMS.uri = req_uri`, the
    query arguments the routes use beside it): a route on a query argument is remembered like any other."""
    r = router(("v2", {"paths": ["/"], "query": {"v": ["2"]}}), ("any", {"paths": ["/"]}))
    calls = counting(r)
    assert pick(r, "/x?v=2") == pick(r, "/x?v=2") == "v2"
    assert pick(r, "/x?v=1") == pick(r, "/x?v=1") == "any"
    assert len(calls) == 2


def test_routes_on_a_host_port_are_remembered_per_listener_port():
    """Kong's key holds net.dst.port when routes use it (fields.lua visit_for_cache_key over the fields of the
    routes, atc.lua:462): a Host without a port matches `host:port` routes by the listener port, kept apart."""
    r = router(("8000", {"hosts": ["gw.test:8000"]}), ("any", {"hosts": ["gw.test"]}))
    calls = counting(r)
    for _ in range(2):
        assert [getattr(r.match(b"GET", b"/", b"gw.test", [], None, port), "payload", None)
                for port in (8000, 8001)] == ["8000", "any"]
    assert len(calls) == 2


def test_routes_on_the_mcp_call_are_remembered_per_method_and_tool():
    """A route on the MCP method or tool needs the peeked call (NEEDS_MCP, then a match with mcp=(method, tool)):
    both answers are remembered, the second keyed by the call, as Kong's key holds each field the routes use."""
    r = router(("search", {"paths": ["/mcp"], "mcp_tools": ["search"]}), ("mcp", {"paths": ["/mcp"]}))
    calls = counting(r)
    for _ in range(2):
        assert r.match(b"POST", b"/mcp", b"gw.test", []) is NEEDS_MCP
        assert [r.match(b"POST", b"/mcp", b"gw.test", [], call).payload  # type: ignore[union-attr]
                for call in (("tools/call", "search"), ("tools/call", "other"), ("tools/list", None))] == [
            "search", "mcp", "mcp"]
    assert len(calls) == 4


def test_many_or_long_lines_of_routed_headers_and_long_tool_names_are_not_kept():
    """The memory stays bounded: a request with more lines of the headers routes use than MAX_CACHED_FIELDS, or
    longer ones than MAX_CACHED_FIELD_BYTES, or a longer MCP method and tool than MAX_CACHED_MCP, is matched every
    time."""
    from gateway.routing.router import MAX_CACHED_FIELD_BYTES, MAX_CACHED_FIELDS, MAX_CACHED_MCP

    r = router(("v1", {"paths": ["/"], "headers": {"x-version": ["v1"]}}), ("any", {"paths": ["/"]}))
    calls = counting(r)
    many = [("x-version", "v1")] * (MAX_CACHED_FIELDS + 1)
    long = [("x-version", "v" * MAX_CACHED_FIELD_BYTES)]
    assert pick(r, "/", headers=many) == pick(r, "/", headers=many) == "v1"
    assert pick(r, "/", headers=long) == pick(r, "/", headers=long) == "any"
    assert len(calls) == 4
    r = router(("tool", {"paths": ["/"], "mcp_tools": ["search"]}), ("any", {"paths": ["/"]}))
    calls = counting(r)
    call = ("tools/call", "t" * MAX_CACHED_MCP)
    for _ in range(2):
        assert r.match(b"POST", b"/", b"gw.test", [], call).payload == "any"  # type: ignore[union-attr]
    assert len(calls) == 2


def test_the_memory_is_bounded_and_long_targets_are_not_kept():
    from gateway.routing.router import MATCH_CACHE, MAX_CACHED_HOST, MAX_CACHED_TARGET

    r = router(("api", {"paths": ["/"]}))
    for i in range(MATCH_CACHE + 10):
        pick(r, f"/{i}")
    assert len(r._answers) <= MATCH_CACHE  # type: ignore[arg-type]
    calls = counting(r)
    long = "/" + "a" * MAX_CACHED_TARGET
    assert pick(r, long) == pick(r, long) == "api" and len(calls) == 2
    long_host = "h" * (MAX_CACHED_HOST + 1)
    assert pick(r, "/x", host=long_host) == pick(r, "/x", host=long_host) == "api" and len(calls) == 4


def test_a_star_inside_a_host_is_a_literal_character_as_in_kong():
    """Kong's host_op_transform: only a leading or trailing `*` is a wildcard."""
    r = router(("inner", {"hosts": ["a.*.test"], "paths": ["/"]}), ("suffix", {"hosts": ["*.b.test"], "paths": ["/"]}),
               ("prefix", {"hosts": ["c.*"], "paths": ["/"]}))
    assert pick(r, "/", host="a.x.test") is None
    assert pick(r, "/", host="a.*.test") == "inner"
    assert pick(r, "/", host="x.y.b.test") == "suffix"
    assert pick(r, "/", host="c.internal") == "prefix"


def test_the_matched_prefix_is_kept_for_a_strip_path_route_only():
    """Kong's match_t.prefix (X-Forwarded-Prefix): the part of the request path the route matched, with strip_path."""
    r = router(("strip", {"paths": ["/api"]}), ("keep", {"paths": ["/raw"], "strip_path": False}),
               ("regex", {"paths": [r"~/v\d+"]}))
    assert [r.match(b"GET", t, b"h", []).prefix for t in (b"/api/x", b"/raw/x", b"/v2/x")] == [b"/api", b"", b"/v2"]
