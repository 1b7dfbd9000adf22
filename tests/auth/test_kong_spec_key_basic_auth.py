"""key-auth and basic-auth against Kong's own source and spec tests (kong/plugins/key-auth, kong/plugins/basic-auth;
spec/03-plugins/09-key-auth, spec/03-plugins/10-basic-auth): the behaviours the older tests of these plugins did
not pin down."""

from __future__ import annotations

import base64
import json

import pytest
from auth_helpers import (
    call,
    consumer_id,
    http_codec,  # noqa: F401 - the fixture: one codec
    message,
    start,
    upstream,
)

from gateway.config import ConfigError, parse_config
from gateway.runtime import compile_config

CONSUMERS = [
    {"username": "bob", "keyauth_credentials": [{"key": "kong", "id": "4fd6b3d8-6c3e-4a5a-9d09-0b6c1b2a9c01"}],
     "basicauth_credentials": [{"username": "bob", "password": "kong"}]},
    {"username": "no-body"},
    {"username": "Mickey", "keyauth_credentials": [{"key": "Mouse"}]},
    {"username": "Aladdin", "basicauth_credentials": [{"username": "Aladdin", "password": "OpenSesame"}]},
    {"username": "Anonymous"},
]
ALADDIN = "Basic QWxhZGRpbjpPcGVuU2VzYW1l"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def plugin_gateway(nursery, gateway, *plugins: dict):  # noqa: ANN001,ANN201
    routes = [{"paths": ["/"], "plugins": list(plugins)}]
    return await start(nursery, gateway, routes, consumers=CONSUMERS)


async def key_gateway(nursery, gateway, **config):  # noqa: ANN001,ANN003,ANN201
    return await plugin_gateway(nursery, gateway, {"name": "key-auth", "config": config})


def config_errors(plugin: dict) -> list[str]:
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"],
                                                                               "plugins": [plugin]}]}]}
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(json.dumps(doc), "k.yml"), "k.yml")
    return [m.removeprefix("k.yml: ") for m in info.value.messages]


def compiles(plugin: dict) -> None:
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"],
                                                                               "plugins": [plugin]}]}]}
    compile_config(parse_config(json.dumps(doc), "k.yml"), "k.yml")


# --- key-auth: the config ------------------------------------------------------------------------------------------


def test_key_auth_refuses_a_bad_key_name_with_kongs_message():
    """01-api_spec.lua "fails with invalid key_names": kong.tools.http.validate_header_name's wording."""
    assert config_errors({"name": "key-auth", "config": {"key_names": ["hello\\world"]}}) == [
        "services[0].routes[0].plugins[0].config.key_names[0]: bad header name 'hello\\world', allowed characters "
        "are A-Z, a-z, 0-9, '_', and '-'"]


def test_key_auth_accepts_an_empty_key_names_list():
    """schema.lua: key_names is a required array with no minimum length; Kong takes [] (no name is ever found)."""
    compiles({"name": "key-auth", "config": {"key_names": []}})


async def test_with_no_key_names_every_request_has_no_api_key(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, key_names=[])
    reply = await call(port, "/?apikey=kong", headers=[("apikey", "kong")])
    assert (reply.status, message(reply)) == (401, {"message": "No API key found in request"})


# --- key-auth: where the key is found -----------------------------------------------------------------------------


async def test_a_header_named_with_an_underscore_is_found_as_sent(nursery, gateway):
    """02-access_spec.lua "underscores or hyphens in key headers": key_names {"api_key"}, header `api_key` or
    `api-key` (Kong's nginx has underscores_in_headers on; ngx.req.get_headers finds either)."""
    _, port = await key_gateway(nursery, gateway, key_names=["api_key"])
    for name in ("api_key", "api-key"):
        seen = upstream(await call(port, headers=[(name, "kong")]))
        assert seen["x-consumer-username"] == "bob"
        reply = await call(port, headers=[(name, "123")])
        assert (reply.status, message(reply)) == (401, {"message": "Unauthorized"})
        assert reply.header("www-authenticate") == "Key"


async def test_a_hyphenated_key_name_does_not_find_an_underscored_header(nursery, gateway):
    """ngx.req.get_headers' table: "api-key" is looked up as itself only."""
    _, port = await key_gateway(nursery, gateway, key_names=["api-key"])
    reply = await call(port, headers=[("api_key", "kong")])
    assert (reply.status, message(reply)) == (401, {"message": "No API key found in request"})


