"""Config loading: Kong's declarative format into msgspec Structs, and one clear message per error, naming the field
path. Validation runs the same stages as `gateway check-config`: `parse_config` (or `load_config`), then
`compile_config` (plugins, algorithms)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config
from gateway.config.document import read_document
from gateway.runtime import compile_config

REPO = Path(__file__).resolve().parent.parent
KONG_YML = REPO / "configs" / "kong.yml"
NAME = "test.yml"


def validate(text: str):  # noqa: ANN201
    config = parse_config(text, NAME)
    compile_config(config, NAME)
    return config


def errors(text: str) -> list[str]:
    """The messages of the ConfigError that `text` raises, without the file-name prefix."""
    with pytest.raises(ConfigError) as info:
        validate(text)
    prefix = f"{NAME}: "
    assert all(m.startswith(prefix) for m in info.value.messages), info.value.messages
    return [m[len(prefix):] for m in info.value.messages]


SERVICE = "services: [{name: s, url: 'http://127.0.0.1:9000', routes: [{paths: [/]}]}]\n"


# --- valid configs -------------------------------------------------------------------------------------------------


def test_reference_kong_yml_loads_unchanged():
    config = load_config(KONG_YML)
    runtime = compile_config(config, str(KONG_YML))
    assert [s.name for s in config.services] == ["erlmcp-service"]
    assert [r.name for r in config.routes] == ["erlmcp-route"]
    assert [u.name for u in config.upstreams] == ["erlmcp-cluster"]
    assert [t.target for t in config.targets] == [f"erlmcp{i}.example.com:8080" for i in (1, 2, 3)]
    assert sorted(p.name for p in config.plugins) == ["circuit-breaker", "jwt", "rate-limiting",
                                                      "request-size-limiting"]
    svc = config.services[0]
    assert (svc.url, svc.retries, svc.read_timeout) == ("http://erlmcp-cluster:8080", 3, 60000)
    up = config.upstreams[0]
    assert up.healthchecks.active.http_path == "/health"
    assert up.healthchecks.active.unhealthy.http_failures == 3
    assert up.slots == 100
    # the service's host names the upstream, whose `leastConn` is Kong's spelling of least-connections
    group = runtime.services["erlmcp-service"].group
    assert group.algorithm == "least-connections"
    assert [t.name for t in group.targets] == [f"erlmcp{i}.example.com:8080" for i in (1, 2, 3)]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_a_file_without_a_document_is_refused_as_kong_refuses_it(text):
    """Kong: "expected an object". A file emptied by a deploy tool (or `> gateway.yaml`) must not reload as a config
    that drops every route (an operations review)."""
    with pytest.raises(ConfigError, match=r"holds no YAML document .* write \{\} for a config without services"):
        validate(text)


def test_an_empty_mapping_is_a_valid_empty_config():
    config = validate("{}")
    assert config.services == [] and config.routes == []
    assert config.format_version == "3.0"


def test_nested_routes_and_targets_are_flattened_with_their_parent_named():
    config = validate("""
_format_version: "3.0"
services:
  - name: mcp
    url: http://cluster
    routes:
      - name: mcp-route
        paths: [/mcp]
    plugins:
      - name: request-size-limiting
        config: {allowed_payload_size: 1}
upstreams:
  - name: cluster
    targets:
      - target: 10.0.0.1:8080
      - target: 10.0.0.2
        weight: 50
