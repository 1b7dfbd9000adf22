"""Values at the edges of Kong 3.9.3's schemas, taken or refused as Kong takes or refuses them.

Python's `$` also matches just before a final "\\n" (re.match(r"^[A-Z]+$") takes "GET\\n"); Lua's `$` (Kong's
patterns) does not, and Kong's token checks refuse any control character. So every whole-value check is a fullmatch
(or ends in `\\Z`), and a value ending in a line break (a YAML block scalar `|`, a template) is refused where Kong
refuses it. A service url's scheme is its protocol as written. Port 0 is a port (typedefs.port: 0 to 65535),
its connection refused at request time. Load/compile tests, and two that connect to port 0."""

from __future__ import annotations

import textwrap

import pytest
import trio
from backends import request, service

from gateway.config import parse_config
from gateway.config.errors import ConfigError
from gateway.discovery.service import target_address
from gateway.health.checker import upstreams_from_config
from gateway.health.machine import Event
from gateway.health.probe import probe
from gateway.runtime import compile_config
from gateway.telemetry.health_metrics import _configured_weights


def _errors(text: str) -> list[str]:
    """The loader's messages for a kong.yml (without the file name); [] when it loads."""
    try:
        parse_config(textwrap.dedent(text), "k.yml")
    except ConfigError as e:
        return [m.removeprefix("k.yml: ") for m in e.messages]
    return []


def _compile_errors(text: str) -> list[str]:
    """The messages of loading and compiling a kong.yml (plugin configs are checked when compiled); [] when it does."""
    try:
        compile_config(parse_config(textwrap.dedent(text), "k.yml"), "k.yml")
    except ConfigError as e:
        return [m.removeprefix("k.yml: ").removeprefix("<config>: ") for m in e.messages]
    return []


# --- a final line break -------------------------------------------------------------------------------------------


def test_a_route_method_ending_in_a_line_break_is_refused():
    """kong/db/schema/typedefs.lua:247-249: http_method is `match = "^%u+$"`, a Lua pattern (init.lua:256-262):
    "GET\\n" has a character after the letters."""
    errors = _errors("""
        _format_version: "3.0"
        services:
        - name: s
          url: http://127.0.0.1:9
          routes:
          - name: r
            methods: ["GET\\n"]
        """)
    assert errors == ['services[0].routes[0].methods[0]: expected an upper-case HTTP method, got "GET\\n"']


def test_a_hash_on_cookie_ending_in_a_line_break_is_refused():
    """kong/db/schema/entities/upstreams.lua:193: hash_on_cookie is typedefs.cookie_name, validate_http_token
    (kong/tools/http.lua:241-260), which refuses any control character. Taken, the gateway would look for a cookie
    no client can send and set a new one on every request: nothing would stick."""
    errors = _errors("""
        _format_version: "3.0"
        upstreams:
        - name: up.test
          hash_on: cookie
          hash_on_cookie: "c\\n"
        """)
    assert errors == ["upstreams[0].hash_on_cookie: contains one or more invalid characters. ASCII control "
                      "characters (0-31;127), space, tab and the characters ()<>@,;:\\\"/?={}[] are not allowed."]


@pytest.mark.parametrize("target", ["a.test:80\\n", "10.0.0.1:80\\n"])
def test_a_target_ending_in_a_line_break_is_refused(target: str):
    """kong/tools/ip.lua:121-131, 224-236: hostname_type makes both names ("\\n" is no digit or dot), and
    check_hostname's `:(%d+)$` finds no port before the line break, so the whole text must be
    `^[%d%a%-%.%_]+$`: "Invalid target (...)" (kong/db/schema/entities/targets.lua:6-17). Taken, the gateway
    proxied to a.test:80."""
    errors = _errors(f"""
        _format_version: "3.0"
        upstreams:
        - name: up.test
          targets:
          - target: "{target}"
        """)
    assert errors == [f"upstreams[0].targets[0].target: Invalid target ('{target}'); not a valid hostname or ip "
                      "address"]


def test_a_route_host_ending_in_a_line_break_is_refused():
    """kong/db/schema/typedefs.lua:495, 575-589: hosts' validate_host_with_wildcards -> normalize_ip, as for a
    target: "invalid hostname"."""
    errors = _errors("""
        _format_version: "3.0"
        services:
        - name: s
          url: http://127.0.0.1:9
          routes:
          - name: r
            hosts: ["a.test:80\\n"]
        """)
    assert errors == ["services[0].routes[0].hosts[0]: invalid hostname: a.test:80\\n"]


def test_a_service_host_ending_in_a_line_break_is_an_invalid_value_not_one_with_a_port():
    """kong/db/schema/typedefs.lua:23-36 (typedefs.host): normalize_ip fails with "invalid hostname", not "invalid
    port number", so the message is "invalid value: ..." (the gateway said "must not have a port")."""
    errors = _errors("""
        _format_version: "3.0"
        services:
        - name: s
          host: "a.test:80\\n"
        """)
    assert errors == ["services[0].host: invalid value: a.test:80\\n"]


