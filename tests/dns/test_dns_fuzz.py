"""Seeded fuzz of the DNS client end to end (gateway/dns, gateway/discovery/dns.py) against hostile and broken
nameservers: the scripted server of tests/dns_server.py, on real UDP and TCP sockets, answers each question with a
generated reply.

Replies are valid but strange (CNAME chains and loops across names, SRV records pointing at themselves, at CNAMEs,
at IP literals or at names without records, TTLs 0 and 2^31-1 and 2^32-1, huge answer counts, mixed and unknown
types, records for other names, additional sections, duplicates, upper-case names, labels with odd bytes, names at
the 255-octet limit), malformed (truncated, wrong counts, pointer loops, bad rdata lengths, TC set over TCP, a TCP
length prefix that lies, a TCP server that closes early or trickles a byte at a time) or hostile (replies from
another port, with a wrong id, to a question never asked, floods of stray datagrams, silence). A case's replies are a
function of its number and the question, so a failure reproduces with `make_case(index)`.

Properties: `Resolver.resolve` returns records of one name and one type (the asked type; A, AAAA or SRV when none
was asked), addresses being IP literals, or raises DnsError with a one-line message; `toip` returns an IP literal (an
IP literal name: itself) and a port; `resolve_targets` returns targets whose hosts are IP literals, or the configured
name with weight 0; each call ends within timeout x attempts plus a margin (a TCP read is bounded on its own, as
Kong's, and no reply here comes in pieces for longer); nothing else escapes; the cache holds at most cache_size keys;
no query stays in flight and no task of the resolver outlives its nursery.

Each bug the fuzz found is pinned by a plain regression test at the end of the file.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from dns_server import Answer, Query, ScriptedDns, Stream, a, cname, records, reply, srv, start

from gateway.discovery import dns as discovery_dns
from gateway.discovery.dns import resolve_targets
from gateway.discovery.types import TargetInfo, valid_host
from gateway.dns import process
from gateway.dns.client import TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_SRV, DnsError, Record, Resolver, open_resolver
from gateway.http.net import is_ip

SEED = 1035
# 200 cases in the suite (about 9 s); DNS_FUZZ_CASES=2000 for a longer hunt (600 found this client's bugs first)
RESOLVER_CASES = int(os.environ.get("DNS_FUZZ_CASES", "200"))
TARGET_CASES = 60
MARGIN_S = 1.0

# ===================================================================================================================
# Generating replies
# ===================================================================================================================

LONG = (b"x" * 63, b"y" * 63, b"z" * 63, b"w" * 61)  # 255 octets on the wire
POOL: list[tuple[bytes, ...]] = [
    (b"a", b"test"), (b"b", b"test"), (b"c", b"test"), (b"srv", b"test"), (b"host",), (b"A", b"TEST"),
    (b"10", b"0", b"0", b"1"), (b"::1",), (b"short:a", b"test"), (b"1:a", b"test"),
    (b"we\xffird", b"test"), (b"dot.ted", b"test"), (b"new\nline", b"test"), (b"\x00", b"test"), (b"sp ace",),
    LONG, (),
]
ASKED = ["a.test", "b.test", "srv.test", "host", "A.TEST.", "c.test", "10.0.0.1", "[::1]", "::1",
         ".".join(label.decode() for label in LONG), "bad..test", "l" * 64 + ".test", "short:a.test"]
TTLS = [0, 0, 1, 30, 300, 2**31 - 1, 2**32 - 1]
QTYPES = [None, None, TYPE_A, TYPE_AAAA, TYPE_SRV, TYPE_CNAME]
QUESTION = b"\xc0\x0c"  # a compression pointer to the question's name
MAX_DATAGRAM = 65507


def wire(labels: tuple[bytes, ...]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def labels_of(name: str) -> tuple[bytes, ...]:
    return tuple(label.encode() for label in name.split(".") if label)


def rr(owner: bytes, rtype: int, rdata: bytes, ttl: int, rclass: int = 1) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def header(qid: int, rcode: int = 0, counts: tuple[int, int, int] = (0, 0, 0), tc: bool = False,
           qr: bool = True, qdcount: int = 1) -> bytes:
    flags = (0x8000 if qr else 0) | 0x0180 | (0x0200 if tc else 0) | rcode
    return struct.pack("!HHHHHH", qid, flags, qdcount, *counts)


class Gen:
    """The replies to one question, drawn from `rng`."""

    def __init__(self, rng: random.Random, q: Query) -> None:
        self.rng = rng
        self.q = q
        self.qlabels = labels_of(q.name)

    def name(self) -> bytes:
        """An owner or target: the question (by pointer, or spelled in upper case), or a name of the pool."""
        rng = self.rng
        pick = rng.random()
        if pick < 0.35:
            return QUESTION
        if pick < 0.45:
            return wire(tuple(label.upper() for label in self.qlabels))
        return wire(rng.choice(POOL))

    def record(self, owner: bytes | None = None) -> bytes:
        rng = self.rng
        owner = owner if owner is not None else (QUESTION if rng.random() < 0.6 else self.name())
        ttl = rng.choice(TTLS)
        kind = rng.choice([self.q.type] * 4 + [TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_SRV, 15, 16, 2])
        if kind == TYPE_A:
            return rr(owner, kind, bytes(rng.randrange(256) for _ in range(4)), ttl)
        if kind == TYPE_AAAA:
            return rr(owner, kind, bytes(rng.randrange(256) for _ in range(16)), ttl)
        if kind == TYPE_CNAME:
            return rr(owner, kind, self.name(), ttl)
        if kind == TYPE_SRV:
            target = self.name() if rng.random() < 0.8 else wire(rng.choice([(b"10", b"0", b"0", b"9"), (b"::1",)]))
            fixed = struct.pack("!HHH", rng.choice([0, 1, 10, 65535]), rng.choice([0, 1, 5, 100, 65535]),
                                rng.choice([0, 80, 65535]))
            return rr(owner, kind, fixed + target, ttl)
        return rr(owner, kind, bytes(rng.randrange(256) for _ in range(rng.randrange(8))), ttl,
                  rclass=rng.choice([1, 1, 3]))

    def sections(self) -> tuple[list[bytes], list[bytes], list[bytes]]:
        rng = self.rng
        shape = rng.random()
        if shape < 0.08:  # many records of the asked name
            count = rng.choice([100, 600, 2000])
            kind = rng.choice([TYPE_A, TYPE_SRV])
            if kind == TYPE_A:
                answers = [rr(QUESTION, TYPE_A, bytes([10, 1, i >> 8 & 255, i & 255]), 300) for i in range(count)]
            else:
                answers = [rr(QUESTION, TYPE_SRV, struct.pack("!HHH", 1, rng.randrange(1, 65536), 80) + QUESTION,
                              300) for _ in range(min(count, 600))]
            return answers, [], []
        if shape < 0.2:  # a CNAME chain through names of its own, ending in an address, a loop or nothing
            length = rng.choice([3, 17, 1500])
            chain = [wire((f"c{i}".encode(), b"t")) for i in range(length)]
            answers = [rr(QUESTION, TYPE_CNAME, chain[0], 60)]
            answers += [rr(chain[i], TYPE_CNAME, chain[i + 1], 60) for i in range(length - 1)]
            end = rng.random()
            if end < 0.4:
                answers.append(rr(chain[-1], TYPE_A, bytes([10, 2, 0, 1]), 60))
            elif end < 0.7:
                answers.append(rr(chain[-1], TYPE_CNAME, QUESTION, 60))
            return answers, [], []
        if shape < 0.3:  # an SRV chain through the additional section
            length = rng.choice([3, 17, 1500])
            chain = [wire((f"s{i}".encode(), b"t")) for i in range(length)]
            fixed = struct.pack("!HHH", 1, 1, 80)
            answers = [rr(QUESTION, TYPE_SRV, fixed + chain[0], 60)]
            extra = [rr(chain[i], TYPE_SRV, fixed + chain[i + 1], 60) for i in range(length - 1)]
            extra.append(rr(chain[-1], TYPE_A, bytes([10, 3, 0, 1]), 60))
            return answers, [], extra
        answers = [self.record() for _ in range(rng.choice([0, 1, 1, 2, 3, 5]))]
        if answers and rng.random() < 0.2:
            answers += [rng.choice(answers)] * rng.randint(1, 3)  # duplicates
        authority = [self.record(self.name()) for _ in range(rng.choice([0, 0, 1]))]
        additional = [self.record(self.name()) for _ in range(rng.choice([0, 0, 1, 3]))]
        return answers, authority, additional

    def valid(self, qid: int | None = None, rcode: int = 0, tc: bool = False, qlabels: tuple[bytes, ...] | None = None,
              qtype: int | None = None) -> bytes:
        answers, authority, additional = self.sections()
        head = header(self.q.id if qid is None else qid, rcode, (len(answers), len(authority), len(additional)), tc)
        question = wire(self.qlabels if qlabels is None else qlabels) + struct.pack(
            "!HH", self.q.type if qtype is None else qtype, 1)
        return head + question + b"".join(answers + authority + additional)

    def malformed(self) -> bytes:
        rng = self.rng
        data = bytearray(self.valid())
        damage = rng.randrange(9)
        if damage == 0:
            return bytes(data[:rng.randrange(len(data))])
        if damage == 1:
            at = rng.choice([4, 6, 8, 10])
            data[at:at + 2] = struct.pack("!H", rng.choice([0, 1, 2, 7, 300, 65535]))
        elif damage == 2:
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(12, len(data))] = rng.randrange(256)
        elif damage == 3:  # a record whose owner is a pointer to itself, or two pointing at each other
            at = len(data)
            loop = bytes([0xC0 | at >> 8, at & 0xFF]) if rng.random() < 0.5 else bytes(
                [0xC0 | (at + 2) >> 8, (at + 2) & 0xFF, 0xC0 | at >> 8, at & 0xFF])
            data += rr(loop, TYPE_A, b"\x01\x02\x03\x04", 30)
            data[6:8] = struct.pack("!H", struct.unpack_from("!H", data, 6)[0] + 1)
        elif damage == 4:  # rdata of the wrong length for its type
            kind, rdata = rng.choice([(TYPE_A, b"\x01\x02\x03"), (TYPE_A, b"\x01" * 5), (TYPE_AAAA, b"\x01" * 4),
                                      (TYPE_CNAME, wire((b"x",)) + b"junk"), (TYPE_SRV, b"\x00" * 4),
                                      (TYPE_SRV, b"\x00" * 6 + b"\x05ab")])
            data += rr(QUESTION, kind, rdata, 30)
            data[6:8] = struct.pack("!H", struct.unpack_from("!H", data, 6)[0] + 1)
        elif damage == 5:  # rdlength past the end
            data += QUESTION + struct.pack("!HHIH", TYPE_A, 1, 30, 60000) + b"\x01\x02\x03\x04"
            data[6:8] = struct.pack("!H", struct.unpack_from("!H", data, 6)[0] + 1)
        elif damage == 6:
            data[2] &= 0x7F  # QR clear: a query, not a reply
        elif damage == 7:
            data[4:6] = struct.pack("!H", rng.choice([0, 2]))
        else:
            data[12] = rng.choice([0x40, 0x80, 0xBF])  # a label with reserved type bits
        return bytes(data)

    def stray(self) -> Answer:
        """A datagram that is not the reply: another id, another question, another port, or garbage."""
        rng = self.rng
        kind = rng.randrange(5)
        if kind == 0:
            return self.valid(qid=(self.q.id + rng.randrange(1, 65536)) % 65536)
        if kind == 1:
            return self.valid(qlabels=rng.choice(POOL[:5]))
        if kind == 2:
            return self.valid(qtype=rng.choice([TYPE_A, TYPE_AAAA, TYPE_SRV, TYPE_CNAME, 255]))
        if kind == 3:
            return ("other", self.valid())
        wrong_id = ((self.q.id + 1) % 65536).to_bytes(2, "big")
        return wrong_id + bytes(rng.randrange(256) for _ in range(rng.randrange(40)))

    def udp(self, timeout: float) -> list[Answer]:
        rng = self.rng
        pick = rng.random()
        if pick < 0.30:
            return [self.valid()]
        if pick < 0.40:
            return [self.valid(rcode=rng.choice([1, 2, 3, 3, 4, 5, 6, 15]))]
        if pick < 0.52:
            return [self.valid(tc=True)]
        if pick < 0.65:
            return [self.malformed()]
        if pick < 0.82:
            strays = [self.stray() for _ in range(rng.choice([1, 2, 5, 200]))]
            return [*strays, self.valid() if rng.random() < 0.8 else self.malformed(), self.valid()]
        if pick < 0.88:
            return []
        if pick < 0.93:
            return [bytes(rng.randrange(256) for _ in range(rng.randrange(30)))]
        return [self.valid(), self.valid()]  # the same question answered twice

    def tcp(self, timeout: float) -> list[Answer]:
        rng = self.rng
        body = self.valid()[:65535]  # what a length prefix can say
        prefix = struct.pack("!H", len(body))
        pick = rng.random()
        if pick < 0.30:
            return [body]
        if pick < 0.40:
            return [self.valid(tc=True)]
        if pick < 0.48:
            return [Stream(struct.pack("!H", min(65535, len(body) + rng.choice([1, 100, 65535]))) + body)]
        if pick < 0.56:
            return [Stream(struct.pack("!H", max(0, len(body) - rng.choice([1, 5, len(body)]))) + body)]
        if pick < 0.64:
            return [Stream((prefix + body)[:rng.randrange(len(body) + 2)])]
        if pick < 0.78:  # in pieces, back to back: a byte at a time (a large reply: 997 bytes, or it takes seconds)
            return [Stream(prefix + body, chunk=1 if len(body) < 2000 else 997)]
        if pick < 0.84:  # too slow: each piece comes 1.5 timeouts after the last (a read's bound)
            return [Stream(prefix + body, chunk=max(1, len(body) // 3), pause=timeout * 1.5)]
        if pick < 0.90:  # connected, then silent past the timeout
            return [Stream(b"\x00", pause=timeout * 3)]
        return [self.malformed()]


def clip(item: Answer) -> Answer:
    """A datagram cut to the most UDP carries (a reply longer than that arrives cut: malformed)."""
    if isinstance(item, bytes):
        return item[:MAX_DATAGRAM]
    if isinstance(item, tuple):
        return item[0], item[1][:MAX_DATAGRAM]
    return item


@dataclass
class Case:
    """A generated nameserver (its replies a function of the case and the question) and a resolver's settings."""

    index: int
    settings: dict[str, Any]
    nursery: bool
    ops: list[tuple[str, str, Any, float]] = field(default_factory=list)  # (op, name, qtype or port, clock step)

    def answer(self, q: Query) -> list[Answer]:
        rng = random.Random(f"{SEED}|{self.index}|{q.name}|{q.type}|{q.transport}")
        gen = Gen(rng, q)
        if q.transport == "tcp":
            return gen.tcp(self.settings["timeout"])
        return [clip(item) for item in gen.udp(self.settings["timeout"])]


