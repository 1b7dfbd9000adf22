"""A field set to null, as `kong config db_export` writes every unset field (`~`), is not set, as in Kong's
declarative loader; where Kong requires the field null is refused. keyauth_credentials take Kong's `ttl`: the Unix
time the key stops authenticating at (DB-less Kong, kong/db/strategies/off/init.lua process_ttl_field). A plugin's
config field given null is what Kong's plugin code makes of nil (kong/db/schema/init.lua:1950, the select that hands
a plugin its config: `if value == null and not nulls then value = nil`), not its default."""

from __future__ import annotations

import json
import textwrap
import time
import typing
from types import SimpleNamespace
from typing import Any

import msgspec
from test_kong_forms import errors, load
from tls_helpers import self_signed

from gateway.config import parse_config
from gateway.config.decode import kong_nulls
from gateway.policies import REGISTRY
from gateway.policies.consumers import Directory, Identity, Rejection
from gateway.policies.key_auth.handler import KeyAuth
from gateway.policies.key_auth.schema import KeyAuthConfig
from gateway.runtime import Runtime, compile_config

# spec/01-unit/01-db/10-declarative_spec.lua:29, "ttl fields are accepted in DB-less schema validation"
KONG_SPEC_DOC = """\
_format_version: '2.1'
consumers:
- custom_id: ~
  id: e150d090-4d53-4e55-bff8-efaaccd34ec4
  tags: ~
  username: bar@example.com
services:
keyauth_credentials:
- created_at: 1593624542
  id: 3f9066ef-b91b-4d1d-a05a-28619401c1ad
  tags: ~
  ttl: ~
  key: test
  consumer: e150d090-4d53-4e55-bff8-efaaccd34ec4
"""


def test_kongs_db_export_consumer_and_keyauth_credential_with_nulls_load():
    config = load(KONG_SPEC_DOC)
    assert Directory(config).api_keys["test"].username == "bar@example.com"
    assert config.consumers[0].tags == [] and config.consumers[0].custom_id is None


def test_null_tags_and_nested_lists_under_a_consumer_are_not_set():
    config = load("""
        consumers:
        - username: bob
          tags: ~
          custom_id: ~
          plugins: ~
          jwt_secrets: ~
          keyauth_credentials: ~
          hmacauth_credentials: ~
          acls:
          - group: admins
            tags: ~
            created_at: ~
          basicauth_credentials:
          - {username: bob, password: pw, tags: ~, consumer: ~, id: ~}
        """)
    assert Directory(config).consumers[config.consumers[0].id].groups == ("admins",)
    assert config.basicauth_credentials[0].tags == []


def test_db_export_nulls_on_services_routes_upstreams_targets_and_plugins_take_the_defaults():
    config = load("""
        services:
        - name: s
          host: example.com
          port: 80
          protocol: http
          path: ~
          connect_timeout: ~
          retries: ~
          tags: ~
          client_certificate: ~
          tls_verify: ~
          tls_verify_depth: ~
          ca_certificates: ~
          created_at: 1593624542
          updated_at: ~
          plugins: ~
          routes:
          - name: r
            paths: [/]
            hosts: ~
            methods: ~
            headers: ~
            snis: ~
            sources: ~
            destinations: ~
            regex_priority: ~
            path_handling: ~
            service: ~
            tags: ~
            plugins: ~
        upstreams:
        - name: u
          algorithm: ~
          hash_on_header: ~
          host_header: ~
          client_certificate: ~
          tags: ~
          healthchecks:
            threshold: ~
            active: {headers: ~, https_sni: ~, healthy: ~, timeout: ~}
          targets:
          - {target: "127.0.0.1:9001", weight: ~, tags: ~, created_at: 1593624542.123}
        plugins:
        - {name: cors, service: ~, route: ~, consumer: ~, config: ~, instance_name: ~, tags: ~}
        certificates: ~
        ca_certificates: ~
        """)
    svc, route, up = config.services[0], config.routes[0], config.upstreams[0]
    assert (svc.connect_timeout, svc.retries, svc.tags, svc.path) == (60000, 5, [], None)
    assert (route.hosts, route.headers, route.regex_priority, route.path_handling) == ([], {}, 0, "v0")
    assert (up.algorithm, up.healthchecks.active.timeout, config.targets[0].weight) == ("round-robin", 1, 100)
    assert config.plugins[0].config is not None


