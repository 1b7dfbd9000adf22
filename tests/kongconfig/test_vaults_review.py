"""Vault references, the `vaults` entity and kong.conf's KONG_<KEY> environment variables, as Kong has them: no
reference raises a traceback, no message shows a secret, the entity's fields are typed as Kong's schema types them,
and the environment sets kong.conf's keys over the file (or is refused, naming the variable). Config-only: no
process is started. Variables are set through monkeypatch only."""

from __future__ import annotations

import json
import logging
import time

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.errors import as_reported, hide, new_load
from gateway.runtime import check_file

SECRET = "hunter2-do-not-print"


def load(doc: dict) -> object:
    return parse_config(json.dumps(doc), "kong.yml")


def errors(doc: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load(doc)
    return [m.removeprefix("kong.yml: ") for m in e.value.messages]


def session(secret: str) -> dict:
    return {"plugins": [{"name": "session", "config": {"secret": secret}}]}


# --- references that would raise -------------------------------------------------------------------------------------


def test_a_version_of_non_ascii_digits_is_refused_as_no_number(monkeypatch):
    """kong/pdk/vault.lua:146-151: `version = tonumber(version, 10)`, else "reference url has invalid version"; `#²`
    is no number to Lua (str.isdigit says it is one, and int() then raised out of parse_config)."""
    monkeypatch.setenv("X", "a-secret")
    assert errors(session("{vault://env/x#\u00b2}")) == [
        "plugins[0].config.secret: {vault://env/x#²}: the version (#²) must be a number"]


def test_a_version_of_thousands_of_digits_is_a_number_that_is_not_2(monkeypatch):
    """kong/pdk/vault.lua:148 and kong/vaults/env/init.lua:50: any number is a version, and only 2 reads
    <NAME>_PREVIOUS (Python's int() refuses a text of more than 4300 digits)."""
    monkeypatch.setenv("X", "current")
    config = load(session("{vault://env/x#" + "1" * 5000 + "}"))
    assert config.plugins[0].config["secret"] == "current"  # type: ignore[attr-defined]


def test_a_json_secret_nested_too_deep_is_refused_naming_the_variable(monkeypatch):
    """kong/pdk/vault.lua:322-326: a value cjson.safe cannot decode (too deep nesting is an error value) is "unable
    to json decode value"; Python's json raised RecursionError out of parse_config."""
    monkeypatch.setenv("CREDS", "[" * 100_000)
    assert errors(session("{vault://env/creds/password}")) == [
        "plugins[0].config.secret: {vault://env/creds/password}: the environment variable CREDS is not JSON, so it "
        'has no key "password"']


# --- secrets in messages ---------------------------------------------------------------------------------------------


def check_messages(tmp_path, doc: dict) -> list[str]:
    """The messages `gateway check-config` (and a reload) prints for `doc`."""
    path = tmp_path / "kong.yml"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as e:
        check_file(str(path))
    return [m.removeprefix(f"{path}: ") for m in e.value.messages]


def test_a_message_about_a_referenced_field_shows_the_reference_not_the_secret(monkeypatch, tmp_path):
    """kong/db/schema/init.lua:995-997: `if field.referenceable and is_reference(value) then return true end` -
    Kong validates the reference, never the secret, so none of its messages can hold one. The gateway validates the
    secret (what it will use) and shows the reference in its place, in check-config's messages too."""
    monkeypatch.setenv("THE_SECRET", f"agent {SECRET}")
    (message,) = check_messages(tmp_path, {"plugins": [{"name": "datadog",
                                                         "config": {"host": "{vault://env/the-secret}"}}]})
    assert SECRET not in message
    assert message.startswith("plugins[0].config.host: ")
    assert message.endswith("({vault://env/the-secret} is shown in place of the secret it resolved to)")


@pytest.mark.parametrize(("plugin", "field", "url"), [
    ("http-log", "http_endpoint", f"https://logger:{SECRET}@logs.example.com:99999/in"),
    ("opentelemetry", "traces_endpoint", f"https://otel.example.com:99999/v1/traces?token={SECRET}"),
    ("http-log", "http_endpoint", f"https://logger:{SECRET}@[::{SECRET}]/in"),
    ("http-log", "http_endpoint", f"https://logger:Pa\uff03{SECRET}@logs.example.com:/in"),
])
def test_a_message_about_a_referenced_endpoint_quotes_no_part_of_its_url(monkeypatch, tmp_path, plugin, field, url):
    """kong/db/schema/init.lua:995-997 (Kong checks the reference only). A collector URL's checks (its port, an IP
    literal in brackets, a character NFKC makes a delimiter, which Python's urlsplit refuses quoting the netloc or the
    host) say what is wrong without quoting the URL or any part of it: its user info holds a password."""
    monkeypatch.setenv("THE_SECRET", url)
    (message,) = check_messages(tmp_path, {"plugins": [{"name": plugin,
                                                         "config": {field: "{vault://env/the-secret}"}}]})
    assert message.startswith(f"plugins[0].config.{field}: ")
    assert SECRET not in message and "logger" not in message and "example.com" not in message


def test_a_urls_credentials_and_host_quoted_alone_are_shown_as_the_reference():
    """What any check might quote of a URL secret, as urlsplit quotes a netloc it refuses: its netloc, user info,
    password or host is the reference where the field is named, and a password long enough not to be an ordinary
    word is hidden in every message."""
    new_load()
    hide(f"https://logger:{SECRET}@logs.example.com:8080/in", "{vault://env/url}", "plugins[0]")
    note = " ({vault://env/url} is shown in place of the secret it resolved to)"
    for quoted in [f"logger:{SECRET}@logs.example.com:8080", f"logger:{SECRET}", SECRET, "logs.example.com"]:
        assert as_reported(f"kong.yml: plugins[0].config.x: netloc '{quoted}' is bad") == (
            "kong.yml: plugins[0].config.x: netloc '{vault://env/url}' is bad" + note)
    assert as_reported(f"kong.yml: routes[0].name: {SECRET}") == "kong.yml: routes[0].name: {vault://env/url}" + note
    assert as_reported("kong.yml: routes[0].hosts[0]: logs.example.com") == (
        "kong.yml: routes[0].hosts[0]: logs.example.com")  # a host is no secret where the URL's field is not named
    new_load()


def test_a_urls_short_parts_are_not_taken_for_a_piece_of_a_word():
    """A URL's parts are hidden as words of their own: a password `x` leaves the words that hold an x readable."""
    new_load()
    hide("https://u:x@host/", "{vault://env/url}", "plugins[0]")
    assert as_reported("kong.yml: plugins[0].config.x: expected an http:// or https:// URL with a host") == (
        "kong.yml: plugins[0].config.x: expected an http:// or https:// URL with a host")
    new_load()


def test_a_short_secret_is_hidden_only_in_the_messages_about_its_field():
    """A secret of a few characters could be any word: it is replaced where its field is named, and other
    messages are left readable."""
    new_load()
    hide("on", "{vault://env/flag}", "plugins[0]")
    assert as_reported("kong.yml: plugins[0].config.x: got on") == (
        "kong.yml: plugins[0].config.x: got {vault://env/flag} ({vault://env/flag} is shown in place of the secret it "
        "resolved to)")
    assert as_reported("kong.yml: services[0].plugins[0].config.x: got on") == (
        "kong.yml: services[0].plugins[0].config.x: got on")
    new_load()


def test_a_long_secret_is_hidden_in_every_message():
    new_load()
    hide(SECRET, "{vault://env/s}", "plugins[0]")
    assert SECRET not in as_reported(f"kong.yml: routes[0].name: {SECRET!r} is already used")
    new_load()


def test_reporting_a_reported_message_again_changes_nothing():
    """check_file wraps the loader's messages in a new ConfigError: a secret that is a piece of its own reference
    (`env`) must not be replaced inside the reference shown the first time."""
    new_load()
    hide("env", "{vault://env/x}", "plugins[0]")
    once = as_reported("kong.yml: plugins[0].config.x: got env")
    assert as_reported(once) == once == ("kong.yml: plugins[0].config.x: got {vault://env/x} ({vault://env/x} is "
                                         "shown in place of the secret it resolved to)")
    new_load()


# --- the vaults entity -----------------------------------------------------------------------------------------------


def _alias_bomb(levels: int) -> str:
    """YAML anchors that expand to 9**(levels+1) strings from a few hundred bytes of text."""
    lines = ['- &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"- &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return '_format_version: "3.0"\n_ignore:\n' + "\n".join(lines) + "\n"


@pytest.mark.parametrize(("entry", "message"), [
    ("- name: env\n  prefix: e2\n  config: {prefix: *a6}\n",
     'vaults[0].config.prefix: expected letters, digits, _ and - (not starting with a digit), got a list'),
    ("- name: *a6\n  prefix: e2\n", "vaults[0].name: expected a string (env, the vault Kong OSS bundles), got a list"),
    ("- name: env\n  prefix: e2\n  tags: *a6\n", "vaults[0].tags[0]: expected a string, got a list"),
])
def test_a_refused_vaults_value_from_a_yaml_alias_is_shown_by_its_kind(entry, message):
    """gateway/config/document.py's promise: neither a deep document nor an alias bomb costs more than its text.
    The refused value is shown as every other field shows one (errors.show): a 600-byte file made a 33 MB message."""
    start = time.process_time()  # CPU time: a busy host's other work does not count
    with pytest.raises(ConfigError) as e:
        parse_config(_alias_bomb(6) + "vaults:\n" + entry, "kong.yml")
    assert e.value.messages == [f"kong.yml: {message}"]
    assert time.process_time() - start < 5


@pytest.mark.parametrize(("field", "value", "message"), [
    ("id", "not-a-uuid", 'vaults[0].id: expected a UUID (e.g. "3f2a63d2-2b43-4a5b-9d1e-5c6b1f0e8a42"), got '
                         '"not-a-uuid"'),
    ("tags", "just-a-string", 'vaults[0].tags: expected a list of strings, got "just-a-string"'),
    ("tags", [1, 2], "vaults[0].tags[0]: expected a string, got 1"),
    ("description", 5, "vaults[0].description: expected a string, got 5"),
])
def test_a_vaults_entry_field_of_the_wrong_type_is_refused(field, value, message):
    """kong/db/schema/entities/vaults.lua:55-67: `{ id = typedefs.uuid }`, `{ description = { type = "string" } }`,
    `{ tags = typedefs.tags }`: Kong's declarative loader refuses a vault whose id is no UUID, whose tags are not a
    set of strings or whose description is not a string."""
    assert errors({"vaults": [{"name": "env", "prefix": "e2", field: value}]}) == [message]


def test_two_vaults_entries_with_one_id_are_refused():
    """kong/db/schema/entities/vaults.lua: `primary_key = { "id" }`: an id names one vault."""
    vault_id = "3f2a63d2-2b43-4a5b-9d1e-5c6b1f0e8a42"
    assert errors({"vaults": [{"name": "env", "prefix": "e2", "id": vault_id},
                              {"name": "env", "prefix": "e3", "id": vault_id}]}) == [
        f'vaults[1].id: "{vault_id}" is already used by vaults[0]']


# --- KONG_VAULT_ENV_PREFIX -------------------------------------------------------------------------------------------


def test_kong_vault_env_prefix_is_the_env_vaults_prefix(monkeypatch):
    """kong/pdk/vault.lua:551-566: the env vault's base config is kong.configuration's `vault_env_prefix`, which
    kong/conf_loader/init.lua:310-337 fills from KONG_VAULT_ENV_PREFIX; kong/vaults/env/init.lua:43-46 puts it before
    the resource: {vault://env/session-secret} reads APP_SESSION_SECRET."""
    monkeypatch.setenv("KONG_VAULT_ENV_PREFIX", "APP_")
    monkeypatch.setenv("APP_SESSION_SECRET", "the-one-kong-uses")
    monkeypatch.setenv("SESSION_SECRET", "another-secret")
    config = load(session("{vault://env/session-secret}"))
    assert config.plugins[0].config["secret"] == "the-one-kong-uses"  # type: ignore[attr-defined]


def test_kong_vault_env_prefix_does_not_apply_to_a_vaults_entry(monkeypatch):
    """kong/pdk/vault.lua:598-636: a vault named by its entity's prefix takes the entity's config only."""
    monkeypatch.setenv("KONG_VAULT_ENV_PREFIX", "APP_")
    monkeypatch.setenv("TOKEN", "the-entitys")
    config = load({**session("{vault://my-env/token}"), "vaults": [{"name": "env", "prefix": "my-env"}]})
    assert config.plugins[0].config["secret"] == "the-entitys"  # type: ignore[attr-defined]


def test_an_invalid_kong_vault_env_prefix_is_refused_naming_the_variable(monkeypatch):
    """kong/vaults/env/schema.lua: the prefix matches `^[%a_-][%a%d_-]*$`; Kong skips one that does not (and reads
    another variable), the gateway refuses it."""
    monkeypatch.setenv("KONG_VAULT_ENV_PREFIX", "1APP")
    monkeypatch.setenv("SESSION_SECRET", "x")
    assert errors(session("{vault://env/session-secret}")) == [
        "plugins[0].config.secret: the environment variable KONG_VAULT_ENV_PREFIX (kong.conf's vault_env_prefix): "
        'expected letters, digits, _ and - (not starting with a digit), got "1APP"']


# --- KONG_<KEY> over the file ----------------------------------------------------------------------------------------


def test_a_kong_variable_sets_a_kong_conf_key(monkeypatch):
    """kong/conf_loader/parse.lua:918-933: `local env_name = "KONG_" .. upper(k); ... value = env` - a KONG_<KEY>
    variable sets kong.conf's key, as Kong's Docker deployments are configured."""
    monkeypatch.setenv("KONG_TRUSTED_IPS", "10.0.0.0/8")
    monkeypatch.setenv("KONG_REAL_IP_HEADER", "X-Forwarded-For")
    gw = load({"gateway": {}}).gateway  # type: ignore[attr-defined]
    assert (gw.real_ip_header, list(gw.trusted_ips)) == ("X-Forwarded-For", ["10.0.0.0/8"])


def test_a_kong_variable_applies_without_a_gateway_section(monkeypatch):
    monkeypatch.setenv("KONG_REAL_IP_RECURSIVE", "on")
    assert load({}).gateway.real_ip_recursive is True  # type: ignore[attr-defined]


def test_a_kong_variable_beats_the_files_value_of_its_own_name_only(monkeypatch):
    """parse.lua's overrides: the environment beats the file name by name; then, of a setting's two names, the
    replacement wins (conf_loader aliased_properties: nginx_proxy_real_ip_header over real_ip_header), whichever
    source gave each."""
    monkeypatch.setenv("KONG_REAL_IP_HEADER", "X-Forwarded-For")
    gw = load({"gateway": {"nginx_proxy_real_ip_header": "X-Real-IP"}}).gateway  # type: ignore[attr-defined]
    assert gw.real_ip_header == "X-Real-IP"
    gw = load({"gateway": {"real_ip_header": "X-Real-IP"}}).gateway  # type: ignore[attr-defined]
    assert gw.real_ip_header == "X-Forwarded-For"


def test_a_message_about_a_field_a_kong_variable_set_names_the_variable(monkeypatch):
    monkeypatch.setenv("KONG_TRUSTED_IPS", "10.0.0.0/8,nonsense")
    assert errors({"gateway": {"trusted_ips": ["10.0.0.1"]}}) == [
        'gateway.trusted_ips[1]: expected an IP address or a CIDR (e.g. "10.0.0.0/8", "::1"), got "nonsense" (set '
        'by the environment variable KONG_TRUSTED_IPS, which overrides the file)']


def test_a_kong_variable_of_a_refused_key_is_refused_as_the_file_key_is(monkeypatch):
    monkeypatch.setenv("KONG_PROXY_LISTEN", "0.0.0.0:8000")
    (message,) = errors({})
    assert message.startswith("gateway.proxy_listen: kong.conf's proxy_listen is `listen` here: ")
    assert message.endswith("(set by the environment variable KONG_PROXY_LISTEN, which overrides the file)")


def test_a_kong_variable_of_a_refused_key_passes_with_the_value_the_gateway_has_anyway(monkeypatch):
    """As the file key: `database = off` is what the gateway does (kong_conf.ACCEPTED)."""
    monkeypatch.setenv("KONG_DATABASE", "off")
    load({})


@pytest.mark.parametrize("variable", ["KONG_DATADOG_AGENT_HOST", "KONG_NOT_A_KEY", "KONG_WORKERS", "KONG_trusted_ips"])
def test_a_kong_variable_that_names_no_kong_conf_key_is_ignored(monkeypatch, variable):
    """parse.lua's overrides reads `"KONG_" .. upper(k)` for kong.conf's keys only (`workers` is the gateway's own,
    not kong.conf's; KONG_DATADOG_AGENT_HOST is the datadog plugin's)."""
    monkeypatch.setenv(variable, "nonsense")
    load({})


def test_the_kong_variables_applied_are_logged(monkeypatch, caplog):
    monkeypatch.setenv("KONG_REAL_IP_HEADER", "X-Forwarded-For")
    with caplog.at_level(logging.INFO, logger="gateway.config"):
        load({})
    assert "kong.conf from the environment, over the file: KONG_REAL_IP_HEADER (gateway.real_ip_header)" in caplog.text


# --- references in gateway settings ---------------------------------------------------------------------------------


def test_a_reference_in_a_gateway_setting_is_resolved(monkeypatch, tmp_path):
    """kong/conf_loader/init.lua:402-430 collects every kong.conf value that is_reference and :483-520 replaces it by
    `vault.get(r)`: a reference in any kong.conf key is the secret (access_log is Kong's proxy_access_log)."""
    path = str(tmp_path / "access.log")
    monkeypatch.setenv("ACCESS_LOG", path)
    assert load({"gateway": {"access_log": "{vault://env/access-log}"}}).gateway.access_log == path  # type: ignore


def test_a_reference_in_a_kong_variable_is_resolved(monkeypatch):
    """init.lua:402-430 runs on the merged conf, the environment's values included."""
    monkeypatch.setenv("KONG_REAL_IP_HEADER", "{vault://env/ip-header}")
    monkeypatch.setenv("IP_HEADER", "X-Forwarded-For")
    assert load({}).gateway.real_ip_header == "X-Forwarded-For"  # type: ignore[attr-defined]


def test_each_item_of_an_array_keys_text_is_resolved_and_never_split(monkeypatch):
    """init.lua:407-425: an array key's value is split first (parse_value "array") and each item that is a
    reference resolved; the secret is one item."""
    monkeypatch.setenv("IP1", "10.0.0.1")
    monkeypatch.setenv("IP2", "10.0.0.2,10.0.0.3")
    assert load({"gateway": {"trusted_ips": "{vault://env/ip1}, 10.0.0.9"}}).gateway.trusted_ips == [  # type: ignore
        "10.0.0.1", "10.0.0.9"]
    assert errors({"gateway": {"trusted_ips": "{vault://env/ip2}"}}) == [
        'gateway.trusted_ips[0]: expected an IP address or a CIDR (e.g. "10.0.0.0/8", "::1"), got "{vault://env/ip2}" '
        "({vault://env/ip2} is shown in place of the secret it resolved to)"]


def test_a_reference_in_a_gateway_setting_that_cannot_be_resolved_is_refused(monkeypatch):
    """init.lua:501-504: `failed to dereference '%s': %s for config option '%s'` fails the start."""
    monkeypatch.delenv("SSL_CERT", raising=False)
    assert errors({"gateway": {"ssl_cert": "{vault://env/ssl-cert}", "ssl_cert_key": "/k.pem"}}) == [
        "gateway.ssl_cert[0]: {vault://env/ssl-cert}: the environment variable SSL_CERT is not set"]


@pytest.mark.parametrize("key", ["headers", "dns_order", "headers_upstream", "tracing_instrumentations"])
def test_a_short_secret_in_a_gateway_list_setting_is_hidden_in_the_message_of_its_check(monkeypatch, tmp_path, key):
    """init.lua:407-425 resolves each item of an array key; a secret under 8 characters is hidden where its field is
    named, and the checks of these keys (Kong's wording, `gateway: <key>: invalid entry ...`) name it after the
    section's path."""
    monkeypatch.setenv("SHORT", "hunter2")
    messages = check_messages(tmp_path, {"gateway": {key: "{vault://env/short}"}})
    assert messages and all("hunter2" not in m for m in messages), messages
    assert any("{vault://env/short}" in m for m in messages), messages


def test_a_gateway_setting_whose_reference_cannot_be_resolved_is_reported_once(monkeypatch):
    """init.lua:501-504 fails on the reference: what its text would make of the field (`invalid entry
    '{vault://env/nope}'`) is not reported besides."""
    monkeypatch.delenv("NOPE", raising=False)
    assert errors({"gateway": {"headers": "{vault://env/nope}"}}) == [
        "gateway.headers[0]: {vault://env/nope}: the environment variable NOPE is not set"]


def test_a_gateway_settings_reference_is_resolved_from_the_environment_given_to_the_loader(monkeypatch):
    """kong/conf_loader/init.lua:483-520 resolves kong.conf's references from the environment its variables come
    from: parse_config's `environ` (the zygote's warm-up passes {}), not this process's."""
    monkeypatch.setenv("IP_HEADER", "X-From-The-Process")
    doc = json.dumps({"gateway": {"real_ip_header": "{vault://env/ip-header}"}})
    given = parse_config(doc, "kong.yml", environ={"IP_HEADER": "X-Given"})
    assert given.gateway.real_ip_header == "X-Given"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError) as e:
        parse_config(doc, "kong.yml", environ={})
    assert e.value.messages == [
        "kong.yml: gateway.real_ip_header: {vault://env/ip-header}: the environment variable IP_HEADER is not set"]


def test_a_gateway_settings_check_names_the_kong_variable_that_set_it(monkeypatch):
    """A check's message of a `gateway:` key in Kong's words (`gateway: headers: invalid entry ...`) is about that
    key: it names the KONG_<KEY> variable that set it, as a message worded `gateway.<key>:` does."""
    monkeypatch.setenv("KONG_HEADERS", "bogus")
    (message,) = errors({})
    assert message.startswith("gateway: headers: invalid entry 'bogus'")
    assert message.endswith(" (set by the environment variable KONG_HEADERS, which overrides the file)")


def test_a_gateway_setting_references_the_env_vault_only(monkeypatch):
    """init.lua:483: kong.conf's vault is `kong.pdk.vault.new({configuration = vault_conf})`, with no database: a
    `vaults` entity's prefix names no vault there."""
    monkeypatch.setenv("HEADER", "X-Forwarded-For")
    assert errors({"vaults": [{"name": "env", "prefix": "my-env"}],
                   "gateway": {"real_ip_header": "{vault://my-env/header}"}}) == [
        'gateway.real_ip_header: no vault "my-env": a kong.conf setting can reference the env vault only '
        "({vault://env/...}), as Kong resolves kong.conf before it loads any `vaults` entity"]


def test_messages_are_reported_in_time_linear_in_the_references_a_large_config_resolved():
    """Kong checks a reference's text, never its secret (kong/db/schema/init.lua: a referenceable field holding a
    reference is valid), so references add nothing to reporting errors. Every message is looked at for each resolved
    secret's field path: with a pattern built per look, past the 512 the re module caches, each look compiled one (a
    520-route migration, a referenced Redis password and one refused key a route: 69 s of check-config)."""
    new_load()
    try:
        for i in range(600):
            hide("a-long-redis-password", "{vault://env/rl-redis-password}",
                 f"services[0].routes[{i}].plugins[0].config.redis.password")
        started = time.process_time()  # CPU time: a busy host's other work does not count
        reported = [as_reported(f"services[0].routes[{i}].expression: not supported") for i in range(600)]
        took = time.process_time() - started
    finally:
        new_load()
    assert reported[599] == "services[0].routes[599].expression: not supported"
    assert took < 5, f"600 messages against 600 references took {took:.1f} CPU s"


@pytest.mark.parametrize("config", [False, 0, ""])
def test_a_vaults_entry_whose_config_is_not_a_mapping_is_refused(config):
    """kong/db/schema/entities/vaults.lua: `config = { type = "record" }`, and a record's value must be a table
    (kong/db/schema/init.lua: "expected a record"): `config: false`, `0` or `""` was taken as an empty config."""
    with pytest.raises(ConfigError) as e:
        parse_config(json.dumps({"vaults": [{"name": "env", "prefix": "my-env", "config": config}]}), "kong.yml")
    assert any(m.startswith("kong.yml: vaults[0].config: expected a mapping") for m in e.value.messages), \
        e.value.messages

