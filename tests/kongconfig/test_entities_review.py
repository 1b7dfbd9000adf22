"""Entities as Kong's declarative loader and entity schemas take them: a service url's host kept as written (so it
names an upstream), ids in Kong's dashed UUID form only, a nested entity's own reference to its parent's kind
checked like any other, and a wrong value in a mapping reported under its key. Pure load/compile tests: no
process, no socket."""

from __future__ import annotations

import json
import textwrap

import pytest

from gateway.config import Config, parse_config
from gateway.config.errors import ConfigError
from gateway.runtime import Runtime, compile_config
from gateway.telemetry.entities import RouteFacts


def _load(text: str) -> tuple[Config, Runtime]:
    config = parse_config(textwrap.dedent(text), "kong.yml")
    return config, compile_config(config, "kong.yml")


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(text)
    return [m.removeprefix("kong.yml: ") for m in info.value.messages]


# --- a service url's host ----------------------------------------------------------------------------------------

_MIXED_CASE_UPSTREAM = """
    upstreams:
    - name: Backend-Pool
      targets: [{target: '127.0.0.1:9001'}]
    services:
    - name: by-url
      url: http://Backend-Pool/api
      routes: [{name: r, paths: [/a]}]
"""


def test_a_service_url_naming_an_upstream_in_mixed_case_is_balanced_over_that_upstream():
    """kong/db/schema/entities/services.lua:97: the url shorthand takes `host = parsed_url.host`, as socket.url's
    parse gives it (case kept); kong/runloop/balancer/upstreams.lua:102, 131-146 find the upstream by that exact
    name. So `url: http://Backend-Pool/api` is balanced over upstream Backend-Pool's targets, as `host:
    Backend-Pool` is, not proxied to the DNS name backend-pool:80."""
    _, runtime = _load(_MIXED_CASE_UPSTREAM)
    group = runtime.services["by-url"].group
    assert not group.direct
    assert [(t.host, t.port) for t in group.targets] == [("127.0.0.1", 9001)]


def test_the_log_entry_of_a_service_given_by_url_carries_its_host_as_written():
    """kong/db/schema/entities/services.lua:97: the stored service's host is the url's host as written, and Kong's
    serializer copies the service entity into every log entry (kong/pdk/log.lua)."""
    config, _ = _load(_MIXED_CASE_UPSTREAM)
    facts = RouteFacts(config.routes[0], "r", config.services[0])
    assert facts.service_json is not None
    assert json.loads(bytes(facts.service_json))["host"] == "Backend-Pool"


def test_the_log_entry_of_a_service_given_by_host_without_a_port_carries_kongs_default_port_80():
    """kong/db/schema/entities/services.lua:18,38: `port = typedefs.port { required = true, default = default_port }`
    (80, whatever the protocol: spec/01-unit/01-db/01-schema/11-declarative_config/03-flatten_spec.lua:145-156 stores
    `protocol = "https"`, `port = 80`), and kong/pdk/log.lua:928 copies that entity into every log entry."""
    config, _ = _load("""
        services:
        - {name: foo, host: example.com, protocol: https, routes: [{name: r, paths: [/]}]}
    """)
    facts = RouteFacts(config.routes[0], "r", config.services[0])
    assert facts.service_json is not None
    assert json.loads(bytes(facts.service_json))["port"] == 80


# --- ids ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("given", ["769bdf5116df54769830ef26800b5448", "{769bdf51-16df-5476-9830-ef26800b5448}",
                                   "urn:uuid:769bdf51-16df-5476-9830-ef26800b5448"])
def test_an_id_that_is_not_a_dashed_uuid_is_refused(given: str):
    """kong/db/schema/init.lua:159 `uuid_regex = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"`,
    applied at lines 338-342 to every typedefs.uuid field (every entity's `id`, typedefs.lua:359-364): 32 bare hex
    digits, braces and a urn:uuid: prefix, which Python's uuid.UUID takes, are not ids."""
    problems = _errors(f"""
        consumers:
        - username: alice
          id: "{given}"
    """)
    assert problems == [f'consumers[0].id: expected a UUID (e.g. "3f2a63d2-2b43-4a5b-9d1e-5c6b1f0e8a42"), '
                        f'got "{given}"']


def test_an_id_in_upper_case_hex_is_an_id():
    """kong/db/schema/init.lua:338-342: the uuid regex is matched with the "ioj" options, case-insensitively."""
    config, _ = _load("""
        consumers:
        - username: alice
          id: "769BDF51-16DF-5476-9830-EF26800B5448"
    """)
    assert config.consumers[0].id == "769BDF51-16DF-5476-9830-EF26800B5448"


# --- a nested entity's own reference -----------------------------------------------------------------------------

