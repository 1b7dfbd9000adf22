"""Kong's declarative forms: annotations, ids and references by id or name, decK's reference mappings, bare IP
targets, unsupported Kong entities refused with a message that says so, and every error of a file at once."""

from __future__ import annotations

import json
import textwrap

import pytest

from gateway.cli import check_config
from gateway.config import ConfigError, parse_config
from gateway.runtime import check_file, compile_config

SVC_ID = "8b4c0a3e-5a51-4bb0-9a2c-7d2f8e9d1c01"
ROUTE_ID = "1f0d2c3b-4a59-4e6f-8d7c-0b1a2c3d4e5f"
UP_ID = "2a3b4c5d-6e7f-4a1b-9c2d-3e4f5a6b7c8d"


def load(text: str):  # noqa: ANN201
    config = parse_config(textwrap.dedent(text), "kong.yml")
    compile_config(config, "kong.yml")
    return config


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text)
    return [m.removeprefix("kong.yml: ") for m in info.value.messages]


def test_comments_and_ignored_values_are_accepted_everywhere():
    config = load("""
        _format_version: "3.0"
        _comment: a top-level comment
        _ignore: [anything, {at: all}]
        services:
        - name: s
          _comment: on a service
          url: http://127.0.0.1:9000
          tags: [team-a, prod]
          created_at: 1700000000
          routes:
          - paths: [/]
            _ignore: [x]
            plugins:
            - name: cors
              _comment: on a nested plugin
        upstreams:
        - name: up
          _comment: on an upstream
          targets:
          - target: 127.0.0.1:9001
            _comment: on a target
        consumers:
        - username: u
          _comment: on a consumer
          keyauth_credentials:
          - key: k
            _comment: on a credential
    """)
    assert [s.name for s in config.services] == ["s"] and config.services[0].tags == ["team-a", "prod"]


def test_annotations_of_the_wrong_type_are_errors():
    assert errors("""
        _comment: [not, a, string]
        services:
        - {name: s, url: "http://127.0.0.1:1", _ignore: not-a-list}
    """) == ["_comment: expected a string", "services[0]._ignore: expected a list"]


def test_routes_plugins_and_targets_may_name_their_parent_by_id():
    config = load(f"""
        services:
        - {{id: {SVC_ID}, url: "http://up-by-id"}}
        routes:
        - {{id: {ROUTE_ID}, service: {SVC_ID}, paths: [/a]}}
        - {{name: named, service: {{id: {SVC_ID}}}, paths: [/b]}}
        upstreams:
        - {{id: {UP_ID}, name: up-by-id}}
        targets:
        - {{upstream: {UP_ID}, target: "127.0.0.1:9"}}
        - {{upstream: {{name: up-by-id}}, target: "::1"}}
        plugins:
        - {{name: cors, route: {ROUTE_ID}}}
        - {{name: correlation-id, service: {{id: {SVC_ID}}}, config: {{echo_downstream: true}}}}
    """)
    runtime = compile_config(config)
    assert [t.target for t in config.targets] == ["127.0.0.1:9", "::1"]
    group = runtime.groups["up-by-id"]
    assert [(t.host, t.port) for t in group.targets] == [("127.0.0.1", 9), ("::1", 8000)]
    unnamed = next(r for r in runtime.router._candidates if r.spec.paths == ["/a"]).spec.payload
    assert [p.name for p in unnamed.phases.header_filters] == ["correlation-id", "cors"]  # by priority


def test_a_bad_or_repeated_id_is_an_error():
    assert errors(f"""
        services:
        - {{id: not-a-uuid, name: a, url: "http://127.0.0.1:1"}}
        - {{id: {SVC_ID}, name: b, url: "http://127.0.0.1:1"}}
        - {{id: {SVC_ID}, name: c, url: "http://127.0.0.1:1"}}
    """) == [
        'services[0].id: expected a UUID (e.g. "3f2a63d2-2b43-4a5b-9d1e-5c6b1f0e8a42"), got "not-a-uuid"',
        f"services[2].id: '{SVC_ID}' is already used by services[1]"]


@pytest.mark.parametrize(("doc", "message"), [
    ("consumer_groups: [{name: gold}]", "consumer_groups: Kong's consumer_groups is not supported"),
    ("vaults: [{name: hcv, prefix: my-hcv}]", 'vaults[0].name: vault "hcv" is not supported by the gateway'),
    ("services: [{name: s, url: 'https://a', tls_sans: {dnsnames: [a.test]}}]",
     "services[0].tls_sans: tls_sans (the names an upstream certificate may carry) is not supported"),
    ("services: [{name: s, url: 'http://a', routes: [{paths: [/], sources: [{ip: 10.0.0.1}]}]}]",
     "services[0].routes[0].sources: sources (stream routes) is not supported by the gateway"),
    ("services: [{name: s, url: 'http://a', routes: [{paths: [/], protocols: [grpc]}]}]",
     "services[0].routes[0].protocols: grpc is not supported by the gateway (HTTP routes only"),
    ("consumers: [{username: u, oauth2_credentials: [{name: a, redirect_uris: ['https://a.test']}]}]",
     "consumers[0].oauth2_credentials: oauth2 credentials: the oauth2 plugin is not supported"),
])
def test_kong_entities_the_gateway_does_not_build_are_refused_by_name(doc, message):
    [got] = errors(doc)
    assert got.startswith(message), got


def test_null_unsupported_fields_configure_nothing_and_pass():
    load("services: [{name: s, url: 'http://127.0.0.1:1', tls_verify: null, ca_certificates: null,"
         " routes: [{paths: [/], snis: null, sources: null}]}]\nsnis: []")


