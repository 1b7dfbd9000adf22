"""Which consumer a reference names, when one consumer's username is the same UUID string as another consumer's id.

Kong resolves each kind of reference by its own rule, not by whichever consumer comes first in the file: a nested
credential, acl or plugin belongs to the consumer it is nested under; `anonymous` names the consumer with that id
first, then the one with that username; a declarative `consumer:` string names the consumer with that username first,
then the one with that id.
"""

from __future__ import annotations

import json
from typing import Any

from auth_helpers import (
    call,
    consumer_id,
    http_codec,  # noqa: F401 - the fixture: one codec
    start,
    upstream,
)

from gateway.config import parse_config
from gateway.runtime import compile_config

SHARED = "5b0a8f3e-8c1c-4f57-9d7e-0e6b5c1a2b3c"  # one consumer's username, another consumer's id
ACL = {"name": "acl", "config": {"allow": ["right", "wrong"]}}
SIZE_LIMIT = {"name": "request-size-limiting", "config": {"allowed_payload_size": 1}}


def scoped_consumers(consumers: list[dict[str, Any]], plugins: list[dict[str, Any]] | None = None) -> set[str]:
    """The ids of the consumers that have a chain of their own on the one route (a consumer-scoped plugin's)."""
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"name": "r", "paths": ["/"]}]}],
           "consumers": consumers, "plugins": plugins or []}
    route = compile_config(parse_config(json.dumps(doc))).router.match(b"GET", b"/", None, []).payload
    return set(route.consumer_policies or ())


async def test_a_nested_credential_and_acl_belong_to_the_consumer_they_are_nested_under(nursery, gateway):
    """kong/db/schema/others/declarative_config.lua:454-455 (populate_references): a nested entity gets its parent's
    primary key, `item[child_key] = cycle_aware_deep_copy(parent_fk, true)`, and the flattening (lines 917-921) only
    looks a foreign key up when it is a string: a key and an acl nested under the consumer with id U are that
    consumer's, even when a consumer listed before it has U as its username."""
    consumers = [{"username": SHARED, "acls": [{"group": "wrong"}]},
                 {"id": SHARED, "username": "owner", "keyauth_credentials": [{"key": "owners-key"}],
                  "acls": [{"group": "right"}]}]
    routes = [{"paths": ["/"], "plugins": [{"name": "key-auth"}, ACL]}]
    _, port = await start(nursery, gateway, routes, consumers=consumers)
    seen = upstream(await call(port, headers=[("apikey", "owners-key")]))
    assert (seen["x-consumer-id"], seen["x-consumer-username"], seen["x-consumer-groups"]) == (SHARED, "owner",
                                                                                               "right")


def test_a_nested_plugin_belongs_to_the_consumer_it_is_nested_under():
    """kong/db/schema/others/declarative_config.lua:454-455: a plugin nested under the consumer with id U gets that
    consumer's primary key, not the consumer whose username is U."""
    consumers = [{"username": SHARED}, {"id": SHARED, "username": "owner", "plugins": [SIZE_LIMIT]}]
    assert scoped_consumers(consumers) == {SHARED}


async def test_anonymous_that_is_a_uuid_names_the_consumer_with_that_id_before_one_with_that_username(nursery,
                                                                                                       gateway):
    """kong/pdk/client.lua:195-210 (load_consumer, called with search_by_username = true by every auth plugin's
    anonymous fallback, e.g. kong/plugins/key-auth/handler.lua:218-221): `if is_valid_uuid(consumer_id) then local
    result = kong.db.consumers:select({ id = consumer_id }) if result then return result end ... end`, and only then
    `select_by_username`: the consumer with that id, even when one listed before it has that username."""
    consumers = [{"username": SHARED}, {"id": SHARED, "username": "anon"}]
    routes = [{"paths": ["/"], "plugins": [{"name": "key-auth", "config": {"anonymous": SHARED}}]}]
    _, port = await start(nursery, gateway, routes, consumers=consumers)
    seen = upstream(await call(port))
    assert (seen["x-consumer-id"], seen["x-consumer-username"]) == (SHARED, "anon")


async def test_anonymous_that_is_a_uuid_but_no_consumers_id_names_the_consumer_with_that_username(nursery, gateway):
    """kong/pdk/client.lua:205-210: when no consumer has the UUID as its id, load_consumer falls back to
    `select_by_username`."""
    consumers = [{"username": SHARED}]
    routes = [{"paths": ["/"], "plugins": [{"name": "key-auth", "config": {"anonymous": SHARED}}]}]
    _, port = await start(nursery, gateway, routes, consumers=consumers)
    seen = upstream(await call(port))
    assert (seen["x-consumer-id"], seen["x-consumer-username"]) == (consumer_id(SHARED), SHARED)


async def test_a_top_level_credentials_consumer_string_names_the_consumer_with_that_username_first(nursery, gateway):
    """kong/db/schema/others/declarative_config.lua:464-467 (find_entity, used for every foreign reference of a
    declarative file, lines 487 and 919): `return (by_key[ws_id] and by_key[ws_id][entity] and
    by_key[ws_id][entity][key]) or (by_id[entity] and by_id[entity][key])` -- the endpoint key (username) first, the
    id second: a top-level keyauth_credentials entry with `consumer: U` is the consumer whose username is U, even
    when one listed before it has id U."""
    consumers = [{"id": SHARED, "username": "first"}, {"username": SHARED}]
    routes = [{"paths": ["/"], "plugins": [{"name": "key-auth"}]}]
    _, port = await start(nursery, gateway, routes, consumers=consumers,
                          keyauth_credentials=[{"consumer": SHARED, "key": "the-key"}])
    seen = upstream(await call(port, headers=[("apikey", "the-key")]))
    assert seen["x-consumer-username"] == SHARED


def test_a_top_level_plugins_consumer_string_names_the_consumer_with_that_username_first():
    """kong/db/schema/others/declarative_config.lua:464-467 and 917-921: a top-level plugin's `consumer: U` is
    flattened through find_entity, the username before the id."""
    consumers = [{"id": SHARED, "username": "first"}, {"username": SHARED}]
    assert scoped_consumers(consumers, [{**SIZE_LIMIT, "consumer": SHARED}]) == {consumer_id(SHARED)}


def test_a_top_level_plugins_consumer_string_that_is_no_username_names_the_consumer_with_that_id():
    """kong/db/schema/others/declarative_config.lua:464-467: by_id when no consumer has the string as its username."""
    consumers = [{"id": SHARED, "username": "first"}, {"username": "second"}]
    assert scoped_consumers(consumers, [{**SIZE_LIMIT, "consumer": SHARED}]) == {SHARED}
