"""Which plugin instance applies, with consumers: Kong's lookup order (route+service+consumer ... global, from
kong/runloop/plugins_iterator.lua), resolved after authentication; several authentication plugins as Kong's logical
AND (no anonymous) and OR (anonymous); rate limiting by consumer and by credential."""

from __future__ import annotations

import base64

import pytest
from auth_helpers import (
    call,
    consumer_id,
    http_codec,  # noqa: F401 - the fixture: one codec
    jwt_secret,
    make_token,
    message,
    start,
    upstream,
)

from gateway.config import ConfigError, parse_config
from gateway.runtime import compile_config

# --- the lookup order (unit: the chains compile_config builds) -----------------------------------------------------

SCOPES = {
    "global": {},
    "service": {"service": "s"},
    "route": {"route": "r"},
    "consumer": {"consumer": "bob"},
    "route+service": {"route": "r", "service": "s"},
    "service+consumer": {"service": "s", "consumer": "bob"},
    "route+consumer": {"route": "r", "consumer": "bob"},
    "route+service+consumer": {"route": "r", "service": "s", "consumer": "bob"},
}
KONG_ORDER = ["route+service+consumer", "route+consumer", "service+consumer", "route+service", "consumer", "route",
              "service", "global"]


def chains(scopes: list[str]):  # noqa: ANN201
    """(the chain without a consumer, bob's chain): request-size-limiting instances, one per scope, whose limit
    (in bytes) says which scope was chosen."""
    plugins = [{"name": "request-size-limiting", **SCOPES[s],
                "config": {"allowed_payload_size": KONG_ORDER.index(s) + 1, "size_unit": "bytes"}} for s in scopes]
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"name": "r", "paths": ["/"]}]}],
           "consumers": [{"username": "bob"}, {"username": "eve"}], "plugins": plugins}
    import json
    runtime = compile_config(parse_config(json.dumps(doc)))
    route = runtime.router.match(b"GET", b"/", None, []).payload
    chosen = [KONG_ORDER[p.limit - 1] for p in route.policies]
    by_bob = route.consumer_policies.get(consumer_id("bob")) if route.consumer_policies else None
    return chosen, [KONG_ORDER[p.limit - 1] for p in by_bob] if by_bob is not None else chosen


@pytest.mark.parametrize("n", range(len(KONG_ORDER)))
def test_each_scope_beats_every_scope_after_it_in_kongs_order(n):
    no_consumer, bob = chains(KONG_ORDER[n:])
    assert bob == [KONG_ORDER[n]]
    assert no_consumer == [next(s for s in KONG_ORDER[n:] if "consumer" not in s)] if any(
        "consumer" not in s for s in KONG_ORDER[n:]) else no_consumer == []


def test_a_consumer_scoped_instance_applies_only_to_that_consumer():
    no_consumer, bob = chains(["consumer", "global"])
    assert (no_consumer, bob) == (["global"], ["consumer"])


@pytest.mark.parametrize("plugin", ["jwt", "key-auth", "basic-auth", "acl", "circuit-breaker"])
def test_plugins_kong_does_not_scope_to_consumers_are_refused_for_one(plugin):
    config = {"acl": "{allow: [x]}"}.get(plugin, "{}")
    text = ("services: [{name: s, url: 'http://127.0.0.1:1', routes: [{paths: [/]}]}]\n"
            f"consumers: [{{username: bob, plugins: [{{name: {plugin}, config: {config}}}]}}]")
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(text))
    assert f"consumers[0].plugins[0].consumer: the {plugin} plugin cannot be configured for a consumer" in str(
        info.value)


def test_two_instances_of_a_plugin_in_the_same_scope_are_refused():
    text = ("services: [{name: s, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/]}]}]\n"
            "plugins: [{name: key-auth, route: r}, {name: key-auth, route: r}]")
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(text))
    assert "plugins[1]: a key-auth plugin is already configured for the same route, service and consumer at " \
           "plugins[0]" in str(info.value)


def test_a_nested_and_a_top_level_instance_for_the_same_route_are_refused():
    text = ("services: [{name: s, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/], plugins: "
            "[{name: jwt}]}]}]\nplugins: [{name: jwt, route: r}]")
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(text))
    assert "a jwt plugin is already configured for the same route" in str(info.value)


def test_plugins_nested_under_unnamed_routes_stay_on_their_route():
    text = ("services: [{name: s, url: 'http://127.0.0.1:1', routes: [{paths: [/a], plugins: [{name: key-auth}]}, "
            "{paths: [/b], plugins: [{name: key-auth}]}, {paths: [/c]}]}]")
    runtime = compile_config(parse_config(text))
    names = {path: [p.name for p in runtime.router.match(b"GET", path, None, []).payload.policies]
             for path in (b"/a", b"/b", b"/c")}
    assert names == {b"/a": ["key-auth"], b"/b": ["key-auth"], b"/c": []}