""")
    assert [(r.name, r.service) for r in config.routes] == [("mcp-route", "mcp")]
    assert [(t.target, t.upstream, t.weight) for t in config.targets] == [
        ("10.0.0.1:8080", "cluster", 100), ("10.0.0.2", "cluster", 50)]
    assert [(p.name, p.service) for p in config.plugins] == [("request-size-limiting", "mcp")]
    runtime = compile_config(config)
    assert [t.name for t in runtime.services["mcp"].group.targets] == ["10.0.0.1:8080", "10.0.0.2:8000"]


def test_gateway_block_is_decoded():
    config = validate("gateway: {listen: ['127.0.0.1:8001', '[::1]:8002'], workers: 2, http_codec: h11, "
                      "sse_keepalive: 2.5}\n")
    assert config.gateway.listen == ["127.0.0.1:8001", "[::1]:8002"]
    assert config.gateway.workers == 2
    assert config.gateway.http_codec == "h11"
    assert config.gateway.sse_keepalive == 2.5


def test_algorithm_aliases_are_accepted():
    config = validate("upstreams: [{name: a, algorithm: round_robin}, {name: b, algorithm: consistent-hashing, "
                      "hash_on: header, hash_on_header: x-user}]\n")
    runtime = compile_config(config)
    assert runtime.groups["a"].algorithm == "round-robin"
    assert runtime.groups["b"].hash_on == ("header", b"x-user")


# --- error messages ------------------------------------------------------------------------------------------------


def test_wrong_type_names_the_full_field_path():
    text = "upstreams:\n  - name: u\n    healthchecks: {active: {healthy: {interval: ten}}}\n"
    assert errors(text) == [
        'upstreams[0].healthchecks.active.healthy.interval: expected number >= 0 and <= 65535, got "ten"']


def test_out_of_range_number_is_an_error():
    assert errors("services: [{name: s, url: 'http://a:1', retries: -1}]") == [
        "services[0].retries: expected int >= 0 and <= 32767, got -1"]


def test_a_worker_rlimit_nofile_below_1024_is_an_error():
    assert errors("gateway: {worker_rlimit_nofile: 100}") == [
        "gateway.worker_rlimit_nofile: expected int >= 1024 and <= 1073741824, got 100"]


def test_unknown_top_level_key_is_an_error():
    [message] = errors(SERVICE + "servcies: []\n")
    assert message.startswith("servcies: unknown top-level key")


def test_unknown_field_in_an_entity_is_an_error():
    [message] = errors("services: [{name: s, url: 'http://a:1', read_timeuot: 5}]")
    assert message.startswith("services[0].read_timeuot: unknown field")


def test_unknown_field_in_a_nested_route_names_the_nested_path():
    [message] = errors("services: [{name: s, url: 'http://a:1', routes: [{paths: [/], stirp_path: true}]}]")
    assert message.startswith("services[0].routes[0].stirp_path: unknown field")


def test_unknown_field_in_the_gateway_block_is_an_error():
    [message] = errors("gateway: {listen: '127.0.0.1:8000', wokers: 4}")
    assert message.startswith("gateway.wokers: unknown field")


def test_each_bad_entity_gets_its_own_message():
    messages = errors("services:\n  - {name: a, url: 'http://a:1', retries: x}\n  - {name: b, url: 'http://b:1', "
                      "colour: red}\nupstreams: [{name: u, slots: 1}]\n")
    assert len(messages) == 3
    assert messages[0].startswith("services[0].retries: expected int")
    assert messages[1].startswith("services[1].colour: unknown field")
    assert messages[2].startswith("upstreams[0].slots: expected int >= 10")


def test_bad_enum_value_lists_the_choices():
    assert errors("gateway: {http_codec: fast}") == [
        'gateway.http_codec: expected one of "auto", "h11", "llhttp", got "fast"']


def test_missing_required_field_is_named():
    assert errors("upstreams: [{algorithm: round-robin}]") == ["upstreams[0].name: required field is missing"]


def test_missing_file_gets_a_clear_message(tmp_path):
    missing = tmp_path / "nope.yml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.messages == [f"{missing}: cannot read the config file: No such file or directory"]


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(ConfigError) as info:
        parse_config("services:\n  - name: s\n    url: [unclosed\n", NAME)
    [message] = info.value.messages
    assert message.startswith(f"{NAME}:4:1: YAML syntax error: ")
    assert "Traceback" not in message


# --- unquoted scalars as Kong's YAML reader types them -------------------------------------------------------------
# Kong loads a YAML file with lyaml (kong/db/declarative/init.lua:120, `pcall(lyaml.load, contents)`; lyaml 6.2.8,
# kong-latest.rockspec:28), whose default implicit_scalar tries null, octal, decimal, float, bool, inf, nan,
# hexadecimal, binary, sexagesimal and sexfloat in turn, else keeps the text (lyaml lib/lyaml/init.lua:65-78 and
# lib/lyaml/implicit.lua). PyYAML's YAML 1.1 resolvers read several of these differently.


@pytest.mark.parametrize(("text", "value"), [
    ("6e4", 60000.0),  # implicit.float: tonumber of any text with a `.`, `e` or `E` (PyYAML: text, no dot)
    ("1.5E3", 1500.0),  # (PyYAML: text, its exponent unsigned)
    ("1_000.5", 1000.5),  # (the underscores removed first)
    ("08080", 8080),  # implicit.decimal: leading zeros (PyYAML: text, not octal and not decimal)
    ("0755", 0o755),  # implicit.octal, tried first (as PyYAML)
    ("0:30", 30),  # implicit.sexagesimal: base 60, any first digit (PyYAML: text, its first digit must be 1-9)
    ("1:30.5", 90.5),  # implicit.sexfloat
    ("=", "="),  # none of them: text (PyYAML: "could not determine a constructor for the tag ...:value")
    ("0b1", "0b1"),  # implicit.binary wants two digits: text (PyYAML: 1)
    ("2024-01-01", "2024-01-01"),  # no timestamps: text (PyYAML: a date)
    ("'6e4'", "6e4"),  # quoted: text, as in both
])
def test_an_unquoted_scalar_is_typed_as_lyaml_types_it(text, value):
    """lyaml lib/lyaml/implicit.lua at v6.2.8: float is `local r = tonumber((gsub(value, '_', ''))); if r and
    find(value, '[%.eE]') then return r end`, decimal `^([+-]?)_*([0-9][0-9_]*)$`, sexagesimal
    `^([+-]?)([0-9]+:[0-5]?[0-9][:0-9]*)$`. The gateway read `6e4`, `08080` and `0:30` as text and refused `=`."""
    loaded = read_document(f"value: {text}\n", NAME)["value"]
    assert (loaded, type(loaded)) == (value, type(value))


def test_a_number_in_exponent_form_sets_an_integer_field_as_kong_reads_it():
    """`connect_timeout: 6e4` is lyaml's 60000, an integer to Kong's schema (kong/db/schema/init.lua:978-981: an
    integer is a number equal to its floor); the gateway refused it as text ('expected int ..., got "6e4"'). A number
    with a fraction is still no integer."""
    config = validate("services: [{name: s, url: 'http://127.0.0.1:9', connect_timeout: 6e4}]\n")
    assert config.services[0].connect_timeout == 60000
    assert errors("services: [{name: s, url: 'http://127.0.0.1:9', retries: 25e-1}]\n") == [
        "services[0].retries: expected int >= 0 and <= 32767, got 2.5"]


def test_an_octal_number_ending_in_an_underscore_is_refused_as_lyaml_fails_on_it():
    """lyaml's octal and binary hand each character after `_*` to tonumber (`gsub(rest, '_*(.)', ...)`), so a
    trailing `_` is tonumber('_'), nil, and the load fails with a Lua error; PyYAML read `07_` as 7."""
    with pytest.raises(ConfigError) as info:
        parse_config("_comment: 07_\n", NAME)
    assert info.value.messages == [
        f'{NAME}:1:11: YAML error: cannot read "07_" as number: Kong\'s YAML reader (lyaml) fails on a number ending '
        "in _; remove the _, or quote the text"]


# --- a file named *json is JSON --------------------------------------------------------------------------------------
# Kong reads it with cjson, not with its YAML parser (kong/db/declarative/init.lua, unserialize).

JSON_DOC = {"_format_version": "3.0", "services": [{"name": "s", "url": "http://127.0.0.1:9",
                                                  "tags": ["smile-\U0001F600"],
                                                  "routes": [{"name": "r", "paths": ["/"]}]}]}


def json_errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "kong.json")
    return info.value.messages


def test_a_tab_indented_json_file_loads(tmp_path):
    """json.dumps(indent="\\t") and Go's MarshalIndent write tabs, which YAML refuses as indentation."""
    path = tmp_path / "kong.json"
    path.write_text(json.dumps(JSON_DOC, indent="\t", ensure_ascii=False))
    assert [s.name for s in load_config(path).services] == ["s"]


