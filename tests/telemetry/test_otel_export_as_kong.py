"""The opentelemetry plugin's export to the collector and its headers, as Kong's
kong/plugins/opentelemetry/{schema,utils,traces}.lua make them."""

from __future__ import annotations

import json
import re

import msgspec
import pytest
import trio

from gateway.config import ConfigError, parse_config
from gateway.policies.opentelemetry.handler import OpenTelemetry
from gateway.policies.opentelemetry.schema import OpenTelemetryConfig
from gateway.runtime import compile_config
from gateway.telemetry import otlp
from gateway.telemetry.batch import Queues
from gateway.telemetry.tracing import TracingSettings


def _compile(plugin_config: dict) -> None:
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}],
           "plugins": [{"name": "opentelemetry", "config": plugin_config}]}
    compile_config(parse_config(json.dumps(doc)))


class _Collector:
    """A collector on 127.0.0.1 answering every request with `answer`, keeping the raw requests."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.port = 0
        self.requests: list[bytes] = []

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._one, listeners)

    async def _one(self, stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            while b"\r\n\r\n" not in buffer:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buffer += chunk
            head, _, rest = buffer.partition(b"\r\n\r\n")
            m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
            length = int(m.group(1)) if m else 0
            while len(rest) < length:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                rest += chunk
            self.requests.append(head)
            await stream.send_all(self.answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()


def _plugin(port: int, **config: object) -> OpenTelemetry:
    conf = msgspec.convert({"traces_endpoint": f"http://127.0.0.1:{port}/v1/traces", **config}, OpenTelemetryConfig)
    return OpenTelemetry(conf, "repro", queues=Queues(), tracing=TracingSettings("all", 1.0))


def _a_span() -> bytes:
    return otlp.span(otlp.trace_field(1), 2, 0, otlp.named("kong", 2), 1, 2, b"")


def test_header_names_are_kongs_typedefs_header_name():
    """Kong: kong/plugins/opentelemetry/schema.lua:40-41 types `headers`' keys as typedefs.header_name, whose
    validator (kong/tools/http.lua:281-291, validate_header_name) allows only `^[a-zA-Z0-9-_]+$`: a key such as
    "X.Api-Key" or "x/token" is refused ("bad header name ...")."""
    for name in ("X.Api-Key", "x/token", "x@y"):
        with pytest.raises(ConfigError, match="bad header name"):
            _compile({"traces_endpoint": "http://127.0.0.1:4318/v1/traces", "headers": {name: "secret"}})


async def test_a_collector_answer_other_than_200_is_a_failed_export(nursery):
    """Kong: kong/plugins/opentelemetry/utils.lua:36-37 (http_export_request): `elseif res and res.status ~= 200 then
    return false, "response error: ..."`: any answer but 200 (a 202 or 204 too) is a failed export, which
    http_export_traces (traces.lua) returns to Kong's queue, which retries the batch (zipkin and http-log take any
    2xx)."""
    collector = _Collector(b"HTTP/1.1 204 No Content\r\n\r\n")
    await nursery.start(collector.serve)
    plugin = _plugin(collector.port)
    with trio.fail_after(5):
        with pytest.raises(Exception):  # noqa: B017 - Kong: a failed send, retried by the queue
            await plugin.send([_a_span()])
    assert collector.requests  # it did reach the collector


async def test_a_configured_host_header_is_sent_to_the_collector(nursery):
    """Kong: kong/plugins/opentelemetry/utils.lua:44-56 (get_headers) passes the configured `headers` as they are to
    resty.http's request_uri (utils.lua:27-31), and lua-resty-http 0.17.2 (Kong's rockspec) only makes a Host
    header of its own `if not headers["Host"]` (lib/resty/http.lua send_request): a configured Host is the one the
    collector gets (e.g. a collector behind a virtual-host proxy; http-log drops a configured Host)."""
    collector = _Collector(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await nursery.start(collector.serve)
    plugin = _plugin(collector.port, headers={"Host": "otel.example.test"})
    with trio.fail_after(5):
        await plugin.send([_a_span()])
    head = collector.requests[0].lower()
    hosts = re.findall(rb"\r\nhost: *([^\r]*)", head)
    assert hosts == [b"otel.example.test"], head
