"""Kong's empty strings: kong/db/schema/init.lua gives every string field without its own len_min a len_min of 1, so
"" is refused with "length must be at least 1" before the field's match or custom_validator runs; a field with
len_min = 0 (the redis password) takes "". Each case is a minimal config with one "" and the message naming it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.runtime import compile_config

KONG_LEN_MIN = "length must be at least 1"
SERVICE = {"name": "s", "url": "http://127.0.0.1:1"}


def messages(doc: dict[str, Any]) -> list[str]:
    """Every problem the loader and the compiler find in `doc`."""
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(json.dumps(doc), "kong.yml"), "kong.yml")
    return [m.removeprefix("kong.yml: ") for m in info.value.messages]


def plugin(name: str, **config: Any) -> dict[str, Any]:
    return {"services": [SERVICE], "plugins": [{"name": name, "service": "s", "config": config}]}


def consumer(attr: str, credential: dict[str, Any]) -> dict[str, Any]:
    return {"consumers": [{"username": "bob", attr: [credential]}]}


# (entity or plugin, the field's path in the message, a config holding "" there)
CASES: list[tuple[str, str, dict[str, Any]]] = [
    # entities
    ("ca_certificates", "ca_certificates[0].cert", {"ca_certificates": [{"cert": ""}]}),
    ("ca_certificates", "ca_certificates[0].cert_digest", {"ca_certificates": [{"cert": "c", "cert_digest": ""}]}),
    ("ca_certificates", "ca_certificates[0].tags[0]", {"ca_certificates": [{"cert": "c", "tags": [""]}]}),
    ("certificates", "certificates[0].tags[0]", {"certificates": [{"cert": "c", "key": "k", "tags": [""]}]}),
    ("snis", "certificates[0].snis[0].tags[0]",
     {"certificates": [{"cert": "c", "key": "k", "snis": [{"name": "a.test", "tags": [""]}]}]}),
    ("plugins", "plugins[0].tags[0]", {"plugins": [{"name": "cors", "tags": [""]}]}),
    ("plugins", "services[0].plugins[0].tags[0]", {"services": [{**SERVICE, "plugins": [{"name": "cors",
                                                                                           "tags": [""]}]}]}),
    ("plugins", "plugins[0].instance_name", {"plugins": [{"name": "cors", "instance_name": ""}]}),
    ("upstreams", "upstreams[0].healthchecks.active: headers.x-a[0]",
     {"upstreams": [{"name": "u", "healthchecks": {"active": {"headers": {"x-a": [""]}}}}]}),
    ("upstreams", "upstreams[0].hash_on_query_arg", {"upstreams": [{"name": "u", "hash_on": "query_arg",
                                                                     "hash_on_query_arg": ""}]}),
    ("services", "services[0].tags[0]", {"services": [{**SERVICE, "tags": [""]}]}),
    ("routes", "services[0].routes[0].name", {"services": [{**SERVICE, "routes": [{"name": "", "paths": ["/"]}]}]}),
    ("vaults", "vaults[0].description", {"vaults": [{"prefix": "my-env", "name": "env", "description": ""}]}),
    ("vaults", "vaults[0].tags[0]", {"vaults": [{"prefix": "my-env", "name": "env", "tags": [""]}]}),
    ("keyauth_credentials", "consumers[0].keyauth_credentials[0].tags[0]",
     consumer("keyauth_credentials", {"key": "k", "tags": [""]})),
    ("basicauth_credentials", "consumers[0].basicauth_credentials[0].tags[0]",
     consumer("basicauth_credentials", {"username": "u", "password": "p", "tags": [""]})),
    ("hmacauth_credentials", "consumers[0].hmacauth_credentials[0].tags[0]",
     consumer("hmacauth_credentials", {"username": "u", "secret": "s", "tags": [""]})),
    ("jwt_secrets", "consumers[0].jwt_secrets[0].tags[0]",
     consumer("jwt_secrets", {"key": "k", "secret": "s" * 32, "tags": [""]})),
    ("acls", "consumers[0].acls[0].tags[0]", consumer("acls", {"group": "g", "tags": [""]})),
    ("acls", "acls[0].tags[0]", {"consumers": [{"username": "bob"}],
                                 "acls": [{"consumer": "bob", "group": "g", "tags": [""]}]}),
    # plugins
    ("cors", "plugins[0].config.origins[0]", plugin("cors", origins=[""])),
    ("cors", "plugins[0].config.headers[0]", plugin("cors", headers=[""])),
    ("cors", "plugins[0].config.exposed_headers[0]", plugin("cors", exposed_headers=[""])),
    ("request-transformer", "plugins[0].config.http_method", plugin("request-transformer", http_method="")),
    ("request-transformer", "plugins[0].config.remove.body[0]", plugin("request-transformer", remove={"body": [""]})),
    ("request-transformer", "plugins[0].config.remove.headers[0]",
     plugin("request-transformer", remove={"headers": [""]})),
    ("request-transformer", "plugins[0].config.remove.querystring[0]",
     plugin("request-transformer", remove={"querystring": [""]})),
    ("request-transformer", "plugins[0].config.rename.headers[0]",
     plugin("request-transformer", rename={"headers": [""]})),
    ("request-transformer", "plugins[0].config.replace.uri", plugin("request-transformer", replace={"uri": ""})),
    ("request-transformer", "plugins[0].config.add.body[0]", plugin("request-transformer", add={"body": [""]})),
    ("request-transformer", "plugins[0].config.append.querystring[0]",
     plugin("request-transformer", append={"querystring": [""]})),
    ("response-transformer", "plugins[0].config.remove.json[0]", plugin("response-transformer", remove={"json": [""]})),
    ("response-transformer", "plugins[0].config.remove.headers[0]",
     plugin("response-transformer", remove={"headers": [""]})),
    ("response-transformer", "plugins[0].config.rename.json[0]", plugin("response-transformer", rename={"json": [""]})),
    ("response-transformer", "plugins[0].config.add.headers[0]", plugin("response-transformer", add={"headers": [""]})),
    ("response-transformer", "plugins[0].config.append.json[0]", plugin("response-transformer", append={"json": [""]})),
    ("datadog", "plugins[0].config.metrics[0].tags[0]",
     plugin("datadog", metrics=[{"name": "request_count", "stat_type": "counter", "sample_rate": 1, "tags": [""]}])),
    ("datadog", "plugins[0].config.prefix", plugin("datadog", prefix="")),
    ("statsd", "plugins[0].config.prefix", plugin("statsd", prefix="")),
    ("session", "plugins[0].config.secret", plugin("session", secret="")),
    ("acl", "plugins[0].config.allow[0]", plugin("acl", allow=[""])),
    ("jwt", "plugins[0].config.key_claim_name", plugin("jwt", key_claim_name="")),
    ("hmac-auth", "plugins[0].config.realm", plugin("hmac-auth", realm="")),
    ("rate-limiting", "plugins[0].config.redis.host", plugin("rate-limiting", second=1, redis={"host": ""})),
    ("proxy-cache", "plugins[0].config.vary_headers[0]", plugin("proxy-cache", strategy="memory", vary_headers=[""])),
    ("standard-webhooks", "plugins[0].config.secret_v1", plugin("standard-webhooks", secret_v1="")),
]


@pytest.mark.parametrize(("kind", "field", "doc"), CASES, ids=[f"{kind}:{field}" for kind, field, _ in CASES])
def test_an_empty_string_is_refused_naming_the_field(kind: str, field: str, doc: dict[str, Any]) -> None:
    assert f"{field}: {KONG_LEN_MIN}" in messages(doc)


@pytest.mark.parametrize("redis", [{"host": "r", "password": ""}, {"password": ""}])
def test_the_redis_password_takes_an_empty_string_as_kongs_len_min_0(redis: dict[str, Any]) -> None:
    doc = plugin("rate-limiting", second=1, policy="local", redis=redis)
    compile_config(parse_config(json.dumps(doc), "kong.yml"), "kong.yml")


def test_a_wrong_type_for_a_non_empty_string_still_says_what_is_expected() -> None:
    assert messages(plugin("standard-webhooks", secret_v1=123)) == [
        "plugins[0].config.secret_v1: expected non-empty text, got 123"]