def test_nulls_on_certificates_snis_ca_certificates_and_vaults_are_not_set():
    cert, key = self_signed("nulls.test", -1, 30)
    cert_id, ca_id = "6d5a3c1e-2b4f-4a6d-8e9f-0a1b2c3d4e5f", "7e6b4d2f-3c5a-4b7e-9f0a-1b2c3d4e5f6a"
    doc = {"certificates": [{"id": cert_id, "cert": cert, "key": key, "cert_alt": None, "key_alt": None, "tags": None,
                             "created_at": 1593624542, "updated_at": None,
                             "snis": [{"name": "a.nulls.test", "tags": None, "id": None, "created_at": 1593624542}]}],
           "snis": [{"name": "nulls.test", "certificate": {"id": cert_id}, "tags": None, "created_at": None}],
           "ca_certificates": [{"id": ca_id, "cert": cert, "cert_digest": None, "tags": None}],
           "vaults": [{"prefix": "my-env", "name": "env", "description": None, "config": None, "tags": None}]}
    config = parse_config(json.dumps(doc), "kong.json")
    compile_config(config, "kong.json")
    assert sorted(s.name for s in config.snis) == ["a.nulls.test", "nulls.test"]
    assert config.certificates[0].tags == [] and config.ca_certificates[0].tags == []


def test_null_on_a_field_kong_requires_is_refused_with_kongs_words():
    assert errors("""
        services:
        - name: s
          host: example.com
          enabled: ~
          routes:
          - {paths: [/], strip_path: ~, protocols: ~}
        plugins:
        - {name: cors, enabled: ~}
        upstreams:
        - name: u
          healthchecks: {active: {https_verify_certificate: ~}}
        """) == [
        "services[0].enabled: required field missing (Kong refuses null here; remove the key for its default)",
        "services[0].routes[0].strip_path: required field missing (Kong refuses null here; remove the key for its "
        "default)",
        "services[0].routes[0].protocols: required field missing (Kong refuses null here; remove the key for its "
        "default)",
        "plugins[0].enabled: required field missing (Kong refuses null here; remove the key for its default)",
        "upstreams[0].healthchecks.active.https_verify_certificate: required field missing (Kong refuses null here; "
        "remove the key for its default)",
    ]


def test_null_on_a_field_without_a_default_is_refused():
    assert errors("""
        consumers:
        - username: bob
          acls: [{group: ~}]
        upstreams:
        - {name: u, targets: [{target: ~}]}
        """) == ["consumers[0].acls[0].group: expected string, got null",
                 "upstreams[0].targets[0].target: expected string, got null"]


def test_timestamps_are_kongs_types_and_updated_at_only_where_kong_has_one():
    assert errors("""
        services:
        - {name: s, host: example.com, created_at: 1.5}
        consumers:
        - username: bob
          keyauth_credentials: [{key: k, updated_at: 1593624542}]
        """) == ["services[0].created_at: expected an integer (a Unix time in seconds)",
                 "consumers[0].keyauth_credentials[0].updated_at: unknown field (check the spelling; see the README's "
                 "config reference)"]


def test_ttl_is_refused_on_entities_kong_gives_none():
    assert errors("""
        consumers:
        - username: bob
          ttl: ~
          basicauth_credentials: [{username: bob, password: pw, ttl: 1}]
        """) == ["consumers[0].ttl: unknown field (check the spelling; see the README's config reference)",
                 "consumers[0].basicauth_credentials[0].ttl: unknown field (check the spelling; see the README's "
                 "config reference)"]


def test_a_ttl_is_a_number():
    assert errors("consumers: [{username: bob, keyauth_credentials: [{key: k, ttl: soon}]}]") == [
        'consumers[0].keyauth_credentials[0].ttl: expected number, got "soon"']


def key_auth(keys: str) -> KeyAuth:
    config = load(f"consumers: [{{username: bob, keyauth_credentials: [{keys}]}}]")
    return KeyAuth(KeyAuthConfig(), Directory(config))


