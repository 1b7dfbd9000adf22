"""proxy-cache's key, sans-I/O: Kong's spec/03-plugins/31-proxy-cache/05-cache_key_spec.lua ported, the exact
strings Kong hashes, and the request facts (query arguments, headers, request line) read as OpenResty reads them."""

from __future__ import annotations

import hashlib
import random
import string
import uuid

import pytest

from gateway.policies.base import LuaError
from gateway.policies.proxy_cache.cache_key import (
    build_cache_key,
    header_args,
    headers_key,
    params_key,
    prefix_uuid,
    request_uri,
    unescape,
    uri_args,
)

CONSUMER1, CONSUMER2, ROUTE1, ROUTE2 = (str(uuid.uuid4()) for _ in range(4))


def _random() -> str:
    return "".join(random.choices(string.ascii_letters + string.digits, k=32))


# --- prefix_uuid (05-cache_key_spec.lua) ----------------------------------------------------------------------------


def test_prefixes_differ_for_a_consumer_on_different_routes():
    p1, p2 = prefix_uuid(CONSUMER1, ROUTE1), prefix_uuid(CONSUMER1, ROUTE2)
    assert p1 != p2 and "default" not in (p1, p2)


def test_prefixes_differ_for_different_consumers_on_a_route():
    p1, p2 = prefix_uuid(CONSUMER1, ROUTE1), prefix_uuid(CONSUMER2, ROUTE1)
    assert p1 != p2 and "default" not in (p1, p2)


def test_the_prefix_of_a_route_without_consumer_is_stable_and_not_default():
    assert prefix_uuid(None, ROUTE1) == prefix_uuid(None, ROUTE1) != "default"


def test_a_consumer_makes_a_route_prefix_of_its_own():
    assert prefix_uuid(None, ROUTE1) != prefix_uuid(CONSUMER1, ROUTE1)


def test_the_prefix_is_default_without_route():
    assert prefix_uuid() == "default"
    assert prefix_uuid(CONSUMER1) == "default"


def test_prefixes_are_consumer_colon_route_or_route():
    assert prefix_uuid("c", "r") == "c:r"
    assert prefix_uuid(None, "r") == "r"


# --- params_key (05-cache_key_spec.lua) -----------------------------------------------------------------------------


def test_params_key_defaults_to_all_arguments():
    assert params_key({b"a": b"1", b"b": b"2"}) == b"a=1:b=2"


def test_params_key_of_an_empty_query_is_empty():
    assert params_key({}) == b""
    assert params_key({}, ["a"]) == b""


def test_params_key_sorts_the_arguments():
    for _ in range(100):
        s1, s2 = ("a" + _random()).encode(), ("b" + _random()).encode()
        assert params_key({s2: b"2", s1: b"1"}) == s1 + b"=1:" + s2 + b"=2"


def test_params_key_uses_only_the_vary_query_params():
    assert params_key({b"a": b"1", b"b": b"2"}, ["a"]) == b"a=1"


def test_params_key_joins_a_repeated_argument_sorted():
    assert params_key({b"a": [b"1", b"2"]}, ["a"]) == b"a=1,2"
    assert params_key({b"a": [b"2", b"1"]}, ["a"]) == b"a=1,2"


def test_params_key_skips_vary_query_params_the_request_lacks():
    assert params_key({b"a": [b"1", b"2"], b"b": b"2"}, ["a", "b", "c"]) == b"a=1,2:b=2"


def test_params_key_keeps_the_configured_order_of_vary_query_params():
    assert params_key({b"a": b"1", b"b": b"2"}, ["b", "a"]) == b"b=2:a=1"


def test_a_bare_argument_is_its_name_alone():
    assert params_key({b"a": True, b"b": b""}) == b"a:b="


@pytest.mark.parametrize("values", [[True, True], [b"x", True], [b"x", b"y", True]])
def test_a_repeated_argument_with_a_bare_value_fails_as_kongs_table_sort(values):
    """cache_key.lua:39 `sort(arg)`: LuaJIT's auxsort compares every element of a list of two or more, and `<` on
    a boolean is a Lua error."""
    with pytest.raises(LuaError, match="attempt to compare"):
        params_key({b"a": values})


def test_a_repeated_bare_argument_outside_vary_query_params_is_not_sorted():
    """generate_key_from only looks at the vary_query_params fields."""
    assert params_key({b"a": [True, True], b"b": b"1"}, ["b"]) == b"b=1"


# --- headers_key (05-cache_key_spec.lua) ----------------------------------------------------------------------------


def test_headers_key_defaults_to_none():
    assert headers_key({b"a": b"1", b"b": b"2"}) == b""


def test_headers_key_uses_only_the_vary_headers():
    assert headers_key({b"a": b"1", b"b": b"2"}, ["a"]) == b"a=1"


def test_headers_key_joins_a_repeated_header_sorted():
    assert headers_key({b"a": [b"1", b"2"]}, ["a"]) == b"a=1,2"
    assert headers_key({b"a": [b"2", b"1"]}, ["a"]) == b"a=1,2"


def test_headers_key_skips_vary_headers_the_request_lacks():
    assert headers_key({b"a": [b"1", b"2"], b"b": b"2"}, ["a", "b", "c"]) == b"a=1,2:b=2"


def test_a_vary_header_is_found_lower_cased_with_dashes_but_named_as_configured():
    """ngx.req.get_headers' table: a missed name is looked up again lower-cased with "_" as "-"."""
    headers = header_args([(b"x-foo-bar", b"1")])
    assert headers_key(headers, ["X_Foo_Bar"]) == b"X_Foo_Bar=1"


