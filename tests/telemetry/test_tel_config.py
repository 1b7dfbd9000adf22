"""What check-config accepts and refuses for the observability plugins and gateway.access_log: Kong's keys and
defaults, and a message naming the field for anything the gateway does not do."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.runtime import compile_config
from gateway.telemetry.service import access_log_path

SERVICE = "services: [{name: s, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/]}]}]\n"
OTLP = "traces_endpoint: 'http://127.0.0.1:4318/v1/traces'"


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(SERVICE + text, "t.yml"), "t.yml")
    return [m.removeprefix("t.yml: ") for m in info.value.messages]


def runtime(text: str):  # noqa: ANN201
    return compile_config(parse_config(SERVICE + text, "t.yml"), "t.yml")


def plugin(text: str):  # noqa: ANN201
    """The one policy object a global plugin builds."""
    (policy,) = runtime(text).global_loggers
    return policy


def test_prometheus_defaults_are_kongs_every_family_off():
    p = plugin("plugins: [{name: prometheus}]")
    assert (p.status, p.latency, p.bandwidth, p.per_consumer) == (False, False, False, False)


def test_prometheus_ai_and_wasm_metrics_are_refused():
    assert errors("plugins: [{name: prometheus, config: {ai_metrics: true}}]") == [
        "plugins[0].config.ai_metrics: the gateway has no AI plugins, so there are no AI metrics to collect; "
        "remove it (or set it to false)"]
    assert "wasm_metrics" in errors("plugins: [{name: prometheus, config: {wasm_metrics: true}}]")[0]


def test_file_log_needs_a_path_and_runs_no_lua():
    assert "path" in errors("plugins: [{name: file-log}]")[0]
    assert errors("plugins: [{name: file-log, config: {path: /tmp/x.log, custom_fields_by_lua: {a: 'return 1'}}}]") \
        == ["plugins[0].config.custom_fields_by_lua: the gateway runs no Lua; remove it"]
    assert "path" in errors("plugins: [{name: file-log, config: {path: '/tmp/*.log'}}]")[0]


def test_http_log_keys_as_kong():
    p = plugin("plugins: [{name: http-log, config: {http_endpoint: 'http://127.0.0.1:9/', queue_size: 7, "
               "flush_timeout: 3}}]")
    assert p.queue.config.max_batch_size == 7 and p.queue.config.max_coalescing_delay == 3  # Kong's old names
    assert errors("plugins: [{name: http-log, config: {http_endpoint: 'http://h/', headers: {Host: x}}}]") == [
        "plugins[0].config.headers: cannot contain 'Host' header"]
    assert "user info" in errors("plugins: [{name: http-log, config: {http_endpoint: 'http://u:p@h/', "
                                 "headers: {Authorization: x}}}]")[0]
    assert "http_endpoint" in errors("plugins: [{name: http-log, config: {http_endpoint: 'ftp://h/'}}]")[0]
    assert "method" in errors("plugins: [{name: http-log, config: {http_endpoint: 'http://h/', method: GET}}]")[0]
    assert "max_batch_size" in errors("plugins: [{name: http-log, config: {http_endpoint: 'http://h/', "
                                      "queue: {max_batch_size: 0}}}]")[0]


def test_opentelemetry_defaults_and_the_deprecated_endpoint_name():
    p = plugin(f"plugins: [{{name: opentelemetry, config: {{{OTLP}}}}}]")
    assert p.rate == 0.01 and p.queue.config.max_batch_size == 200  # kong.conf's sampling rate, Kong's batch
    old = plugin("plugins: [{name: opentelemetry, config: {endpoint: 'http://127.0.0.1:4318/v1/traces', "
                 "batch_span_count: 50}}]")
    assert old.sender.endpoint.port == 4318 and old.queue.config.max_batch_size == 50


def test_opentelemetry_refuses_what_it_does_not_do():
    assert errors("plugins: [{name: opentelemetry}]") == [
        "plugins[0].config.traces_endpoint: required (at least one of traces_endpoint and logs_endpoint, and the "
        "gateway exports traces only)"]
    assert "logs_endpoint" in errors(f"plugins: [{{name: opentelemetry, config: {{{OTLP}, "
                                     "logs_endpoint: 'http://h/v1/logs'}}]")[0]
    # Kong's other trace header formats are read and written (gateway.telemetry.propagation)
    runtime(f"plugins: [{{name: opentelemetry, config: {{{OTLP}, header_type: datadog}}}}]")
    runtime(f"plugins: [{{name: opentelemetry, config: {{{OTLP}, "
            f"propagation: {{inject: [w3c, ot], default_format: w3c}}}}}}]")
    assert "sampling_rate" in errors(f"plugins: [{{name: opentelemetry, config: {{{OTLP}, sampling_rate: 2}}}}]")[0]


def test_access_log_true_is_beside_the_pid_file_and_a_string_is_a_path(tmp_path):
    config = parse_config(SERVICE + f"gateway: {{access_log: true, pid_file: {tmp_path}/run/gw.pid}}", "t.yml")
    assert access_log_path(config) == f"{tmp_path}/run/access.log"
    config = parse_config(SERVICE + "gateway: {access_log: /var/log/gw.json}", "t.yml")
    assert access_log_path(config) == "/var/log/gw.json"
    assert access_log_path(parse_config(SERVICE, "t.yml")) is None


def test_log_plugins_follow_kongs_scoping_and_priority():
    rt = runtime("plugins: [{name: file-log, config: {path: /tmp/a.log}}, {name: prometheus, route: r}, "
                 f"{{name: opentelemetry, config: {{{OTLP}}}}}]")
    route = rt.router.match(b"GET", b"/", None, []).payload
    names = [p.name for p in rt.global_loggers]
    assert names == ["opentelemetry", "file-log"]  # Kong's priorities: 14, 9; prometheus is the route's
    assert [p.name for p in route.loggers] == ["opentelemetry", "prometheus", "file-log"]
    assert [p.name for p in route.policies] == ["opentelemetry"]  # the only one with an access step