def request_with(key: bytes) -> SimpleNamespace:
    return SimpleNamespace(request=SimpleNamespace(headers=[(b"apikey", key)], target=b"/"))


def test_a_key_authenticates_until_its_ttl_then_is_unknown():
    now = time.time()
    policy = key_auth(f"{{key: live, ttl: {now + 600:.0f}}}, {{key: gone, ttl: {now - 1:.0f}}}, {{key: plain}}")
    assert isinstance(policy.authenticate(request_with(b"live")), Identity)  # type: ignore[arg-type]
    assert isinstance(policy.authenticate(request_with(b"plain")), Identity)  # type: ignore[arg-type]
    expired = policy.authenticate(request_with(b"gone"))  # type: ignore[arg-type]
    assert isinstance(expired, Rejection) and (expired.status, expired.message) == (401, "Unauthorized")


def test_keys_without_a_ttl_are_never_checked_against_the_clock():
    policy = key_auth("{key: plain, ttl: ~}")
    assert policy.expiring == {} and b"plain" in policy.keys


def read_as_kong(plugin: str, config: dict[str, Any]) -> Any:
    """`config` decoded with the plugin's schema after its nulls are read as Kong's code reads them."""
    problems: list[str] = []
    raw = kong_nulls(config, REGISTRY[plugin].schema, "config", problems)
    assert problems == []
    return msgspec.convert(raw, REGISTRY[plugin].schema)


def compiled(text: str) -> Runtime:
    return compile_config(parse_config(textwrap.dedent(text), "kong.yml"), "kong.yml")


def test_decks_prometheus_dump_with_null_switches_loads_them_off():
    """decK's dump of Kong 3.12 (real/deck/...001-entities-with-tags__expected312.yaml:111) writes `wasm_metrics:
    null`: kong/plugins/prometheus/schema.lua has `default = false` without `required`, so Kong keeps the null and
    the handler gets nil, off for `if conf.per_consumer` (prometheus/handler.lua:31) and `if configs[i].wasm_metrics`
    (exporter.lua:235)."""
    (policy,) = compiled("""
        plugins:
        - name: prometheus
          config: {ai_metrics: false, bandwidth_metrics: false, latency_metrics: ~, per_consumer: ~,
                   status_code_metrics: false, upstream_health_metrics: ~, wasm_metrics: ~}
        """).global_loggers
    cfg = policy.config
    assert (cfg.per_consumer, cfg.latency_metrics, cfg.upstream_health_metrics, cfg.wasm_metrics) == (False,) * 4


def test_a_null_switch_kongs_code_tests_for_truth_is_off():
    """redirect/handler.lua:17 `if conf.keep_incoming_path`, statsd_logger.lua:97 `if conf.use_tcp`, session.lua:117
    `if conf.read_body_for_logout`, and rate-limiting's redis ssl options (policies/init.lua:110-111) handed to
    lua-resty-redis, which connects in plain text without them: nil is off in each."""
    assert read_as_kong("redirect", {"location": "https://example.com/", "keep_incoming_path": None}) \
        .keep_incoming_path is False
    statsd = read_as_kong("statsd", {"use_tcp": None, "hostname_in_prefix": None})
    assert (statsd.use_tcp, statsd.hostname_in_prefix) == (False, False)
    session = read_as_kong("session", {"secret": "s" * 32, "read_body_for_logout": None, "remember": None})
    assert (session.read_body_for_logout, session.remember) == (False, False)
    redis = read_as_kong("rate-limiting", {"minute": 1, "redis": {"ssl": None, "ssl_verify": None}}).redis
    assert (redis.ssl, redis.ssl_verify) == (False, False)


