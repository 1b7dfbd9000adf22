"""Kong's acl through the in-process gateway: groups of the authenticated consumer against allow or deny."""

from __future__ import annotations

import pytest
from auth_helpers import (
    call,
    http_codec,  # noqa: F401 - the fixture: one codec
    message,
    start,
    upstream,
)
from backends import ConsumerExchange

from gateway.config import ConfigError, parse_config
from gateway.policies.acl.handler import Acl
from gateway.policies.acl.schema import AclConfig
from gateway.policies.ai_mcp_oauth2.handler import TokenIdentity
from gateway.policies.consumers import Consumer
from gateway.runtime import compile_config

CONSUMERS = [
    {"username": "admin", "keyauth_credentials": [{"key": "admin-key"}], "acls": [{"group": "admin"},
                                                                                {"group": "ops"}]},
    {"username": "user", "keyauth_credentials": [{"key": "user-key"}], "acls": [{"group": "users"}]},
    {"username": "loner", "keyauth_credentials": [{"key": "loner-key"}]},
    {"username": "guest", "acls": [{"group": "guests"}]},
    {"username": "groupless-guest"},
]


async def acl_gateway(nursery, gateway, acl: dict, anonymous: str | None = None):  # noqa: ANN001,ANN201
    key_auth = {"name": "key-auth", "config": {"anonymous": anonymous} if anonymous else {}}
    routes = [{"paths": ["/"], "plugins": [key_auth, {"name": "acl", "config": acl}]}]
    return await start(nursery, gateway, routes, consumers=CONSUMERS)


def key(k: str) -> list[tuple[str, str]]:
    return [("apikey", k)]


async def test_a_consumer_in_an_allowed_group_passes_with_its_groups_upstream(nursery, gateway):
    _, port = await acl_gateway(nursery, gateway, {"allow": ["admin"]})
    seen = upstream(await call(port, headers=key("admin-key")))
    assert seen["x-consumer-groups"] == "admin, ops"
    assert seen["x-consumer-username"] == "admin"


async def test_a_consumer_outside_the_allowed_groups_is_403(nursery, gateway):
    _, port = await acl_gateway(nursery, gateway, {"allow": ["admin"]})
    reply = await call(port, headers=key("user-key"))
    assert (reply.status, message(reply)) == (403, {"message": "You cannot consume this service"})
    assert reply.header("www-authenticate") is None


async def test_a_consumer_with_no_groups_is_403_under_allow(nursery, gateway):
    _, port = await acl_gateway(nursery, gateway, {"allow": ["admin"]})
    reply = await call(port, headers=key("loner-key"))
    assert (reply.status, message(reply)) == (403, {"message": "You cannot consume this service"})


async def test_deny_refuses_its_groups_and_admits_the_rest(nursery, gateway):
    _, port = await acl_gateway(nursery, gateway, {"deny": ["ops"]})
    reply = await call(port, headers=key("admin-key"))
    assert (reply.status, message(reply)) == (403, {"message": "You cannot consume this service"})
    assert upstream(await call(port, headers=key("user-key")))["x-consumer-groups"] == "users"
    seen = upstream(await call(port, headers=key("loner-key")))  # no groups: not in a denied one
    assert seen["x-consumer-groups"] == ""  # Kong's spec 18-acl "returns 200 with deny groups"


async def test_hide_groups_header(nursery, gateway):
    _, port = await acl_gateway(nursery, gateway, {"allow": ["admin"], "hide_groups_header": True})
    seen = upstream(await call(port, headers=key("admin-key") + [("x-consumer-groups", "spoofed")]))
    assert "x-consumer-groups" not in seen


async def test_the_groups_header_is_never_the_clients(nursery, gateway):
    _, port = await acl_gateway(nursery, gateway, {"allow": ["users"]})
    seen = upstream(await call(port, headers=key("user-key") + [("x-consumer-groups", "admin")]))
    assert seen["x-consumer-groups"] == "users"


