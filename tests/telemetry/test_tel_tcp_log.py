"""tcp-log through the gateway (in-process, real sockets) to a line collector in the test, plain and TLS: Kong's
JSON entry and a newline per request, over one kept-alive connection, never in a request's way."""

from __future__ import annotations

import json
import ssl

import msgspec
import pytest
import trio
from backends import EchoBackend, free_port, request, service, wait_until
from tls_helpers import Pki

from gateway.config import parse_config
from gateway.policies.tcp_log.schema import TcpLogConfig
from gateway.runtime import compile_config
from gateway.telemetry.sender import SendError
from gateway.telemetry.tcp_sender import TcpSender

TIMEOUT = 10


class Collector:
    """Accepts TCP (or TLS) connections on a port and keeps the lines each one sent; `hang_up` closes them all."""

    def __init__(self, context: ssl.SSLContext | None = None, port: int = 0) -> None:
        self.context = context
        self.port = port
        self.connections: list[list[bytes]] = []
        self.server_names: list[str | None] = []
        self._streams: list[trio.abc.Stream] = []

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        if self.context is not None:
            self.context.sni_callback = lambda sock, name, ctx: self.server_names.append(name)  # type: ignore[assignment]
            listeners = [trio.SSLListener(listener, self.context) for listener in listeners]  # type: ignore[misc]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)  # type: ignore[arg-type]

    async def _connection(self, stream: trio.abc.Stream) -> None:
        lines: list[bytes] = []
        self.connections.append(lines)
        self._streams.append(stream)
        buffer = b""
        try:
            while chunk := await stream.receive_some(65536):
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                lines += complete
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    @property
    def lines(self) -> list[bytes]:
        return [line for lines in self.connections for line in lines]

    async def hang_up(self) -> None:
        for stream in self._streams:
            await stream.aclose()
        self._streams.clear()


async def _proxied(nursery: trio.Nursery, gateway, collector: Collector, **config) -> int:  # noqa: ANN001,ANN003
    backend = EchoBackend()
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    return await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")], "plugins": [
        {"name": "tcp-log", "config": {"host": "127.0.0.1", "port": collector.port, **config}}]})


async def test_each_entry_is_kongs_json_and_a_newline_over_one_kept_connection(nursery, gateway):
    collector = Collector()
    port = await _proxied(nursery, gateway, collector)
    with trio.fail_after(TIMEOUT):
        for i in range(3):
            assert (await request(port, "GET", f"/item/{i}")).status == 200
    await wait_until(lambda: len(collector.lines) >= 3, "3 lines")
    entries = [json.loads(line) for line in collector.lines]
    assert [e["request"]["uri"] for e in entries] == ["/item/0", "/item/1", "/item/2"]
    assert {e["response"]["status"] for e in entries} == {200}
    assert entries[0]["service"]["name"] == "svc"
    assert len(collector.connections) == 1


async def test_tls_sends_the_configured_server_name(nursery, gateway, tmp_path):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*Pki().files(tmp_path, "logs", "logs.test"))
    collector = Collector(context)
    port = await _proxied(nursery, gateway, collector, tls=True, tls_sni="logs.test")
    with trio.fail_after(TIMEOUT):
        for i in range(2):
            assert (await request(port, "GET", f"/tls/{i}")).status == 200
    await wait_until(lambda: len(collector.lines) >= 2, "2 lines over TLS")
    assert [json.loads(line)["request"]["uri"] for line in collector.lines] == ["/tls/0", "/tls/1"]
    assert collector.server_names == ["logs.test"] and len(collector.connections) == 1