def test_a_null_kongs_code_reads_as_the_default_is_the_default():
    """`conf.x or <default>` in Kong's code: datadog/handler.lua:33-38 and statsd_logger.lua:75 (prefix, tags),
    jwt/handler.lua:245 (maximum_expiration ~= nil and > 0), bot-detection/handler.lua:40,48 (`if conf.allow`),
    hmac-auth/access.lua:68 (`if conf.enforce_headers and ...`), kong/llm/plugin/shared-filters/parse-request.lua:58
    (`if llm_format and llm_format ~= "openai"`), and lua-resty-session 4.0.5's `configuration.x or DEFAULT_X`
    (session.new) for the session settings Kong hands it (session/session.lua:26-47)."""
    datadog = read_as_kong("datadog", {"prefix": None, "service_name_tag": None, "status_tag": None,
                                       "consumer_tag": None})
    assert (datadog.prefix, datadog.service_name_tag, datadog.status_tag, datadog.consumer_tag) == \
        ("kong", "name", "status", "consumer")
    assert read_as_kong("jwt", {"maximum_expiration": None}).maximum_expiration == 0
    assert read_as_kong("bot-detection", {"allow": None, "deny": None}).allow == []
    assert read_as_kong("hmac-auth", {"enforce_headers": None}).enforce_headers == []
    assert read_as_kong("ai-prompt-guard", {"allow_patterns": [".*"], "llm_format": None}).llm_format == "openai"
    session = read_as_kong("session", {"secret": "s" * 32, "idling_timeout": None, "cookie_name": None,
                                       "cookie_http_only": None, "storage": None})
    assert (session.idling_timeout, session.cookie_name, session.cookie_http_only, session.storage) == \
        (900, "session", True, "cookie")


def test_a_null_kongs_code_reads_as_another_value_is_that_value():
    """rate-limiting/handler.lua:60-85 and response-ratelimiting/access.lua:17-30 match no limit_by for nil and key
    by the client address (`identifier or kong.client.get_forwarded_ip()`), not by consumer; lua-resty-session 4.0.5
    takes SameSite Lax (DEFAULT_COOKIE_SAME_SITE) and no Secure (DEFAULT_COOKIE_SECURE is nil) where Kong's defaults
    are Strict and true; session.lua:90-92 logs nobody out without logout_methods."""
    assert read_as_kong("rate-limiting", {"minute": 1, "limit_by": None}).limit_by == "ip"
    assert read_as_kong("response-ratelimiting", {"limits": {"video": {"minute": 1}}, "limit_by": None}) \
        .limit_by == "ip"
    session = read_as_kong("session", {"secret": "s" * 32, "cookie_same_site": None, "cookie_secure": None,
                                       "logout_methods": None})
    assert (session.cookie_same_site, session.cookie_secure, session.logout_methods) == ("Lax", False, [])


def test_a_null_whose_nil_is_not_the_default_is_refused_naming_the_field():
    """http-log/handler.lua:101-112 hands nil to lua-resty-http's set_timeout, proxy-cache/handler.lua:316 compares
    with it, and Kong's queue asserts a number (kong/tools/queue.lua, Queue.enqueue): null is no default there."""
    assert errors("""
        plugins:
        - name: http-log
          config: {http_endpoint: "http://127.0.0.1:9/", timeout: ~, queue: {max_batch_size: ~}}
        - {name: proxy-cache, config: {strategy: memory, cache_ttl: ~}}
        """) == [
        "plugins[0].config.timeout: null is refused here: Kong reads it as no value (nil) or refuses it, never as "
        "the default 10000; give a value, or remove the key for the default",
        "plugins[0].config.queue.max_batch_size: null is refused here: Kong reads it as no value (nil) or refuses "
        "it, never as the default 1; give a value, or remove the key for the default",
        "plugins[1].config.cache_ttl: null is refused here: Kong reads it as no value (nil) or refuses it, never as "
        "the default 300; give a value, or remove the key for the default",
    ]


def test_every_null_as_names_a_field_of_its_schema_and_fits_it():
    """What a Struct's NULL_AS gives a null must be a value its field takes, so a null never fails to decode."""
    seen: set[type] = set()
    todo = [module.schema for module in REGISTRY.values()]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {f.encode_name: hints[f.name] for f in msgspec.structs.fields(cls)}
        for name, value in getattr(cls, "NULL_AS", {}).items():
            assert name in fields, (cls, name)
            msgspec.convert(value, fields[name])
        for typ in fields.values():
            todo += [t for t in _types_in(typ) if isinstance(t, type) and issubclass(t, msgspec.Struct)]
    assert len(seen) > len(REGISTRY)


def _types_in(typ: Any) -> list[Any]:
    return [typ, *(t for arg in typing.get_args(typ) for t in _types_in(arg))]
