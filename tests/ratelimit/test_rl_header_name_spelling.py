"""rate-limiting's `limit_by: header` with a header_name spelled with "_": Kong calls
kong.request.get_header(conf.header_name) with the name as configured (kong/plugins/rate-limiting/handler.lua:76;
typedefs.header_name does not normalize it). kong/tools/http.lua:561-570 reads nginx's $http_<name> (every line
whose name matches, "_" and "-" alike, joined by ", "), and a value holding ", " is looked up again in
get_headers()[name], whose keys are the lower-case names as sent ("_" kept: underscores_in_headers on,
kong/templates/nginx_kong.lua:30); lua-resty-core's metatable tries a missed name lower-cased, then with "_" as "-"."""

from __future__ import annotations

import json
from types import SimpleNamespace

from gateway.config import parse_config
from gateway.policies.rate_limiting.handler import EMPTY_UUID
from gateway.ratelimit.spec import counter_of
from gateway.runtime import compile_config

PLUGIN = "0b6f3c52-8d2e-4f4a-a1c9-7e5d3b2a1f00"
CLIENT = "10.0.0.1"
GLOBAL = f"{EMPTY_UUID}:{EMPTY_UUID}"  # the scope of a plugin on no route and no service


def key_by_header(header_name: str, headers: list[tuple[bytes, bytes]]) -> str:
    """The counter (the key past its spec's tag) rate-limiting (limit_by header, header_name) makes for a request
    with these header lines (lower-case names, as the codecs give them) from CLIENT."""
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}],
           "plugins": [{"name": "rate-limiting", "id": PLUGIN,
                        "config": {"day": 2, "limit_by": "header", "header_name": header_name}}]}
    route = compile_config(parse_config(json.dumps(doc))).router.match(b"GET", b"/", None, []).payload
    (policy,) = [p for p in route.policies if p.name == "rate-limiting"]
    return counter_of(policy.key(SimpleNamespace(route=route, client_ip=CLIENT,
                                                 request=SimpleNamespace(headers=headers))))


def test_a_repeated_header_named_with_an_underscore_is_counted_by_its_first_line():
    """Two `x_tenant` lines make $http_x_tenant "a, b", so get_header reads get_headers()["x_tenant"] = {"a", "b"}
    and the identifier is "a": the request counts against tenant "a", not the client's IP."""
    assert key_by_header("x_tenant", [(b"x_tenant", b"a"), (b"x_tenant", b"b")]) == GLOBAL + "|a"


def test_a_header_named_with_an_underscore_whose_value_holds_a_comma_is_counted_by_that_value():
    """One `x_tenant: a, b` line: $http_x_tenant holds ", ", and get_headers()["x_tenant"] is the string "a, b",
    the identifier."""
    assert key_by_header("x_tenant", [(b"x_tenant", b"a, b")]) == GLOBAL + "|a, b"


def test_a_name_with_capitals_and_an_underscore_reads_the_underscored_lines_before_the_dashed_ones():
    """header_name "X_Tenant": get_headers()["X_Tenant"] is looked up as "x_tenant" first, so of an `x-tenant` and
    an `x_tenant` line ($http_x_tenant "b, a") the identifier is the `x_tenant` one's value."""
    assert key_by_header("X_Tenant", [(b"x-tenant", b"b"), (b"x_tenant", b"a")]) == GLOBAL + "|a"