def make_case(index: int) -> Case:
    rng = random.Random(f"{SEED}|case|{index}")
    order = rng.choice([["LAST", "SRV", "A", "CNAME"], ["LAST", "SRV", "A", "AAAA", "CNAME"],
                        rng.sample(["LAST", "SRV", "A", "AAAA", "CNAME"], rng.randint(1, 5))])
    settings: dict[str, Any] = {
        "timeout": rng.choice([0.05, 0.1]), "attempts": rng.choice([1, 2]), "order": order,
        "search": rng.choice([[], [], ["test"], ["x.test", "test"]]), "ndots": rng.choice([1, 2]),
        "cache_size": rng.choice([2, 50, 10000, 10000]), "no_sync": rng.random() < 0.2,
        "stale_ttl": rng.choice([0, 30]), "valid_ttl": rng.choice([None, None, 0, 5]), "rotate": rng.random() < 0.2,
        "rng": random.Random(index),
    }
    case = Case(index, settings, nursery=rng.random() < 0.6)
    for _ in range(rng.randint(1, 5)):
        step = rng.choice([0, 0, 0.5, 2, 400, 1e10])
        if rng.random() < 0.5:
            case.ops.append(("resolve", rng.choice(ASKED), rng.choice(QTYPES), step))
        else:
            case.ops.append(("toip", rng.choice(ASKED), rng.choice([None, 80]), step))
    return case


