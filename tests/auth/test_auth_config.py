"""Consumers and credentials in Kong's declarative form, the client-address settings, and what check-config refuses:
every message names the field, and no secret ever appears in one."""

from __future__ import annotations

import json
import uuid

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.consumers import PasswordHash, Secret, kong_consumer_id
from gateway.policies.consumers import Directory
from gateway.runtime import compile_config

SERVICE = "services: [{name: s, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/]}]}]\n"


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(SERVICE + text, "t.yml"), "t.yml")
    return [m.removeprefix("t.yml: ") for m in info.value.messages]


def load(text: str):  # noqa: ANN201
    config = parse_config(SERVICE + text, "t.yml")
    compile_config(config, "t.yml")
    return config


# --- consumers -----------------------------------------------------------------------------------------------------


def test_consumer_ids_are_kongs_declarative_ids():
    """Kong makes a consumer's id a UUIDv5 of its username (kong/db/schema/others/declarative_config.lua)."""
    ns = uuid.uuid5(uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5"), "consumers")
    config = load("consumers: [{username: bob}, {username: carol, id: 0b9a5c1e-0000-4000-8000-000000000001}]")
    assert config.consumers[0].id == str(uuid.uuid5(ns, "bob")) == kong_consumer_id("bob")
    assert config.consumers[1].id == "0b9a5c1e-0000-4000-8000-000000000001"


def test_a_consumer_with_only_a_custom_id_gets_a_stable_id():
    a = load("consumers: [{custom_id: c-1}]").consumers[0].id
    b = load("consumers: [{custom_id: c-1}]").consumers[0].id
    assert a == b and uuid.UUID(a)


def test_nested_and_top_level_credentials_end_up_the_same():
    nested = load("consumers: [{username: bob, keyauth_credentials: [{key: k1}], acls: [{group: g}], "
                  "jwt_secrets: [{key: iss-1, secret: s}], basicauth_credentials: [{username: u, password: p}]}]")
    top = load("consumers: [{username: bob}]\nkeyauth_credentials: [{consumer: bob, key: k1}]\n"
               "acls: [{consumer: bob, group: g}]\njwt_secrets: [{consumer: bob, key: iss-1, secret: s}]\n"
               f"basicauth_credentials: [{{consumer: {kong_consumer_id('bob')}, username: u, password: p}}]")
    for config in (nested, top):
        bob = kong_consumer_id("bob")
        assert [c.consumer for c in config.keyauth_credentials + config.acls + config.jwt_secrets
                + config.basicauth_credentials] == [bob] * 4
        directory = Directory(config)
        assert directory.api_keys["k1"].username == "bob"
        assert directory.consumers[bob].groups == ("g",)
    assert [c.id for c in nested.keyauth_credentials] == [c.id for c in top.keyauth_credentials]


@pytest.mark.parametrize("named", ["0fe87b4a-ce29-515a-88ec-8547e66550b9", "bob"])
def test_a_nested_credential_may_name_its_own_consumer_by_id_or_username(named):
    """Kong's flatten_spec: "accepts as a nested entity by id" and "... by username"."""
    config = load("consumers: [{id: 0fe87b4a-ce29-515a-88ec-8547e66550b9, username: bob, "
                  f"basicauth_credentials: [{{username: u, password: p, consumer: {named}}}]}}]")
    assert config.basicauth_credentials[0].consumer == "0fe87b4a-ce29-515a-88ec-8547e66550b9"


# Kong's declarative ids: UUIDv5 of "<entity>:<ws>:<cache_key values>" in UUIDv5(this, "<entity>")
# (kong/db/schema/others/declarative_config.lua: build_cache_key, generate_uuid, get_key_for_uuid_gen).
KONG_NAMESPACE = uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5")


def kong_generated_id(entity: str, key: str) -> str:
    return str(uuid.uuid5(uuid.uuid5(KONG_NAMESPACE, entity), key))


def test_the_id_formula_gives_kongs_own_expected_value():
    """The formula the tests below use, checked against Kong's spec (05-error-flattening_spec.lua: target
    10.244.0.12:80 of upstream f9792964-... gets 48322e4a-...)."""
    assert kong_generated_id("targets", "targets:*:f9792964-6797-482c-bfdf-08220a4f6839:10.244.0.12:80") == \
        "48322e4a-b3b0-591b-8ed6-fd95a6d75019"


def test_basic_and_hmac_credentials_without_an_id_get_kongs_ids():
    """Their cache_key is {username} (kong/plugins/basic-auth/daos.lua, hmac-auth/daos.lua), so Kong's id is derived
    from the username; it is what logs write as authenticated_entity.id and what `limit_by: credential` counts by,
    so ours must be the same for the same kong.yml."""
    config = load("consumers: [{username: bob, basicauth_credentials: [{username: alice, password: pw}], "
                  "hmacauth_credentials: [{username: hal, secret: s3cret}]}]")
    basic_id = kong_generated_id("basicauth_credentials", "basicauth_credentials:*:alice")
    hmac_id = kong_generated_id("hmacauth_credentials", "hmacauth_credentials:*:hal")
    assert (config.basicauth_credentials[0].id, config.hmacauth_credentials[0].id) == (basic_id, hmac_id)
    directory = Directory(config)
    assert directory.basic["alice"][1].credential_id == basic_id
    assert directory.hmac["hal"][1].credential_id == hmac_id


def test_an_acl_without_an_id_gets_kongs_id_from_its_consumer_and_group():
    """acls have cache_key {consumer, group}: nested, the consumer is its id; top-level (or nested naming it), the
    `consumer:` string as written, as Kong's build_cache_key takes it."""
    bob = kong_consumer_id("bob")
    config = load("consumers: [{username: bob, acls: [{group: g}, {group: h, consumer: bob}]}]\n"
                  "acls: [{consumer: bob, group: i}]")
    assert {a.group: a.id for a in config.acls} == {"g": kong_generated_id("acls", f"acls:*:{bob}:g"),
                                                    "h": kong_generated_id("acls", "acls:*:bob:h"),
                                                    "i": kong_generated_id("acls", "acls:*:bob:i")}


def test_a_consumers_groups_are_in_acl_id_order_as_kong_reads_them():
    """Kong's acl handler joins the groups as kong.db.acls:each_for_consumer reads them: by primary key (LMDB key
    order DB-less, ORDER BY id on Postgres), so X-Consumer-Groups does not follow the file's order."""
    config = load("consumers: [{username: bob, acls: [{group: b, id: 22222222-2222-4222-8222-222222222222}, "
                  "{group: a, id: 11111111-1111-4111-8111-111111111111}]}]")
    assert Directory(config).consumers[kong_consumer_id("bob")].groups == ("a", "b")


def test_groups_without_ids_are_in_the_order_of_kongs_derived_ids():
    """For bob, Kong derives acls:*:<bob's id>:admins = 8ade445c-... and :users = b12aa331-...: admins first."""
    config = load("consumers: [{username: bob, acls: [{group: users}, {group: admins}]}]")
    assert Directory(config).consumers[kong_consumer_id("bob")].groups == ("admins", "users")


def test_credentials_whose_kong_id_is_random_get_stable_ids_of_ours():
    """key-auth and jwt: cache_key {key}, an `auto` field, so Kong's id is random; so is an acl's of a consumer with
    no username and no id. Ours are the same on every load, so every worker agrees."""
    text = ("consumers: [{username: bob, keyauth_credentials: [{key: k1}], jwt_secrets: [{key: iss, secret: s}]}, "
            "{custom_id: c-1, acls: [{group: g}]}]")
    first, again = load(text), load(text)
    for attr in ("keyauth_credentials", "jwt_secrets", "acls"):
        [cred] = getattr(first, attr)
        assert cred.id == getattr(again, attr)[0].id and uuid.UUID(cred.id)
    assert first.acls[0].id != kong_generated_id("acls", f"acls:*:{first.consumers[1].id}:g")


def test_a_group_given_twice_to_one_consumer_is_refused():
    """Kong gives both acls the same id and refuses the second ("uniqueness violation: 'acls' entity with primary
    key set to ... already declared", declarative_config.lua populate_references)."""
    assert errors("consumers: [{username: bob, acls: [{group: admin}, {group: admin}]}]") == [
        'consumers[0].acls[1].group: "admin" is already given to this consumer by consumers[0].acls[0] (Kong '
        "refuses a group given twice: both get the same id); keep one"]


def test_one_group_given_to_two_consumers_loads():
    config = load("consumers: [{username: bob, acls: [{group: admin}]}, {username: eve, acls: [{group: admin}]}]")
    assert len({a.id for a in config.acls}) == 2


def test_a_derived_id_already_given_to_another_credential_is_refused():
    taken = kong_generated_id("basicauth_credentials", "basicauth_credentials:*:alice")
    assert errors(f"consumers: [{{username: bob, basicauth_credentials: [{{username: al, password: p, id: {taken}}}, "
                  "{username: alice, password: q}]}]") == [
        f"consumers[0].basicauth_credentials[1].id: '{taken}', the id Kong derives for it, is already used by "
        "consumers[0].basicauth_credentials[0]"]


def test_consumer_plugins_are_scoped_to_the_consumers_id():
    config = load("consumers: [{username: bob, plugins: [{name: rate-limiting, config: {minute: 5}}]}]")
    assert config.plugins[0].consumer == kong_consumer_id("bob")


@pytest.mark.parametrize(("text", "expected"), [
    ("consumers: [{tags: [x]}]", "consumers[0]: set username or custom_id (or both)"),
    ("consumers: [{username: a}, {username: a}]", "consumers[1].username: 'a' is already used by consumers[0]"),
    ("consumers: [{custom_id: a}, {custom_id: a}]", "consumers[1].custom_id: 'a' is already used by consumers[0]"),
    ("keyauth_credentials: [{consumer: ghost, key: k}]",
     "keyauth_credentials[0].consumer: no consumer with id or username 'ghost'"),
    ("acls: [{group: g}]", "acls[0].consumer: name the consumer (its id or username), or nest the credential under it"),
    ("consumers: [{username: a, acls: [{consumer: b, group: g}]}]",
     'consumers[0].acls[0].consumer: no consumer with id or username "b"'),
    ("consumers: [{username: a, acls: [{group: ''}]}]", "consumers[0].acls[0].group: must not be empty"),
    ("consumers: [{username: a, jwt_secrets: [{key: k, secret: s}, {key: k, secret: t}]}]",
     "consumers[0].jwt_secrets[1].key: 'k' is already used by consumers[0].jwt_secrets[0]"),
    ("consumers: [{username: a, basicauth_credentials: [{username: u, password: p}]}, "
     "{username: b, basicauth_credentials: [{username: u, password: q}]}]",
     "consumers[1].basicauth_credentials[0].username: 'u' is already used by consumers[0].basicauth_credentials[0]"),
    ("consumers: [{username: a, jwt_secrets: [{key: k, algorithm: RS256}]}]",
     "consumers[0].jwt_secrets[0].rsa_public_key: algorithm RS256 needs the consumer's public key (PEM)"),
    ("consumers: [{username: a, jwt_secrets: [{key: k, algorithm: EdDSA}]}]",
     "consumers[0].jwt_secrets[0].rsa_public_key: algorithm EdDSA needs the consumer's public key (PEM)"),
    ("consumers: [{username: a, jwt_secrets: [{key: k, algorithm: HS999}]}]",
     'consumers[0].jwt_secrets[0].algorithm: expected one of "ES256", "ES384", "ES512", "EdDSA", "HS256", "HS384", '
     '"HS512", "PS256", "PS384", "PS512", "RS256", "RS384", "RS512", got "HS999"'),
    ("consumers: [{username: a, basicauth_credentials: [{username: u}]}]",
     "consumers[0].basicauth_credentials[0].password: required field is missing"),
    ("consumers: [{username: a, basicauth_credentials: [{username: u, password: ''}]}]",
     "consumers[0].basicauth_credentials[0].password: must not be empty"),
    ("consumers: [{username: a, hmacauth_credentials: [{username: u, ttl: 60}]}]",  # (keyauth's is Kong's)
     "consumers[0].hmacauth_credentials[0].ttl: unknown field (check the spelling; see the README's config "
     "reference)"),
    ('consumers: [{username: "a\\r\\nX-Admin: 1"}]',
     "consumers[0].username: control characters are not allowed (it is sent upstream in a header)"),
])
def test_consumer_errors_name_the_field(text, expected):
    assert expected in errors(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("consumers: [{username: a}, {username: a}]", ["consumers[1].username: 'a' is already used by consumers[0]"]),
    ("consumers: [{custom_id: c}, {custom_id: c}]", ["consumers[1].custom_id: 'c' is already used by consumers[0]"]),
    (f"consumers: [{{username: a}}, {{username: b, id: {kong_consumer_id('a')}}}]",
     [f"consumers[1].id: '{kong_consumer_id('a')}' is already used by consumers[0]"]),
], ids=["username", "custom_id", "given-id"])
def test_a_repeated_consumer_is_said_once_naming_what_the_file_repeats(text, expected):
    """Two consumers of one username share the id derived from it: the username is the error, said once (not the
    id no one wrote); an id written equal to another's is said once."""
    assert errors(text) == expected


