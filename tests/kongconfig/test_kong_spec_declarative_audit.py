"""Kong 3.9.3's declarative-config and vault specs, `it` by `it`, against the gateway (the uncovered ones):
spec/01-unit/01-db/01-schema/11-declarative_config/, spec/01-unit/01-db/10-declarative_spec.lua,
spec/02-integration/11-dbless/, spec/01-unit/23-vaults_spec.lua, spec/02-integration/13-vaults/."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from typing import Any

import pytest
import trio
from backends import EchoBackend, request, wait_until
from e2e_helpers import GatewayNode
from test_kong_forms import errors as _errors
from test_kong_forms import load as _load

from gateway.config import parse_config
from gateway.config.vaults import VaultError, Vaults, is_reference, parse_reference
from gateway.http.net import bind_listener
from gateway.worker import serve_worker

CID = "0fe87b4a-ce29-515a-88ec-8547e66550b9"


async def _serve(nursery: trio.Nursery, text: str) -> int:
    """Serve a kong.yml given as text (so YAML anchors and aliases reach the loader as written)."""
    config = parse_config(textwrap.dedent(text), "kong.yml")
    listener = bind_listener("127.0.0.1", 0, reuse_port=False)
    port = listener.getsockname()[1]

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_worker(config, [listener], ready=task_status.started)
        finally:
            listener.close()

    await nursery.start(run)
    return port


# --- 03-flatten_spec.lua: a credential nested under a consumer naming another existing consumer ------------------


def test_a_credential_nested_under_a_consumer_naming_another_existing_consumer_belongs_to_its_parent():
    """03-flatten_spec.lua "accepts as a nested entity by id/username" / "fails as a nested entity by incorrect
    username": Kong's flatten (declarative_config.lua:786-806) validates again with the foreign keys filled
    (populate_ids_for_validation :651-663 turns `consumer: other` into other's key: it passes), then
    populate_references (:437-451) checks the reference exists and sets the nested item's key to its parent's
    (`item[child_key] = parent_fk`). So a nested credential whose `consumer:` names ANY existing consumer loads, bound
    to the consumer it is nested under, as the gateway already does for routes, targets and consumer plugins."""
    config = _load("""
        _format_version: "3.0"
        consumers:
        - username: other
        - username: u
          keyauth_credentials:
          - key: k1
            consumer: other
    """)
    owner = {c.id: c.username for c in config.consumers}
    assert [owner[c.consumer] for c in config.keyauth_credentials] == ["u"]


async def test_a_key_nested_under_a_consumer_naming_another_authenticates_as_its_parent(nursery):
    """The same, end to end: the key authenticates as the consumer it is nested under (X-Consumer-Username)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await _serve(nursery, f"""
        _format_version: "3.0"
        services:
        - name: s
          url: http://127.0.0.1:{echo.port}
          routes: [{{paths: [/]}}]
          plugins: [{{name: key-auth}}]
        consumers:
        - username: other
        - username: u
          keyauth_credentials:
          - key: k1
            consumer: other
    """)
    with trio.fail_after(5):
        reply = await request(port, "GET", "/", headers=[("apikey", "k1")])
    assert reply.status == 200
    assert echo.requests[-1].header("x-consumer-username") == "u"


# --- 01-validate_spec.lua -------------------------------------------------------------------------------------------


def test_format_version_must_be_a_string_of_kongs_three():
    """01-validate_spec.lua "requires version 1.1 or 2.1 or 3.0": a number 1.1 and "foobar" are refused, "1.1" and
    "2.1" load."""
    assert _errors('_format_version: 1.1\n')[0].startswith("_format_version:")
    assert _errors('_format_version: "foobar"\n')[0].startswith("_format_version:")
    _load('_format_version: "1.1"\n')
    _load('_format_version: "2.1"\n')


def test_comment_must_be_a_string_and_ignore_an_array_of_anything():
    """01-validate_spec.lua "_comment accepts a string" and "_ignore accepts an array of anything"."""
    assert _errors('_format_version: "1.1"\n_comment: 1234\n') == ["_comment: expected a string"]
    assert _errors('_format_version: "1.1"\n_comment:\n  foo: bar\n') == ["_comment: expected a string"]
    _load('_format_version: "1.1"\n_comment: I am a happy comment!\n')
    assert _errors('_format_version: "1.1"\n_ignore: 1234\n')[0].startswith("_ignore:")
    assert _errors('_format_version: "1.1"\n_ignore:\n  foo: bar\n  bla: 123\n')[0].startswith("_ignore:")
    _load('_format_version: "1.1"\n_ignore:\n- foo: bar\n  bla: 123\n- "Hello, world"\n- 1234\n')


@pytest.mark.parametrize("section", ["services", "plugins", "consumers", "upstreams", "basicauth_credentials"])
def test_an_empty_top_level_list_given_as_null_loads(section):
    """01-validate_spec.lua / 03-flatten_spec.lua "accepts an empty list" (`services:` with nothing after it)."""
    config = _load(f'_format_version: "1.1"\n{section}:\n')
    assert config.services == [] and config.routes == []


def test_a_nested_plugin_without_a_name_is_refused_naming_the_field():
    """01-validate_spec.lua "plugins in services / in routes in services: verifies required fields"."""
    assert _errors("""
        _format_version: "1.1"
        services:
        - name: foo
          url: https://example.com
          routes:
          - paths: [/]
            plugins:
            - enabled: true
    """) == ["services[0].routes[0].plugins[0].name: required field is missing"]


def test_a_route_with_nothing_to_match_on_is_refused():
    """01-validate_spec.lua "routes in services: verifies required fields" (`preserve_host: true` alone: "must set
    one of 'methods', 'hosts', 'headers', 'paths', 'snis' when 'protocols' is 'https'")."""
    errors = _errors("""
        _format_version: "1.1"
        services:
        - name: foo
          url: https://example.com
          routes:
          - preserve_host: true
    """)
    assert len(errors) == 1 and errors[0].startswith("services[0].routes[0]: set at least one of paths, methods")


def test_a_vaults_entry_with_a_dashed_config_prefix_loads_and_is_used(monkeypatch):
    """01-validate_spec.lua "accepts vaults (dash)" (env schema prefix `^[%a_-][%a%d_-]*$`, `tags: ~`); env/init.lua
    get: prefix .. resource, then upper and dashes as underscores: BANANA-token reads BANANA_TOKEN."""
    monkeypatch.setenv("BANANA_TOKEN", "s3cret")
    config = _load("""
        _format_version: "1.1"
        vaults:
        - prefix: aba
          config:
            prefix: "BANANA-"
          description: "Banana vault"
          tags: ~
          name: env
        plugins:
        - name: session
          config: {secret: "{vault://aba/token}"}
    """)
    assert config.plugins[0].config["secret"] == "s3cret"


# --- 03-flatten_spec.lua --------------------------------------------------------------------------------------------


def test_identical_targets_under_two_upstreams_load_one_each():
    """03-flatten_spec.lua "upstream: identical targets" and "targets (not globally unique) to upstreams"."""
    for text in ("""
        _format_version: '1.1'
        upstreams:
        - name: first-upstream
          targets: [{target: "127.0.0.1:6661", weight: 1}]
        - name: second-upstream
          targets: [{target: "127.0.0.1:6661", weight: 1}]
    """, """
        _format_version: '1.1'
        upstreams:
        - name: first-upstream
        - name: second-upstream
        targets:
        - {upstream: first-upstream, target: "127.0.0.1:6661", weight: 1}
        - {upstream: second-upstream, target: "127.0.0.1:6661", weight: 1}
    """):
        config = _load(text)
        assert len(config.upstreams) == 2


def test_a_credential_nested_under_a_consumer_naming_a_missing_consumer_is_refused():
    """03-flatten_spec.lua "fails as a nested entity by incorrect id" / "by incorrect username"."""
    for named in ("00000000-0000-0000-0000-000000000000", "incorrect"):
        errors = _errors(f"""
            _format_version: "1.1"
            consumers:
            - id: {CID}
              username: consumer
              basicauth_credentials:
              - {{username: username, password: password, consumer: "{named}"}}
        """)
        assert len(errors) == 1 and errors[0].startswith("consumers[0].basicauth_credentials[0].consumer:")


def test_a_plugin_naming_a_missing_route_is_refused():
    """03-flatten_spec.lua "fixes #5750 - misleading error messages" (a request-transformer with empty lists and
    `route: does-not-exist`)."""
    doc = {"_format_version": "1.1",
           "consumers": [{"username": "consumer-test",
                          "basicauth_credentials": [{"username": "some_user", "password": "some_password"}]}],
           "plugins": [{"name": "request-transformer", "route": "does-not-exist", "enabled": True,
                        "protocols": ["http", "https"],
                        "config": {"add": {"body": [], "headers": [], "querystring": []},
                                   "append": {"body": [], "headers": ["X-Another-Header:foo"], "querystring": []},
                                   "remove": {"body": [], "headers": ["X-Another-Header"], "querystring": []},
                                   "rename": {"body": [], "headers": [], "querystring": []},
                                   "replace": {"body": [], "headers": [], "querystring": [], "uri": None}}}]}
    assert _errors(json.dumps(doc)) == ["plugins[0].route: no route with id or name 'does-not-exist'"]


async def test_yaml_anchors_give_each_service_its_own_plugin_instance(nursery):
    """03-flatten_spec.lua "fixes #7620 - yaml anchors work as expected": plugins aliased from one service to another
    are four instances; each service's rate-limiting counts its own requests."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await _serve(nursery, f"""
        _format_version: "1.1"
        services:
          - name: service1
            url: http://127.0.0.1:{echo.port}
            plugins:
              - &correlation-plugin
                name: correlation-id
                config: {{header_name: X-Request-Id, generator: uuid, echo_downstream: true}}
              - &rate-limiting-plugin
                name: rate-limiting
                config: {{minute: 2, policy: local}}
            routes: [{{name: foo, strip_path: false, paths: [/foo]}}]
          - name: service2
            url: http://127.0.0.1:{echo.port}
            plugins:
              - *correlation-plugin
              - *rate-limiting-plugin
            routes: [{{name: bar, strip_path: false, paths: [/bar]}}]
    """)
    with trio.fail_after(5):
        foo = [(await request(port, "GET", "/foo")).status for _ in range(3)]
        bar = await request(port, "GET", "/bar")
    assert foo == [200, 200, 429]
    assert bar.status == 200 and bar.header("x-request-id")


# --- 04-on-the-fly-migration_spec.lua, 10-declarative_spec.lua -------------------------------------------------------


@pytest.mark.parametrize(("version", "paths"), [("1.1", ["~/regex.+", "/prefix"]), ("2.1", ["~/regex.+", "/prefix"]),
                                                ("3.0", ["/regex.+", "/prefix"])])
def test_route_paths_are_migrated_by_format_version(version, paths):
    """04-on-the-fly-migration_spec.lua "routes handling for format version X"."""
    config = _load(f"""
        _format_version: "{version}"
        services:
        - name: foo
          host: example.com
          protocol: https
          enabled: false
          routes:
          - name: foo
            path_handling: v0
            protocols: ["https"]
            paths: ["/regex.+", "/prefix"]
        - name: bar
          host: example.test
          port: 3000
    """)
    assert config.routes[0].paths == paths


def test_a_migrated_path_that_is_no_regex_is_refused_after_migration():
    """04-on-the-fly-migration_spec.lua "validation should happens after migration"."""
    errors = _errors("""
        _format_version: "2.1"
        services:
        - name: bar
          host: example.test
          port: 3000
          routes:
          - {name: foo, path_handling: v0, protocols: ["https"], paths: ["/regex.+(", "/prefix"]}
    """)
    assert len(errors) == 1 and "invalid regex" in errors[0] and "missing closing parenthesis" in errors[0]


def test_a_null_route_name_is_no_name():
    """10-declarative_spec.lua "converts lyaml.null to ngx.null" (`name: null`)."""
    config = _load('_format_version: "1.1"\nroutes:\n  - name: null\n    paths:\n    - /\n')
    assert config.routes[0].name is None and config.routes[0].paths == ["/"]


# --- 23-vaults_spec.lua, 13-vaults/02-env_vault_spec.lua ------------------------------------------------------------


@pytest.mark.parametrize("reference", ["{vault://env}", "{vault://env/}", "{vault://env/////}"])
def test_a_reference_with_no_path_is_refused(reference):
    """23-vaults_spec.lua "test init path with only slashes does not work"."""
    with pytest.raises(VaultError):
        parse_reference(reference)


@pytest.mark.parametrize(("reference", "resource", "key"), [
    ("{vault://env/test-secret/test-key}", "test-secret", "test-key"),
    ("{vault://env/test%3Asecret/test%3Akey}", "test:secret", "test:key"),
    ("{vault://env//////test-secret//////test-key}", "test-secret", "test-key"),
    ("{vault://env/test-secret/test-key/}", "test-secret/test-key", None),
    ("{vault://env//////test-secret//////test-key//////}", "test-secret/test-key", None),
])
def test_a_reference_path_is_read_as_kongs_parse_reference_reads_it(reference, resource, key):
    """23-vaults_spec.lua "test init nested/path", "... is url decoded", "... ignores consecutive slashes", "...
    ending with slash", "... ending with slash ignores consecutive slashes"."""
    parsed = parse_reference(reference)
    assert (parsed.name, parsed.resource, parsed.key, parsed.version) == ("env", resource, key, None)


def test_a_reference_version_1_reads_the_current_value():
    """23-vaults_spec.lua "test init version" (#1 is version 1); env/init.lua reads _PREVIOUS for version 2 only."""
    assert parse_reference("{vault://env/test#1}").version == 1
    assert Vaults(None, {"TEST": "now", "TEST_PREVIOUS": "then"}).resolve("{vault://env/test#1}") == "now"


@pytest.mark.parametrize(("text", "expected"), [
    ("{vault://x/x}", True), ("{vault://x/xx}", True), ("{vault://xx/xx-x}", True), ("{vault://xxx/xx-x}", True),
    ("{vault://;/xx-x}", True), ("vault:/xx-x}", False), ("{vault:/xx-x", False), ("vault:/xx-x", False),
    ("{valut:/xx-x}", False), ("{vault:/xx-x}", False)])
def test_is_reference_as_kong(text, expected):
    """23-vaults_spec.lua "test is_reference [...]"."""
    assert is_reference(text) is expected


def test_an_empty_variable_is_an_empty_secret():
    """23-vaults_spec.lua "test get [{vault://env/test}]" and 02-env_vault_spec.lua "get empty value"."""
    assert Vaults(None, {"TEST": ""}).resolve("{vault://env/test}") == ""


@pytest.mark.parametrize("prefix", ["test_", "test-"])
def test_the_prefix_option_with_a_dash_or_an_underscore(prefix):
    """02-env_vault_spec.lua "get text with prefix (underscore)" / "(dash)"."""
    assert Vaults(None, {"TEST_ENV": "test"}).resolve(f"{{vault://env/env?prefix={prefix}}}") == "test"


# --- 13-vaults/06-refresh-secrets_spec.lua, 11-dbless/01-respawn_spec.lua (real gateways) ---------------------------


async def test_a_reload_resolves_a_new_reference_of_a_changed_plugin_config(nursery, tmp_path, monkeypatch):
    """06-refresh-secrets_spec.lua "should be able to detect new references when plugin config changes": a vaults
    entry `test-env`; the plugin's header value changed from literal text to `{vault://test-env/motor}` and
    reloaded is sent resolved (here http-log's header values, sent to its endpoint)."""
    monkeypatch.setenv("GILA", "MONSTER")
    monkeypatch.setenv("MOTOR", "SPIRIT")
    echo, logs = EchoBackend(), EchoBackend("logs")
    await nursery.start(echo.serve)
    await nursery.start(logs.serve)

    def doc(value: str) -> dict[str, Any]:
        return {"vaults": [{"name": "env", "prefix": "test-env"}],
                "services": [{"name": "s", "url": f"http://127.0.0.1:{echo.port}", "routes": [{"paths": ["/"]}],
                              "plugins": [{"name": "http-log", "config": {
                                  "http_endpoint": f"http://127.0.0.1:{logs.port}/log",
                                  "headers": {"x-ref": "{vault://test-env/gila}", "x-test-this": value}}}]}]}

    node = GatewayNode(tmp_path / "gw", doc("no-reference-yet"))
    try:
        await node.start(workers=1)
        with trio.fail_after(10):
            assert (await request(node.port, "GET", "/")).status == 200
            await wait_until(lambda: logs.requests, "the first log entry")
        first = logs.requests[-1]
        assert (first.header("x-ref"), first.header("x-test-this")) == ("MONSTER", "no-reference-yet")
        node.config.write_text(json.dumps({**node.doc, **doc("{vault://test-env/motor}")}))
        await node.admin("reload")
        seen = len(logs.requests)
        with trio.fail_after(10):
            assert (await request(node.port, "GET", "/")).status == 200
            await wait_until(lambda: len(logs.requests) > seen, "the second log entry")
        assert logs.requests[-1].header("x-test-this") == "SPIRIT"
    finally:
        node.cleanup()


async def test_a_respawned_worker_authenticates_with_the_loaded_credentials(nursery, tmp_path):
    """01-respawn_spec.lua "lands on the correct cache page #5799": key-auth on a service and a consumer's key; every
    worker killed and respawned still answers 401 without the key and 200 with it."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    node = GatewayNode(tmp_path / "gw", {
        "services": [{"name": "my-service", "url": f"http://127.0.0.1:{echo.port}/",
                      "plugins": [{"name": "key-auth"}], "routes": [{"name": "my-route", "paths": ["/"]}]}],
        "consumers": [{"username": "my-user", "keyauth_credentials": [{"key": "my-key"}]}]})
    try:
        await node.start(workers=1)
        with trio.fail_after(10):
            assert (await request(node.port, "GET", "/")).status == 401
            assert (await request(node.port, "GET", "/", headers=[("apikey", "my-key")])).status == 200
        old = await node.worker_pids()
        for pid in old:
            os.kill(pid, signal.SIGKILL)

        async def respawned() -> bool:
            pids = await node.worker_pids()
            return bool(pids) and not set(pids) & set(old)

        with trio.fail_after(15):
            while not await respawned():
                await trio.sleep(0.05)
            statuses = []
            for _ in range(20):  # the new worker may still be starting: wait for its first answer
                try:
                    statuses = [(await request(node.port, "GET", "/")).status,
                                (await request(node.port, "GET", "/", headers=[("apikey", "my-key")])).status]
                    break
                except OSError:
                    await trio.sleep(0.1)
        assert statuses == [401, 200]
    finally:
        node.cleanup()