async def test_without_a_consumer_acl_answers_401(nursery, gateway):
    _, port = await start(nursery, gateway, [{"paths": ["/"], "plugins": [{"name": "acl",
                                                                           "config": {"allow": ["admin"]}}]}])
    reply = await call(port)
    assert (reply.status, message(reply)) == (401, {"message": "Unauthorized"})


async def test_the_anonymous_consumer_is_judged_by_its_own_groups(nursery, gateway):
    _, port = await acl_gateway(nursery, gateway, {"allow": ["guests"]}, anonymous="guest")
    seen = upstream(await call(port))
    assert (seen["x-consumer-username"], seen["x-consumer-groups"]) == ("guest", "guests")
    reply = await call(port, headers=key("user-key"))  # authenticated, but not a guest
    assert reply.status == 403


async def test_an_anonymous_consumer_with_no_groups_is_401_under_allow(nursery, gateway):
    _, port = await acl_gateway(nursery, gateway, {"allow": ["admin"]}, anonymous="groupless-guest")
    reply = await call(port)
    assert (reply.status, message(reply)) == (401, {"message": "Unauthorized"})


@pytest.mark.parametrize(("acl", "expected"), [
    ("{allow: [a], deny: [b]}", "set only one of them"),
    ("{}", "set allow"),
    ("{allow: []}", "set allow"),
])
def test_acl_takes_exactly_one_list(acl, expected):
    config = parse_config(f"services: [{{name: s, url: 'http://127.0.0.1:1', routes: [{{paths: [/]}}]}}]\n"
                          f"plugins: [{{name: acl, config: {acl}}}]")
    with pytest.raises(ConfigError) as info:
        compile_config(config)
    assert expected in str(info.value)


# ---- what acl remembers: Acl.access on an exchange, without a gateway -----------------------------------------------


async def test_groups_a_token_brings_are_decided_each_time_and_not_remembered():
    """kong/plugins/acl/handler.lua:17 and :56 keep acl's decisions in a table with weak keys, keyed by the groups
    table kong.cache (a bounded LRU) holds for a consumer (:116-122); groups that come with the request
    (authenticated_groups) are decided every time, never cached (:76 and :90, `groups.group_in_groups`).
    ai-mcp-oauth2's consumer_groups_claim gives each token its own groups: 20,000 tokens with distinct groups must
    not leave 20,000 decisions (each holding the token's groups) in the worker."""
    acl = Acl(AclConfig(deny=["banned"]))
    for i in range(20_000):
        ex = ConsumerExchange(TokenIdentity(f"user-{i}", ("banned", f"team-{i}"), []))
        assert await acl.access(ex)  # type: ignore[arg-type]
        assert ex.answered == (403, "You cannot consume this service")
    assert len(acl._decided) == 0, f"acl remembers {len(acl._decided)} token group sets"


async def test_groups_a_token_adds_to_its_consumers_are_not_remembered_either():
    """A token that names a consumer brings the consumer's groups and its own (ai-mcp-oauth2's consumer_claim with
    consumer_groups_claim): those groups are the token's, not the table kong.cache holds for the consumer, so they
    are decided each time too (kong/plugins/acl/handler.lua:76, :90); each is still decided right."""
    consumer = Consumer("5d1c0a8e-4f3b-4a6e-9c2d-7b8e1f0a3c4d", "alice", None)
    consumer.groups = ("staff",)
    acl = Acl(AclConfig(allow=["admins"], hide_groups_header=True))
    for i in range(5_000):
        who = consumer.identity(f"token-{i}", None)
        who.groups = (*consumer.groups, f"team-{i}", "admins" if i % 2 else "guests")
        ex = ConsumerExchange(who)
        assert await acl.access(ex) == (i % 2 == 0)  # type: ignore[arg-type]
    assert len(acl._decided) == 0
