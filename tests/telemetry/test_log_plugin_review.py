"""Findings of a review of the log plugins, each against Kong's source: the plugins' `host` is Kong's typedefs.host
(a bracketed IPv6 address included, which every sender then reaches), a 2xx answer over MAX_RESPONSE_BYTES is a
delivered batch, and a queue with concurrency_limit -1 sends at most MAX_CONCURRENT_SENDS at once."""

from __future__ import annotations

import socket
from typing import Any

import msgspec
import pytest
import trio

from gateway.config import ConfigError, parse_config
from gateway.metrics import RECORDER
from gateway.policies.datadog.handler import Datadog
from gateway.policies.datadog.schema import DatadogConfig
from gateway.policies.http_log.handler import HttpLog
from gateway.policies.http_log.schema import HttpLogConfig
from gateway.policies.ldap_auth import client
from gateway.policies.ldap_auth.schema import LdapAuthConfig
from gateway.policies.loggly.handler import Loggly
from gateway.policies.loggly.schema import LogglyConfig
from gateway.policies.statsd.handler import Statsd
from gateway.policies.statsd.schema import StatsdConfig
from gateway.policies.tcp_log.handler import TcpLog
from gateway.policies.tcp_log.schema import TcpLogConfig
from gateway.policies.udp_log.handler import UdpLog
from gateway.policies.udp_log.schema import UdpLogConfig
from gateway.runtime import compile_config
from gateway.telemetry.batch import DROPPED, MAX_CONCURRENT_SENDS, BatchQueue, QueueConfig, Queues
from gateway.telemetry.sender import MAX_RESPONSE_BYTES
from gateway.telemetry.tcp_sender import TcpSender
from gateway.telemetry.udp_sender import UdpSender

SERVICE = "services: [{name: s, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/]}]}]\n"
# each plugin whose host is Kong's typedefs.host: its name, its host field and the rest of a valid config
HOST_PLUGINS: dict[str, tuple[str, dict[str, Any]]] = {
    "tcp-log": ("host", {"port": 9}),
    "udp-log": ("host", {"port": 9}),
    "loggly": ("host", {"port": 9, "key": "k"}),
    "statsd": ("host", {}),
    "datadog": ("host", {}),
    "ldap-auth": ("ldap_host", {"base_dn": "dc=example", "attribute": "uid"}),
}


def _compiled(name: str, host: str) -> str | None:
    """The config error of a plugin `name` with `host`, or None when the gateway takes it."""
    field, rest = HOST_PLUGINS[name]
    plugin = {"name": name, "config": {field: host, **rest}}
    try:
        compile_config(parse_config(SERVICE + "plugins: " + msgspec.json.encode([plugin]).decode(), "t.yml"),
                       "t.yml")
    except ConfigError as e:
        return str(e)
    return None


@pytest.mark.parametrize("host", ["collector.example.com.", "logs_1.example", "10.0.0.1", "::1", "[::1]",
                                  "[2001:db8::1]"])
@pytest.mark.parametrize("name", HOST_PLUGINS)
def test_a_host_kong_takes_is_taken(name: str, host: str) -> None:
    """kong/tools/ip.lua: a name may end in its final dot (an FQDN), an IPv6 address may be bracketed."""
    assert _compiled(name, host) is None


@pytest.mark.parametrize(("host", "problem"), [
    ("999.1.1.1", "invalid value: 999.1.1.1"),  # ip.lua normalize_ipv4: an octet over 255
    ("10.0.0.300", "invalid value: 10.0.0.300"),
    ("1.2.3", "invalid value: 1.2.3"),  # digits and dots are an IPv4 address, and three octets are not one
    ("logs..example.com", "invalid value: logs..example.com"),  # check_hostname: an empty label
    ("logs-.example.com", "invalid value: logs-.example.com"),  # a label ending in "-"
    ("a b", "invalid value: a b"),
    ("logs.example.com:9000", "must not have a port"),
    ("[::1]:9000", "must not have a port"),
])
@pytest.mark.parametrize("name", HOST_PLUGINS)
def test_a_host_kong_refuses_is_refused_in_kongs_words(name: str, host: str, problem: str) -> None:
    """kong/db/schema/typedefs.lua validate_host: "invalid value: <host>", or "must not have a port"."""
    field, _ = HOST_PLUGINS[name]
    assert _compiled(name, host) == f"t.yml: plugins[0].config.{field}: {problem}"


