"""udp-log through the gateway (in-process, real sockets) to a datagram collector in the test: Kong's JSON entry,
no newline, in a datagram of its own per request, never in a request's way."""

from __future__ import annotations

import logging
import socket

import msgspec
import pytest
import trio
from backends import EchoBackend, request, service, wait_until
from backends import UdpCollector as Collector
from dns_server import Names, serve_names

from gateway.dns import process as dns_process
from gateway.dns.client import Resolver
from gateway.policies.udp_log.schema import UdpLogConfig
from gateway.telemetry.sender import SendError
from gateway.telemetry.udp_sender import UdpSender

TIMEOUT = 10


async def _proxied(nursery: trio.Nursery, gateway, collector: Collector, **settings) -> int:  # noqa: ANN001,ANN003
    backend = EchoBackend()
    await nursery.start(backend.serve)
    await nursery.start(collector.serve)
    return await gateway({"services": [service("svc", f"http://127.0.0.1:{backend.port}")], "plugins": [
        {"name": "udp-log", "config": {"host": "127.0.0.1", "port": collector.port}}]}, **settings)


async def test_each_entry_is_kongs_json_in_a_datagram_of_its_own(nursery, gateway):
    collector = Collector()
    port = await _proxied(nursery, gateway, collector)
    with trio.fail_after(TIMEOUT):
        for i in range(3):
            assert (await request(port, "GET", f"/item/{i}")).status == 200
    await wait_until(lambda: len(collector.datagrams) >= 3, "3 datagrams")
    assert not any(d.endswith(b"\n") for d in collector.datagrams)
    entries = collector.entries
    assert [e["request"]["uri"] for e in entries] == ["/item/0", "/item/1", "/item/2"]
    assert {e["response"]["status"] for e in entries} == {200}
    assert entries[0]["service"]["name"] == "svc"
    assert entries[0]["request"]["method"] == "GET"


async def test_a_collector_that_is_down_slows_no_request_and_gets_the_entries_after_it_is_back(nursery, gateway,
                                                                                                caplog):
    """As Kong's: what is sent while the collector is down is lost (the refusals the kernel reports are logged), the
    first entry after it is back arrives, and nothing is sent twice."""
    collector = Collector()
    port = await _proxied(nursery, gateway, collector)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/up")).status == 200
        await wait_until(lambda: collector.datagrams, "the first entry")
        collector.close()
        await trio.sleep(0.05)
        started = trio.current_time()
        for i in range(4):
            assert (await request(port, "GET", f"/down/{i}")).status == 200
            await trio.sleep(0.05)  # the ICMP answer to the previous datagram comes back meanwhile
        took = trio.current_time() - started
        assert took < TIMEOUT / 2, f"{took:.1f}s"  # no request waited for the collector (0.2 s of sleeps)
    await wait_until(lambda: any("datagram(s) sent to it were lost" in r.getMessage() for r in caplog.records),
                     "a refusal logged")
    back = Collector(collector.port)
    await nursery.start(back.serve)
    # The socket still holds the error of the last entry sent while the collector was down: the next send hears of
    # it, sends nothing, and is made again
    with trio.fail_after(TIMEOUT):
        for i in range(2):
            assert (await request(port, "GET", f"/back/{i}")).status == 200
    await wait_until(lambda: len(back.datagrams) >= 2, "the entries after it is back")
    await trio.sleep(0.1)
    assert [e["request"]["uri"] for e in back.entries] == ["/back/0", "/back/1"]