def test_an_rsa_key_that_is_not_a_key_is_an_error():
    """Kong's daos.lua validates RS*, PS* and EdDSA keys with OpenSSL ("invalid key")."""
    [message] = errors("consumers: [{username: a, jwt_secrets: [{key: k, algorithm: RS256, rsa_public_key: nope}]}]")
    assert message.startswith("consumers[0].jwt_secrets[0].rsa_public_key: not usable as a RS256 public key (PEM)")


@pytest.mark.parametrize("key", ["", ", rsa_public_key: nope"], ids=["none", "not-a-key"])
def test_an_es_credential_without_a_usable_key_is_accepted_as_kong_accepts_it(key):
    """Kong's daos.lua checks no key for ES*: the credential loads, and its tokens get "Invalid key/secret"."""
    load(f"consumers: [{{username: a, jwt_secrets: [{{key: k, algorithm: ES256{key}}}]}}]")


def test_a_key_of_the_wrong_family_is_accepted_as_kong_accepts_any_key():
    from auth_helpers import key_pair
    pem = json.dumps(key_pair("ES256")[1])
    load(f"consumers: [{{username: a, jwt_secrets: [{{key: k, algorithm: RS256, rsa_public_key: {pem}}}]}}]")


def test_an_hmac_secret_that_looks_like_a_key_is_accepted_as_kong_accepts_it():
    from auth_helpers import key_pair
    pem = json.dumps(key_pair("RS256")[1])
    load(f"consumers: [{{username: a, jwt_secrets: [{{key: k, secret: {pem}}}]}}]")


