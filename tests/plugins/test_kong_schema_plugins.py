"""The plugin entity as Kong's specs state it: spec/01-unit/01-db/01-schema/07-plugins_spec.lua (unknown plugins,
the config checked by the plugin's schema, no_consumer), spec/01-unit/12-plugins_order_spec.lua (PRIORITY, the run
order), spec/01-unit/28-plugins-iterator/02-lookup_cfg_spec.lua (which instance applies), and the code they test:
kong/db/schema/entities/plugins.lua with typedefs.lua (instance_name, protocols), kong/runloop/plugins_iterator.lua
(enabled, lookup_cfg, the http subsystem's protocols) and
each plugin's kong/plugins/*/handler.lua (PRIORITY) and schema.lua (typedefs.no_consumer)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.policies import REGISTRY
from gateway.runtime import NOT_BUILT, compile_config

SVC_ID = "8b4c0a3e-5a51-4bb0-9a2c-7d2f8e9d1c01"


def doc(plugins: list[dict[str, Any]], route: dict[str, Any] | None = None, **more: Any) -> str:
    """Service s (with SVC_ID) and its route r (`route`'s fields added), consumer bob, and these plugins."""
    return json.dumps({"services": [{"name": "s", "id": SVC_ID, "url": "http://127.0.0.1:1",
                                     "routes": [{"name": "r", "paths": ["/"], **(route or {})}]}],
                       "consumers": [{"username": "bob"}], "plugins": plugins, **more})


def errors(text: str) -> list[str]:
    """Every problem the loader and the compiler find in the config `text`."""
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(text, "kong.yml"), "kong.yml")
    return [m.removeprefix("kong.yml: ") for m in info.value.messages]


def policies(text: str) -> list[Any]:
    """The chain route r runs for a request with no consumer."""
    runtime = compile_config(parse_config(text))
    return runtime.router.match(b"GET", b"/", None, []).payload.policies


# --- name: a plugin that is not there -------------------------------------------------------------------------------


def test_a_plugin_that_is_not_installed_is_refused_naming_it():
    [message] = errors(doc([{"name": "world domination"}]))
    assert message.startswith("plugins[0].name: plugin 'world domination' is not supported; supported: acl, ")


KONG_BUNDLED = ["jwt", "acl", "correlation-id", "cors", "oauth2", "tcp-log", "udp-log", "file-log", "http-log",
                "key-auth", "hmac-auth", "basic-auth", "ip-restriction", "request-transformer",
                "response-transformer", "request-size-limiting", "rate-limiting", "response-ratelimiting", "syslog",
                "loggly", "datadog", "ldap-auth", "statsd", "bot-detection", "aws-lambda", "request-termination",
                "prometheus", "proxy-cache", "session", "acme", "grpc-gateway", "grpc-web", "pre-function",
                "post-function", "azure-functions", "zipkin", "opentelemetry", "ai-proxy", "ai-prompt-decorator",
                "ai-prompt-template", "ai-prompt-guard", "ai-request-transformer", "ai-response-transformer",
                "standard-webhooks", "redirect"]  # kong/constants.lua's plugins


@pytest.mark.parametrize("name", [n for n in KONG_BUNDLED if n not in REGISTRY])
def test_a_kong_bundled_plugin_the_gateway_does_not_build_is_refused_saying_why(name):
    [message] = errors(doc([{"name": name}]))
    assert message.startswith(f"plugins[0].name: plugin {name!r} is not supported ({NOT_BUILT[name]}); supported: ")


def test_the_config_is_checked_by_the_plugins_own_schema():
    assert errors(doc([{"name": "rate-limiting", "service": "s", "config": {"second": "hello"}}])) == [
        'plugins[0].config.second: expected number > 0 and <= 9007199254740992, got "hello"']


# --- scope: route, service, consumer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", [{"name": "key-auth", "route": "r"}, {"name": "key-auth", "service": "s"},
                                    {"name": "rate-limiting", "consumer": "bob", "config": {"second": 1}}])