async def _tcp_listener_on_ipv6_loopback(received: list[bytes],
                                         task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Accepts connections on ::1 and records what each sends."""

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
        received.append(data)

    listeners = await trio.open_tcp_listeners(0, host="::1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def test_the_tcp_sender_reaches_a_bracketed_ipv6_host(nursery: trio.Nursery) -> None:
    """tcp-log's (and statsd's use_tcp) "[::1]" is the address ::1, not a name for trio to resolve."""
    received: list[bytes] = []
    port = await nursery.start(_tcp_listener_on_ipv6_loopback, received)
    sender = TcpSender("[::1]", port, timeout=5)
    assert sender.where == f"tcp://[::1]:{port}"
    await sender.send(b"line\n")
    await sender.close()
    with trio.fail_after(5):
        while not received:
            await trio.sleep(0.01)
    assert received == [b"line\n"]


async def test_the_udp_sender_reaches_a_bracketed_ipv6_host() -> None:
    """udp-log's, loggly's, statsd's and datadog's "[::1]" is the address ::1, and the sender names it once
    bracketed."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as collector:
        collector.bind(("::1", 0))
        port = collector.getsockname()[1]
        sender = UdpSender("[::1]", port, timeout=5)
        assert sender.where == f"udp://[::1]:{port}"
        await sender.send(b"datagram")
        sender.close()
        collector.settimeout(5)
        assert collector.recv(100) == b"datagram"


async def test_ldap_auth_connects_to_a_bracketed_ipv6_host(nursery: trio.Nursery) -> None:
    """ldap-auth's "[::1]" is the address ::1 (the connection, its TLS name, its pool key)."""
    received: list[bytes] = []
    port = await nursery.start(_tcp_listener_on_ipv6_loopback, received)
    server = client.Server("[::1]", port, ldaps=False, start_tls=False, verify=False, timeout=5, keepalive=0)
    assert (server.host, server.where) == ("::1", f"[::1]:{port}")
    conn = await client._connect(server)
    assert conn is not None
    await conn.stream.aclose()
    with trio.fail_after(5):
        while not received:
            await trio.sleep(0.01)


def test_each_plugins_sender_gets_the_bracketed_host_as_its_address() -> None:
    """The plugins hand their host to the senders, which connect to the address inside the brackets."""
    queues = Queues()
    host = {"host": "[::1]", "port": 9}
    senders = [
        TcpLog(msgspec.convert(host, TcpLogConfig), queues).sender,
        UdpLog(msgspec.convert(host, UdpLogConfig), queues).sender,
        Loggly(msgspec.convert({**host, "key": "k"}, LogglyConfig), queues).sender,
        Statsd(msgspec.convert(host, StatsdConfig), "p1", queues).sender,
        Statsd(msgspec.convert({**host, "use_tcp": True}, StatsdConfig), "p2", queues).sender,
        Datadog(msgspec.convert(host, DatadogConfig), "p3", queues).sender,
    ]
    assert [s.host for s in senders] == ["::1"] * len(senders)
    assert msgspec.convert({"ldap_host": "[::1]", "base_dn": "b", "attribute": "uid"}, LdapAuthConfig)


BIG = MAX_RESPONSE_BYTES + 1


