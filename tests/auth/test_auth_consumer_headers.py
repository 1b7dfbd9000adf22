"""The consumer headers an authentication plugin sets are in the request for the plugins after it, as in Kong: its
set_consumer (kong/plugins/key-auth/handler.lua) writes them with kong.service.request.set_header / clear_header,
and acl writes X-Consumer-Groups the same way, so kong.request.get_headers() / get_header() read the consumer's
values and a client's copy is already overwritten (gateway.pipeline.headers.set_consumer)."""

from __future__ import annotations

from types import SimpleNamespace

from auth_helpers import call, http_codec, start, upstream  # noqa: F401 - http_codec: the fixture

from gateway.pipeline.headers import set_consumer
from gateway.policies.consumers import Consumer

CONSUMERS = [{"username": "bob", "custom_id": "bob-c", "keyauth_credentials": [{"key": "k-bob"}]}]


async def test_request_transformer_reads_the_consumer_headers_key_auth_set(nursery, gateway):
    """request-transformer (801) runs after key-auth (1250): its `headers` template table is the request's."""
    routes = [{"paths": ["/"], "plugins": [
        {"name": "key-auth"},
        {"name": "request-transformer", "config": {"add": {"headers": ['x-user:$(headers["x-consumer-username"])']}}},
    ]}]
    _, port = await start(nursery, gateway, routes, consumers=CONSUMERS)
    seen = upstream(await call(port, headers=[("apikey", "k-bob")]))
    assert seen.get("x-user") == "bob"


async def test_a_clients_consumer_header_is_overwritten_before_request_transformer_reads_it(nursery, gateway):
    routes = [{"paths": ["/"], "plugins": [
        {"name": "key-auth"},
        {"name": "request-transformer", "config": {"add": {"headers": ['x-user:$(headers["x-consumer-username"])']}}},
    ]}]
    _, port = await start(nursery, gateway, routes, consumers=CONSUMERS)
    seen = upstream(await call(port, headers=[("apikey", "k-bob"), ("x-consumer-username", "admin")]))
    assert seen.get("x-user") == "bob"
    assert seen["x-consumer-username"] == "bob"


async def test_request_transformer_renames_and_removes_the_consumer_headers(nursery, gateway):
    routes = [{"paths": ["/"], "plugins": [
        {"name": "key-auth"},
        {"name": "request-transformer", "config": {"rename": {"headers": ["x-consumer-custom-id:x-cid"]},
                                                   "remove": {"headers": ["x-consumer-id"]}}},
    ]}]
    _, port = await start(nursery, gateway, routes, consumers=CONSUMERS)
    seen = upstream(await call(port, headers=[("apikey", "k-bob")]))
    assert seen.get("x-cid") == "bob-c"
    assert "x-consumer-custom-id" not in seen
    assert "x-consumer-id" not in seen
    assert seen["x-consumer-username"] == "bob"


async def test_request_transformer_reads_the_groups_acl_set(nursery, gateway):
    """acl (950) writes X-Consumer-Groups into the request before request-transformer (801) reads it."""
    consumers = [{**CONSUMERS[0], "acls": [{"group": "gold"}]}]
    routes = [{"paths": ["/"], "plugins": [
        {"name": "key-auth"},
        {"name": "acl", "config": {"allow": ["gold"]}},
        {"name": "request-transformer", "config": {"add": {"headers": ['x-g:$(headers["x-consumer-groups"])']}}},
    ]}]
    _, port = await start(nursery, gateway, routes, consumers=consumers)
    seen = upstream(await call(port, headers=[("apikey", "k-bob"), ("x-consumer-groups", "admins")]))
    assert seen.get("x-g") == "gold"
    assert seen["x-consumer-groups"] == "gold"


async def test_limit_by_the_consumer_header_counts_the_authenticated_consumer(nursery, gateway):
    """rate-limiting (910) `limit_by: header` reads kong.request.get_header after key-auth (1250) set X-Consumer-ID:
    Kong counts per consumer whatever copy the client sends."""
    routes = [{"paths": ["/"], "plugins": [
        {"name": "key-auth"},
        {"name": "rate-limiting", "config": {"minute": 1, "limit_by": "header", "header_name": "x-consumer-id"}},
    ]}]
    consumers = [{"username": "bob", "keyauth_credentials": [{"key": "k-bob"}]}]
    _, port = await start(nursery, gateway, routes, consumers=consumers)
    first = await call(port, headers=[("apikey", "k-bob"), ("x-consumer-id", "spoof-1")])
    assert first.status == 200
    second = await call(port, headers=[("apikey", "k-bob"), ("x-consumer-id", "spoof-2")])
    assert second.status == 429


def _exchange(headers: list[tuple[bytes, bytes]]) -> SimpleNamespace:
    return SimpleNamespace(consumer=None, request=SimpleNamespace(headers=headers))


def test_set_consumer_replaces_every_consumer_header_and_its_underscore_spelling():
    bob = Consumer("4f1c", "bob", None).identity("cred-1", "bob-key")
    ex = _exchange([(b"x-consumer-groups", b"admins"), (b"x_consumer_id", b"x"), (b"x-keep", b"1"),
                    (b"x-anonymous-consumer", b"true")])
    set_consumer(ex, bob)
    assert ex.consumer is bob
    assert ex.request.headers == [(b"x-keep", b"1"), (b"x-consumer-id", b"4f1c"), (b"x-consumer-username", b"bob"),
                                  (b"x-credential-identifier", b"bob-key")]


def test_set_consumer_again_replaces_an_identitys_own_headers_once():
    """A second set_consumer (acl's, after ai-mcp-oauth2's with claim headers) writes each header once."""
    who = Consumer("4f1c", "bob", None).identity("cred-1", None)
    who.upstream_headers = [*who.upstream_headers, (b"x-email", b"bob@example.com")]
    ex = _exchange([(b"x-keep", b"1")])
    set_consumer(ex, who)
    set_consumer(ex, who.with_groups_header())
    assert ex.request.headers == [(b"x-keep", b"1"), (b"x-consumer-id", b"4f1c"), (b"x-consumer-username", b"bob"),
                                  (b"x-email", b"bob@example.com"), (b"x-consumer-groups", b"")]