def test_a_plugin_is_accepted_for_a_route_a_service_or_a_consumer_it_allows(plugin):
    compile_config(parse_config(doc([plugin])))


KONG_NO_CONSUMER = {"acl", "basic-auth", "bot-detection", "cors", "hmac-auth", "jwt", "key-auth", "ldap-auth",
                    "session", "standard-webhooks"}  # the schemas with `consumer = typedefs.no_consumer`


@pytest.mark.parametrize("name", sorted(n for n in REGISTRY if n in KONG_BUNDLED))
def test_a_plugin_may_be_scoped_to_a_consumer_unless_its_kong_schema_says_no_consumer(name):
    assert REGISTRY[name].__dict__.get("consumer_scoped", True) is (name not in KONG_NO_CONSUMER)


@pytest.mark.parametrize("scope", [{"route": "r"}, {"service": "s"}, {"consumer": "bob"}, {}])
def test_a_second_instance_for_the_same_scope_is_refused_even_disabled(scope):
    """Kong's cache_key (name, route, service, consumer) is unique; a disabled instance has one too."""
    plugins = [{"name": "rate-limiting", **scope, "config": {"second": 1}},
               {"name": "rate-limiting", **scope, "enabled": False, "config": {"second": 2}}]
    assert errors(doc(plugins)) == ["plugins[1]: a rate-limiting plugin is already configured for the same route, "
                                    "service and consumer at plugins[0]"]


def test_a_service_named_by_id_or_by_name_is_the_same_scope():
    plugins = [{"name": "cors", "service": "s"}, {"name": "cors", "service": SVC_ID}]
    assert errors(doc(plugins)) == ["plugins[1]: a cors plugin is already configured for the same route, service and "
                                    "consumer at plugins[0]"]


# --- enabled -------------------------------------------------------------------------------------------------------


def test_a_disabled_instance_leaves_the_one_of_a_wider_scope_in_force():
    """plugins_iterator.lua: a disabled plugin has no config in the lookup, so the global instance is found."""
    plugins = [{"name": "request-size-limiting", "config": {"allowed_payload_size": 1}},
               {"name": "request-size-limiting", "route": "r", "enabled": False,
                "config": {"allowed_payload_size": 2}}]
    assert [p.limit for p in policies(doc(plugins))] == [1 * 1024 * 1024]


def test_a_disabled_instance_is_still_checked():
    assert errors(doc([{"name": "rate-limiting", "enabled": False, "config": {"second": "hello"}}])) == [
        'plugins[0].config.second: expected number > 0 and <= 9007199254740992, got "hello"']


# --- protocols -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["ws", "wss"])
def test_ws_and_wss_are_refused_as_kong_oss_has_no_such_protocol(protocol):
    """constants.lua's PROTOCOLS (OSS): grpc, grpcs, http, https, tcp, tls, tls_passthrough, udp."""
    [message] = errors(doc([{"name": "cors", "protocols": ["http", protocol]}]))
    assert message.startswith(f"plugins[0].protocols[1]: expected one of grpc, grpcs, http, https, got {protocol!r}")


@pytest.mark.parametrize("name", ["request-transformer", "prometheus"])
def test_ws_is_refused_for_a_plugin_of_any_protocol_too(name):
    [message] = errors(doc([{"name": name, "protocols": ["ws"]}]))
    assert message.startswith("plugins[0].protocols[0]: expected one of grpc, grpcs, http, https, tcp, tls, "
                              "tls_passthrough, udp, got 'ws'")


@pytest.mark.parametrize(("plugin", "route_protocols"), [
    ({"name": "cors", "protocols": ["grpc", "grpcs"]}, ["http", "https"]),
    ({"name": "cors", "protocols": ["http"]}, ["https"]),
])
def test_a_plugin_sharing_no_protocol_with_its_route_loads_as_in_db_less_kong(plugin, route_protocols):
    """kong/db/dao/plugins.lua's check_protocols_match refuses it when it is written to a database; a declarative
    file loads without it (DB-less Kong), and plugins_iterator.lua runs the plugin on the route's HTTP requests,
    looking only at whether one of its protocols is of the http subsystem."""
    runtime = compile_config(parse_config(doc([{**plugin, "route": "r"}], {"protocols": route_protocols})))
    assert [p.name for p in runtime.router.match(b"GET", b"/", None, []).payload.chain] == ["cors"]


