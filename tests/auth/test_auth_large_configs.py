"""Authentication plugins in large configs: an instance looks credentials up in the one table of its config load, as
Kong's instances look them up in the one cache, so many instances over many consumers cost what one does.

Each test compares two memory measurements taken in it (never absolute times): what 40 more instances hold with
1,000 consumers against what they hold with 10."""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import Callable
from typing import Any

from gateway.config import parse_config
from gateway.runtime import compile_config

FEW, MANY = 10, 1000  # consumers
ROUTES = 41  # the plugin on 1 of them, then on all


def _config(plugin: str, credentials: str, credential: Callable[[int], dict[str, Any]], consumers: int,
            instances: int) -> dict[str, Any]:
    """One service, ROUTES prefix routes, the first `instances` with a `plugin` of their own (as an export of a Kong
    node with the plugin on many routes has), `consumers` consumers with one `credentials` entity each."""
    routes = []
    for i in range(ROUTES):
        route: dict[str, Any] = {"name": f"r{i}", "paths": [f"/r{i}"]}
        if i < instances:
            route["plugins"] = [{"name": plugin}]
        routes.append(route)
    return {"_format_version": "3.0",
            "services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": routes}],
            "consumers": [{"username": f"c{i}", credentials: [credential(i)]} for i in range(consumers)]}


def _secret(i: int) -> str:
    """A secret of its own for credential `i`, 32 bytes or more (a shorter HS256 secret is warned about per
    credential)."""
    return f"secret-{i:06d}-of-at-least-32-bytes"


def _compiled_bytes(doc: dict[str, Any]) -> int:
    """Bytes the compiled runtime of `doc` holds (allocated by compile_config and still alive after it)."""
    config = parse_config(json.dumps(doc), "scale.json")
    gc.collect()
    tracemalloc.start()
    try:
        runtime = compile_config(config, "scale.json")
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert runtime.router is not None
    return held


def _assert_instances_share_credentials(plugin: str, credentials: str,
                                        credential: Callable[[int], dict[str, Any]]) -> None:
    """40 more instances of `plugin` cost about as much with MANY consumers as with FEW (generous margin: 4x and
    1 MiB; a copy of the credentials in each instance costs 3 to 8 MiB here)."""
    _compiled_bytes(_config(plugin, credentials, credential, FEW, 1))  # (what the first compile imports and caches)
    added = {}
    for consumers in (FEW, MANY):
        added[consumers] = (_compiled_bytes(_config(plugin, credentials, credential, consumers, ROUTES))
                            - _compiled_bytes(_config(plugin, credentials, credential, consumers, 1)))
    assert added[MANY] < 4 * max(added[FEW], 0) + 1024 * 1024, (
        f"{ROUTES - 1} more {plugin} instances cost {added[MANY] / 2**20:.1f} MiB with {MANY} consumers, "
        f"{added[FEW] / 2**20:.2f} MiB with {FEW}: each instance copies every consumer's credentials")


def test_key_auth_instances_share_one_table_of_keys() -> None:
    """Kong's key-auth looks a key up in the one shared cache, per request (kong/plugins/key-auth/handler.lua:36-37
    `load_credential(key)`: `kong.db.keyauth_credentials:select_by_key(key)`, cached by :181-183
    `kong.cache:get(credential_cache_key, ...)`): an instance costs the same whatever the number of consumers (a
    copy of every key per instance: 500 key-auth routes with 10,000 consumers held 5 million entries, ~450 MiB in
    each worker, the keeper and the root)."""
    _assert_instances_share_credentials("key-auth", "keyauth_credentials",
                                        lambda i: {"key": f"key-{i:06d}-secret"})


def test_basic_auth_instances_share_one_table_of_credentials() -> None:
    """Kong's basic-auth looks a username up in the one shared cache (kong/plugins/basic-auth/access.lua:90-91
    `select_by_username(username)`, cached by :104-105 `kong.cache:get(credential_cache_key, ...)`)."""
    _assert_instances_share_credentials("basic-auth", "basicauth_credentials",
                                        lambda i: {"username": f"user-{i:06d}", "password": f"password-{i}"})


def test_hmac_auth_instances_share_one_table_of_credentials() -> None:
    """Kong's hmac-auth looks a username up in the one shared cache (kong/plugins/hmac-auth/access.lua:176-177
    `select_by_username(username)`, cached by :188-189 `kong.cache:get(credential_cache_key, ...)`)."""
    _assert_instances_share_credentials("hmac-auth", "hmacauth_credentials",
                                        lambda i: {"username": f"user-{i:06d}", "secret": _secret(i)})


def test_jwt_instances_share_one_table_of_secrets() -> None:
    """Kong's jwt looks a token's key up in the one shared cache (kong/plugins/jwt/handler.lua:101-102
    `select_by_key(jwt_secret_key)`, cached by :198-199 `kong.cache:get(jwt_secret_cache_key, ...)`)."""
    _assert_instances_share_credentials("jwt", "jwt_secrets", lambda i: {"key": f"iss-{i:06d}", "secret": _secret(i)})