def test_a_json_surrogate_pair_escape_is_one_character(tmp_path):
    """json.dumps writes U+1F600 as "\\ud83d\\ude00", which PyYAML would read as two lone surrogates."""
    path = tmp_path / "kong.json"
    path.write_text(json.dumps(JSON_DOC))
    assert load_config(path).services[0].tags == ["smile-\U0001F600"]


def test_a_json_syntax_error_names_the_line_and_column():
    assert json_errors('{"_format_version": "3.0",\n "services": [}') == [
        "kong.json:2:15: JSON syntax error: Expecting value"]


@pytest.mark.parametrize(("text", "message"), [
    ('{"services": [{"name": "a", "name": "b"}]}',
     'kong.json: services[0]: JSON error: the key "name" is given twice in one object; keys are unique: keep one'),
    ('{"services": [{"name": "a\\ud83d"}]}',
     "kong.json: services[0].name: JSON error: a \\u escape of a lone surrogate is not a character (write the "
     "character, or its surrogate pair)"),
    ('{"services": [{"retries": 1e999}]}', "kong.json: services[0].retries: expected a finite number, got .inf"),
    ("null", "kong.json: the JSON document is null; write {} for a config without services"),
])
def test_json_is_held_to_what_yaml_files_are(text, message):
    """A key twice, a lone surrogate, a number that is not finite: refused as in a YAML file."""
    assert json_errors(text) == [message]