# --- secrets never shown -------------------------------------------------------------------------------------------


SECRET = "hunter2-s3cr3t-value"


@pytest.mark.parametrize("text", [
    f"consumers: [{{username: a, keyauth_credentials: [{{key: {SECRET}}}, {{key: {SECRET}}}]}}]",
    f"consumers: [{{username: a, keyauth_credentials: [{{key: [{SECRET}]}}]}}]",
    f"consumers: [{{username: a, basicauth_credentials: [{{username: u, password: [{SECRET}]}}]}}]",
    f"consumers: [{{username: a, jwt_secrets: [{{key: k, secret: {{x: {SECRET}}}}}]}}]",
    f"keyauth_credentials: [{{consumer: ghost, key: {SECRET}}}]",
    f"consumers: [{{username: a, keyauth_credentials: [{{key: {SECRET}, bogus: 1}}]}}]",
])
def test_secrets_never_appear_in_error_messages(text):
    messages = errors(text)
    assert messages
    assert not any(SECRET in m for m in messages), messages


def test_secrets_never_appear_in_the_config_objects_repr():
    config = load(f"consumers: [{{username: a, keyauth_credentials: [{{key: {SECRET}}}], "
                  f"basicauth_credentials: [{{username: u, password: {SECRET}}}], "
                  f"jwt_secrets: [{{key: k, secret: {SECRET}}}]}}]")
    everything = repr(config) + repr(config.keyauth_credentials) + repr(config.basicauth_credentials) + repr(
        config.jwt_secrets)
    assert SECRET not in everything
    assert isinstance(config.keyauth_credentials[0].key, Secret)