# ===================================================================================================================
# Checking
# ===================================================================================================================


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def check_records(records: list[Record], qtype: int | None, where: str) -> None:
    assert records, f"{where}: resolve returned no records"
    assert all(isinstance(r, Record) for r in records), f"{where}: {records!r}"
    assert len({(r.name, r.type) for r in records}) == 1, f"{where}: records of several names or types: {records!r}"
    kinds = {qtype} if qtype is not None else {TYPE_A, TYPE_AAAA, TYPE_SRV}
    assert records[0].type in kinds, f"{where}: type {records[0].type} answered for {qtype}"
    for r in records:
        if r.type in (TYPE_A, TYPE_AAAA):
            assert is_ip(r.address), f"{where}: address {r.address!r} is not an IP literal"


def check_error(e: DnsError, where: str) -> None:
    text = str(e)
    assert e.message and "\n" not in text and "\r" not in text, f"{where}: DnsError text {text!r} is not one line"


def dns_tasks() -> list[str]:
    """The tasks now running whose coroutine is the DNS client's."""
    found: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        code = getattr(task.coro, "cr_code", None)
        if code is not None and "gateway/dns/" in code.co_filename:
            found.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)
    walk(trio.lowlevel.current_root_task())
    return found


def bound(case: Case) -> float:
    return case.settings["timeout"] * case.settings["attempts"] + MARGIN_S