async def test_a_send_refused_for_an_earlier_datagram_is_made_again_and_arrives():
    """Kong's udp-log sends each entry from a fresh socket (handler.lua:12-38), which never hears of the ICMP port
    unreachable answering an earlier datagram. The kept socket does: its next send fails with ECONNREFUSED without
    sending (the failed call clears the error), so that send is made once more and the entry is not lost."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # the collector is down
    sender = UdpSender("127.0.0.1", port, timeout=2)
    try:
        await sender.send(b'{"entry":"while down"}')  # lost, as in Kong; the kernel gets an ICMP port unreachable
        await trio.sleep(0.1)
        collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the collector is back
        collector.bind(("127.0.0.1", port))
        collector.settimeout(1)
        try:
            await sender.send(b'{"entry":"after"}')
            await sender.send(b'{"entry":"next"}')
            assert [collector.recv(65536), collector.recv(65536)] == [b'{"entry":"after"}', b'{"entry":"next"}']
            collector.settimeout(0.1)
            with pytest.raises(TimeoutError):  # nothing sent twice
                collector.recv(65536)
        finally:
            collector.close()
    finally:
        sender.close()


async def test_an_entry_too_large_for_a_datagram_is_dropped_and_the_next_is_sent(nursery, gateway, caplog):
    collector = Collector()
    port = await _proxied(nursery, gateway, collector, max_header_bytes=1 << 20, max_header_line_bytes=1 << 20)
    with trio.fail_after(TIMEOUT):
        assert (await request(port, "GET", "/big", headers=[("x-big", "b" * 70000)])).status == 200
        assert (await request(port, "GET", "/small")).status == 200
    await wait_until(lambda: collector.datagrams, "the small entry")
    await trio.sleep(0.1)
    assert [e["request"]["uri"] for e in collector.entries] == ["/small"]
    assert any("does not fit in a datagram" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


async def test_the_sender_resolves_a_host_name(nursery):
    collector = Collector()
    await nursery.start(collector.serve)
    sender = UdpSender("localhost", collector.port)
    await sender.send(b"{}")
    await wait_until(lambda: collector.datagrams, "the datagram")
    assert collector.datagrams == [b"{}"]
    sender.close()


class _Clock:
    """The DNS client's cache clock, moved by hand (a record's TTL passes at once)."""

    now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _agent_by_name(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> tuple[Names, _Clock, Collector,
                                                                                           Collector]:
    """agent.test (TTL 1 s) at 127.0.0.1, as this process's DNS client has it, a collector there and one on the
    same port at 127.0.0.2, where the name may be moved."""
    names = await serve_names(nursery, {"agent.test": ["127.0.0.1"]}, ttl=1)
    clock = _Clock()
    resolver = Resolver(nameservers=[("127.0.0.1", names.port)], hosts={}, timeout=1, clock=clock)
    monkeypatch.setattr(dns_process, "resolver", lambda: resolver)
    old = Collector(0, "127.0.0.1")
    await nursery.start(old.serve)
    new = Collector(old.port, "127.0.0.2")
    await nursery.start(new.serve)
    return names, clock, old, new


async def test_the_sender_reuses_its_socket_and_asks_no_dns_server_while_the_answer_is_fresh(nursery, monkeypatch):
    """Kong's setpeername resolves the name for every entry or batch through its DNS client (globalpatches.lua
    `udp_resolve_setpeername`: client.toip), which answers from its cache until the record's TTL passes: the
    sends after the first ask no server, and here go from the socket the first one made."""
    names, _, old, _ = await _agent_by_name(nursery, monkeypatch)
    sender = UdpSender("agent.test", old.port, timeout=2)
    try:
        await sender.send(b"1")
        asked = names.asked("agent.test")
        await sender.send_each([b"2", b"3"], "statsd")
        await sender.send(b"4")
        await wait_until(lambda: len(old.datagrams) >= 4, "4 datagrams")
    finally:
        sender.close()
    assert old.datagrams == [b"1", b"2", b"3", b"4"]
    assert len(set(old.sources)) == 1  # one socket
    assert names.asked("agent.test") == asked


async def test_the_sender_follows_the_hosts_new_address_once_its_ttl_passed(nursery, monkeypatch):
    """kong/plugins/statsd/log.lua:369-370 and datadog/handler.lua:52 make a logger, and so a socket whose
    setpeername resolves the name (statsd_logger.lua:103; udp-log/handler.lua:19 per entry), for every batch:
    once the agent's record changed and its TTL passed, the datagrams go to its new address."""
    names, clock, old, new = await _agent_by_name(nursery, monkeypatch)
    sender = UdpSender("agent.test", old.port, timeout=2)
    try:
        await sender.send_each([b"before"], "datadog")
        names.names["agent.test"] = ["127.0.0.2"]  # the agent moved (a restarted pod, a new VM)
        await sender.send_each([b"cached"], "datadog")  # the record's TTL has not passed
        clock.now += 1.5
        await sender.send_each([b"after"], "datadog")
        await sender.send(b"entry")
        await wait_until(lambda: len(old.datagrams) + len(new.datagrams) >= 4, "4 datagrams")
    finally:
        sender.close()
    assert old.datagrams == [b"before", b"cached"]
    assert new.datagrams == [b"after", b"entry"]


async def test_the_sender_says_why_it_could_not_send():
    sender = UdpSender("name.invalid", 9, timeout=5)
    with pytest.raises(SendError, match=r"^failed to connect to name\.invalid:9: DNS resolution failed: "):
        await sender.send(b"{}")


@pytest.mark.parametrize(("config", "message"), [
    ({"host": "a b", "port": 1}, 'host: invalid value: a b'),
    ({"host": "h", "port": 0}, "Expected `int` >= 1"),
    ({"host": "h", "port": 1, "timeout": 0}, "Expected `float` > 0"),
    ({"host": "h", "port": 1, "custom_fields_by_lua": {"a": "return 1"}},
     "custom_fields_by_lua: the gateway runs no Lua; remove it"),
    ({"host": "h", "port": 1, "keepalive": 1}, "unknown field `keepalive`"),
])
def test_config_errors_name_the_field(config: dict, message: str):
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(config, UdpLogConfig)


def test_kongs_defaults():
    config = UdpLogConfig(host="::1", port=9999)
    assert (config.timeout, config.custom_fields_by_lua) == (10000, None)
