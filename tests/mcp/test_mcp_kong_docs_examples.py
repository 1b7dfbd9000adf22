"""Kong's documented ai-mcp-proxy and ai-mcp-oauth2 examples (developer.konghq.com, app/_kong_plugins/<name>/examples,
their schemas app/_schemas/gateway/plugins/3.15/AiMcpProxy.json and AiMcpOauth2.json) through check-config: as written,
and as Kong stores and exports them.

Kong stores every field it was not given that has no default and is not required as null (kong/db/schema/init.lua,
handle_missing_field, 3.9.3: 1037-1073: `if field.required ~= true then return null end`, a record included; array
elements of records too, adjust_field_for_context 1663-1682), and `kong config db_export` / decK write those nulls.
Kong's plugin then reads nil there: the key configures nothing, so the gateway takes it as absent."""

from __future__ import annotations

import json

import pytest

from gateway.config import ConfigError, parse_config
from gateway.runtime import compile_config


def check(plugin: dict) -> list[str]:
    """check-config's messages for one global plugin on a one-route service ([] when it loads)."""
    doc = {"_format_version": "3.0",
           "services": [{"name": "s", "url": "http://127.0.0.1:9000", "routes": [{"name": "r", "paths": ["/"]}]}],
           "plugins": [plugin]}
    try:
        compile_config(parse_config(json.dumps(doc), "kong.yml"), "kong.yml")
    except ConfigError as e:
        return [m.removeprefix("kong.yml: ") for m in e.messages]
    return []


def proxy(**config: object) -> dict:
    return {"name": "ai-mcp-proxy", "config": {"mode": "passthrough-listener", **config}}


# A tool's keys of Kong's conversion modes (AiMcpProxy.json tools[]), as Kong stores a passthrough tool: null
CONVERSION_NULLS = dict.fromkeys(("method", "path", "host", "scheme", "headers", "query", "parameters", "request_body",
                                  "responses", "annotations"))


# --- ai-mcp-proxy: Kong's stored form ---------------------------------------------------------------------------------

def test_stored_passthrough_listener_example_with_null_server_tools_default_acl_and_logging_loads():
    """examples/passthrough-listener.yaml as Kong stores it: AiMcpProxy.json gives `server`, `tools`, `default_acl`
    and `logging` no default and does not require them, so handle_missing_field stores each as null; the plugin reads
    nil for each, exactly the plugin without them. Was refused: `server` as not supported, the others as "null is
    refused here"."""
    stored = {"max_request_body_size": 1048576, "include_consumer_groups": False, "consumer_identifier": "username",
              "acl_attribute_type": "consumer", "access_token_claim_field": None, "tools": None,
              "default_acl": None, "logging": None, "server": None}
    assert check(proxy(**stored)) == []


@pytest.mark.parametrize("key", ["tools", "default_acl", "logging"])
def test_a_null_tools_default_acl_or_logging_is_no_value(key):
    """Each null alone (`server` refused hid them): handle_missing_field's null is Kong's value for an unset key, read
    as nil (no tools, no default ACL, no audit lines), not refused as a null in place of a default."""
    assert check(proxy(**{key: None})) == []


def test_stored_tool_acls_example_with_null_conversion_keys_loads():
    """examples/passthrough-listener-tool-acls.yaml as Kong stores it: each tool's conversion keys (method, path,
    parameters, annotations, ...: no default, not required) are null in every element (adjust_field_for_context
    processes array elements of records), and an acl without `deny` holds `deny: null`. Was refused as unknown
    fields ("check the spelling")."""
    tools = [{"name": "list_users", "description": "List users", **CONVERSION_NULLS,
              "acl": {"allow": ["admin", "eason"], "deny": ["developer"]}},
             {"name": "get_user", "description": "Get user", **CONVERSION_NULLS,
              "acl": {"allow": ["admin", "developer"], "deny": None}}]
    assert check(proxy(include_consumer_groups=True, tools=tools,
                       logging={"log_payloads": False, "log_statistics": False, "log_audits": True})) == []


# --- ai-mcp-proxy: what only the modes the gateway does not build use ------------------------------------------------

def test_server_is_refused_naming_the_modes_that_use_it():
    """`server` (session, tag, timeout, forward_client_headers) configures Kong as the MCP server: modes
    conversion-listener and listener (ai-mcp-proxy index.md, "Modes"; conversion-only "does not define a server")."""
    assert check(proxy(server={"timeout": 60000})) == [
        "plugins[0].config.server is not supported: used only by modes conversion-listener and listener (Kong as the "
        "MCP server), which the gateway does not build; remove it (in passthrough-listener mode the MCP server is the "
        "service)"]


def test_a_tool_conversion_key_is_refused_naming_the_modes_that_use_it():
    """A tool's method, path, parameters, ... describe the REST API Kong turns into a tool (AiMcpProxy.json: "The
    method of the exported API"), in modes conversion-only and conversion-listener. Was "unknown field (check the
    spelling; ...)"."""
    tool = {"name": "get_users", "description": "Get users", "method": "GET", "path": None}
    assert check(proxy(tools=[tool])) == [
        "plugins[0].config.tools[0].method is not supported: used only by modes conversion-only and "
        "conversion-listener (a tool made of a REST API), which the gateway does not build; remove it (in "
        "passthrough-listener mode a tool is the server's, named by name)"]