async def run_op(r: Resolver, case: Case, op: str, name: str, arg: Any, where: str) -> None:
    began = trio.current_time()
    with trio.fail_after(bound(case) + 5):  # a hang is a failure, not a stuck run
        try:
            if op == "resolve":
                check_records(await r.resolve(name, arg), arg, where)
            else:
                address, port = await r.toip(name, arg)
                assert is_ip(address), f"{where}: toip gave {address!r}, not an IP literal"
                assert port is None or 0 < port < 65536, f"{where}: toip gave port {port!r}"
                literal = name[1:-1] if name.startswith("[") else name
                if is_ip(literal):
                    assert address == literal, f"{where}: the IP literal {name} was answered with {address}"
        except DnsError as e:
            check_error(e, where)
    took = trio.current_time() - began
    assert took <= bound(case), f"{where}: took {took:.2f}s (timeout x attempts + margin: {bound(case):.2f}s)"


async def run_case(server: ScriptedDns, case: Case) -> None:
    server.answer = case.answer
    clock = FakeClock()
    settings = {**case.settings, "nameservers": [("127.0.0.1", server.port)], "hosts": {}, "clock": clock}
    r: Resolver | None = None

    async def ops(resolver: Resolver) -> None:
        for i, (op, name, arg, step) in enumerate(case.ops):
            clock.now += step
            where = f"case {case.index} (make_case({case.index})) op {i}: {op}({name!r}, {arg!r})"
            await run_op(resolver, case, op, name, arg, where)
            size = len(resolver._cache.items)
            assert size <= case.settings["cache_size"], f"{where}: {size} cache keys"
    if case.nursery:
        async with open_resolver(**settings) as r:
            await ops(r)
    else:
        r = Resolver(**settings)
        await ops(r)
    assert not r._inflight, f"case {case.index}: queries still in flight: {list(r._inflight)}"
    assert not dns_tasks(), f"case {case.index}: tasks of the resolver still running: {dns_tasks()}"