async def _large_answer_collector(seen: list[bytes],
                                  task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Reads each request and answers 200 with a body a little over MAX_RESPONSE_BYTES."""

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            if not (chunk := await stream.receive_some(65536)):
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(body) < length:
            body += await stream.receive_some(65536)
        seen.append(body)
        try:
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG + b"x" * BIG)
        except trio.BrokenResourceError:
            pass  # the sender stopped reading at MAX_RESPONSE_BYTES and closed
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def test_http_log_sends_a_batch_the_collector_took_with_a_large_answer_once(nursery: trio.Nursery) -> None:
    """kong/plugins/http-log/handler.lua: any status below 300 is delivered, whatever the answer's size; an
    echoing collector answers a large batch with a large body, and it must not get the batch again."""
    seen: list[bytes] = []
    port = await nursery.start(_large_answer_collector, seen)
    config = msgspec.convert({"http_endpoint": f"http://127.0.0.1:{port}/logs",
                              "queue": {"max_retry_time": 1, "initial_retry_delay": 0.01}}, HttpLogConfig)
    plugin = HttpLog(config, Queues())
    plugin.queue.formatter = None  # the entry is already JSON
    plugin.queue.put(b'{"request":{"uri":"/"}}')
    with trio.fail_after(5):
        await plugin.queue.drain()  # sent, and retried until dropped had it failed
    assert seen == [b'{"request":{"uri":"/"}}']


class _Hung:
    """A handler whose sends hang until `release` is set; counts those in flight."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.active = 0
        self.most = 0
        self.sent: list[Any] = []

    async def __call__(self, batch: list[Any]) -> None:
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            await self.release.wait()
            self.sent.extend(batch)
        finally:
            self.active -= 1


async def test_concurrency_limit_minus_one_sends_at_most_kongs_timer_threads_at_once(nursery: trio.Nursery,
                                                                                     autojump_clock: Any) -> None:
    """Kong's -1 sends each entry from a timer (kong/tools/queue.lua), and its timers run on at most 1024 threads
    (kong/globalpatches.lua): against a hung collector no more sends, and sockets, are open at once; the others
    wait their turn and go once sends finish."""
    assert MAX_CONCURRENT_SENDS == 1024
    handler = _Hung()
    queue = BatchQueue("review-bound", QueueConfig(concurrency_limit=-1), handler)
    await nursery.start(queue.run)
    entries = MAX_CONCURRENT_SENDS + 10
    for i in range(entries):
        queue.put(i)
    await trio.sleep(1)
    assert (handler.most, handler.active, len(queue)) == (MAX_CONCURRENT_SENDS, MAX_CONCURRENT_SENDS, 10)
    handler.release.set()
    await trio.sleep(1)
    assert sorted(handler.sent) == list(range(entries)) and handler.most == MAX_CONCURRENT_SENDS


async def test_concurrency_limit_minus_one_drops_the_oldest_beyond_max_entries_waiting(nursery: trio.Nursery,
                                                                                       autojump_clock: Any) -> None:
    """The entries waiting for a send are bounded by max_entries as Kong's queue bounds its entries: the oldest
    waiting go (counted as full); those being sent and the newest max_entries are delivered."""
    handler = _Hung()
    queue = BatchQueue("review-full", QueueConfig(concurrency_limit=-1, max_entries=5), handler)
    await nursery.start(queue.run)
    RECORDER.flush()
    before = DROPPED.labels("review-full", "full")._value.get()
    for i in range(MAX_CONCURRENT_SENDS):
        queue.put(i)
    await trio.sleep(1)
    for i in range(MAX_CONCURRENT_SENDS, MAX_CONCURRENT_SENDS + 20):
        queue.put(i)
    await trio.sleep(1)
    handler.release.set()
    await trio.sleep(1)
    RECORDER.flush()
    assert DROPPED.labels("review-full", "full")._value.get() - before == 15
    assert sorted(handler.sent) == [*range(MAX_CONCURRENT_SENDS),
                                    *range(MAX_CONCURRENT_SENDS + 15, MAX_CONCURRENT_SENDS + 20)]