SEVEN = """\
_format_version: "3.0"
services:
- name: a
  url: http://127.0.0.1:1
  retries: many
  routes:
  - paths: [no-slash]
    methods: [get]
- name: b
  host: 127.0.0.1
  colour: blue
routes:
- {service: missing, paths: [/x]}
plugins:
- {name: no-such-plugin}
- {name: cors, config: {origins: "not a list"}}
"""


def test_a_file_with_seven_problems_prints_seven_lines_in_file_order(tmp_path):
    path = tmp_path / "kong.yml"
    path.write_text(SEVEN)
    with pytest.raises(ConfigError) as info:
        check_file(str(path))
    found = [m.removeprefix(f"{path}: ") for m in info.value.messages]
    assert found == [
        'services[0].retries: expected int >= 0 and <= 32767, got "many"',
        'services[0].routes[0].paths[0]: a path starts with "/" (prefix) or "~" (regex), got "no-slash"',
        'services[0].routes[0].methods[0]: expected an upper-case HTTP method, got "get"',
        "services[1].colour: unknown field (check the spelling; see the README's config reference)",
        "routes[0].service: no service with id or name 'missing'",
        "plugins[0].name: plugin 'no-such-plugin' is not supported; supported: " + found[5].split("supported: ")[-1],
        'plugins[1].config.origins: expected a list, got "not a list"',
    ]
    supported = found[5].split("supported: ")[-1]
    assert supported.startswith("acl, ai-mcp-oauth2, ai-mcp-proxy, ai-prompt-decorator, ai-prompt-guard, "
                                "ai-prompt-template, basic-auth, bot-detection, circuit-breaker, correlation-id, cors")


def test_check_config_prints_one_line_per_problem_and_exits_2(tmp_path, capsys):
    path = tmp_path / "kong.yml"
    path.write_text(SEVEN)
    assert check_config(str(path)) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 7


def upstream_after_load(**fields: object) -> tuple[str, str]:
    doc = f"upstreams: [{json.dumps({'name': 'u', **fields})}]"
    config = load(doc)
    (up,) = config.upstreams  # type: ignore[attr-defined]
    return up.algorithm, up.hash_on


@pytest.mark.parametrize(("fields", "expected"), [
    ({"hash_on": "header", "hash_on_header": "x-a"}, ("consistent-hashing", "header")),
    ({"algorithm": "round-robin", "hash_on": "ip"}, ("consistent-hashing", "ip")),
    ({"algorithm": "consistent-hashing", "hash_on": "none"}, ("round-robin", "none")),
    ({"algorithm": "least-connections", "hash_on": "ip"}, ("least-connections", "none")),
    ({"algorithm": "latency", "hash_on": "consumer"}, ("latency", "none")),
    ({"algorithm": "consistent-hashing"}, ("consistent-hashing", "none")),
    ({"algorithm": "random"}, ("random", "none")),
])
def test_kongs_upstream_shorthands_set_the_algorithm_from_hash_on(fields, expected):
    assert upstream_after_load(**fields) == expected


def test_hash_on_with_an_algorithm_that_does_not_hash_on_it_is_refused():
    assert errors('upstreams: [{name: u, algorithm: ip-hash, hash_on: header, hash_on_header: x-a}]') == [
        "upstreams[0].hash_on: ip-hash does not hash on hash_on (use algorithm consistent-hashing, which Kong sets for "
        "any hash_on)"]


def test_a_2x_file_s_regex_path_is_a_regex_as_kong_3_migrates_it():
    """kong/db/declarative/migrations/route_path.lua: a 1.1 or 2.1 file's non-plain path becomes `~` and the
    regex; in a 3.0 file it stays a prefix."""
    for version, expected in (("2.1", ["~/users/\\d+$", "/plain"]), ("1.1", ["~/a\\.b(x)", "/plain"]),
                              ("3.0", ["/users/\\d+$", "/plain"])):
        path = "/a%2Eb(x)" if version == "1.1" else "/users/\\d+$"
        route = {"paths": [path, "/plain"]}
        config = load(f"""
            _format_version: "{version}"
            services: [{{name: s, url: "http://127.0.0.1:1", routes: [{json.dumps(route)}]}}]
        """)
        assert config.routes[0].paths == expected, version  # type: ignore[attr-defined]


def test_a_2x_regex_path_that_does_not_compile_is_refused_as_kong_refuses_it():
    assert errors("""
        _format_version: "2.1"
        services: [{name: s, url: "http://127.0.0.1:1", routes: [{paths: ["/regex.+(", /prefix]}]}]
    """) == ["services[0].routes[0].paths[0]: invalid regex: '/regex.+(' (PCRE returned: pcre2_compile() failed: "
               'missing closing parenthesis in "/regex.+(")']


def test_a_plugins_instance_name_is_unique_as_in_kong():
    assert errors("""
        plugins:
        - {name: cors, instance_name: edge}
        - {name: correlation-id, instance_name: edge}
    """) == ["plugins[1].instance_name: 'edge' is already used by plugins[0]"]


def test_a_target_listed_twice_in_one_upstream_is_refused_as_kong_refuses_it():
    assert errors("""
        upstreams:
        - name: u
          targets: [{target: "10.0.0.1:8000"}, {target: "10.0.0.2"}, {target: "10.0.0.1"}]
    """) == ["upstreams[0].targets[2].target: '10.0.0.1' is already a target of upstream 'u' "
             "(upstreams[0].targets[0]); give it one entry with the weight it should have"]
