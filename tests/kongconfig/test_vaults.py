"""Kong's vault references ({vault://env/...}) in referenceable fields: resolved from the environment at load, as
kong/vaults/env and kong.pdk.vault do; refused, naming the field and the variable, when they cannot be; the literal
text in every other field. End to end: a Redis password and a TLS certificate that come from the environment."""

from __future__ import annotations

import json
import ssl
import time
from collections import Counter

import pytest
import trio
from backends import EchoBackend, free_port, request, service
from e2e_helpers import GatewayNode
from redis_server import RedisProcess, find_redis
from tls_helpers import Pki, https_get

from gateway.config import ConfigError, parse_config
from gateway.config.vaults import VaultError, Vaults, is_reference

SECRET = "s3cret-from-the-environment"


def resolve(reference: str, env: dict[str, str], configured: dict[str, str | None] | None = None) -> str:
    return Vaults(configured, env).resolve(reference)


def load(doc: dict) -> object:
    return parse_config(json.dumps(doc), "kong.yml")


def errors(doc: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load(doc)
    return [m.removeprefix("kong.yml: ") for m in e.value.messages]


def session_doc(secret: str, **extra: object) -> dict:
    return {"plugins": [{"name": "session", "config": {"secret": secret}}], **extra}


def plugin_config(config: object, index: int = 0) -> dict:
    return config.plugins[index].config  # type: ignore[attr-defined]


# --- the reference and the env vault (kong.pdk.vault's parse_reference, kong/vaults/env) ---------------------------


def test_a_reference_is_text_between_vault_scheme_and_closing_brace():
    assert is_reference("{vault://env/a}")
    assert not is_reference("vault://env/a") and not is_reference("{vault://env/a") and not is_reference(None)


def test_the_env_vault_reads_the_variable_in_upper_case_with_dashes_as_underscores():
    assert resolve("{vault://env/my-secret}", {"MY_SECRET": "x"}) == "x"


def test_a_key_after_the_resource_takes_that_string_from_a_json_object():
    env = {"CREDS": json.dumps({"username": "u", "password": "p"})}
    assert resolve("{vault://env/creds/password}", env) == "p"


def test_a_trailing_slash_makes_the_whole_path_the_resource():
    assert resolve("{vault://env/a/b/}", {"A/B": "x"}) == "x"


def test_version_2_is_the_previous_value():
    assert resolve("{vault://env/token#2}", {"TOKEN": "new", "TOKEN_PREVIOUS": "old"}) == "old"
    assert resolve("{vault://env/token#1}", {"TOKEN": "new", "TOKEN_PREVIOUS": "old"}) == "new"


def test_the_prefix_option_is_put_before_the_name():
    assert resolve("{vault://env/token?prefix=app_}", {"APP_TOKEN": "x"}) == "x"


def test_a_vaults_entry_names_an_env_vault_with_its_prefix():
    assert resolve("{vault://my-env/token}", {"APP_TOKEN": "x"}, {"my-env": "APP_"}) == "x"


def test_percent_escapes_in_the_resource_are_decoded():
    assert resolve("{vault://env/my%2Dkey}", {"MY_KEY": "x"}) == "x"


@pytest.mark.parametrize(("reference", "env", "message"), [
    ("{vault://env/absent}", {}, "the environment variable ABSENT is not set"),
    ("{vault://aws/secret}", {}, 'no vault "aws"'),
    ("{vault://env/}", {}, "no secret named"),
    ("{vault:///x}", {}, "no vault named"),
    ("{vault://env/t#latest}", {"T": "x"}, "the version (#latest) must be a number"),
    ("{vault://env/t?ttl=60}", {"T": "x"}, 'unknown option "ttl"'),
    ("{vault://env/t?prefix=1A}", {"T": "x"}, "prefix: expected letters"),
    ("{vault://env/creds/password}", {"CREDS": "plain"}, "CREDS is not JSON"),
    ("{vault://env/creds/password}", {"CREDS": '{"user": "u"}'}, 'has no key "password"'),
    ("{vault://env/creds/port}", {"CREDS": '{"port": 6379}'}, "is a int, not a string"),
])
def test_a_reference_that_cannot_be_resolved_says_why(reference, env, message):
    with pytest.raises(VaultError, match=None) as e:
        resolve(reference, env)
    assert message in str(e.value)


def test_a_failure_never_shows_the_secret():
    with pytest.raises(VaultError) as e:
        resolve("{vault://env/creds/password}", {"CREDS": json.dumps({"user": SECRET})})
    assert SECRET not in str(e.value)


# --- in a config file -----------------------------------------------------------------------------------------------


def test_a_referenceable_plugin_field_gets_the_secret(monkeypatch):
    monkeypatch.setenv("SESSION_SECRET", SECRET)
    assert plugin_config(load(session_doc("{vault://env/session-secret}")))["secret"] == SECRET


def test_redis_passwords_are_referenceable_in_the_record_and_in_kongs_shorthand(monkeypatch):
    monkeypatch.setenv("REDIS_PASSWORD", SECRET)
    record = {"policy": "redis", "minute": 5, "redis": {"host": "127.0.0.1", "password": "{vault://env/redis-password}"}}
    shorthand = {"policy": "redis", "minute": 5, "redis_host": "127.0.0.1",
                 "redis_password": "{vault://env/redis-password}"}
    config = load({"plugins": [{"name": "rate-limiting", "config": record},
                               {"name": "response-ratelimiting", "service": "s", "config": {
                                   **shorthand, "limits": {"video": {"minute": 5}}} | {"minute": None}}],
                   "services": [{"name": "s", "url": "http://127.0.0.1:1"}]})
    assert plugin_config(config, 0)["redis"]["password"] == SECRET
    assert plugin_config(config, 1)["redis_password"] == SECRET


def test_header_values_of_http_log_are_referenceable_their_names_are_not(monkeypatch):
    monkeypatch.setenv("LOG_TOKEN", SECRET)
    config = load({"plugins": [{"name": "http-log", "config": {
        "http_endpoint": "http://127.0.0.1:1/log", "headers": {"Authorization": "{vault://env/log-token}"}}}]})
    assert plugin_config(config)["headers"] == {"Authorization": SECRET}


def test_a_reference_in_a_field_kong_does_not_mark_referenceable_is_literal_text(monkeypatch):
    monkeypatch.setenv("BODY", SECRET)
    config = load({"plugins": [{"name": "request-termination",
                                "config": {"status_code": 200, "body": "{vault://env/body}"}}]})
    assert plugin_config(config)["body"] == "{vault://env/body}"


def test_a_vaults_entry_with_a_config_prefix_is_used_by_its_prefix(monkeypatch):
    monkeypatch.setenv("APP_SESSION", SECRET)
    doc = session_doc("{vault://app-env/session}", vaults=[{"name": "env", "prefix": "app-env",
                                                             "config": {"prefix": "APP_"}, "description": "ours"}])
    assert plugin_config(load(doc))["secret"] == SECRET


def test_an_unset_variable_refuses_the_file_naming_the_field_and_the_variable(monkeypatch):
    monkeypatch.delenv("NO_SUCH_SECRET", raising=False)
    assert errors(session_doc("{vault://env/no-such-secret}")) == [
        "plugins[0].config.secret: {vault://env/no-such-secret}: the environment variable NO_SUCH_SECRET is not set"]


def test_a_reference_nested_in_a_service_plugin_is_resolved_and_named_by_its_path(monkeypatch):
    monkeypatch.delenv("MISSING", raising=False)
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "plugins": [
        {"name": "session", "config": {"secret": "{vault://env/missing}"}}]}]}
    [message] = errors(doc)
    assert message.startswith("services[0].plugins[0].config.secret: ")


