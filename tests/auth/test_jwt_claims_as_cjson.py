"""jwt: Kong's jwt_parser decodes the header and claims with lua-cjson (`local json = require "cjson"`,
kong/plugins/jwt/jwt_parser.lua decode_token), and so does the gateway (gateway.policies.cjson.decode; Python's
json.loads gave properly signed tokens the other answer): lua-cjson takes a raw control character in a string, a
leading-zero number and text after a NUL (Kong verifies them), and refuses an unpaired UTF-16 surrogate escape
(Kong's "Bad token; invalid JSON")."""

from __future__ import annotations

import pytest
from auth_helpers import (
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    jwt_secret,
    message,
    sign_raw,
    start,
)

CONSUMERS = [{"username": "bob", "jwt_secrets": [jwt_secret("bobkey")]}]


async def _gateway(nursery, gateway) -> int:  # noqa: ANN001
    routes = [{"paths": ["/"], "plugins": [{"name": "jwt", "config": {}}]}]
    _, port = await start(nursery, gateway, routes, consumers=CONSUMERS)
    return port


@pytest.mark.parametrize("claims", [
    b'{"iss":"bobkey","name":"a\tb"}',  # a raw tab in a string: lua-cjson has no control-character check
    b'{"iss":"bobkey","n":01}',  # a leading zero: lua-cjson's decode_invalid_numbers (on by default)
    b'{"iss":"bobkey"}\x00trailing',  # a NUL ends lua-cjson's text
], ids=["raw-tab", "leading-zero", "nul"])
async def test_claims_lua_cjson_reads_are_verified(nursery, gateway, claims):
    port = await _gateway(nursery, gateway)
    reply = await call(port, "/", [("authorization", "Bearer " + sign_raw(claims))])
    assert reply.status == 200, reply.body


async def test_an_unpaired_surrogate_escape_is_invalid_json(nursery, gateway):
    """lua-cjson's json_append_unicode_escape refuses a high surrogate not followed by a low one."""
    port = await _gateway(nursery, gateway)
    reply = await call(port, "/", [("authorization", "Bearer " + sign_raw(b'{"iss":"bobkey","n":"\\ud800"}'))])
    assert (reply.status, message(reply)) == (401, {"message": "Bad token; invalid JSON"})