# ===================================================================================================================
# The fuzz
# ===================================================================================================================


async def test_resolver_answers_or_fails_cleanly_whatever_the_nameserver_says() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, lambda q: [])
        for index in range(RESOLVER_CASES):
            await run_case(server, make_case(index))
        nursery.cancel_scope.cancel()


def make_targets(index: int) -> tuple[Case, list[TargetInfo], bool]:
    case = make_case(10_000 + index)
    rng = random.Random(f"{SEED}|targets|{index}")
    names = rng.sample([n for n in ASKED if not is_ip(n.strip("[]"))], rng.randint(1, 3))
    return case, [TargetInfo(n, rng.choice([80, 9000]), rng.choice([0, 1, 100])) for n in names] + [
        TargetInfo("127.0.0.9", 80)], rng.random() < 0.3


@pytest.fixture
def patched_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Resolver]]:
    """The discovery module's DNS client: the last resolver put in the list."""
    current: list[Resolver] = []
    monkeypatch.setattr(process, "resolver", lambda: current[-1])
    yield current


async def test_resolve_targets_makes_ip_targets_reachable_names_or_weight_0_names(
        patched_resolver: list[Resolver]) -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, lambda q: [])
        for index in range(TARGET_CASES):
            case, targets, use_srv_name = make_targets(index)
            server.answer = case.answer
            where = f"targets case {index} (make_targets({index})): {targets!r}"
            async with open_resolver(**case.settings, nameservers=[("127.0.0.1", server.port)], hosts={}) as r:
                patched_resolver.append(r)
                began = trio.current_time()
                with trio.fail_after(discovery_dns.lookup_bound_s(r) + 5):
                    got, renew = await resolve_targets(targets, use_srv_name)
                took = trio.current_time() - began
                assert took <= discovery_dns.lookup_bound_s(r) + MARGIN_S, f"{where}: took {took:.2f}s"
                assert renew >= discovery_dns.MIN_RENEW_S, f"{where}: renew in {renew}"
                names = {t.host for t in targets}
                for t in got:
                    assert isinstance(t, TargetInfo), f"{where}: {t!r}"
                    if not is_ip(t.host) and t.weight == 0:  # a name that did not resolve
                        assert t.host in names and t.hostname == t.host, f"{where}: {t!r}"
                    elif not is_ip(t.host):  # an SRV record's target, or a name answered with TTL 0 (itself)
                        assert (valid_host(t.host) or t.host in names) and t.hostname, f"{where}: {t!r}"
                    assert 0 < t.port < 65536, f"{where}: {t!r}"
            assert not dns_tasks(), f"{where}: tasks of the resolver still running: {dns_tasks()}"
        nursery.cancel_scope.cancel()