@pytest.mark.parametrize(("text", "message"), [
    ('consumers:\n  - username: "a\\ud800"\n',
     "consumers[0].username: a \\u escape of a surrogate is not a character (write the character itself, or its "
     "\\U escape: \\U0001F600)"),
    ('services:\n  - name: s\n    tags: {"\\udc00": 1}\n',
     "services[0].tags: a key with a \\u escape of a surrogate, which is not a character"),
])
def test_a_yaml_escape_of_a_surrogate_is_refused_at_its_field(text, message):
    """PyYAML reads "\\ud800" as a lone surrogate, which is no character: a consumer's username of one could not be
    encoded for X-Consumer-Username, and check-config and start ended in a traceback."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, NAME)
    assert info.value.messages == [f"{NAME}: {message}"]


@pytest.mark.parametrize("depth", [100, 100_000])
def test_json_nested_too_deep_is_refused(depth):
    """Past MAX_DEPTH levels, as YAML; far past it, json's own recursion limit is reported the same way."""
    [message] = json_errors('{"a": ' + "[" * depth + "]" * depth + "}")
    assert message.startswith("kong.json: ") and message.endswith("JSON error: nested more than 64 levels deep")


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "a list"), ("hello\n", "a string"), ("42\n", "a number")])
def test_non_mapping_document_gets_a_clear_message(text, kind):
    with pytest.raises(ConfigError) as info:
        parse_config(text, NAME)
    assert info.value.messages == [f"{NAME}: the document must be a mapping (services:, routes:, ...), got {kind}"]


def test_section_that_is_not_a_list_is_an_error():
    assert errors("services: {name: s}") == ["services: expected a list, got a mapping"]


def test_unknown_plugin_name_is_an_error():
    [message] = errors(SERVICE + "plugins: [{name: rate-limiter, service: s}]\n")
    assert message.startswith("plugins[0].name: plugin 'rate-limiter' is not supported; supported: ")
    assert "rate-limiting" in message


@pytest.mark.parametrize(("name", "why"), [("oauth2", "Kong's database"), ("pre-function", "Lua code"),
                                           ("grpc-web", "HTTP/2"), ("ai-proxy", "LLM providers")])
