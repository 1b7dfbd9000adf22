"""jwt's cookie_names: the token is nginx's $cookie_NAME (Kong's handler.lua retrieve_tokens: `var["cookie_" .. v]`),
which nginx >= 1.23 (Kong 3.x bundles OpenResty 1.27) reads with ngx_http_parse_cookie_lines: ";" is the only
separator (a "," belongs to the value), spaces may stand around the "=", and the value runs to the next ";".
(The gateway split on "," too and needed `name=` with no space.)"""

from __future__ import annotations

from auth_helpers import (
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    jwt_secret,
    make_token,
    message,
    start,
)

CONSUMERS = [{"username": "bob", "jwt_secrets": [jwt_secret("bobkey")]}]


async def _gateway(nursery, gateway) -> int:  # noqa: ANN001
    routes = [{"paths": ["/"], "plugins": [{"name": "jwt", "config": {"cookie_names": ["crumble"]}}]}]
    _, port = await start(nursery, gateway, routes, consumers=CONSUMERS)
    return port


async def test_a_comma_does_not_separate_cookies(nursery, gateway):
    """`other=1,crumble=<token>`: for nginx one cookie named `other`; $cookie_crumble is empty, Kong finds no token."""
    port = await _gateway(nursery, gateway)
    reply = await call(port, "/", [("cookie", f"other=1,crumble={make_token('bobkey')}")])
    assert (reply.status, message(reply)) == (401, {"message": "Unauthorized"})
    assert reply.header("www-authenticate") == "Bearer"


async def test_a_comma_belongs_to_the_cookie_value(nursery, gateway):
    """`crumble=<token>,other=1`: nginx's value runs to the next ";", so the token's signature part is
    `<sig>,other=1`, not base64url: Kong's "Bad token; invalid signature"."""
    port = await _gateway(nursery, gateway)
    reply = await call(port, "/", [("cookie", f"crumble={make_token('bobkey')},other=1")])
    assert (reply.status, message(reply)) == (401, {"message": "Bad token; invalid signature"})


async def test_spaces_around_the_equals_sign_are_skipped(nursery, gateway):
    """`crumble = <token>`: nginx skips the spaces after the name and after "=" and finds the token."""
    port = await _gateway(nursery, gateway)
    reply = await call(port, "/", [("cookie", f"crumble = {make_token('bobkey')}")])
    assert reply.status == 200, reply.body