# ===================================================================================================================
# What the fuzz found
# ===================================================================================================================


def resolver_on(server: ScriptedDns) -> Resolver:
    return Resolver(nameservers=[("127.0.0.1", server.port)], hosts={}, timeout=0.5, attempts=1)


async def test_cname_chain_longer_than_16_names_is_a_dns_error_not_a_recursion_error() -> None:
    # one reply held a chain of 1,500 CNAMEs, each followed from the cache: RecursionError escaped
    def answer(q: Query) -> list[Answer]:
        chain = [cname(q.name, "c0.t")] + [cname(f"c{i}.t", f"c{i + 1}.t") for i in range(1499)]
        return [reply(q.id, q.name, q.type, answers=[*chain, a("c1499.t", "10.0.0.1")])]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        with trio.fail_after(5), pytest.raises(DnsError, match="more than 16 CNAME or SRV records followed"):
            await resolver_on(server).toip("a.test")
        nursery.cancel_scope.cancel()


async def test_srv_chain_longer_than_16_names_is_a_dns_error_not_a_recursion_error() -> None:
    def answer(q: Query) -> list[Answer]:
        chain = [srv(f"s{i}.t", 1, 1, 80, f"s{i + 1}.t") for i in range(1499)]
        return [reply(q.id, q.name, q.type, answers=[srv(q.name, 1, 1, 80, "s0.t")],
                      additional=[*chain, a("s1499.t", "10.0.0.1")])]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        with trio.fail_after(5), pytest.raises(DnsError, match="more than 16 CNAME or SRV records followed"):
            await resolver_on(server).toip("a.test")
        nursery.cancel_scope.cancel()


async def test_cname_chain_of_16_names_is_followed() -> None:
    def answer(q: Query) -> list[Answer]:
        chain = [cname(q.name, "c0.t")] + [cname(f"c{i}.t", f"c{i + 1}.t") for i in range(15)]
        return [reply(q.id, q.name, q.type, answers=[*chain, a("c15.t", "10.0.0.1")])]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        with trio.fail_after(5):
            assert await resolver_on(server).toip("a.test") == ("10.0.0.1", None)
        nursery.cancel_scope.cancel()


async def test_error_text_stays_one_line_when_a_cname_target_holds_a_newline() -> None:
    # a CNAME to the name b"new\nline.test": its failure's text had a line break
    def answer(q: Query) -> list[Answer]:
        if q.name == "a.test":
            target = rr(b"\xc0\x0c", TYPE_CNAME, wire((b"new\nline", b"test")), 300)
            return [Stream(header(q.id, counts=(1, 0, 0)) + wire((b"a", b"test")) + struct.pack("!HH", q.type, 1)
                           + target)]
        return [reply(q.id, q.name, q.type, rcode=3)]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        with trio.fail_after(5), pytest.raises(DnsError) as caught:
            await resolver_on(server).resolve("a.test")
        assert str(caught.value) == "new\\nline.test: dns server error: 3 name error"
        assert caught.value.name == "new\nline.test"
        nursery.cancel_scope.cancel()