def test_a_kong_plugin_not_built_is_refused_saying_why(name, why):
    [message] = errors(SERVICE + f"plugins: [{{name: {name}, service: s}}]\n")
    assert message.startswith(f"plugins[0].name: plugin '{name}' is not supported (it ")
    assert why in message and "; supported: acl, " in message


def test_every_bundled_kong_plugin_is_built_or_refused_with_a_reason():
    from gateway.policies import REGISTRY
    from gateway.runtime import NOT_BUILT
    bundled = {"jwt", "acl", "correlation-id", "cors", "oauth2", "tcp-log", "udp-log", "file-log", "http-log",
               "key-auth", "hmac-auth", "basic-auth", "ip-restriction", "request-transformer", "response-transformer",
               "request-size-limiting", "rate-limiting", "response-ratelimiting", "syslog", "loggly", "datadog",
               "ldap-auth", "statsd", "bot-detection", "aws-lambda", "request-termination", "prometheus",
               "proxy-cache", "session", "acme", "grpc-gateway", "grpc-web", "pre-function", "post-function",
               "azure-functions", "zipkin", "opentelemetry", "ai-proxy", "ai-prompt-decorator", "ai-prompt-template",
               "ai-prompt-guard", "ai-request-transformer", "ai-response-transformer", "standard-webhooks",
               "redirect"}  # Kong 3.x's kong/constants.lua
    assert bundled - set(REGISTRY) - set(NOT_BUILT) == set()
    assert set(REGISTRY) & set(NOT_BUILT) == set()


def test_rate_limiting_without_limits_is_an_error():
    assert errors(SERVICE + "plugins: [{name: rate-limiting, config: {policy: local}}]\n") == [
        "plugins[0].config: set at least one of second, minute, hour, day, month, year"]


def test_request_size_limiting_with_an_unknown_unit_is_an_error():
    assert errors(SERVICE + "plugins: [{name: request-size-limiting, config: {size_unit: tb}}]\n") == [
        'plugins[0].config.size_unit: expected one of "bytes", "kilobytes", "megabytes", got "tb"']


def test_unknown_plugin_config_field_is_an_error():
    [message] = errors(SERVICE + "plugins: [{name: request-size-limiting, config: {max_size: 5}}]\n")
    assert message == ("plugins[0].config.max_size is not supported by the gateway's request-size-limiting plugin "
                       "(it takes: allowed_payload_size, require_content_length, size_unit)")


def test_plugin_nested_under_a_service_names_its_nested_path():
    [message] = errors("services: [{name: s, url: 'http://a:1', plugins: [{name: rate-limiting, config: "
                       "{minute: 0}}]}]")
    assert message == "services[0].plugins[0].config.minute: expected number > 0 and <= 9007199254740992, got 0"


def test_route_referencing_a_missing_service_is_an_error():
    assert errors(SERVICE + "routes: [{name: r, service: nope, paths: [/x]}]\n") == [
        "routes[0].service: no service with id or name 'nope'"]


def test_plugin_referencing_a_missing_service_is_an_error():
    assert errors(SERVICE + "plugins: [{name: request-size-limiting, service: nope}]\n") == [
        "plugins[0].service: no service with id or name 'nope'"]


def test_target_referencing_a_missing_upstream_is_an_error():
    assert errors("targets: [{target: '10.0.0.1:80', upstream: nope}]") == [
        "targets[0].upstream: no upstream with id or name 'nope'"]


def test_a_top_level_target_without_an_upstream_is_refused_as_a_required_field():
    """A target's upstream is required (kong/db/schema/entities/targets.lua:31, `required = true`): Kong says
    "required field missing" (kong/db/schema/init.lua:100). The gateway said "no upstream with id or name None", as
    if an upstream named None had been looked for."""
    assert errors("upstreams: [{name: u}]\ntargets: [{target: '127.0.0.1:9'}]\n") == [
        "targets[0].upstream: required field is missing; name the upstream it belongs to (its name or id), or list "
        "the target under that upstream's targets"]


def test_duplicate_service_names_are_an_error():
    assert errors("services: [{name: s, url: 'http://a:1'}, {name: s, url: 'http://b:1'}]") == [
        "services[1].name: 's' is already used by services[0]"]


