"""jwt as Kong's plugin reads a token: the cookie as nginx's $cookie_NAME, the header and claims as lua-cjson, the
exp of maximum_expiration as Lua's arithmetic."""

from __future__ import annotations

import json
import time

import pytest
from auth_helpers import (
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    jwt_secret,
    make_token,
    message,
    sign_raw,
    start,
)

CONSUMERS = [{"username": "bob", "jwt_secrets": [jwt_secret("bobkey")]}]


async def _gateway(nursery, gateway, config: dict) -> int:  # noqa: ANN001
    routes = [{"paths": ["/"], "plugins": [{"name": "jwt", "config": config}]}]
    _, port = await start(nursery, gateway, routes, consumers=CONSUMERS)
    return port


async def test_a_comma_ends_a_cookie_passed_over(nursery, gateway):
    """jwt's cookie_names: the token is nginx's $cookie_NAME (Kong's retrieve_tokens: `var["cookie_" .. v]`). Kong
    3.x bundles OpenResty 1.27.1, whose nginx reads it with ngx_http_parse_multi_header_lines (release-1.27.1
    src/http/ngx_http_variables.c:1081, src/http/ngx_http_parse.c): a cookie that is not the one asked for ends at
    the next ";" or "," (its `skip:` loop), spaces may stand around the "=", and the value runs to the next ";".
    (Only nginx 1.29.6's ngx_http_parse_cookie_lines makes ";" the sole separator.)

    `other=1,crumble=<token>`: $cookie_crumble is the token, Kong verifies it."""
    port = await _gateway(nursery, gateway, {"cookie_names": ["crumble"]})
    reply = await call(port, "/", [("cookie", f"other=1,crumble={make_token('bobkey')}")])
    assert reply.status == 200, reply.body


async def test_a_comma_belongs_to_the_cookie_value(nursery, gateway):
    """`crumble=<token>,other=1`: nginx's value runs to the next ";" (a "," does not end it), so the token's
    signature part is `<sig>,other=1`, not base64url: Kong's "Bad token; invalid signature"."""
    port = await _gateway(nursery, gateway, {"cookie_names": ["crumble"]})
    reply = await call(port, "/", [("cookie", f"crumble={make_token('bobkey')},other=1")])
    assert (reply.status, message(reply)) == (401, {"message": "Bad token; invalid signature"})


async def test_spaces_around_the_equals_sign_are_skipped(nursery, gateway):
    """`crumble = <token>`: nginx skips the spaces after the name and after "=" and finds the token."""
    port = await _gateway(nursery, gateway, {"cookie_names": ["crumble"]})
    reply = await call(port, "/", [("cookie", f"crumble = {make_token('bobkey')}")])
    assert reply.status == 200, reply.body


@pytest.mark.parametrize("claims", [
    b'{"iss":"bobkey","name":"a\tb"}',  # a raw tab in a string: lua-cjson has no control-character check
    b'{"iss":"bobkey","n":01}',  # a leading zero: lua-cjson's decode_invalid_numbers (on by default)
    b'{"iss":"bobkey"}\x00trailing',  # a NUL ends lua-cjson's text
], ids=["raw-tab", "leading-zero", "nul"])
async def test_claims_lua_cjson_reads_are_verified(nursery, gateway, claims):
    """jwt: Kong's jwt_parser decodes the header and claims with lua-cjson (`local json = require "cjson"`,
    kong/plugins/jwt/jwt_parser.lua decode_token), and so does the gateway (gateway.policies.cjson.decode; Python's
    json.loads gave properly signed tokens the other answer): lua-cjson takes a raw control character in a string, a
    leading-zero number and text after a NUL (Kong verifies them), and refuses an unpaired UTF-16 surrogate escape
    (Kong's "Bad token; invalid JSON")."""
    port = await _gateway(nursery, gateway, {})
    reply = await call(port, "/", [("authorization", "Bearer " + sign_raw(claims))])
    assert reply.status == 200, reply.body


async def test_an_unpaired_surrogate_escape_is_invalid_json(nursery, gateway):
    """lua-cjson's json_append_unicode_escape refuses a high surrogate not followed by a low one."""
    port = await _gateway(nursery, gateway, {})
    reply = await call(port, "/", [("authorization", "Bearer " + sign_raw(b'{"iss":"bobkey","n":"\\ud800"}'))])
    assert (reply.status, message(reply)) == (401, {"message": "Bad token; invalid JSON"})


async def test_a_numeric_string_exp_within_the_maximum_passes(nursery, gateway):
    """jwt maximum_expiration without claims_to_verify (Kong's schema allows it: the conditional check passes a null
    claims_to_verify). Kong's jwt_parser.lua check_maximum_expiration does `exp - time() > maximum_expiration` with
    only `exp == nil` refused: Lua's arithmetic coerces a numeric string, so `"exp": "<now + 50>"` is within a
    maximum of 100 and the token passes (200). (The gateway refused every exp that was not a JSON number.)"""
    port = await _gateway(nursery, gateway, {"maximum_expiration": 100})
    soon = str(int(time.time()) + 50)
    reply = await call(port, "/", [("authorization", "Bearer " + sign_raw(json.dumps({"iss": "bobkey", "exp": soon})
                                                                         .encode()))])
    assert reply.status == 200, reply.body
    # and one past the maximum still fails, as in Kong (`"<now + 1000>" - time() > 100`)
    late = str(int(time.time()) + 1000)
    reply = await call(port, "/", [("authorization", "Bearer " + sign_raw(json.dumps({"iss": "bobkey", "exp": late})
                                                                         .encode()))])
    assert (reply.status, message(reply)) == (401, {"exp": "exceeds maximum allowed expiration"})


async def test_a_claim_with_a_4400_digit_integer_is_verified_as_lua_cjson_reads_it(nursery, gateway):
    """Kong's jwt_parser decodes the claims with lua-cjson (kong/plugins/jwt/jwt_parser.lua:260-261,
    `json.decode(base64_decode(claims_64))`); lua-cjson's json_next_number_token reads an integer with strtoll, which
    clamps one past 64 bits to LLONG_MAX (the gateway's own cjson.decode docstring: "an integer past 64 bits is
    clamped"). So a properly signed token whose claims carry a 4400-digit integer decodes, is verified and passes
    (kong/plugins/jwt/handler.lua:182-185 reports "Bad token; ..." only when decode_token fails).

    The gateway's cjson.decode handed the digits to Python's int(), which refuses more than 4300 digits
    (sys.int_info.str_digits_check_threshold): ValueError, read as invalid JSON, 401 "Bad token; invalid JSON"."""
    port = await _gateway(nursery, gateway, {})
    token = sign_raw(b'{"iss":"bobkey","n":' + b"7" * 4400 + b"}")
    reply = await call(port, "/", [("authorization", f"Bearer {token}")])
    assert reply.status == 200, (reply.status, message(reply))