def test_a_plugin_for_stream_protocols_only_never_runs_on_http():
    text = ("services: [{name: s, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/]}]}]\n"
            "plugins: [{name: ip-restriction, protocols: [tcp], config: {deny: [0.0.0.0/0]}}]")
    runtime = compile_config(parse_config(text))
    assert runtime.router.match(b"GET", b"/", None, []).payload.policies == []


def test_a_plugin_of_http_protocols_only_refuses_a_stream_protocol():
    """Kong's key-auth (typedefs.protocols_http) refuses `protocols: [tcp]` rather than never running."""
    from gateway.config import ConfigError

    text = ("services: [{name: s, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/]}]}]\n"
            "plugins: [{name: key-auth, protocols: [http, tcp]}]")
    with pytest.raises(ConfigError) as err:
        compile_config(parse_config(text))
    assert "plugins[0].protocols[1]: expected one of grpc, grpcs, http, https, got 'tcp'" in str(err.value)


# --- consumer-scoped plugins through the gateway -------------------------------------------------------------------


CONSUMERS = [
    {"username": "bob", "keyauth_credentials": [{"key": "bob-1"}, {"key": "bob-2"}],
     "plugins": [{"name": "rate-limiting", "config": {"day": 1, "limit_by": "consumer"}}]},
    {"username": "alice", "keyauth_credentials": [{"key": "alice-1"}]},
    {"username": "guest", "plugins": [{"name": "request-size-limiting",
                                       "config": {"allowed_payload_size": 4, "size_unit": "bytes"}}]},
]


async def test_a_consumer_scoped_plugin_applies_once_the_consumer_is_authenticated(nursery, gateway):
    routes = [{"paths": ["/"], "plugins": [{"name": "key-auth", "config": {"anonymous": "guest"}}]}]
    _, port = await start(nursery, gateway, routes, consumers=CONSUMERS,
                          plugins=[{"name": "rate-limiting", "config": {"day": 100, "limit_by": "consumer"}}])
    assert (await call(port, headers=[("apikey", "bob-1")])).status == 200
    reply = await call(port, headers=[("apikey", "bob-2")])  # bob's own limit (per consumer: both keys count)
    assert reply.status == 429
    assert reply.header("x-ratelimit-limit-day") == "1"
    for _ in range(3):
        alice = await call(port, headers=[("apikey", "alice-1")])
        assert (alice.status, alice.header("x-ratelimit-limit-day")) == (200, "100")
    # the anonymous consumer's own request-size-limiting
    assert (await call(port, method="POST", body=b"12345")).status == 413
    assert (await call(port, method="POST", body=b"12345", headers=[("apikey", "alice-1")])).status == 200


async def test_rate_limiting_by_credential_counts_each_key(nursery, gateway):
    routes = [{"paths": ["/"], "plugins": [{"name": "key-auth"}, {
        "name": "rate-limiting", "config": {"day": 1, "limit_by": "credential"}}]}]
    _, port = await start(nursery, gateway, routes, consumers=CONSUMERS[1:2] + [
        {"username": "carol", "keyauth_credentials": [{"key": "carol-1"}, {"key": "carol-2"}]}])
    assert (await call(port, headers=[("apikey", "carol-1")])).status == 200
    assert (await call(port, headers=[("apikey", "carol-2")])).status == 200
    assert (await call(port, headers=[("apikey", "carol-1")])).status == 429


async def test_rate_limiting_by_consumer_counts_each_consumer(nursery, gateway):
    routes = [{"paths": ["/"], "plugins": [{"name": "key-auth"}, {
        "name": "rate-limiting", "config": {"day": 1, "limit_by": "consumer"}}]}]
    _, port = await start(nursery, gateway, routes, consumers=[
        {"username": "carol", "keyauth_credentials": [{"key": "carol-1"}, {"key": "carol-2"}]},
        {"username": "dave", "keyauth_credentials": [{"key": "dave-1"}]}])
    assert (await call(port, headers=[("apikey", "carol-1")])).status == 200
    assert (await call(port, headers=[("apikey", "dave-1")])).status == 200
    assert (await call(port, headers=[("apikey", "carol-2")])).status == 429


# --- several authentication plugins: Kong's logical AND and OR ---------------------------------------------------


MULTI = [
    {"username": "Anonymous"},
    {"username": "Mickey", "keyauth_credentials": [{"key": "Mouse"}]},
    {"username": "Aladdin", "jwt_secrets": [jwt_secret("aladdin-key")],
     "basicauth_credentials": [{"username": "Aladdin", "password": "OpenSesame"}]},
]
BASIC = "Basic " + base64.b64encode(b"Aladdin:OpenSesame").decode()


async def multi_gateway(nursery, gateway, anonymous: bool):  # noqa: ANN001,ANN201
    config = {"anonymous": "Anonymous"} if anonymous else {}
    routes = [{"paths": ["/jwt"], "plugins": [{"name": "jwt", "config": config},
                                              {"name": "key-auth", "config": config}]},
              {"paths": ["/basic"], "plugins": [{"name": "key-auth", "config": config},
                                                {"name": "basic-auth", "config": config}]}]
    return await start(nursery, gateway, routes, consumers=MULTI)