async def test_hide_credentials_strips_the_key_header_however_it_was_spelled(nursery, gateway):
    """Kong's clear_header("api_key") would leave an `api-key` header it read the key from; this gateway strips it."""
    _, port = await key_gateway(nursery, gateway, key_names=["api_key"], hide_credentials=True)
    for name in ("api_key", "api-key"):
        seen = upstream(await call(port, headers=[(name, "kong")]))
        assert name not in seen and seen["x-consumer-username"] == "bob"


async def test_only_the_first_100_headers_are_searched(nursery, gateway):
    """kong.request.get_headers() reads at most lua_max_req_headers (100) header lines, Host the first here."""
    _, port = await key_gateway(nursery, gateway)
    assert (await call(port, headers=[*[(f"x-pad-{i}", "x") for i in range(98)], ("apikey", "kong")])).status == 200
    reply = await call(port, headers=[*[(f"x-pad-{i}", "x") for i in range(99)], ("apikey", "kong")])
    assert (reply.status, message(reply)) == (401, {"message": "No API key found in request"})


async def test_only_the_first_100_query_arguments_are_searched(nursery, gateway):
    """kong.request.get_query() reads at most lua_max_uri_args (100) arguments; empty ones are not counted."""
    _, port = await key_gateway(nursery, gateway)
    padding = "&".join(f"a{i}=x" for i in range(99))
    assert (await call(port, f"/?{padding}&&=z&apikey=kong")).status == 200
    reply = await call(port, f"/?{padding}&b=y&apikey=kong")
    assert (reply.status, message(reply)) == (401, {"message": "No API key found in request"})


async def test_hide_credentials_writes_the_query_again_as_kong_does(nursery, gateway):
    """02-access_spec.lua "removes apikey in encoded query and preserves order of query parameters": Kong's
    clear_query_arg parses the query with ada's URLSearchParams and writes every argument again (decoded, then
    form-encoded; a space as %20, a bare name as "name=", empty parts dropped)."""
    _, port = await key_gateway(nursery, gateway, hide_credentials=True)
    seen = upstream(await call(port, "/request?c=valu%651&b=value2&api%6B%65%79=kong&a=valu%653"))
    assert seen[":path"] == "/request?c=value1&b=value2&a=value3"
    seen = upstream(await call(port, "/request?x=a+b%2B~&&flag&apikey=kong&y=%zz/:"))
    assert seen[":path"] == "/request?x=a%20b%2B%7E&flag=&y=%25zz%2F%3A"


async def test_hide_credentials_writes_the_query_again_when_the_key_came_in_a_header(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, hide_credentials=True)
    seen = upstream(await call(port, "/request?q=a+b&flag", headers=[("apikey", "kong")]))
    assert seen[":path"] == "/request?q=a%20b&flag="


# --- key-auth: the consumer headers -------------------------------------------------------------------------------


async def test_consumer_headers_a_client_sent_are_replaced_or_cleared(nursery, gateway):
    """handler.lua set_consumer: each X-Consumer-* / X-Credential-Identifier / X-Anonymous-Consumer header is set
    from the consumer and credential, or cleared when it has none."""
    _, port = await key_gateway(nursery, gateway)
    forged = [("x-consumer-id", "forged"), ("x-consumer-custom-id", "forged"), ("x-consumer-username", "forged"),
              ("x-credential-identifier", "forged"), ("x-anonymous-consumer", "true")]
    seen = upstream(await call(port, headers=[("apikey", "kong"), *forged]))
    assert seen["x-consumer-id"] == consumer_id("bob")
    assert seen["x-consumer-username"] == "bob"
    assert seen["x-credential-identifier"] == "4fd6b3d8-6c3e-4a5a-9d09-0b6c1b2a9c01"
    assert "x-consumer-custom-id" not in seen and "x-anonymous-consumer" not in seen


async def test_the_anonymous_consumer_clears_a_forged_credential_identifier(nursery, gateway):
    _, port = await key_gateway(nursery, gateway, anonymous="no-body")
    seen = upstream(await call(port, headers=[("x-credential-identifier", "forged"),
                                              ("x-consumer-custom-id", "forged")]))
    assert (seen["x-consumer-username"], seen["x-anonymous-consumer"]) == ("no-body", "true")
    assert "x-credential-identifier" not in seen and "x-consumer-custom-id" not in seen