def test_duplicate_upstream_and_route_names_are_errors():
    messages = errors("services: [{name: s, url: 'http://a:1', routes: [{name: r, paths: [/a]}, "
                      "{name: r, paths: [/b]}]}]\nupstreams: [{name: u}, {name: u}]\n")
    assert "services[0].routes[1].name: 'r' is already used by services[0].routes[0]" in messages
    assert "upstreams[1].name: 'u' is already used by upstreams[0]" in messages


def test_bad_regex_path_is_an_error():
    [message] = errors("services: [{name: s, url: 'http://a:1', routes: [{paths: ['~/v(\\d+']}]}]")
    assert message.startswith("services[0].routes[0].paths[0]: invalid regex: '/v(\\d+' (PCRE returned: ")


def test_path_without_slash_or_tilde_is_an_error():
    assert errors("services: [{name: s, url: 'http://a:1', routes: [{paths: [api]}]}]") == [
        'services[0].routes[0].paths[0]: a path starts with "/" (prefix) or "~" (regex), got "api"']


def test_route_without_any_matching_field_is_an_error():
    assert errors("services: [{name: s, url: 'http://a:1', routes: [{name: r}]}]") == [
        "services[0].routes[0]: set at least one of paths, methods, hosts, headers, query, snis"]


def test_lower_case_method_is_an_error():
    assert errors("services: [{name: s, url: 'http://a:1', routes: [{methods: [get]}]}]") == [
        'services[0].routes[0].methods[0]: expected an upper-case HTTP method, got "get"']


def test_unknown_algorithm_is_an_error():
    [message] = errors("upstreams: [{name: u, algorithm: fastest}]")
    assert message.startswith("upstreams[0].algorithm: unknown algorithm 'fastest'; expected one of: round-robin")


def test_header_hashing_without_a_header_name_is_an_error():
    assert errors("upstreams: [{name: u, algorithm: consistent-hashing, hash_on: header}]") == [
        "upstreams[0].hash_on is header: set upstreams[0].hash_on_header"]


def test_bad_target_address_is_an_error():
    assert errors("upstreams: [{name: u, targets: [{target: '10.0.0.1:99999'}]}]") == [
        'upstreams[0].targets[0].target: expected "host", "host:port", "[IPv6]:port" or an IP address, '
        'got "10.0.0.1:99999"']


def test_non_http_service_url_is_an_error():
    assert errors("services: [{name: s, url: 'ftp://a:1'}]") == [
        'services[0].url: ftp:// is not supported by the gateway (http:// and https:// upstreams only), got '
        '"ftp://a:1"']


def test_a_service_urls_host_replaces_the_host_given_besides_it():
    """kong/db/schema/entities/services.lua: url is a shorthand field, whose host, port and path replace the
    fields given with it."""
    runtime = compile_config(parse_config("services: [{name: s, url: 'http://a:1', host: b}]"))
    (target,) = runtime.services["s"].group.targets
    assert (target.host, target.port) == ("a", 1)


def test_bad_listen_address_is_an_error():
    assert errors("gateway: {listen: 'localhost'}") == [
        'gateway.listen: expected "host:port" or "host:port ssl" (e.g. "127.0.0.1:8443 ssl"), got "localhost"']


def test_config_error_is_raised_whole_never_half_applied():
    """Several problems in one file: one exception carrying every message, and no Config is returned."""
    with pytest.raises(ConfigError) as info:
        validate("services: [{name: s, url: 'http://a:1', routes: [{paths: [x]}]}]\n"
                 "routes: [{service: nope, paths: [/y]}]\n")
    assert len(info.value.messages) == 2
    assert str(info.value) == "\n".join(info.value.messages)