def test_docs_conversion_only_example_is_refused_naming_the_mode_alone():
    """examples/conversion-only.yaml: the mode is judged before the rest (its tools have no `name`, and keys only
    that mode reads), and reported alone. Was "tools[0].method: unknown field (check the spelling; ...)", the mode
    never named."""
    config = {"mode": "conversion-only", "max_request_body_size": 1048576, "tools": [
        {"description": "Get users", "method": "GET", "path": "/marketplace/users",
         "annotations": {"title": "get-users"},
         "parameters": [{"name": "id", "in": "query", "required": False, "schema": {"type": "string"},
                         "description": "Optional user ID"}]}]}
    assert check({"name": "ai-mcp-proxy", "config": config}) == [
        "plugins[0].config.mode: 'conversion-only' is not supported: it turns the route's REST API into MCP tools for "
        "listener plugins, which the gateway does not build; it builds mode passthrough-listener (in front of "
        "existing MCP servers, governing them per tool)"]


@pytest.mark.parametrize(("config", "what"), [
    ({"mode": "listener", "server": {"tag": "marketplace-tools", "timeout": 45000},
      "logging": {"log_statistics": True, "log_payloads": False}, "max_request_body_size": 32768},
     "it serves as one MCP server the tools of conversion-only plugins (by server.tag)"),
    ({"mode": "conversion-listener", "server": {"timeout": 60000}, "max_request_body_size": 8192,
      "tools": [{"description": "Get users", "method": "GET", "path": "/marketplace/users"}]},
     "it turns the route's REST API into MCP tools and serves them as an MCP server"),
])
def test_docs_listener_examples_are_refused_naming_the_mode_alone(config, what):
    """examples/listener.yaml and conversion-listener.yaml: one message, the mode's, saying what it does."""
    assert check({"name": "ai-mcp-proxy", "config": config}) == [
        f"plugins[0].config.mode: {config['mode']!r} is not supported: {what}, which the gateway does not build; it "
        "builds mode passthrough-listener (in front of existing MCP servers, governing them per tool)"]


# --- ai-mcp-oauth2 ---------------------------------------------------------------------------------------------------

OAUTH2 = {"resource": "http://127.0.0.1:9000/mcp", "authorization_servers": ["http://127.0.0.1:9001"],
          "jwks_endpoint": "http://127.0.0.1:9001/jwks",
          "upstream_headers": [{"header": "X-Org-Id", "path": ["org", "id"]}]}


def oauth2(**config: object) -> dict:
    return {"name": "ai-mcp-oauth2", "config": {**OAUTH2, **config}}


def test_stored_nested_claim_headers_example_with_null_unbuilt_keys_loads():
    """examples/nested-claim-headers.yaml as Kong stores it: every key of a feature the gateway does not build
    (AiMcpOauth2.json: introspection, token exchange, proxies, mTLS, metadata discovery) has no default and is
    stored null; a null configures none of them. Was refused, each "not supported"."""
    nulls = dict.fromkeys((
        "introspection_endpoint", "mtls_introspection_endpoint", "introspection_format", "client_id", "client_secret",
        "client_auth", "client_alg", "client_jwk", "args", "headers", "token_exchange", "http_proxy",
        "http_proxy_authorization", "https_proxy", "https_proxy_authorization", "no_proxy", "tls_client_auth_cert",
        "tls_client_auth_key", "metadata_discovery_endpoint"))
    assert check(oauth2(**nulls)) == []


def test_kong_defaults_of_unbuilt_features_load():
    """The defaults AiMcpOauth2.json gives keys of what the gateway does not build, which every export writes: each
    changes nothing here (cache_introspection without introspection_endpoint, metadata_cache_ttl and
    metadata_discovery_retry without discovery, tls_client_auth_ssl_verify without a client certificate; the JWKS
    is fetched over HTTP/1.1, and keepalive only pools Kong's connections to the authorization server)."""
    defaults = {"cache_introspection": True, "metadata_cache_ttl": 3600, "metadata_discovery_retry": 3,
                "tls_client_auth_ssl_verify": True, "keepalive": True, "http_version": 1.1}
    assert check(oauth2(**defaults)) == []


INTROSPECTION = "token introspection (opaque tokens) is not built"


@pytest.mark.parametrize(("config", "why"), [
    ({"introspection_endpoint": "http://127.0.0.1:9001/introspect"}, INTROSPECTION),
    ({"client_id": "gateway"}, INTROSPECTION),
    ({"cache_introspection": False}, INTROSPECTION),
    ({"token_exchange": {"enabled": True, "token_endpoint": "http://127.0.0.1:9001/token"}},
     "token exchange is not built"),
    ({"http_proxy": "http://127.0.0.1:3128"}, "HTTP proxies to the authorization server are not built"),
    ({"tls_client_auth_ssl_verify": False}, "mTLS to the authorization server is not built"),
    ({"metadata_discovery_endpoint": "http://127.0.0.1:9001/.well-known/openid-configuration"},
     "discovery from the authorization server's metadata is not built"),
    ({"metadata_cache_ttl": 60}, "discovery from the authorization server's metadata is not built"),
    ({"http_version": 1.0}, "the gateway fetches the JWKS over HTTP/1.1 only"),
])
def test_a_value_of_an_unbuilt_feature_is_refused_with_why(config, why):
    """A value that would configure what the gateway does not build (examples/token-exchange.yaml,
    configure-the-ai-mcp-oauth2-plugin.yaml use introspection) is refused, naming the feature."""
    (key,) = config
    (message,) = check(oauth2(**config))
    assert message.startswith(f"plugins[0].config.{key} is not supported: {why}"), message
