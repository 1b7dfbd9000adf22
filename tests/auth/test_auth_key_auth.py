"""Kong's key-auth through the in-process gateway: kong/plugins/key-auth's answers and what reaches the upstream."""

from __future__ import annotations

import pytest
from auth_helpers import (
    call,
    consumer_id,
    http_codec,  # noqa: F401 - the fixture: one codec
    message,
    start,
    upstream,
)

from gateway.config import parse_config
from gateway.runtime import compile_config

CONSUMERS = [
    {"username": "bob", "keyauth_credentials": [{"key": "kong", "id": "4fd6b3d8-6c3e-4a5a-9d09-0b6c1b2a9c01"}]},
    {"username": "no-body"},
]


async def key_gateway(nursery, gateway, **config):  # noqa: ANN001,ANN003,ANN201
    routes = [{"paths": ["/"], "plugins": [{"name": "key-auth", "config": config}]}]
    return await start(nursery, gateway, routes, consumers=CONSUMERS)


async def test_no_key_is_401_with_kongs_message_and_challenge(nursery, gateway):
    _, port = await key_gateway(nursery, gateway)
    reply = await call(port)
    assert (reply.status, message(reply)) == (401, {"message": "No API key found in request"})
    assert reply.header("www-authenticate") == "Key"


@pytest.mark.parametrize("where", ["header", "query", "bare-query"])
async def test_an_empty_key_is_no_key(nursery, gateway, where):
    _, port = await key_gateway(nursery, gateway)
    reply = await call(port, "/?apikey=" if where == "query" else "/?apikey" if where == "bare-query" else "/",
                       headers=[("apikey", "")] if where == "header" else [])
    assert (reply.status, message(reply)) == (401, {"message": "No API key found in request"})


async def test_the_realm_is_in_the_challenge(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, realm="test-realm")
    reply = await call(port)
    assert reply.header("www-authenticate") == 'Key realm="test-realm"'


@pytest.mark.parametrize("where", ["header", "query"])
async def test_an_unknown_key_is_401_unauthorized(nursery, gateway, where):
    _, port = await key_gateway(nursery, gateway)
    reply = await call(port, "/?apikey=123" if where == "query" else "/",
                       headers=[("apikey", "123")] if where == "header" else [])
    assert (reply.status, message(reply)) == (401, {"message": "Unauthorized"})
    assert reply.header("www-authenticate") == "Key"


@pytest.mark.parametrize("where", ["header", "query"])
async def test_a_valid_key_reaches_upstream_with_kongs_consumer_headers(nursery, gateway, where):
    _, port = await key_gateway(nursery, gateway)
    seen = upstream(await call(port, "/?apikey=kong" if where == "query" else "/",
                               headers=[("apikey", "kong")] if where == "header" else []))
    assert seen["x-consumer-username"] == "bob"
    assert seen["x-consumer-id"] == consumer_id("bob")
    assert seen["x-credential-identifier"] == "4fd6b3d8-6c3e-4a5a-9d09-0b6c1b2a9c01"  # key-auth names the credential id
    assert "x-anonymous-consumer" not in seen


@pytest.mark.parametrize(("target", "headers"), [
    ("/?apikey=kong&apikey=kong", []),
    ("/?apikey=kong&apikey", []),
    ("/", [("apikey", "kong"), ("apikey", "kong")]),
], ids=["query", "query-and-bare", "header"])
async def test_a_key_given_twice_is_duplicate(nursery, gateway, target, headers):
    _, port = await key_gateway(nursery, gateway)
    reply = await call(port, target, headers=headers)
    assert (reply.status, message(reply)) == (401, {"message": "Duplicate API key found"})
    assert reply.header("www-authenticate") == "Key"


async def test_the_header_is_looked_at_before_the_query(nursery, gateway):
    _, port = await key_gateway(nursery, gateway)
    assert (await call(port, "/?apikey=nope", headers=[("apikey", "kong")])).status == 200
    assert (await call(port, "/?apikey=kong", headers=[("apikey", "nope")])).status == 401


async def test_key_in_header_and_key_in_query_can_be_turned_off(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, key_in_header=False)
    assert (await call(port, headers=[("apikey", "kong")])).status == 401
    assert (await call(port, "/?apikey=kong")).status == 200


async def test_key_in_query_off(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, key_in_query=False)
    reply = await call(port, "/?apikey=kong")
    assert (reply.status, message(reply)) == (401, {"message": "No API key found in request"})


async def test_several_key_names_are_tried_in_order(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, key_names=["x-api-key", "api_key"])
    assert (await call(port, headers=[("x-api-key", "kong")])).status == 200
    assert (await call(port, headers=[("api-key", "kong")])).status == 200  # ngx: "_" in a name matches "-"
    assert (await call(port, "/?api_key=kong")).status == 200
    assert (await call(port, headers=[("apikey", "kong")])).status == 401


async def test_without_hide_credentials_the_key_goes_upstream(nursery, gateway):
    _, port = await key_gateway(nursery, gateway)
    seen = upstream(await call(port, "/request?c=value1&b=value2&apikey=kong&a=value3", headers=[("apikey", "kong")]))
    assert seen["apikey"] == "kong"
    assert seen[":path"] == "/request?c=value1&b=value2&apikey=kong&a=value3"


async def test_hide_credentials_strips_the_key_from_header_and_query_keeping_the_order(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, hide_credentials=True)
    seen = upstream(await call(port, "/request?c=value1&b=value2&apikey=kong&a=value3"))
    assert seen[":path"] == "/request?c=value1&b=value2&a=value3"
    seen = upstream(await call(port, "/request", headers=[("apikey", "kong")]))
    assert "apikey" not in seen
    seen = upstream(await call(port, "/request?c=valu%651&api%6B%65%79=kong&a=x"))
    assert seen[":path"] == "/request?c=valu%651&a=x"  # the other arguments keep their own encoding
    seen = upstream(await call(port, "/request?apikey=kong"))
    assert seen[":path"] == "/request"


async def test_options_passes_when_run_on_preflight_is_false(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, run_on_preflight=False)
    assert (await call(port, method="OPTIONS")).status == 200
    assert (await call(port)).status == 401


async def test_anonymous_lets_a_failed_request_through_as_the_anonymous_consumer(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, anonymous="no-body")
    seen = upstream(await call(port, headers=[("apikey", "kong")]))
    assert (seen["x-consumer-username"], seen.get("x-anonymous-consumer")) == ("bob", None)
    for headers in ([], [("apikey", "wrong")], [("apikey", "a"), ("apikey", "b")]):
        seen = upstream(await call(port, headers=headers))
        assert seen["x-anonymous-consumer"] == "true"
        assert seen["x-consumer-username"] == "no-body"
        assert "x-credential-identifier" not in seen


def test_key_in_body_is_refused_as_not_supported():
    config = parse_config("services: [{name: s, url: 'http://127.0.0.1:1', routes: [{paths: [/], plugins: "
                          "[{name: key-auth, config: {key_in_body: true}}]}]}]")
    with pytest.raises(Exception) as info:
        compile_config(config, "t.yml")
    assert "services[0].routes[0].plugins[0].config.key_in_body: true is not supported" in str(info.value)
