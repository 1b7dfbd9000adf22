"""A field set to null, as `kong config db_export` writes every unset field (`~`), is not set, as in Kong's
declarative loader; where Kong requires the field null is refused. keyauth_credentials take Kong's `ttl`: the Unix
time the key stops authenticating at (DB-less Kong, kong/db/strategies/off/init.lua process_ttl_field)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

from test_kong_forms import errors, load
from tls_helpers import self_signed

from gateway.config import parse_config
from gateway.policies.consumers import Directory, Identity, Rejection
from gateway.policies.key_auth.handler import KeyAuth
from gateway.policies.key_auth.schema import KeyAuthConfig
from gateway.runtime import compile_config

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