def test_basic_auth_passwords_are_only_kept_hashed():
    config = load(f"consumers: [{{username: a, basicauth_credentials: [{{username: u, password: {SECRET}}}]}}]")
    password = config.basicauth_credentials[0].password
    assert isinstance(password, PasswordHash)
    kept = [getattr(password, s) for s in PasswordHash.__slots__]
    assert SECRET.encode() not in b"".join(v for v in kept if isinstance(v, bytes))
    assert password.matches(SECRET.encode()) and not password.matches(b"hunter2")


# --- plugins: what is not enforced is refused ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["oauth2", "aws-lambda", "grpc-web", "azure-functions", "acme"])
def test_plugins_the_gateway_does_not_enforce_are_not_supported(name):
    [message] = errors(f"plugins: [{{name: {name}}}]")
    assert message.startswith(f"plugins[0].name: plugin '{name}' is not supported (it ")
    assert "; supported: acl, " in message
    assert ", basic-auth, " in message


@pytest.mark.parametrize(("plugin", "key"), [("jwt", "header_name"), ("key-auth", "key_in_cookie"),
                                             ("basic-auth", "brute_force_protection"), ("acl", "whitelist"),
                                             ("ip-restriction", "whitelist")])
def test_config_keys_the_gateway_does_not_enforce_are_not_supported(plugin, key):
    [message] = errors(f"plugins: [{{name: {plugin}, config: {{{key}: x}}}}]")
    assert message.startswith(f"plugins[0].config.{key} is not supported by the gateway's {plugin} plugin (it takes: ")