def test_mcp_false_with_mcp_tools_is_an_error_naming_both_fields():
    doc = """
services:
  - name: s
    url: http://127.0.0.1:9
    routes:
      - {name: r, paths: [/mcp], mcp: false, mcp_tools: [search]}
"""
    with pytest.raises(ConfigError) as e:
        parse_config(doc, "c.yml")
    assert e.value.messages == ["c.yml: services[0].routes[0].mcp is false but services[0].routes[0].mcp_tools is "
                                "set: routing on MCP methods or tools needs the MCP layer (remove mcp: false)"]


# --- the gateway's own files and sockets (what `gateway start` would refuse, refused by the config check) -----------


def test_a_tcp_admin_endpoint_is_refused_by_the_config_check():
    """kong/cmd/check.lua:6 runs conf_loader, the validation kong/cmd/start.lua:50 runs: what start refuses of a
    setting, check refuses. A tcp:// admin endpoint needs CURVE keys, gateway.admin_curve (README, CLI; the key files
    themselves: tests/test_admin_curve.py); `gateway start` refused it at bind time while check-config said OK."""
    assert errors("gateway: {admin: 'tcp://127.0.0.1:1'}\n" + SERVICE) == [
        'gateway.admin: "tcp://127.0.0.1:1" is a tcp endpoint, which needs CURVE keys to keep others off the admin '
        "channel: set gateway.admin_curve (secret_key_file, authorized_keys; `gateway curve-keys DIR NAME` writes key "
        "files), or use an ipc:// path (e.g. ipc://run/admin.sock)"]


@pytest.mark.parametrize(("key", "value", "example"), [("pid_file", "", "run/gateway.pid"),
                                                       ("log_file", "", "run/gateway.log"),
                                                       ("pid_file", "run/", "run/gateway.pid")])
def test_a_pid_or_log_file_that_names_no_file_is_refused(key, value, example):
    """nginx release-1.27.1 src/core/ngx_cycle.c:320-325: `nginx -t` creates the pid file (ngx_create_pidfile,
    :1035-1043) and fails when it cannot be opened. An empty pid_file passed check-config, and start then died with
    a traceback writing it (os.replace(tmp, ""))."""
    assert errors(f"gateway: {{{key}: '{value}'}}\n" + SERVICE) == [
        f'gateway.{key}: expected the path of a file (e.g. {example}), got "{value}"']


def test_a_bus_at_the_admin_sockets_path_is_refused_naming_both_settings():
    """Start bound the admin socket there, then found the bus's path in use and blamed "gateway pid N", its own
    root (kong/cmd/start.lua:56-57 says "already running" of a process that runs). The fault is the two settings'
    collision."""
    assert errors("gateway: {admin: 'ipc:///tmp/gw/run/admin.sock', bus: 'ipc:///tmp/gw/run/admin.sock'}\n"
                  + SERVICE) == [
        "gateway.bus: /tmp/gw/run/admin.sock is also the path of gateway.admin; give each its own path"]


@pytest.mark.parametrize(("name", "what"), [("gateway.lock", "lock file"),
                                            ("config.current.yaml", "copy of the current config"),
                                            ("config.gen2.yaml", "config snapshot of a generation"),
                                            ("keeper.state.json", "state keeper's state file"),
                                            ("metrics", "metrics directory")])
def test_a_pid_file_named_as_a_file_of_its_run_directory_is_refused(name, what):
    """kong/cmd/start.lua:56-57: a second start in a prefix in use is refused. A pid file renamed over the run
    directory's lock (gateway.node.files) left the flock on an unlinked inode, so a second gateway whose pid file was
    in that directory took the run directory (its config copies replacing the first's) and its pid file."""
    assert errors(f"gateway: {{pid_file: /tmp/gw/run/{name}}}\n" + SERVICE) == [
        f"gateway.pid_file: /tmp/gw/run/{name} is the run directory's {what}, which the gateway writes (the run "
        "directory is gateway.pid_file's); choose another name"]


def test_a_log_file_that_is_the_pid_file_is_refused_naming_both_settings():
    """The log appended to the pid file: `gateway stop` then read no pid in it, took it for stale and removed it."""
    assert errors("gateway: {pid_file: /tmp/gw/run/gw.pid, log_file: /tmp/gw/run/gw.pid}\n" + SERVICE) == [
        "gateway.log_file: /tmp/gw/run/gw.pid is also the path of gateway.pid_file; give each its own path"]


