"""Kong's basic-auth through the in-process gateway: kong/plugins/basic-auth's answers and the upstream's view."""

from __future__ import annotations

import base64
import hashlib
import json
from types import SimpleNamespace
from typing import Any

import pytest
from auth_helpers import (
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    message,
    start,
    upstream,
)

from gateway.config import ConfigError, parse_config
from gateway.policies.basic_auth.handler import BasicAuth, decode_basic
from gateway.policies.basic_auth.schema import BasicAuthConfig
from gateway.policies.consumers import Directory, Rejection

CONSUMERS = [
    {"username": "bob", "basicauth_credentials": [{"username": "bob", "password": "kong"},
                                                   {"username": "user123", "password": "password123"},
                                                   {"username": "user321", "password": "password:123"}]},
    {"username": "no-body"},
]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def basic_gateway(nursery, gateway, **config):  # noqa: ANN001,ANN003,ANN201
    routes = [{"paths": ["/"], "plugins": [{"name": "basic-auth", "config": config}]}]
    return await start(nursery, gateway, routes, consumers=CONSUMERS)


async def test_missing_credentials_are_401_with_the_default_realm(nursery, gateway):
    _, port = await basic_gateway(nursery, gateway)
    reply = await call(port)
    assert (reply.status, message(reply)) == (401, {"message": "Unauthorized"})
    assert reply.header("www-authenticate") == 'Basic realm="service"'


@pytest.mark.parametrize("value", [
    "foobar", "Basic a29uZw==", "Basic Ym9i", "Basic adXNlcjEyMzpwYXNzd29yZDEyMw==", "Basic !!!!",
    basic("bob", "wrong"), basic("nobody", "kong"), "Basic " + "A" * 4097, "Bearer " + basic("bob", "kong")[6:]],
    ids=["not-basic", "password-only", "username-only", "bad-base64", "not-base64", "wrong-password",
         "unknown-user", "long", "bearer"])
async def test_bad_credentials_are_401_unauthorized(nursery, gateway, value):
    _, port = await basic_gateway(nursery, gateway, realm="test-realm")
    for header in ("authorization", "proxy-authorization"):
        reply = await call(port, headers=[(header, value)])
        assert (reply.status, message(reply)) == (401, {"message": "Unauthorized"})
        assert reply.header("www-authenticate") == 'Basic realm="test-realm"'


async def test_valid_credentials_reach_upstream_with_the_username_as_credential_identifier(nursery, gateway):
    _, port = await basic_gateway(nursery, gateway)
    seen = upstream(await call(port, headers=[("authorization", basic("user123", "password123"))]))
    assert seen["x-consumer-username"] == "bob"
    assert seen["x-credential-identifier"] == "user123"
    assert seen["authorization"] == basic("user123", "password123")
    assert "x-anonymous-consumer" not in seen


async def test_a_password_may_contain_a_colon(nursery, gateway):
    _, port = await basic_gateway(nursery, gateway)
    seen = upstream(await call(port, headers=[("authorization", basic("user321", "password:123"))]))
    assert seen["x-credential-identifier"] == "user321"


async def test_proxy_authorization_is_read_and_forwarded_as_kong_forwards_it(nursery, gateway):
    _, port = await basic_gateway(nursery, gateway)
    seen = upstream(await call(port, headers=[("proxy-authorization", basic("bob", "kong"))]))
    assert seen["x-credential-identifier"] == "bob"
    assert seen["proxy-authorization"] == basic("bob", "kong")


async def test_hide_credentials_strips_the_proxy_authorization_it_used(nursery, gateway):
    _, port = await basic_gateway(nursery, gateway, hide_credentials=True)
    seen = upstream(await call(port, headers=[("proxy-authorization", basic("bob", "kong"))]))
    assert seen["x-credential-identifier"] == "bob"
    assert "proxy-authorization" not in seen


