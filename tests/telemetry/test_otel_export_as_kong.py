"""The opentelemetry plugin's export to the collector and its headers, as Kong's
kong/plugins/opentelemetry/{schema,utils,traces}.lua make them."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterator

import msgspec
import pytest
import trio
import trustme

from gateway.config import ConfigError, parse_config
from gateway.http.tls_contexts import TrustStore, use_trust_store
from gateway.policies.opentelemetry.handler import OpenTelemetry
from gateway.policies.opentelemetry.schema import OpenTelemetryConfig
from gateway.runtime import compile_config
from gateway.telemetry import otlp
from gateway.telemetry.batch import Queues
from gateway.telemetry.sender import SendError
from gateway.telemetry.tracing import TracingSettings


def _compile(plugin_config: dict) -> None:
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}],
           "plugins": [{"name": "opentelemetry", "config": plugin_config}]}
    compile_config(parse_config(json.dumps(doc)))


class _Collector:
    """A collector on 127.0.0.1 answering every request with `answer`, keeping the raw request heads; over TLS with
    `context`."""

    def __init__(self, answer: bytes, context: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.context = context
        self.port = 0
        self.requests: list[bytes] = []

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._one, listeners)

    async def _one(self, raw: trio.SocketStream) -> None:
        stream: trio.abc.Stream = raw if self.context is None else trio.SSLStream(raw, self.context, server_side=True)
        buffer = b""
        try:
            with trio.move_on_after(5):
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
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


class TlsCollector(_Collector):
    """A collector over TLS on 127.0.0.1, its certificate (for "localhost") issued by a CA of its own (`ca`), which
    no trust store holds unless given it: it records each request head it got and answers 200."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
        super().__init__(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", context)


@pytest.fixture
def trusting() -> Iterator[None]:
    """Put back the default trust store (the system's CAs) after a test that installs its own."""
    yield
    use_trust_store(TrustStore())


def _plugin(port: int, scheme: str = "http", host: str = "127.0.0.1", **config: object) -> OpenTelemetry:
    conf = msgspec.convert({"traces_endpoint": f"{scheme}://{host}:{port}/v1/traces", **config}, OpenTelemetryConfig)
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


@pytest.mark.parametrize("field", ["connect_timeout", "send_timeout", "read_timeout"])
async def test_a_zero_timeout_is_the_cosockets_default_not_an_instant_failure(nursery, field):
    """Kong's schema takes 0 (kong/db/schema/typedefs.lua:352-354, typedefs.timeout `between = { 0, math.pow(2, 31)
    - 2 }`), and utils.lua:26 hands it to `httpc:set_timeouts(conf.connect_timeout, conf.send_timeout,
    conf.read_timeout)`, the cosocket's settimeouts, where 0 means the lua_socket_*_timeout default (60 s):
    lua-nginx-module src/ngx_http_lua_socket_tcp.c settimeouts `if (connect_timeout > 0) { u->connect_timeout =
    ...} else { u->connect_timeout = u->conf->connect_timeout; }` (and so for send and read). A collector that
    answers at once gets the export."""
    collector = _Collector(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await nursery.start(collector.serve)
    plugin = _plugin(collector.port, **{field: 0})
    with trio.fail_after(5):
        await plugin.send([_a_span()])
    assert len(collector.requests) == 1


async def test_an_https_collector_whose_certificate_is_not_trusted_gets_no_spans(nursery):
    """Kong's export (kong/plugins/opentelemetry/utils.lua:25-31) is `httpc:request_uri(conf.endpoint, { method =
    "POST", body = pb_data, headers = headers })` with no ssl_verify, and lua-resty-http 0.17.2
    (kong-latest.rockspec) verifies by default: lib/resty/http_connect.lua `ssl_verify = true -- default` (only
    `options.ssl_verify == false` turns it off), then `sock:sslhandshake(..., ssl_server_name, ssl_verify, ...)`.
    A collector whose certificate no trusted CA signed (a man in the middle) fails the handshake: the export
    fails, and neither the spans nor the `headers` (an APM's token) reach it. (http-log is the plugin that passes
    ssl_verify = false.)"""
    collector = TlsCollector()
    await nursery.start(collector.serve)
    plugin = _plugin(collector.port, "https", "localhost", headers={"Authorization": "Bearer apm-token"})
    with trio.fail_after(5), pytest.raises(SendError, match=r"^failed to send request: \d+: "):
        await plugin.send([_a_span()])
    assert collector.requests == []


async def test_an_https_collector_is_verified_against_lua_ssl_trusted_certificate(nursery, trusting):
    """Kong's cosockets verify against kong.conf's lua_ssl_trusted_certificate (kong/templates/
    nginx_kong_inject.lua:4 `lua_ssl_trusted_certificate '${{LUA_SSL_TRUSTED_CERTIFICATE_COMBINED}}'`): a collector
    whose CA is listed there gets the export."""
    collector = TlsCollector()
    await nursery.start(collector.serve)
    use_trust_store(TrustStore(system=False, pems=[collector.ca.cert_pem.bytes().decode()]))
    plugin = _plugin(collector.port, "https", "localhost")
    with trio.fail_after(5):
        await plugin.send([_a_span()])
    assert len(collector.requests) == 1