def test_an_access_or_audit_log_that_is_the_pid_file_is_refused_naming_both_settings(tmp_path):
    """The workers' access lines (or ai-mcp-proxy's audit lines) appended to the pid file would leave `gateway stop`
    no pid to read; access_log: true is access.log in the run directory, so a pid_file named so collides with it."""
    pid, log = tmp_path / "gw.pid", tmp_path / "access.log"
    assert errors(f"gateway: {{pid_file: {pid}, access_log: {pid}}}\n" + SERVICE) == [
        f"gateway.access_log: {pid} is also the path of gateway.pid_file; give each its own path"]
    assert errors(f"gateway: {{pid_file: {log}, access_log: true}}\n" + SERVICE) == [
        f"gateway.access_log: {log} is also the path of gateway.pid_file; give each its own path"]
    assert errors(f"gateway: {{pid_file: {pid}, mcp: {{audit_log: {pid}}}}}\n" + SERVICE) == [
        f"gateway.mcp.audit_log: {pid} is also the path of gateway.pid_file; give each its own path"]


def test_a_session_key_file_that_is_the_log_file_is_refused_naming_both_settings(tmp_path):
    """Every process reads the whole text of gateway.mcp.session_key_file as its HMAC key (gateway/mcp/keys.py): the
    log's text at the moment each reads it would be a key per worker and per generation, so sessions would 404 on
    the next worker or after a reload. A file of the gateway's is a file of its own, as pid_file and log_file are."""
    run = tmp_path / "run"
    assert errors(f"gateway: {{pid_file: {run}/gateway.pid, log_file: {run}/gateway.log, "
                  f"mcp: {{session_key_file: {run}/gateway.log}}}}\n" + SERVICE) == [
        f"gateway.mcp.session_key_file: {run}/gateway.log is also the path of gateway.log_file; give each its own "
        "path"]


def test_the_default_session_key_file_named_explicitly_is_accepted(tmp_path):
    """run/mcp-session.key is the run directory's default key file: naming it is naming the default, not another
    file of the run directory's."""
    validate(f"gateway: {{pid_file: {tmp_path}/gateway.pid, mcp: {{session_key_file: {tmp_path}/mcp-session.key}}}}\n"
             + SERVICE)


def test_an_existing_session_key_file_too_short_to_be_the_key_is_refused(tmp_path):
    """A key file there whose key is unusable (10 characters; at least 16 are needed) gave every worker, at every
    reload, a random key of its own with only a warning: no session outlived a worker change. nginx refuses a key
    file it cannot use at `nginx -t` and start (release-1.27.1 src/event/ngx_event_openssl.c:4491-4494,
    ssl_session_ticket_key: `"%V" must be 48 or 80 bytes`); so does check-config, compiling the config."""
    key = tmp_path / "mcp-session.key"
    key.write_text("0123456789\n")
    assert errors(f"gateway: {{pid_file: {tmp_path}/gateway.pid}}\n" + SERVICE) == [
        f"gateway.mcp.session_key_file: {key}: the key is 10 characters, fewer than 16; a session key file holds one "
        "key of at least 16 ASCII characters (the gateway writes 64 hex digits when it creates one): write such a "
        "key, or remove the file for the gateway to create one, or set gateway.mcp.session_keys"]


def test_a_session_key_file_that_holds_a_key_or_is_not_there_yet_is_accepted(tmp_path):
    """The first process that needs the key creates a missing file (gateway/mcp/keys.py); one that holds a key of
    at least 16 characters is the key. Neither is created nor changed by check-config."""
    validate(f"gateway: {{pid_file: {tmp_path}/gateway.pid}}\n" + SERVICE)
    assert not (tmp_path / "mcp-session.key").exists()
    (tmp_path / "mcp-session.key").write_text("0123456789abcdef\n")
    validate(f"gateway: {{pid_file: {tmp_path}/gateway.pid}}\n" + SERVICE)