async def test_authorization_is_tried_when_proxy_authorization_names_no_one(nursery, gateway):
    _, port = await basic_gateway(nursery, gateway)
    reply = await call(port, headers=[("proxy-authorization", basic("ghost", "x")),
                                      ("authorization", basic("bob", "kong"))])
    assert upstream(reply)["x-credential-identifier"] == "bob"


async def test_hide_credentials_strips_authorization(nursery, gateway):
    _, port = await basic_gateway(nursery, gateway, hide_credentials=True)
    seen = upstream(await call(port, headers=[("authorization", basic("bob", "kong"))]))
    assert "authorization" not in seen
    assert seen["x-consumer-username"] == "bob"


async def test_a_verified_authorization_repeated_authenticates_and_is_still_hidden(nursery, gateway):
    """The second request with a value already verified is answered from the plugin's memo: the same consumer and
    credential, and with hide_credentials the header still does not reach the upstream."""
    _, port = await basic_gateway(nursery, gateway, hide_credentials=True)
    for _ in range(3):
        seen = upstream(await call(port, headers=[("authorization", basic("user123", "password123"))]))
        assert (seen["x-consumer-username"], seen["x-credential-identifier"]) == ("bob", "user123")
        assert "authorization" not in seen


async def test_a_wrong_password_is_refused_every_time_before_and_after_the_right_one(nursery, gateway):
    _, port = await basic_gateway(nursery, gateway)
    statuses = [(await call(port, headers=[("authorization", basic("bob", password))])).status
                for password in ("wrong", "kong", "wrong", "kong", "kong ")]
    assert statuses == [401, 200, 401, 200, 401]


async def test_anonymous(nursery, gateway):
    _, port = await basic_gateway(nursery, gateway, anonymous="no-body")
    seen = upstream(await call(port, headers=[("authorization", basic("user123", "password123"))]))
    assert (seen["x-consumer-username"], seen["x-credential-identifier"]) == ("bob", "user123")
    seen = upstream(await call(port, headers=[("authorization", basic("bob", "nope"))]))
    assert (seen["x-consumer-username"], seen["x-anonymous-consumer"]) == ("no-body", "true")
    assert "x-credential-identifier" not in seen


@pytest.mark.parametrize(("header", "expected"), [
    (b"Basic Ym9iOmtvbmc=", (b"bob", b"kong")),
    (b"basic Ym9iOmtvbmc", (b"bob", b"kong")),  # no padding: ngx.decode_base64 takes it
    (b"  Basic   Ym9iOmtvbmc=", (b"bob", b"kong")),
    (b"Basic Ym9iOmtvbmc=garbage", (b"bob", b"kong")),  # read up to the first "="
    (b"Basic Og==", None),  # ":" alone: no username
    (b"Basic Omtvbmc6eA==", (b"kong", b"x")),  # ":kong:x": Kong's unanchored pattern finds "kong:x"
    (b"Basic", None),
    (b"Basic Y", None),
])
def test_decode_basic_reads_the_header_as_kong_does(header, expected):
    assert decode_basic(header) == expected


def hiding_policy() -> BasicAuth:
    return BasicAuth(BasicAuthConfig(hide_credentials=True), Directory(parse_config("{}", "t.yml")))


def bare_exchange(headers: list[tuple[bytes, bytes]]) -> Any:
    """What authenticate reads and hide_credentials rewrites of an exchange: its request's headers."""
    return SimpleNamespace(request=SimpleNamespace(headers=headers))


@pytest.mark.parametrize("name", [b"authorization", b"proxy-authorization"])
@pytest.mark.parametrize("decoded", [b"an-api-token-without-a-colon", b":::"], ids=["no-colon", "colons-only"])
def test_hide_credentials_keeps_a_basic_value_that_decodes_to_no_username_and_password(name, decoded):
    """kong/plugins/basic-auth/access.lua:51-59: when ([^:]+):(.*) finds nothing in the decoded value,
    retrieve_credentials returns before access.lua:68-69 clears the header, so the request (401, or the anonymous
    consumer with `anonymous`) keeps it."""
    value = b"Basic " + base64.b64encode(decoded)
    ex = bare_exchange([(name, value)])
    assert isinstance(hiding_policy().authenticate(ex), Rejection)
    assert ex.request.headers == [(name, value)]


