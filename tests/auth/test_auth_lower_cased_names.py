"""How key-auth and hmac-auth find a header by a configured name with capitals and "_", as Kong does:
kong.request.get_headers()' table is keyed by the lower-case names as sent ("_" kept: Kong runs nginx with
underscores_in_headers on, kong/templates/nginx_kong.lua:30), and its metatable (lua-resty-core
lib/resty/core/request.lua req_headers_mt, v0.1.26 and later) looks a missed name up lower-cased first, and only then
that with "_" as "-"."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gateway.config import parse_config
from gateway.policies.consumers import Directory, Identity
from gateway.policies.hmac_auth.headers import HeaderName, RequestHeaders
from gateway.policies.key_auth.handler import KeyAuth
from gateway.policies.key_auth.schema import KeyAuthConfig

DIRECTORY = Directory(parse_config("consumers:\n- username: bob\n  keyauth_credentials: [{key: kong}]\n"))


def key_auth_answer(key_name: str, headers: list[tuple[bytes, bytes]]) -> Any:
    """What key-auth with key_names [key_name] answers a request with these header lines (lower-case names)."""
    policy = KeyAuth(KeyAuthConfig(key_names=[key_name]), DIRECTORY)
    return policy.authenticate(SimpleNamespace(request=SimpleNamespace(headers=headers, target=b"/")))


def test_key_auth_key_name_with_capitals_and_underscores_finds_the_underscored_header():
    """kong/plugins/key-auth/handler.lua:125 `v = headers[name]` (kong.request.get_headers()) with key_names
    ["X_Api_Key"]: the metatable tries lower("X_Api_Key") = "x_api_key" first, the key a client's `X_Api_Key` line
    has, so Kong finds the key and authenticates bob."""
    found = key_auth_answer("X_Api_Key", [(b"x_api_key", b"kong")])
    assert isinstance(found, Identity) and found.username == "bob"


def test_key_auth_key_name_with_capitals_and_underscores_takes_the_underscored_header_before_the_dashed_one():
    """The metatable's "_" -> "-" try comes only after a miss of the lower-cased name: with both `x_api_key: kong`
    and `x-api-key: other`, Kong reads "kong" (one value, so no "Duplicate API key found")."""
    found = key_auth_answer("X_Api_Key", [(b"x-api-key", b"other"), (b"x_api_key", b"kong")])
    assert isinstance(found, Identity) and found.username == "bob"


def test_hmac_auth_reads_a_repeated_header_named_with_capitals_and_underscores_by_its_lower_cased_lines():
    """kong/tools/http.lua:561-570: kong.request.get_header("X_Date") with two `x_date` lines has $http_x_date
    "a, b", so it reads get_headers()["X_Date"], which the metatable finds lower-cased as "x_date": {"a", "b"}, and
    answers the first, "a" (before any `x-date` line)."""
    view = RequestHeaders([(b"x-date", b"c, d"), (b"x_date", b"a"), (b"x_date", b"b")])
    assert view.get(HeaderName(b"X_Date")) == b"a"