def test_a_redis_host_ending_in_a_line_break_is_an_invalid_value_not_one_with_a_port():
    """rate-limiting's redis.host is typedefs.host (kong/tools/redis/schema.lua): as for a service's host."""
    errors = _compile_errors("""
        _format_version: "3.0"
        plugins:
        - name: rate-limiting
          config: {minute: 1, policy: redis, redis: {host: "r.test:6379\\n"}}
        """)
    assert errors == ["plugins[0].config.redis.host: invalid value: r.test:6379\\n"]


def test_real_ip_header_ending_in_a_line_break_is_stripped_as_kong_conf_reads_it():
    """kong/conf_loader/parse.lua:70-73: parse_value strips every value of kong.conf (a KONG_ variable's too)
    before its checks, so "X-Forwarded-For\\n" is X-Forwarded-For: taken, as Kong takes it."""
    config = parse_config(textwrap.dedent("""
        _format_version: "3.0"
        gateway:
          real_ip_header: "X-Forwarded-For\\n"
        """), "k.yml")
    assert config.gateway.real_ip_header == "X-Forwarded-For"


@pytest.mark.parametrize(("plugin", "field"), [
    ("{name: correlation-id, config: {header_name: \"X-Id\\n\"}}", "header_name"),
    ("{name: session, config: {secret: abcdefabcdefabcdef, cookie_name: \"s\\n\"}}", "cookie_name"),
    ("{name: session, config: {secret: abcdefabcdefabcdef, cookie_path: \"/\\n\"}}", "cookie_path"),
    ("{name: basic-auth, config: {realm: \"svc\\n\"}}", "realm"),
    ("{name: redirect, config: {location: \"http://a.test/\\n\"}}", "location"),
    ("{name: ai-mcp-oauth2, config: {resource: \"https://mcp.test/\", authorization_servers: [\"https://as.test/\"], "
     "jwks_endpoint: \"https://as.test/jwks\", claim_to_header: [{claim: sub, header: \"X-Sub\\n\"}]}}",
     "claim_to_header[0].header"),
], ids=["correlation-id", "session-cookie_name", "session-cookie_path", "basic-auth-realm", "redirect",
        "ai-mcp-oauth2"])
def test_a_plugin_value_sent_in_a_header_refuses_a_final_line_break(plugin: str, field: str):
    """The gateway's own patterns for what it writes into a header as it is (a header or cookie name, a cookie
    attribute, a realm, a Location): a final line break would end the header line, so it is refused like any
    other control character."""
    errors = _compile_errors(f"""
        _format_version: "3.0"
        plugins:
        - {plugin}
        """)
    assert len(errors) == 1 and errors[0].startswith(f"plugins[0].config.{field}: expected "), errors


def test_an_mcp_session_key_id_ending_in_a_line_break_is_refused():
    """gateway.mcp.session_keys[].id: letters, digits, `_` and `-` (it is written into every session id)."""
    errors = _errors("""
        _format_version: "3.0"
        gateway:
          mcp:
            session_keys: [{id: "k1\\n", secret: "0123456789abcdef0123"}]
        """)
    assert errors == ['gateway.mcp.session_keys[0].id: expected string matching ^[A-Za-z0-9_-]{1,32}$, got "k1\\n"']


def test_a_registration_advertise_ending_in_a_line_break_is_refused():
    """gateway.registration.advertise: the "host:port" the registry hands out, as it is."""
    errors = _errors("""
        _format_version: "3.0"
        gateway:
          registration: {backend: etcd, advertise: "10.0.0.5:8000\\n"}
        """)
    assert errors == ['gateway.registration: advertise: expected "host:port", got "10.0.0.5:8000\\n"']


def test_an_expect_status_class_ending_in_a_line_break_is_refused():
    """upstreams[].healthchecks.check.expect_status: a code or a class ("2xx") as written."""
    errors = _errors("""
        _format_version: "3.0"
        upstreams:
        - name: up.test
          healthchecks: {check: {expect_status: "2xx\\n"}}
        """)
    assert errors == ['upstreams[0].healthchecks.check: expect_status: expected a status code (200) or class '
                      '("2xx"), got \'2xx\\n\'']


# --- a service url's scheme and the characters urlsplit drops ----------------------------------------------------


@pytest.mark.parametrize("scheme", ["HTTP", "Https"])
def test_a_service_url_scheme_not_in_lower_case_is_refused(scheme: str):
    """kong/db/schema/entities/services.lua:75-104: the url shorthand's protocol is socket.url's scheme as written
    (its parse keeps the case), and typedefs.protocol is one_of constants.PROTOCOLS, all lower case. urlsplit
    lower-cases it, so the gateway took it."""
    errors = _errors(f"""
        _format_version: "3.0"
        services:
        - name: s
          url: {scheme}://a.test/
        """)
    assert errors == [f'services[0].url: expected one of "http", "https", got "{scheme}"']