def test_a_header_named_with_an_underscore_is_found_as_written():
    assert headers_key(header_args([(b"x_foo", b"1")]), ["x_foo"]) == b"x_foo=1"
    assert headers_key(header_args([(b"x_foo", b"1")]), ["x-foo"]) == b""


def test_a_vary_header_with_upper_case_and_underscores_is_found_lower_cased_before_dashed():
    """cache_key.lua:36 `args[field]` on kong.request.get_headers(), whose req_headers_mt.__index (lua-resty-core
    lib/resty/core/request.lua since v0.1.26, in Kong's OpenResty 1.27.1.2) looks the name up lower-cased as it
    is, then with "_" as "-". Kong keeps underscores in header names (kong/templates/nginx_kong.lua:30
    `underscores_in_headers on`), so vary_headers ["X_Tenant"] keys a client's `X_Tenant` line, ahead of an
    `x-tenant` one."""
    assert headers_key(header_args([(b"x_tenant", b"a")]), ["X_Tenant"]) == b"X_Tenant=a"
    assert headers_key(header_args([(b"x-tenant", b"b"), (b"x_tenant", b"a")]), ["X_Tenant"]) == b"X_Tenant=a"
    assert headers_key(header_args([(b"x-tenant", b"b")]), ["X_Tenant"]) == b"X_Tenant=b"


def test_a_vary_query_param_is_found_only_as_configured():
    """kong.request.get_query() is ngx.req.get_uri_args()'s plain table: no __index, so a name is not lower-cased
    nor dashed."""
    args = uri_args(b"X_Tenant=a&x-tenant=b")
    assert params_key(args, ["X_Tenant"]) == b"X_Tenant=a"
    assert params_key(args, ["x_tenant"]) == b""
    assert params_key(args, ["X-Tenant"]) == b""


# --- the key: the exact string Kong hashes ---------------------------------------------------------------------------


def test_the_key_is_the_sha256_of_prefix_method_uri_params_and_headers():
    key = build_cache_key(None, None, b"GET", b"GET /get HTTP/1.1", {}, {})
    assert key == "ff069ce619062d5b4eeb7a66c596f726a12bf5ed3ac61831568f760a3b871d17"
    assert key == hashlib.sha256(b"default|GET|GET /get HTTP/1.1||").hexdigest()


def test_the_key_of_a_route_with_query_arguments():
    route = "6e7c9ab3-8a0f-4c59-a4bb-1f3b1c6e0f10"
    key = build_cache_key(None, route, b"GET", request_uri(b"GET", b"/get?b=c&a=b", b"1.1"),
                          uri_args(b"b=c&a=b"), {})
    assert key == "c56949e768cf58b7afbb8a7ab6627875664333bb030e675c8a7f75fbeaf1843d"


def test_the_key_of_a_consumer_with_vary_headers():
    key = build_cache_key("c1", "r1", b"GET", b"GET /x", {b"a": True}, header_args([(b"foo", b"bar")]),
                          vary_headers=["foo"])
    assert key == "9882d50c6ce9b33cd3e0abac12c188db10d2ee7027fa8a795b1cdb2f220ee696"


def test_keys_are_64_hex_digits():
    key = build_cache_key(CONSUMER1, ROUTE1, b"GET", b"GET /", {}, {})
    assert len(key) == 64 and set(key) <= set("0123456789abcdef")


# --- the uri: nginx's $request up to its "?" -----------------------------------------------------------------------


def test_the_uri_without_query_is_the_whole_request_line():
    assert request_uri(b"GET", b"/get", b"1.1") == b"GET /get HTTP/1.1"


def test_the_uri_with_a_query_ends_before_it():
    assert request_uri(b"GET", b"/get?a=1", b"1.1") == b"GET /get"
    assert request_uri(b"GET", b"/get?", b"1.0") == b"GET /get"


def test_ignore_uri_case_lowers_ascii_only():
    assert request_uri(b"GET", b"/Ignore-Case/KONG\xc3\x80", b"1.1", ignore_case=True) == \
        b"get /ignore-case/kong\xc3\x80 http/1.1"


# --- query arguments: ngx.req.get_uri_args --------------------------------------------------------------------------


def test_arguments_are_values_true_for_bare_names_lists_when_repeated():
    assert uri_args(b"a=1&b&a=2&c=") == {b"a": [b"1", b"2"], b"b": True, b"c": b""}


def test_arguments_without_a_name_are_dropped():
    assert uri_args(b"=x&&=&y") == {b"y": True}


def test_argument_values_keep_later_equals_signs():
    assert uri_args(b"a=b=c") == {b"a": b"b=c"}


def test_arguments_are_unescaped_with_plus_as_space():
    assert uri_args(b"n%61me=a+b%20c") == {b"name": b"a b c"}


def test_a_broken_escape_keeps_its_percent_as_kongs_openresty():
    assert unescape(b"+%41%zz%4") == b" A%zz%4"
    assert unescape(b"%4g") == b"%4g"


def test_only_the_first_100_arguments_count():
    args = uri_args(b"&".join(b"a%d=1" % i for i in range(150)))
    assert len(args) == 100 and b"a99" in args and b"a100" not in args


def test_only_the_first_100_headers_count():
    args = header_args([(b"h%d" % i, b"v") for i in range(150)])
    assert len(args) == 100 and b"h100" not in args