@pytest.mark.parametrize("name", [b"authorization", b"proxy-authorization"])
@pytest.mark.parametrize("value", [b"Bearer Ym9iOmtvbmc=", b"Basic", b"Basic !!!!", b"Basic Y"],
                         ids=["not-basic", "no-credentials", "not-base64", "one-base64-digit"])
def test_hide_credentials_removes_a_value_that_is_not_basic_base64(name, value):
    """kong/plugins/basic-auth/access.lua:36-49: a value without a match of \\s*[Bb]asic\\s*(.+), or whose capture
    ngx.decode_base64 refuses, skips the parsing and reaches access.lua:68-69, which clears the header."""
    ex = bare_exchange([(name, value), (b"x-other", b"kept")])
    assert isinstance(hiding_policy().authenticate(ex), Rejection)
    assert ex.request.headers == [(b"x-other", b"kept")]


# --- a file Kong exported (_transform: false): passwords are Kong's stored hashes ----------------------------------

BOB_ID = "0c9d6b1a-5b8e-4a52-8c3d-2f1e6a7b8c90"


def kong_hash(password: str, consumer_id: str) -> str:
    """kong/plugins/basic-auth/crypto.lua: the hex SHA-1 of the password followed by the consumer id."""
    return hashlib.sha1((password + consumer_id).encode()).hexdigest()


async def exported_gateway(nursery, gateway, password: str):  # noqa: ANN001,ANN201
    routes = [{"paths": ["/"], "plugins": [{"name": "basic-auth"}]}]
    consumers = [{"id": BOB_ID, "username": "bob",
                  "basicauth_credentials": [{"username": "bob", "password": password}]}]
    return await start(nursery, gateway, routes, consumers=consumers, _transform=False)


async def test_with_transform_false_the_stored_hash_checks_the_password_it_was_made_from(nursery, gateway):
    _, port = await exported_gateway(nursery, gateway, kong_hash("kong", BOB_ID))
    assert (await call(port, headers=[("authorization", basic("bob", "kong"))])).status == 200
    assert (await call(port, headers=[("authorization", basic("bob", "wrong"))])).status == 401


async def test_with_transform_false_the_stored_hash_itself_is_no_password(nursery, gateway):
    stored = kong_hash("kong", BOB_ID)
    _, port = await exported_gateway(nursery, gateway, stored)
    assert (await call(port, headers=[("authorization", basic("bob", stored))])).status == 401


def test_with_transform_false_a_password_that_is_not_a_stored_hash_is_refused():
    doc = {"_transform": False, "consumers": [
        {"username": "bob", "basicauth_credentials": [{"username": "bob", "password": "kong"}]}]}
    with pytest.raises(ConfigError) as e:
        parse_config(json.dumps(doc), "kong.yml")
    assert e.value.messages == [
        "kong.yml: consumers[0].basicauth_credentials[0].password: with _transform: false a password is Kong's stored "
        "hash (40 lower-case hex digits: SHA-1 of the password and the consumer id); remove _transform: false to give "
        "the password itself"]


async def test_proxy_authorization_spelled_with_an_underscore_is_read_as_kongs_get_header(nursery, gateway):
    """Kong: kong/plugins/basic-auth/access.lua:177 get_header("proxy-authorization") -> kong/tools/http.lua:561
    ngx.var.http_proxy_authorization, which matches a `Proxy_Authorization` header line; the credential is valid, so
    Kong proxies the request as bob (access.lua:181-183, set_consumer)."""
    routes = [{"paths": ["/"], "plugins": [{"name": "basic-auth", "config": {}}]}]
    _, port = await start(nursery, gateway, routes, consumers=CONSUMERS)
    reply = await call(port, headers=[("Proxy_Authorization", basic("bob", "kong"))])
    seen = upstream(reply)  # asserts 200
    assert seen["x-consumer-username"] == "bob"
    assert seen["x-credential-identifier"] == "bob"