@pytest.mark.parametrize("url", ["http://a.te\\nst/", "http://a.test/\\n", "http://a.test\\t/", "\\x20http://a.test/"])
def test_a_service_url_with_what_urlsplit_drops_is_refused(url: str):
    """socket.url's parse (Kong's, services.lua:82) keeps a line break or tab, and a leading space: in the host or
    the path Kong's typedefs refuse them, and before the scheme no scheme is found. urlsplit drops them (a tab or
    line break anywhere, a leading space or C0 control), so the gateway proxied `http://a.te\\nst/` to a.test."""
    errors = _errors(f"""
        _format_version: "3.0"
        services:
        - name: s
          url: "{url}"
        """)
    assert len(errors) == 1 and errors[0].startswith("services[0].url: ") and "tab or line break" in errors[0], errors


def test_a_line_break_in_a_service_url_query_is_dropped_with_the_query():
    """services.lua:95-104: the shorthand keeps no query (nor fragment), so what it holds does not matter."""
    config = parse_config(textwrap.dedent("""
        _format_version: "3.0"
        services:
        - name: s
          url: "http://a.test/p?x=1\\n"
        """), "k.yml")
    assert config.services[0].protocol == "http"


# --- port 0 --------------------------------------------------------------------------------------------------------

_PORT_0 = """
    _format_version: "3.0"
    services:
    - {name: by-host, host: 127.0.0.1, port: 0}
    - {name: by-url, url: "http://127.0.0.1:0/"}
    - {name: balanced, host: up.test}
    upstreams:
    - name: up.test
      healthchecks: {active: {type: tcp, healthy: {interval: 5}, unhealthy: {interval: 5}}}
      targets: [{target: "127.0.0.1:0"}, {target: "a.test:0"}, {target: "[::1]:0"}]
"""


def test_a_service_port_0_is_taken_and_kept():
    """kong/db/schema/typedefs.lua:311-315: typedefs.port is `between = { 0, 65535 }` (services.lua:38), and the url
    shorthand keeps a url's port 0 (services.lua:95-102, `tonumber(parsed_url.port)`: 0 is true in Lua). The
    gateway refused it, and without a port the runtime would have taken 80 for it."""
    config = parse_config(textwrap.dedent(_PORT_0), "k.yml")
    runtime = compile_config(config, "k.yml")
    assert [(t.host, t.port) for name in ("by-host", "by-url") for t in runtime.services[name].group.targets] == [
        ("127.0.0.1", 0), ("127.0.0.1", 0)]


def test_a_target_port_0_is_taken_and_kept_by_the_balancer_health_checks_and_metrics():
    """kong/tools/ip.lua:136-158, 224-236: normalize_ip takes port 0 (only > 65535 is "invalid port number"), and
    kong/db/dao/targets.lua:31-37 format_target keeps it (`p.port or DEFAULT_PORT`: 0 is true in Lua). The gateway
    refused it; its balancer, health checks and metrics must each name the target with port 0, not 8000."""
    config = parse_config(textwrap.dedent(_PORT_0), "k.yml")
    runtime = compile_config(config, "k.yml")
    expected = [("127.0.0.1", 0), ("a.test", 0), ("::1", 0)]
    assert [(t.host, t.port) for t in runtime.services["balanced"].group.targets] == expected
    assert [target_address(t.target) for t in config.targets] == expected
    assert sorted((t.host, t.port) for t in upstreams_from_config(config)[0].targets) == sorted(expected)
    assert sorted(_configured_weights(config)) == ["up.test|127.0.0.1:0", "up.test|[::1]:0", "up.test|a.test:0"]


def test_a_listen_port_0_is_still_refused():
    """nginx 1.27.1 src/core/ngx_inet.c:852-856: a listen port below 1 is "invalid port"."""
    assert _errors("""
        _format_version: "3.0"
        gateway: {listen: ["127.0.0.1:0"]}
        """) == ['gateway.listen[0]: expected "host:port" or "host:port ssl" (e.g. "127.0.0.1:8443 ssl"), got '
                 '"127.0.0.1:0"']


async def test_an_active_health_check_of_a_port_0_target_is_a_tcp_failure():
    """lua-resty-healthcheck: a connect that fails is a TCP failure; connecting to port 0 is refused."""
    config = parse_config(textwrap.dedent(_PORT_0), "k.yml")
    checks = upstreams_from_config(config)[0]
    with trio.fail_after(5):
        assert await probe("127.0.0.1", 0, checks.policy) is Event.TCP_FAILURE


async def test_a_request_to_a_port_0_service_gets_502_after_its_retries(gateway):
    """The connection to port 0 is refused, as nginx's is: Kong tries `retries` more times, then answers 502
    (kong/runloop/balancer; nginx's proxy_next_upstream error). The worker keeps serving."""
    port = await gateway({"_format_version": "3.0", "services": [service("zero", "http://127.0.0.1:0", retries=2)]})
    with trio.fail_after(10):
        replies = [await request(port, "GET", "/x") for _ in range(2)]
    assert [r.status for r in replies] == [502, 502]