async def test_srv_weights_summing_to_billions_are_served_in_turn_without_a_list_of_that_size() -> None:
    # 1,000 SRV records of weights near 65535 (gcd 1): the second toip built a list of 65 million entries
    table = {("w.test", TYPE_SRV): [srv("w.test", 1, 65535 - i, 1000 + i, "10.0.0.1") for i in range(1000)]}
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records(table))
        r = resolver_on(server)
        with trio.fail_after(2):
            ports = [(await r.toip("w.test"))[1] for _ in range(50)]
        assert ports[0] == 1000 and all(port is not None and 1000 <= port < 2000 for port in ports)
        nursery.cancel_scope.cancel()


async def test_srv_weighted_round_is_served_to_its_end_before_the_next_starts() -> None:
    table = {("w.test", TYPE_SRV): [srv("w.test", 1, 2, 1, "10.0.0.1"), srv("w.test", 1, 4, 2, "10.0.0.1"),
                                    srv("w.test", 1, 6, 3, "10.0.0.1"), srv("w.test", 2, 9, 4, "10.0.0.1")]}
    async with trio.open_nursery() as nursery:
        server = await start(nursery, records(table))
        r = resolver_on(server)
        ports = [(await r.toip("w.test"))[1] for _ in range(12)]  # gcd 2: a round is 1 + 2 + 3 turns
        assert ports[0] == 1
        for round_ in (ports[:6], ports[6:]):
            assert sorted(round_) == [1, 2, 2, 3, 3, 3]
        nursery.cancel_scope.cancel()


async def test_records_a_reply_gives_an_ip_literal_never_answer_for_the_literal() -> None:
    # an additional A record owned by "10.0.0.1" made toip("10.0.0.1") answer 6.6.6.6
    def answer(q: Query) -> list[Answer]:
        return [reply(q.id, q.name, q.type, answers=[a(q.name, "10.0.0.2")],
                      additional=[a("10.0.0.1", "6.6.6.6"), cname("10.0.0.1", "evil.test")])]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        r = resolver_on(server)
        assert await r.toip("x.test") == ("10.0.0.2", None)
        assert await r.toip("10.0.0.1") == ("10.0.0.1", None)
        with pytest.raises(DnsError, match="bad IPv4"):
            await r.resolve("10.0.0.1", TYPE_CNAME)
        nursery.cancel_scope.cancel()


async def test_records_of_a_name_with_a_colon_never_answer_for_another_name() -> None:
    # the records of "short:a.test" were cached under the key of a.test's search result ("1:short:a.test")
    def answer(q: Query) -> list[Answer]:
        owner = wire((b"short:a", b"test"))
        return [reply(q.id, q.name, q.type, answers=[a(q.name, "10.0.0.2")], additional=[rr(
            owner, TYPE_A, bytes([6, 6, 6, 6]), 300)])]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        r = resolver_on(server)
        assert await r.toip("x.test") == ("10.0.0.2", None)
        assert [x.name for x in await r.resolve("short:a.test", TYPE_A)] == ["short:a.test"]
        assert [(x.name, x.address) for x in await r.resolve("a.test", TYPE_A)] == [("a.test", "10.0.0.2")]
        nursery.cancel_scope.cancel()


async def test_srv_target_holding_a_nul_byte_makes_a_weight_0_target(patched_resolver: list[Resolver]) -> None:
    # an SRV target b"\x00.test": is_ip (socket.inet_pton) raised ValueError out of resolve_targets
    def answer(q: Query) -> list[Answer]:
        if q.type != TYPE_SRV:
            return [reply(q.id, q.name, q.type, rcode=3)]
        record = rr(QUESTION, TYPE_SRV, struct.pack("!HHH", 1, 1, 80) + wire((b"\x00", b"test")), 300)
        return [Stream(header(q.id, counts=(1, 0, 0)) + wire(labels_of(q.name)) + struct.pack("!HH", q.type, 1)
                       + record)]
    async with trio.open_nursery() as nursery:
        server = await start(nursery, answer)
        patched_resolver.append(resolver_on(server))
        with trio.fail_after(5):
            got, _ = await resolve_targets([TargetInfo("svc.test", 9000)])
        assert got == [TargetInfo("svc.test", 9000, 0, "svc.test")]
        nursery.cancel_scope.cancel()


def test_is_ip_of_a_host_holding_a_nul_byte_is_false() -> None:
    assert is_ip("10.0.0.1\x00") is False