# --- instance_name -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["edge", "a.b-c_d~1", "plügin", "名前"])
def test_an_instance_name_of_alphanumerics_and_utf8_is_accepted(name):
    compile_config(parse_config(doc([{"name": "cors", "instance_name": name}])))


@pytest.mark.parametrize("name", ["my plugin", "a/b", "a:b", "a@b"])
def test_an_instance_name_with_other_ascii_characters_is_refused(name):
    assert errors(doc([{"name": "cors", "instance_name": name}])) == [
        f"plugins[0].instance_name: invalid value '{name}': the only accepted ascii characters are alphanumerics or "
        f"., -, _, and ~"]


def test_an_empty_instance_name_is_refused():
    assert errors(doc([{"name": "cors", "instance_name": ""}])) == [
        "plugins[0].instance_name: length must be at least 1"]


# --- PRIORITY: the run order ----------------------------------------------------------------------------------------


KONG_PRIORITY = {  # kong/plugins/*/handler.lua
    "correlation-id": 100001, "zipkin": 100000, "bot-detection": 2500, "cors": 2000, "session": 1900, "jwt": 1450,
    "key-auth": 1250, "ldap-auth": 1200, "basic-auth": 1100, "hmac-auth": 1030, "ip-restriction": 990,
    "request-size-limiting": 951, "acl": 950, "rate-limiting": 910, "response-ratelimiting": 900,
    "request-transformer": 801, "response-transformer": 800, "redirect": 779, "ai-prompt-template": 773,
    "ai-prompt-decorator": 772, "ai-prompt-guard": 771, "standard-webhooks": 760, "proxy-cache": 100,
    "opentelemetry": 14, "prometheus": 13, "http-log": 12, "statsd": 11, "datadog": 10, "file-log": 9, "udp-log": 8,
    "tcp-log": 7, "loggly": 6, "syslog": 4, "request-termination": 2,
}


def test_every_kong_plugin_the_gateway_builds_has_kongs_priority():
    assert {n: m.priority for n, m in REGISTRY.items() if n in KONG_BUNDLED} == KONG_PRIORITY


def test_no_two_plugins_have_the_same_priority():
    priorities = [m.priority for m in REGISTRY.values()]
    assert len(set(priorities)) == len(priorities)


def test_a_routes_plugins_run_in_priority_order_whatever_their_order_in_the_file():
    plugins = [{"name": "request-termination"}, {"name": "cors"}, {"name": "correlation-id"}, {"name": "key-auth"},
               {"name": "rate-limiting", "config": {"second": 1}}, {"name": "acl", "config": {"allow": ["x"]}}]
    assert [p.name for p in policies(doc(plugins))] == ["correlation-id", "cors", "key-auth", "acl", "rate-limiting",
                                                       "request-termination"]


def test_a_plugins_integer_field_takes_a_whole_number_float_as_kong_does():
    """Kong's integer is any number equal to its floor, in a plugin's schema too: a redis port of 6379.0 loads; a
    string stays refused."""
    redis = {"host": "127.0.0.1", "port": 6379.0, "database": 1.0, "timeout": 2000.0}
    [policy] = policies(doc([{"name": "rate-limiting", "config": {"minute": 5, "policy": "redis", "redis": redis}}]))
    assert policy.name == "rate-limiting"
    refused = errors(doc([{"name": "rate-limiting", "config": {"minute": 5, "policy": "redis",
                                                               "redis": {**redis, "port": "6379"}}}]))
    assert len(refused) == 1 and "redis.port" in refused[0]