def test_a_nested_route_naming_a_service_that_does_not_exist_is_refused():
    """Kong's spec/01-unit/01-db/01-schema/11-declarative_config/03-flatten_spec.lua:2244-2263 ("fixes #7696"):
    populate_references records the nested route's own `service` (declarative_config.lua:438-452) before setting
    the parent's key (454-455), and validate_references (470-500) refuses "invalid reference 'service: {...}' (no
    such entry in 'services')"."""
    problems = _errors("""
        _format_version: "2.1"
        services:
        - name: my-service-1
          url: http://localhost:8001/status
          routes:
          - name: my-route-1
            service:
              id: "769bdf51-16df-5476-9830-ef26800b5448"
            paths:
            - /status
    """)
    assert problems == ["services[0].routes[0].service: no service with id or name "
                        "'769bdf51-16df-5476-9830-ef26800b5448'; remove the field (nested, it belongs to the service "
                        "it is under) or name one that exists"]


def test_a_nested_target_naming_an_upstream_that_does_not_exist_is_refused():
    """kong/db/schema/others/declarative_config.lua:438-452, 470-500: a nested target's own `upstream` is a
    reference like any other: "invalid reference 'upstream: ghost' (no such entry in 'upstreams')"."""
    problems = _errors("""
        upstreams:
        - name: pool
          targets: [{target: '127.0.0.1:9001', upstream: ghost}]
    """)
    assert problems == ["upstreams[0].targets[0].upstream: no upstream with id or name 'ghost'; remove the field "
                        "(nested, it belongs to the upstream it is under) or name one that exists"]


def test_a_plugin_nested_in_a_route_naming_a_route_that_does_not_exist_is_refused():
    """Kong's spec/01-unit/01-db/01-schema/11-declarative_config/01-validate_spec.lua:570-600 ("does not accept
    additional foreign keys"): a plugin under a route that names a route `foo` no route has is refused."""
    problems = _errors("""
        _format_version: "1.1"
        services:
        - name: foo
          url: https://example.com
          routes:
          - paths: [/]
            plugins:
            - name: key-auth
              route: foo
    """)
    assert [p.split(":")[0] for p in problems] == ["services[0].routes[0].plugins[0].route"]


def test_a_nested_route_naming_another_existing_service_belongs_to_the_service_it_is_under():
    """kong/db/schema/others/declarative_config.lua:775-787 turns a reference that names an entity into its key,
    validate_references (470-500) finds it, and populate_references then sets the parent's key over it (454-455):
    the route loads, under the service it is nested in."""
    config, _ = _load("""
        services:
        - name: a
          url: http://127.0.0.1:9001
          routes: [{name: r, paths: [/a], service: b}]
        - name: b
          url: http://127.0.0.1:9002
    """)
    assert [(r.name, r.service) for r in config.routes] == [("r", "a")]


# --- values in a mapping -----------------------------------------------------------------------------------------

def test_a_route_header_value_that_is_not_a_list_is_reported_under_the_header_name():
    """kong/db/schema/entities/routes.lua:190-199: `headers` (typedefs.headers) maps a header name to an array of
    values, and Kong reports a wrong value under its key; every wrong one, as every other problem of a file."""
    problems = _errors("""
        routes:
        - paths: [/a]
          headers: {x-version: v1, x-tenant: [acme], x-zone: 3}
    """)
    assert problems == ['routes[0].headers.x-version: expected a list, got "v1"',
                        "routes[0].headers.x-zone: expected a list, got 3"]


def test_a_wrong_value_in_a_plugin_config_mapping_is_reported_under_its_key():
    """kong/plugins/http-log/schema.lua:38-39: `headers` is a map of header names to strings; the message names the key
    whose value is wrong (msgspec's own path says only `headers[...]`)."""
    problems = _errors("""
        plugins:
        - name: http-log
          config: {http_endpoint: 'http://127.0.0.1:9/x', headers: {x-ok: fine, x-bad: 1}}
    """)
    assert problems == ["plugins[0].config.headers.x-bad: expected string, got 1"]


def test_a_service_url_naming_an_upstream_in_mixed_case_presents_that_upstreams_client_certificate():
    """The same rule for TLS: a service without a client certificate presents the one of the upstream its host
    names (kong/runloop/upstream_ssl.lua fallback_upstream_client_cert, ctx.balancer_data.upstream: found by exact
    name), so `url: https://Backend-Pool` presents upstream Backend-Pool's certificate."""
    from tls_helpers import Pki

    cert, key = Pki().issue("client.test")
    _, runtime = _load(f"""
        certificates:
        - id: 2e4f8a4c-6a1d-4a9e-9a51-1f0c6d3b7e21
          cert: {json.dumps(cert)}
          key: {json.dumps(key)}
        upstreams:
        - name: Backend-Pool
          client_certificate: {{id: 2e4f8a4c-6a1d-4a9e-9a51-1f0c6d3b7e21}}
          targets: [{{target: '127.0.0.1:9443'}}]
        services:
        - name: by-url
          url: https://Backend-Pool/api
          routes: [{{name: r, paths: [/a]}}]
    """)
    tls = runtime.services["by-url"].tls
    assert tls is not None and tls._client_pair == (cert, key)