async def test_an_ip_address_as_tls_sni_completes_the_handshake_without_sni(nursery, gateway, tmp_path):
    """Kong passes tls_sni to sslhandshake whatever it is (OpenSSL would send an address as the name); Python's ssl
    takes an address as server_hostname but sends no SNI for it (RFC 6066 names no address), so none arrives."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*Pki().files(tmp_path, "logs", "logs.test"))
    collector = Collector(context)
    port = await _proxied(nursery, gateway, collector, tls=True, tls_sni="127.0.0.1")
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/tls")).status == 200
    await wait_until(lambda: collector.lines, "a line over TLS")
    assert [json.loads(line)["request"]["uri"] for line in collector.lines] == ["/tls"]
    assert collector.server_names == [None]


async def test_concurrent_sends_each_use_a_connection_of_their_own(nursery):
    """statsd's use_tcp with queue.concurrency_limit -1 sends batches concurrently through one TcpSender; as Kong's
    senders (a socket per send), they never share a connection: writing into the same one collided
    (BusyResourceError)."""
    collector = Collector()
    await nursery.start(collector.serve)
    sender = TcpSender("127.0.0.1", collector.port)
    await sender.send(b"0\n")  # leaves a kept-alive connection
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as sends:
            for i in range(1, 4):
                sends.start_soon(sender.send, b"%d\n" % i)
    await wait_until(lambda: len(collector.lines) >= 4, "4 lines")
    assert sorted(collector.lines) == [b"0", b"1", b"2", b"3"] and len(collector.connections) == 3
    await sender.send(b"4\n")  # an idle one is reused
    await wait_until(lambda: len(collector.lines) >= 5, "5 lines")
    assert len(collector.connections) == 3
    await sender.close()


async def test_a_connection_the_collector_closed_while_idle_is_replaced_and_no_line_is_lost(nursery, gateway):
    collector = Collector()
    port = await _proxied(nursery, gateway, collector)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/before")).status == 200
        await wait_until(lambda: collector.lines, "the first line")
        await collector.hang_up()
        await trio.sleep(0.1)  # the FIN reaches the gateway's side
        assert (await request(port, "GET", "/after")).status == 200
    await wait_until(lambda: len(collector.lines) >= 2, "the line after the hang-up")
    assert [json.loads(line)["request"]["uri"] for line in collector.lines] == ["/before", "/after"]
    assert len(collector.connections) == 2


async def test_an_idle_connection_is_kept_only_for_keepalive_ms(nursery, gateway):
    collector = Collector()
    port = await _proxied(nursery, gateway, collector, keepalive=100)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/1")).status == 200
        await wait_until(lambda: collector.lines, "the first line")
        await trio.sleep(0.3)
        assert (await request(port, "GET", "/2")).status == 200
    await wait_until(lambda: len(collector.lines) >= 2, "the second line")
    assert len(collector.connections) == 2


async def test_a_collector_that_is_down_slows_no_request_and_gets_the_lines_when_it_is_back(nursery, gateway):
    collector = Collector(port=free_port())  # nothing listens there yet: connecting is refused
    backend = EchoBackend()
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")], "plugins": [
        {"name": "tcp-log", "config": {"host": "127.0.0.1", "port": collector.port}}]})
    with trio.fail_after(TIMEOUT):
        started = trio.current_time()
        for i in range(5):
            assert (await request(port, "GET", f"/down/{i}")).status == 200
        took = trio.current_time() - started
        # (milliseconds; seconds on a busy host; a request waiting for the queue's retries would wait for the collector)
        assert took < TIMEOUT / 2, f"{took:.1f}s"
    await nursery.start(collector.serve)
    await wait_until(lambda: len(collector.lines) >= 5, "the 5 lines, once the collector is up")
    assert sorted(json.loads(line)["request"]["uri"] for line in collector.lines) == [f"/down/{i}" for i in range(5)]


async def test_keepalive_0_keeps_the_connection_for_as_long_as_it_lives(nursery):
    """ngx_lua's setkeepalive(0), which Kong's senders pass the plugin's keepalive to: no idle limit."""
    collector = Collector()
    await nursery.start(collector.serve)
    sender = TcpSender("127.0.0.1", collector.port, keepalive=0)
    await sender.send(b"1\n")
    await trio.sleep(0.2)
    await sender.send(b"2\n")
    await wait_until(lambda: len(collector.lines) >= 2, "both lines")
    assert collector.lines == [b"1", b"2"] and len(collector.connections) == 1
    await sender.close()


async def test_the_sender_says_where_it_could_not_connect():
    sender = TcpSender("127.0.0.1", free_port(), timeout=1)
    with pytest.raises(SendError, match=r"^failed to connect to 127\.0\.0\.1:\d+: connection refused$"):
        await sender.send(b"{}\n")


@pytest.mark.parametrize(("config", "message"), [
    ({"host": "a b", "port": 1}, 'host: invalid value: a b'),
    ({"host": "h", "port": 1, "tls": True, "tls_sni": "a b"},
     'tls_sni: expected a host name or an IP address, got "a b"'),
    ({"host": "h", "port": 1, "custom_fields_by_lua": {"a": "return 1"}},
     "custom_fields_by_lua: the gateway runs no Lua; remove it"),
])
def test_config_errors_name_the_field(config: dict, message: str):
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(config, TcpLogConfig)


SERVICE = "services: [{name: s, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/]}]}]\n"


@pytest.mark.parametrize("config", ["{host: logs.test, port: 9000, tls: false, tls_sni: logs.test}",
                                    "{host: logs.test, port: 9000, tls_sni: logs.test}",
                                    "{host: logs.test, port: 9000, tls: true, tls_sni: 10.0.0.1}",
                                    "{host: logs.test, port: 9000, tls: true, tls_sni: '::1'}"],
                         ids=["tls-false", "tls-default", "ipv4", "ipv6"])
def test_tls_sni_without_tls_or_as_an_ip_address_is_accepted_as_kong_accepts_it(config: str):
    """kong/plugins/tcp-log/schema.lua: tls_sni is a plain string, with no entity check tying it to tls (the handler
    uses it only when tls is true): a config Kong loads, TLS switched off with the SNI left in place, loads here."""
    compile_config(parse_config(SERVICE + f"plugins: [{{name: tcp-log, config: {config}}}]\n", "t.yml"), "t.yml")


def test_kongs_defaults():
    config = TcpLogConfig(host="::1", port=9999)
    assert (config.timeout, config.keepalive, config.tls, config.tls_sni) == (10000, 60000, False, None)