def test_the_reference_kong_yml_still_checks():
    from pathlib import Path

    from gateway.config import load_config
    path = Path(__file__).resolve().parents[2] / "configs" / "kong.yml"
    runtime = compile_config(load_config(path), str(path))
    route = runtime.router.match(b"POST", b"/v1", None, []).payload
    assert [p.name for p in route.policies][:1] == ["jwt"]


# --- the client address --------------------------------------------------------------------------------------------


def test_trust_forwarded_is_gone_with_a_message_saying_what_replaces_it():
    [message] = errors("gateway: {trust_forwarded: true}")
    assert message.startswith("gateway.trust_forwarded: removed: list the addresses of the balancers in front of the "
                              "gateway in gateway.trusted_ips")
    assert "real_ip_header" in message


@pytest.mark.parametrize(("setting", "expected"), [
    ("trusted_ips: [10.0.0.0/40]", 'gateway.trusted_ips[0]: expected an IP address or a CIDR (e.g. "10.0.0.0/8", '
                                   '"::1"), got "10.0.0.0/40"'),
    ("trusted_ips: ['unix:/run/lb.sock']", 'gateway.trusted_ips[0]: expected an IP address or a CIDR (e.g. '
                                           '"10.0.0.0/8", "::1"), got "unix:/run/lb.sock"'),
    ("real_ip_header: PROXY_PROTOCOL", "gateway.real_ip_header: write proxy_protocol in lower case"),
    ("real_ip_header: 'X Forwarded'", 'gateway.real_ip_header: expected a header name (e.g. "X-Forwarded-For"), '
                                      'got "X Forwarded"'),
])
def test_client_address_settings_are_checked(setting, expected):
    [message] = errors(f"gateway: {{{setting}}}")
    assert message.startswith(expected)


def test_client_address_settings_as_kong_conf_spells_them():
    config = load("gateway: {trusted_ips: [10.0.0.0/8, '::1'], real_ip_header: X-Forwarded-For, "
                  "real_ip_recursive: on}")
    assert config.gateway.real_ip_recursive is True
    runtime = compile_config(config)
    assert runtime.client_address is not None
    assert compile_config(load("")).client_address is None  # the socket peer, at no cost per request


def test_trusted_ips_may_be_kong_confs_comma_separated_string():
    """kong.conf's arrays are comma-separated strings (`trusted_ips = 0.0.0.0/0,::/0`)."""
    config = load("gateway: {trusted_ips: '10.0.0.0/8, ::1'}")
    assert config.gateway.trusted_ips == ["10.0.0.0/8", "::1"]
    [message] = errors("gateway: {trusted_ips: '10.0.0.0/8,10.0.0.0/40'}")
    assert message.startswith("gateway.trusted_ips[1]: expected an IP address or a CIDR")