# --- key-auth with basic-auth: Kong's logical AND and OR (02-access_spec.lua, 03-access_spec.lua) ------------------

AND = ({"name": "basic-auth"}, {"name": "key-auth"})
OR = ({"name": "basic-auth", "config": {"anonymous": "Anonymous"}},
      {"name": "key-auth", "config": {"anonymous": "Anonymous"}})


async def test_logical_and_passes_with_both_credentials_as_the_last_plugins_consumer(nursery, gateway):
    """key-auth (priority 1250) runs before basic-auth (1100), whose consumer is the one that stays."""
    _, port = await plugin_gateway(nursery, gateway, *AND)
    seen = upstream(await call(port, headers=[("apikey", "Mouse"), ("authorization", ALADDIN)]))
    assert seen["x-consumer-id"] == consumer_id("Aladdin")
    assert "x-anonymous-consumer" not in seen


@pytest.mark.parametrize(("headers", "challenge"), [
    ([("apikey", "Mouse")], 'Basic realm="service"'),
    ([("authorization", ALADDIN)], "Key"),
    ([], "Key"),
], ids=["only-key", "only-basic", "none"])
async def test_logical_and_fails_401_unless_both_credentials_are_given(nursery, gateway, headers, challenge):
    _, port = await plugin_gateway(nursery, gateway, *AND)
    reply = await call(port, headers=headers)
    assert reply.status == 401
    assert reply.header("www-authenticate") == challenge


@pytest.mark.parametrize(("headers", "who"), [
    ([("apikey", "Mouse"), ("authorization", ALADDIN)], "Mickey"),
    ([("apikey", "Mouse")], "Mickey"),
    ([("authorization", ALADDIN)], "Aladdin"),
], ids=["both", "only-key", "only-basic"])
async def test_logical_or_passes_as_whoever_a_credential_names(nursery, gateway, headers, who):
    _, port = await plugin_gateway(nursery, gateway, *OR)
    seen = upstream(await call(port, headers=headers))
    assert seen["x-consumer-id"] == consumer_id(who)
    assert "x-anonymous-consumer" not in seen


async def test_logical_or_passes_anonymously_with_no_credential(nursery, gateway):
    _, port = await plugin_gateway(nursery, gateway, *OR)
    seen = upstream(await call(port))
    assert (seen["x-consumer-id"], seen["x-anonymous-consumer"]) == (consumer_id("Anonymous"), "true")


# --- basic-auth ---------------------------------------------------------------------------------------------------


async def test_basic_auth_hide_credentials_strips_an_unreadable_proxy_authorization(nursery, gateway):
    """access.lua retrieve_credentials clears the header it read, whether or not it held credentials."""
    _, port = await plugin_gateway(nursery, gateway, {"name": "basic-auth", "config": {"hide_credentials": True}})
    seen = upstream(await call(port, headers=[("proxy-authorization", "foobar"),
                                              ("authorization", basic("bob", "kong"))]))
    assert "proxy-authorization" not in seen and "authorization" not in seen
    assert seen["x-credential-identifier"] == "bob"


async def test_basic_auth_a_known_proxy_authorization_user_with_a_wrong_password_is_final(nursery, gateway):
    """access.lua: Authorization is only tried when Proxy-Authorization names no credential."""
    _, port = await plugin_gateway(nursery, gateway, {"name": "basic-auth"})
    reply = await call(port, headers=[("proxy-authorization", basic("bob", "wrong")),
                                      ("authorization", ALADDIN)])
    assert (reply.status, message(reply)) == (401, {"message": "Unauthorized"})


async def test_basic_auth_consumer_headers_a_client_sent_are_replaced_or_cleared(nursery, gateway):
    _, port = await plugin_gateway(nursery, gateway, {"name": "basic-auth"})
    seen = upstream(await call(port, headers=[("authorization", basic("bob", "kong")),
                                              ("x-consumer-custom-id", "forged"), ("x-anonymous-consumer", "true"),
                                              ("x-credential-identifier", "forged")]))
    assert seen["x-credential-identifier"] == "bob"
    assert "x-consumer-custom-id" not in seen and "x-anonymous-consumer" not in seen
