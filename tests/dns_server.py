"""DNS for the tests: reply builders written by hand (independent of gateway/dns/message.py), a scripted DNS server
on real UDP and TCP sockets on 127.0.0.1, and `Names`, a server of a mutable table of names for the gateway's tests
(pass `names.settings` to the gateway fixture: its dns_resolver)."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from backends import free_port, stop_process

TYPE_A, TYPE_CNAME, TYPE_AAAA, TYPE_SRV = 1, 5, 28, 33


# -- reply builders ---------------------------------------------------------------------------------------------


def wire_name(name: str) -> bytes:
    """An uncompressed name in wire format."""
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def rr(name: bytes | str, rtype: int, rdata: bytes, ttl: int = 300, rclass: int = 1) -> bytes:
    """A resource record; `name` as a str is written uncompressed, as bytes it is taken as is (e.g. a pointer)."""
    owner = wire_name(name) if isinstance(name, str) else name
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def a(name: bytes | str, address: str, ttl: int = 300) -> bytes:
    return rr(name, TYPE_A, bytes(int(x) for x in address.split(".")), ttl)


def aaaa(name: bytes | str, address: str, ttl: int = 300) -> bytes:
    return rr(name, TYPE_AAAA, ipaddress.IPv6Address(address).packed, ttl)


def cname(name: bytes | str, target: str, ttl: int = 300) -> bytes:
    return rr(name, TYPE_CNAME, wire_name(target), ttl)


def srv(name: bytes | str, priority: int, weight: int, port: int, target: str, ttl: int = 300) -> bytes:
    return rr(name, TYPE_SRV, struct.pack("!HHH", priority, weight, port) + wire_name(target), ttl)


def reply(qid: int, qname: str, qtype: int, answers: Sequence[bytes] = (), additional: Sequence[bytes] = (),
          authority: Sequence[bytes] = (), rcode: int = 0, tc: bool = False, qr: bool = True, qclass: int = 1) -> bytes:
    """A whole reply message: header (RA, RD set), the question, then the sections."""
    flags = (0x8000 if qr else 0) | 0x0180 | (0x0200 if tc else 0) | rcode
    head = struct.pack("!HHHHHH", qid, flags, 1, len(answers), len(authority), len(additional))
    question = wire_name(qname) + struct.pack("!HH", qtype, qclass)
    return head + question + b"".join(answers) + b"".join(authority) + b"".join(additional)


# -- a scripted DNS server ------------------------------------------------------------------------------------------


@dataclass
class Query:
    id: int
    name: str
    type: int
    transport: str


@dataclass
class Stream:
    """A TCP answer written as is (any length prefix is the script's, true or not), `chunk` bytes at a time with
    `pause` seconds before each; then the connection is closed. Over UDP, `data` is one datagram."""

    data: bytes
    chunk: int = 65535
    pause: float = 0.0


# a datagram from the server's socket, ("other", datagram) from another one, or a scripted TCP stream
Answer = bytes | tuple[str, bytes] | Stream


@dataclass
class ScriptedDns:
    """UDP and TCP on one 127.0.0.1 port; `answer(query)` gives the datagrams to send back (none: silence), each
    after `delay` seconds. Every query seen is kept in `queries`."""

    answer: Callable[[Query], list[Answer]]
    delay: float = 0.0
    queries: list[Query] = field(default_factory=list)
    port: int = 0

    def seen(self, transport: str = "udp") -> list[tuple[str, int]]:
        return [(q.name, q.type) for q in self.queries if q.transport == transport]

    @staticmethod
    def parse(data: bytes, transport: str) -> Query:
        pos, labels = 12, []
        while data[pos]:
            labels.append(data[pos + 1:pos + 1 + data[pos]].decode())
            pos += 1 + data[pos]
        qid = struct.unpack_from("!H", data)[0]
        return Query(qid, ".".join(labels), struct.unpack_from("!H", data, pos + 1)[0], transport)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        udp, tcp = await self._bind_pair()
        other = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with udp, other, tcp:
            await other.bind(("127.0.0.1", 0))
            tcp.listen()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._tcp, tcp, nursery)
                task_status.started(self.port)
                while True:
                    data, peer = await udp.recvfrom(65535)
                    query = self.parse(data, "udp")
                    self.queries.append(query)
                    nursery.start_soon(self._udp_answer, udp, other, peer, query)

    async def _bind_pair(self) -> tuple[Any, Any]:
        """A UDP and a TCP socket bound to the same free 127.0.0.1 port."""
        for _ in range(50):
            port = free_port()
            udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                await udp.bind(("127.0.0.1", port))
                await tcp.bind(("127.0.0.1", port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            self.port = port
            return udp, tcp
        raise RuntimeError("no free port for the scripted DNS server")

    async def _udp_answer(self, udp: Any, other: Any, peer: Any, query: Query) -> None:
        await trio.sleep(self.delay)
        for item in self.answer(query):
            if isinstance(item, tuple):
                await other.sendto(item[1], peer)
            elif isinstance(item, Stream):
                await udp.sendto(item.data, peer)
            else:
                await udp.sendto(item, peer)

    async def _tcp(self, listener: Any, nursery: trio.Nursery) -> None:
        while True:
            conn, _ = await listener.accept()
            nursery.start_soon(self._tcp_conn, conn)

    async def _tcp_conn(self, conn: Any) -> None:
        with conn:
            try:
                head = await conn.recv(2)
                if len(head) < 2:
                    return  # the client went away before asking
                size = struct.unpack("!H", head)[0]
                query = self.parse(await conn.recv(size), "tcp")
                self.queries.append(query)
                for item in self.answer(query)[:1]:
                    if isinstance(item, Stream):
                        await self._stream(conn, item)
                        continue
                    data = item[1] if isinstance(item, tuple) else item
                    await conn.send(struct.pack("!H", len(data)) + data)
            except OSError:
                pass  # the client closed or reset the connection while we wrote

    @staticmethod
    async def _stream(conn: Any, item: Stream) -> None:
        step = max(1, item.chunk)
        for at in range(0, len(item.data), step):
            await trio.sleep(item.pause)
            piece = item.data[at:at + step]
            while piece:
                piece = piece[await conn.send(piece):]


def records(table: dict[tuple[str, int], list[bytes]], rcode_missing: int = 3) -> Callable[[Query], list[Answer]]:
    """An answer function from (name, type) -> answer records; other questions get `rcode_missing` (NXDOMAIN)."""
    def answer(q: Query) -> list[Answer]:
        rrs = table.get((q.name, q.type))
        if rrs is None:
            return [reply(q.id, q.name, q.type, rcode=rcode_missing)]
        return [reply(q.id, q.name, q.type, answers=rrs)]
    return answer


async def start(nursery: trio.Nursery, answer: Callable[[Query], list[Answer]], delay: float = 0.0) -> ScriptedDns:
    server = ScriptedDns(answer, delay)
    await nursery.start(server.serve)
    return server


class Names:
    """A DNS server answering from `names` (name -> addresses: A records for IPv4 ones, AAAA for IPv6; an SRV
    entry in `srv`: name -> [(priority, weight, port, target)]), with `ttl`; any other name is NXDOMAIN, a name in
    `failing` gets SERVFAIL and one in `silent` no answer. The tables may change while it serves."""

    def __init__(self, names: dict[str, list[str]] | None = None, ttl: int = 300) -> None:
        self.names = names if names is not None else {}
        self.srv: dict[str, list[tuple[int, int, int, str]]] = {}
        self.failing: set[str] = set()
        self.silent: set[str] = set()
        self.ttl = ttl
        self.server = ScriptedDns(self._answer)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def settings(self) -> dict[str, Any]:
        """The gateway settings that make it ask this server."""
        return {"dns_resolver": [f"127.0.0.1:{self.port}"]}

    def asked(self, name: str) -> int:
        """How many queries for `name` (any type) the server has seen."""
        return sum(1 for q in self.server.queries if q.name == name)

    def _answer(self, q: Query) -> list[Answer]:
        if q.name in self.silent:
            return []
        if q.name in self.failing:
            return [reply(q.id, q.name, q.type, rcode=2)]
        if q.name not in self.names and q.name not in self.srv:
            return [reply(q.id, q.name, q.type, rcode=3)]
        if q.type == TYPE_SRV:
            rrs = [srv(q.name, *entry, ttl=self.ttl) for entry in self.srv.get(q.name, [])]
        elif q.type == TYPE_A:
            rrs = [a(q.name, x, self.ttl) for x in self.names.get(q.name, []) if ":" not in x]
        elif q.type == TYPE_AAAA:
            rrs = [aaaa(q.name, x, self.ttl) for x in self.names.get(q.name, []) if ":" in x]
        else:
            rrs = []
        return [reply(q.id, q.name, q.type, answers=rrs)]

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await self.server.serve(task_status=task_status)


async def serve_names(nursery: trio.Nursery, names: dict[str, list[str]] | None = None, ttl: int = 300) -> Names:
    """A Names server started in `nursery`."""
    server = Names(names, ttl)
    await nursery.start(server.serve)
    return server


@dataclass
class Dnsmasq:
    """A dnsmasq serving on 127.0.0.1:`port`, logging its queries to `log`."""

    port: int
    log: Path

    def queries(self) -> list[str]:
        return [line.split("query", 1)[1].strip() for line in self.log.read_text().splitlines()
                if ": query[" in line]

    @property
    def settings(self) -> dict[str, Any]:
        """The gateway settings that make it ask this server."""
        return {"dns_resolver": [f"127.0.0.1:{self.port}"]}


@contextmanager
def run_dnsmasq(records: list[str], workdir: Path) -> Iterator[Dnsmasq]:
    """Debian's dnsmasq (dnsmasq-base) answering `records` (its --host-record, --srv-host, --cname options) for the
    names under .test, nothing else, with a TTL of 7 s; the test is skipped when it is not installed."""
    binary = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)
    if binary is None:
        pytest.skip("dnsmasq is not installed (Debian's dnsmasq-base): the tests against a real DNS server need it")
    log = workdir / "dnsmasq.log"
    port = free_port()
    argv = [binary, "--keep-in-foreground", f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
            "--no-resolv", "--no-hosts", "--pid-file=", "--conf-file=/dev/null", "--local=/test/",
            "--local-ttl=7", "--log-queries", "--log-facility=-", *records]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while "started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dnsmasq did not start: {log.read_text()[-500:]}")
            time.sleep(0.02)
        yield Dnsmasq(port, log)
    finally:
        stop_process(proc)