@pytest.mark.parametrize(("vault", "message"), [
    ({"name": "hcv", "prefix": "my-hcv"}, 'vaults[0].name: vault "hcv" is not supported by the gateway'),
    ({"name": "env", "prefix": "env"}, "vaults[0].prefix: 'env' is the bundled vault's own name"),
    ({"name": "env", "prefix": "My_Env"}, "vaults[0].prefix: expected lower-case letters"),
    ({"name": "env", "prefix": "e2", "config": {"base64_decode": True}},
     "vaults[0].config: base64_decode is not supported (Kong OSS's env vault takes prefix only)"),
    ({"name": "env", "prefix": "e2", "config": {"prefix": "9X"}}, "vaults[0].config.prefix: expected letters"),
    ({"name": "env", "prefix": "e2", "secret": "x"}, "vaults[0]: unknown keys secret"),
    ({"prefix": "e2"}, "vaults[0].name: required"),
])
def test_a_vaults_entry_the_gateway_cannot_use_is_refused(vault, message):
    [got] = errors({"vaults": [vault]})
    assert got.startswith(message), got


def test_a_reference_to_a_refused_vaults_entry_is_not_reported_twice():
    doc = session_doc("{vault://e2/s}", vaults=[{"name": "env", "prefix": "e2", "config": {"ttl": 60}}])
    assert [m.split(":")[0] for m in errors(doc)] == ["vaults[0].config"]