async def test_logical_and_needs_every_credential(nursery, gateway):
    _, port = await multi_gateway(nursery, gateway, anonymous=False)
    token = f"Bearer {make_token('aladdin-key')}"
    seen = upstream(await call(port, "/jwt", headers=[("apikey", "Mouse"), ("authorization", token)]))
    assert seen["x-consumer-id"] == consumer_id("Mickey")  # key-auth runs last (priority 1250 < jwt's 1450)
    assert "x-anonymous-consumer" not in seen
    only_key = await call(port, "/jwt", headers=[("apikey", "Mouse")])
    assert (only_key.status, only_key.header("www-authenticate")) == (401, "Bearer")
    only_jwt = await call(port, "/jwt", headers=[("authorization", token)])
    assert (only_jwt.status, only_jwt.header("www-authenticate")) == (401, "Key")
    neither = await call(port, "/basic")
    assert (neither.status, neither.header("www-authenticate")) == (401, "Key")
    only_key = await call(port, "/basic", headers=[("apikey", "Mouse")])
    assert (only_key.status, only_key.header("www-authenticate")) == (401, 'Basic realm="service"')


async def test_logical_or_takes_any_credential_else_anonymous(nursery, gateway):
    _, port = await multi_gateway(nursery, gateway, anonymous=True)
    token = f"Bearer {make_token('aladdin-key')}"
    both = upstream(await call(port, "/jwt", headers=[("apikey", "Mouse"), ("authorization", token)]))
    assert (both["x-consumer-username"], both["x-credential-identifier"]) == ("Aladdin", "aladdin-key")
    key = upstream(await call(port, "/jwt", headers=[("apikey", "Mouse")]))
    assert key["x-consumer-username"] == "Mickey" and "x-anonymous-consumer" not in key
    jwt = upstream(await call(port, "/jwt", headers=[("authorization", token)]))
    assert jwt["x-consumer-username"] == "Aladdin" and "x-anonymous-consumer" not in jwt
    basic = upstream(await call(port, "/basic", headers=[("authorization", BASIC)]))
    assert (basic["x-consumer-username"], basic["x-credential-identifier"]) == ("Aladdin", "Aladdin")
    nobody = upstream(await call(port, "/jwt"))
    assert (nobody["x-consumer-id"], nobody["x-anonymous-consumer"]) == (consumer_id("Anonymous"), "true")


async def test_an_anonymous_reference_to_no_consumer_is_a_config_error():
    text = ("services: [{name: s, url: 'http://127.0.0.1:1', routes: [{paths: [/], plugins: "
            "[{name: jwt, config: {anonymous: ghost}}]}]}]")
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(text))
    assert info.value.messages == ["<config>: services[0].routes[0].plugins[0].config.anonymous: no consumer with id "
                                   "or username 'ghost' (Kong answers every request it would admit anonymously "
                                   "with 500)"]


async def test_acl_after_logical_or_sees_the_anonymous_consumer(nursery, gateway):
    routes = [{"paths": ["/"], "plugins": [{"name": "key-auth", "config": {"anonymous": "Anonymous"}},
                                           {"name": "acl", "config": {"deny": ["blocked"]}}]}]
    consumers = [{"username": "Anonymous", "acls": [{"group": "blocked"}]},
                 {"username": "Mickey", "keyauth_credentials": [{"key": "Mouse"}]}]
    _, port = await start(nursery, gateway, routes, consumers=consumers)
    reply = await call(port)
    assert (reply.status, message(reply)) == (403, {"message": "You cannot consume this service"})
    assert (await call(port, headers=[("apikey", "Mouse")])).status == 200


# --- consistent hashing on the consumer ----------------------------------------------------------------------------


async def test_hash_on_consumer_keeps_each_consumer_on_one_target(nursery, gateway):
    from backends import EchoBackend
    from backends import upstream as upstream_doc
    backends = [EchoBackend(f"t{i}") for i in range(3)]
    for b in backends:
        await nursery.start(b.serve)
    # 11 consumers: the targets' ports (and so their points on the continuum) differ from run to run; 5 all landed
    # on one target about once in 50 runs, 11 about once in 50,000
    consumers = [{"username": f"user{i}", "keyauth_credentials": [{"key": f"key{i}"}]} for i in range(11)]
    port = await gateway({
        "upstreams": [upstream_doc("pool", [b.port for b in backends], algorithm="consistent-hashing",
                                   hash_on="consumer")],
        "services": [{"name": "svc", "host": "pool", "routes": [{"paths": ["/"], "plugins": [{"name": "key-auth"}]}]}],
        "consumers": consumers})
    chosen = {}
    for _ in range(3):
        for i in range(11):  # not a multiple of 3: round-robin (what a missing hash key gets) would move them
            reply = await call(port, headers=[("apikey", f"key{i}")])
            assert reply.status == 200
            chosen.setdefault(i, set()).add(reply.header("x-backend"))
    assert all(len(targets) == 1 for targets in chosen.values()), chosen
    assert len(set().union(*chosen.values())) > 1  # the consumers are spread, not all on one target
