"""jwt maximum_expiration without claims_to_verify (Kong's schema allows it: the conditional check passes a null
claims_to_verify). Kong's jwt_parser.lua check_maximum_expiration does `exp - time() > maximum_expiration` with
only `exp == nil` refused: Lua's arithmetic coerces a numeric string, so `"exp": "<now + 50>"` is within a
maximum of 100 and the token passes (200). (The gateway refused every exp that was not a JSON number.)"""

from __future__ import annotations

import json
import time

from auth_helpers import (
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    jwt_secret,
    message,
    sign_raw,
    start,
)

CONSUMERS = [{"username": "bob", "jwt_secrets": [jwt_secret("bobkey")]}]


async def test_a_numeric_string_exp_within_the_maximum_passes(nursery, gateway):
    routes = [{"paths": ["/"], "plugins": [{"name": "jwt", "config": {"maximum_expiration": 100}}]}]
    _, port = await start(nursery, gateway, routes, consumers=CONSUMERS)
    soon = str(int(time.time()) + 50)
    reply = await call(port, "/", [("authorization", "Bearer " + sign_raw(json.dumps({"iss": "bobkey", "exp": soon})
                                                                         .encode()))])
    assert reply.status == 200, reply.body
    # and one past the maximum still fails, as in Kong (`"<now + 1000>" - time() > 100`)
    late = str(int(time.time()) + 1000)
    reply = await call(port, "/", [("authorization", "Bearer " + sign_raw(json.dumps({"iss": "bobkey", "exp": late})
                                                                         .encode()))])
    assert (reply.status, message(reply)) == (401, {"exp": "exceeds maximum allowed expiration"})