def test_a_plugin_whose_name_is_not_text_is_refused_for_that_not_for_its_references():
    [message] = errors({"plugins": [{"name": ["session"], "config": {"secret": "{vault://env/x}"}}]})
    assert message.startswith("plugins[0].name: ")


def test_a_vaults_entry_takes_kongs_annotations(monkeypatch):
    monkeypatch.setenv("E2_S", SECRET)
    doc = session_doc("{vault://e2/s}", vaults=[{"name": "env", "prefix": "e2", "config": {"prefix": "E2_"},
                                                 "created_at": 1700000000, "_comment": "from decK"}])
    assert plugin_config(load(doc))["secret"] == SECRET


def test_two_vaults_entries_with_one_prefix_are_refused():
    vault = {"name": "env", "prefix": "e2"}
    assert errors({"vaults": [vault, vault]}) == ['vaults[1].prefix: vault prefix "e2" is already used']


# --- end to end -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("password", "statuses"), [(SECRET, [200, 200, 429]), ("a-wrong-one", [500, 500, 500])])
async def test_a_redis_password_from_the_environment_is_the_one_sent_to_redis(
        gateway, nursery, tmp_path, monkeypatch, password, statuses):
    binary, why = find_redis()
    if binary is None:
        pytest.skip(why)
    redis = RedisProcess(binary, tmp_path, "--requirepass", SECRET)
    redis.start()
    try:
        monkeypatch.setenv("RL_REDIS_PASSWORD", password)
        echo = EchoBackend()
        await nursery.start(echo.serve)
        limit = {"name": "rate-limiting", "config": {
            "minute": 2, "policy": "redis", "fault_tolerant": False,
            "redis": {"host": "127.0.0.1", "port": redis.port, "password": "{vault://env/rl-redis-password}"}}}
        port = await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")], "plugins": [limit]})
        left = 60 - time.time() % 60
        if left < 5:  # the three requests in one minute window
            await trio.sleep(left + 0.05)
        with trio.fail_after(10):
            got = [(await request(port, "GET", "/x")).status for _ in range(3)]
    finally:
        redis.stop()
    assert got == statuses  # a refused AUTH is a store failure: 500s, since fault_tolerant is false


async def test_a_certificate_and_key_from_the_environment_serve_tls(gateway, nursery, tmp_path, monkeypatch):
    pki = Pki()
    cert, key = pki.issue("vault.test")
    monkeypatch.setenv("TLS_CERT", cert)
    monkeypatch.setenv("TLS_KEY", key)
    echo = EchoBackend()
    await nursery.start(echo.serve)
    tls_port = free_port()
    doc = {"services": [service("s", f"http://127.0.0.1:{echo.port}")],
           "certificates": [{"cert": "{vault://env/tls-cert}", "key": "{vault://env/tls-key}", "snis": ["vault.test"]}]}
    await gateway(doc, listen=[f"127.0.0.1:{tls_port} ssl"])
    ctx: ssl.SSLContext = pki.client_context()
    with trio.fail_after(10):
        status, _, _, name = await trio.to_thread.run_sync(lambda: https_get(tls_port, ctx, "vault.test"))
    assert (status, name) == (200, "vault.test")


async def test_every_process_of_a_started_gateway_resolves_the_reference_from_its_environment(
        nursery, tmp_path, monkeypatch):
    """`gateway start --workers 2`: the root, the keeper and both workers load the file; a limit counted in a Redis
    that requires the password is exact across the workers."""
    binary, why = find_redis()
    if binary is None:
        pytest.skip(why)
    redis = RedisProcess(binary, tmp_path, "--requirepass", SECRET)
    redis.start()
    monkeypatch.setenv("RL_REDIS_PASSWORD", SECRET)
    echo = EchoBackend()
    await nursery.start(echo.serve)
    limit = {"name": "rate-limiting", "config": {
        "minute": 4, "policy": "redis", "fault_tolerant": False,
        "redis": {"host": "127.0.0.1", "port": redis.port, "password": "{vault://env/rl-redis-password}"}}}
    node = GatewayNode(tmp_path / "gw", {"services": [service("s", f"http://127.0.0.1:{echo.port}")],
                                         "plugins": [limit]})
    try:
        await node.start(workers=2)
        snapshot = "".join(p.read_text() for p in (tmp_path / "gw" / "run").glob("config.*.yaml"))
        left = 60 - time.time() % 60
        if left < 10:
            await trio.sleep(left + 0.05)
        with trio.fail_after(20):
            got = Counter([(await request(node.port, "GET", "/x")).status for _ in range(8)])
    finally:
        await node.stop()
        node.cleanup()
        redis.stop()
    assert got == {200: 4, 429: 4}
    assert "{vault://env/rl-redis-password}" in snapshot and SECRET not in snapshot
