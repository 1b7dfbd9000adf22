"""Seeded, bounded fuzz of the discovery clients (etcd and Consul, through run_discovery) against hostile registries.

Each case starts a small fake registry on 127.0.0.1 (raw Trio sockets, so framing can be broken at will) and the
gateway's discovery on a config built by parse_config, as the loader builds it. The registry first answers well
with a target set S1 (which may hold individually invalid entries: bad values, ports, weights, hosts, shapes);
then it answers 1-3 requests with mutations: wrong JSON shapes, invalid base64, non-UTF-8, deep nesting, NaN,
truncated or oversized bodies, wrong Content-Length, broken chunked framing, 4xx/5xx, stalls, a close mid-body,
Consul index headers that go backwards or are not numbers, etcd watch streams with garbage lines; then it heals
with a set S2. The rules checked are the README's ("Health checks and discovery") and the modules' docstrings,
with Envoy's and Kong's treatment of a bad registry (keep the last good set, never apply a half-parsed update):

- no exception escapes run_discovery, and every case ends within its budget (no hang past the timeouts);
- on_change receives only valid, complete lists: exactly S1's valid entries, then S2's, never anything else
  (an answer that is malformed as a whole is refused, and the last good list stays); an entry that is invalid
  on its own is dropped with a warning naming it (the etcd key; the Consul entry's position and ID);
- after the registry heals, the client converges to S2 within CONVERGE seconds;
- every log line is one line, bounded, without a traceback; a refused answer is logged.

The master seed is fixed and each case derives its own generator from (kind, index): a failure reproduces by its
test id (test_etcd_fuzz[17]). DISCFUZZ_CASES=N runs N cases of each kind (default: 106 etcd cases, one opening
with each etcd mutation, and 60 Consul cases). What the fuzz found is minimized at the end of the file.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import trio
import trio.testing

import gateway.discovery.consul as disc_consul
import gateway.discovery.http as disc_http
from gateway.config import parse_config
from gateway.discovery import TargetInfo, run_discovery
from gateway.discovery.consul import next_index, parse_health_entries
from gateway.discovery.etcd import RangeResponse, decode_answer, parse_target_value
from gateway.discovery.http import TransportError, excerpt
from gateway.discovery.types import normalise

MASTER_SEED = 20261204
ETCD_CASES = int(os.environ.get("DISCFUZZ_CASES", "106"))
CONSUL_CASES = int(os.environ.get("DISCFUZZ_CASES", "60"))
TIMEOUT_S = 0.25  # discovery.timeout_s of every case
WAIT_S = 0.2  # consul wait_s
RETRY = (0.005, 0.025)  # retry_initial_s, retry_max_s (short: a case waits out a backoff after each refusal)
DEFAULT_WEIGHT = 7
CASE_BUDGET = 8.0  # a whole case (start, S1, mutations, S2)
CONVERGE = 2.0  # from healing to S2 on_change
RETRY_BOUND = 2.0  # from the last mutation served to the client's next request
MAX_BODY = 1 << 20  # the http client's limit, lowered for the fuzz (bodies of 1.5 MiB exceed it)
PREFIX = "/fz/up/"
SERVICE = "fz"
UPSTREAM = "fz"

# ---- target sets ----------------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One registry entry: an etcd key and value, or a Consul health entry, and what the client must make of it."""

    name: str  # the etcd key (after the prefix) or the Consul service ID
    expected: TargetInfo | None  # None: no target (invalid, or a Consul instance that is not passing)
    invalid: str = ""  # why it is invalid ("" when valid or merely filtered): a warning must name it
    etcd_value: bytes = b""
    consul: Any = None
    plain_name: bool = True  # the name is printable ASCII, so a log line can be searched for it


def _host(rng: random.Random, i: int) -> tuple[str, str]:
    """(host as TargetInfo holds it, host as written in host:port)."""
    kind = rng.randrange(3)
    if kind == 0:
        h = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{i}"
        return h, h
    if kind == 1:
        h = f"mcp-{i}-{rng.randrange(1000)}.internal"
        return h, h
    h = f"fd00::{i:x}:{rng.randrange(1, 65536):x}"
    return h, f"[{h}]"


BAD_ETCD_VALUES: list[bytes] = [
    b"{not json", b'{"host": "a:1"}', b'{"target": 5}', b'{"target": null}', b'{"target": ["a:1"]}',
    b'{"target": "h:1", "weight": "5"}', b'{"target": "h:1", "weight": -1}', b'{"target": "h:1", "weight": 70000}',
    b'{"target": "h:1", "weight": 1.5}', b'{"target": "h:1", "weight": true}', b'{"target": "h:1", "weight": null}',
    b'{"target": "h:1", "weight": 1180591620717411303424}', b'{"target": "h:1", "weight": NaN}',
    b'{"target": "h:1"} trailing', b"h", b"h:0", b"h:65536", b"h:99999999", b"h:-1", b"", b"   ",
    b"\xff\xfe10.0.0.1:80", b"10.0.0.\xc3:80", b"a b:80", b"h\x01x:80", b"h\x00:80", b"[zz]:80", b'"unterminated',
    b'["10.0.0.1:80"]', "h:\u0668\u0660".encode(), "h:\u00b2\u00b3".encode(), b"10.0.0.1:80:90", b"null", b"5",
    b"true", b"a" * 100_000, b'"\\u0000h:1"', b"[::1]", b"[::1]:", b":80", b"h/x:80",
]


def etcd_entry(rng: random.Random, i: int) -> Entry:
    weird = rng.random() < 0.08
    name = rng.choice([f"t{i}\nx", f"t{i}\u2028", f"t{i} \t"]) if weird else f"t{i}"
    if rng.random() < 0.3:
        return Entry(name, None, "bad value", etcd_value=rng.choice(BAD_ETCD_VALUES), plain_name=not weird)
    host, written = _host(rng, i)
    port = rng.choice([1, 80, 8080, 65535, rng.randrange(1, 65536)])
    hp = f"{written}:{port}"
    form = rng.randrange(5)
    weight: int | None = rng.choice([None, 0, 1, 100, 65535, rng.randrange(65536)]) if form < 2 else None
    if form == 0:
        doc: dict[str, Any] = {"target": hp}
        if weight is not None:
            doc["weight"] = weight
        value = json.dumps(doc).encode()
    elif form == 1:
        doc = {"id": f"x{i}", "target": hp, "tags": ["a"], "meta": {"k": [1, None]}}
        if weight is not None:
            doc["weight"] = weight
        value = json.dumps(doc, indent=rng.choice([None, 2])).encode()
    elif form == 2:
        value = hp.encode()
    elif form == 3:
        value = json.dumps(hp).encode()
    else:
        value = f" \t{hp} \n".encode()
    return Entry(name, TargetInfo(host, port, DEFAULT_WEIGHT if weight is None else weight), etcd_value=value,
                 plain_name=not weird)


PASSING = [{"Node": "n1", "CheckID": "serfHealth", "Status": "passing"}]


def _svc(sid: str, address: Any, port: Any, weights: Any = None) -> dict[str, Any]:
    svc: dict[str, Any] = {"ID": sid, "Service": SERVICE, "Tags": ["mcp"], "Address": address, "Port": port,
                           "Meta": {}, "EnableTagOverride": False}
    if weights is not None:
        svc["Weights"] = weights
    return svc


def _node(address: Any = "10.9.9.9") -> dict[str, Any]:
    return {"ID": "n-id", "Node": "n1", "Address": address, "Datacenter": "dc1"}


def consul_entry(rng: random.Random, i: int) -> Entry:
    sid = f"{SERVICE}-{i}"
    roll = rng.random()
    if roll < 0.1:  # not passing: filtered, not invalid (no warning owed)
        status = rng.choice(["critical", "warning", "maintenance"])
        checks = PASSING + [{"CheckID": f"c{i}", "Status": status}]
        return Entry(sid, None, consul={"Node": _node(), "Service": _svc(sid, "10.1.1.1", 80), "Checks": checks})
    if roll < 0.4:
        sid = f"bad-{i}"
        ok_svc = _svc(sid, "10.1.1.1", 80)
        bad: list[Any] = [
            {"Node": _node(), "Service": _svc(sid, "10.1.1.1", port), "Checks": PASSING}
            for port in ("80", True, False, 0, 70000, -1, 1.5, None, 2**70)
        ] + [
            {"Node": _node(), "Service": _svc(sid, addr, 80), "Checks": PASSING}
            for addr in (5, "a b", "x\r\nHost: evil", "h\x01", "[::1]", ["10.0.0.1"], {"a": 1}, "h:80", "h/x")
        ] + [
            {"Node": _node(""), "Service": _svc(sid, "", 80), "Checks": PASSING},
            {"Node": _node(None), "Service": _svc(sid, None, 80), "Checks": PASSING},
            {"Node": "n1", "Service": _svc(sid, "", 80), "Checks": PASSING},
            {"Node": _node(), "Service": {k: v for k, v in ok_svc.items() if k != "Port"}, "Checks": PASSING},
        ] + [
            {"Node": _node(), "Service": _svc(sid, "10.1.1.1", 80, weights), "Checks": PASSING}
            for weights in ({"Passing": -1, "Warning": 1}, {"Passing": "5", "Warning": 1}, {"Passing": 70000},
                            {"Passing": True}, {"Passing": 2.5}, "heavy", [1, 2])
        ] + [
            {"Node": _node(), "Service": ok_svc, "Checks": checks}
            for checks in (5, "passing", {"Status": "passing"}, [5], [{"Status": ["passing"]}],
                           [{"Status": {"a": 1}}], [None])
        ]
        return Entry(sid, None, "bad instance", consul=rng.choice(bad))
    if roll < 0.47:  # not even an instance: named by position only
        shape = rng.choice([5, "garbage", None, [], [1, 2], True,
                            {"Node": _node(), "Service": rng.choice([[], "svc", 5, None, True]), "Checks": PASSING}])
        return Entry(f"#{i}", None, "bad entry", consul=shape, plain_name=False)
    host, written = _host(rng, i)
    port = rng.randrange(1, 65536)
    weight: int | None = rng.choice([None, 0, 1, 100, 65535, rng.randrange(65536)])
    weights = None if weight is None else {"Passing": weight, "Warning": 1}
    if rng.random() < 0.25 and ":" not in host:  # no service address: the node's
        svc, node = _svc(sid, "", port, weights), _node(host)
    else:
        svc, node = _svc(sid, host, port, weights), _node()
    checks = PASSING + [{"CheckID": f"service:{sid}", "Status": "passing", "Output": "ok"}] * rng.randrange(2)
    return Entry(sid, TargetInfo(host, port, DEFAULT_WEIGHT if weight is None else weight),
                 consul={"Node": node, "Service": svc, "Checks": checks})


def gen_state(rng: random.Random, kind: str, start: int) -> list[Entry]:
    make = etcd_entry if kind == "etcd" else consul_entry
    entries = [make(rng, start + i) for i in range(rng.randrange(0, 6))]
    if all(e.expected is None for e in entries):  # at least one target, so S1 and S2 differ
        while True:
            e = make(rng, start + len(entries))
            if e.expected is not None:
                entries.append(e)
                break
            entries.append(e)
    return entries


def expected(entries: list[Entry]) -> list[TargetInfo]:
    return normalise([e.expected for e in entries if e.expected is not None])


def alt_targets(rng: random.Random) -> list[tuple[str, int]]:
    """Targets a malformed answer carries next to its defect: applying any part of it shows as a wrong list."""
    return [(f"10.66.6.{j}", 666 + j) for j in range(1, rng.randrange(2, 4))]


# ---- HTTP bytes -----------------------------------------------------------------------------------------------------


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def http(status: int, body: bytes, headers: list[tuple[str, str]] | None = None, framing: str = "cl",
         rng: random.Random | None = None) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
              500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "X")
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers or []]
    if framing == "cl":
        head.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
    if framing == "chunked":
        head.append("Transfer-Encoding: chunked")
        parts = [("\r\n".join(head) + "\r\n\r\n").encode("latin-1")]
        r = rng or random.Random(0)
        i = 0
        while i < len(body):
            n = r.randrange(1, 64) if r.random() < 0.5 else r.randrange(1, 4096)
            parts.append(chunk(body[i:i + n]))
            i += n
        parts.append(b"0\r\n\r\n")
        return b"".join(parts)  # (joined once: adding each chunk to the bytes so far was quadratic in a 1.5 MiB body)
    head[0] = head[0].replace("HTTP/1.1", "HTTP/1.0")  # close-delimited
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes


async def read_request(stream: trio.SocketStream) -> Request | None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    while len(body) < length:
        data = await stream.receive_some(65536)
        if not data:
            return None
        body += data
    url = urlsplit(target)
    return Request(method, url.path, parse_qs(url.query, keep_blank_values=True), body)


# ---- the fake registries ------------------------------------------------------------------------------------------

Act = Callable[["Fake", trio.SocketStream, Request], Awaitable[None]]


@dataclass
class Mutation:
    name: str
    where: str  # "range" | "watch" | "health": the request it answers
    refuse: bool  # the whole answer must be refused (the client keeps its list and logs); else it is benign
    act: Act


KEEP = object()  # "leave this part of the good answer as it is"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class LoopbackServer:
    """A fake registry's listener on 127.0.0.1: `serve` (nursery.start) gives the port; `handle` serves a stream."""

    port = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        raise NotImplementedError

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self.handle, listeners)


class Fake(LoopbackServer):
    """A registry whose good answers follow `entries`, and which answers the requests a plan names with mutations."""

    def __init__(self, kind: str, entries: list[Entry], rng: random.Random) -> None:
        self.kind = kind
        self.rng = rng
        self.revision = 10
        self.history: list[tuple[int, dict[bytes, bytes]]] = []
        self.entries: list[Entry] = []
        self.index = 100
        self.changed = trio.Event()
        self.plan: list[Mutation] = []
        self.planned = 0
        self.served: list[str] = []
        self.after_plan = trio.Event()
        self.compact_watches = False
        self.requests: list[tuple[float, str]] = []
        self.idle = trio.Event()  # a client's watch or blocking query waits for a change (nothing pending)
        self.port = 0
        self.set_state(entries)

    # -- state ----------------------------------------------------------------------------------------------------

    def kvs(self) -> dict[bytes, bytes]:
        return {(PREFIX + e.name).encode("utf-8", "surrogateescape"): e.etcd_value for e in self.entries}

    def set_state(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.revision += 1
        self.index += 1
        self.history.append((self.revision, self.kvs()))
        self.wake()

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def begin(self, plan: list[Mutation]) -> None:
        """From now on, answer the requests the plan names with its mutations; move the client off its idle wait."""
        self.plan = list(plan)
        self.planned = len(plan)
        if self.kind == "etcd":
            self.compact_watches = True  # a legitimate answer that makes the client range and watch again
        else:
            self.index += 1  # the blocking query returns (same content, new index) and the next one comes
        self.wake()

    def state_at(self, revision: int) -> dict[bytes, bytes]:
        state: dict[bytes, bytes] = {}
        for rev, kvs in self.history:
            if rev <= revision:
                state = kvs
        return state

    # -- good answers ---------------------------------------------------------------------------------------------

    def range_doc(self, kvs: dict[bytes, bytes] | None = None, revision: int | None = None) -> dict[str, Any]:
        rev = self.revision if revision is None else revision
        items = self.kvs() if kvs is None else kvs
        doc: dict[str, Any] = {"header": {"cluster_id": "14841639068965178418", "member_id": "10276657743932975437",
                                          "revision": str(rev), "raft_term": "2"}, "count": str(len(items))}
        if items:
            doc["kvs"] = [{"key": b64(k), "create_revision": "3", "mod_revision": str(rev), "version": "1",
                           "value": b64(v)} for k, v in sorted(items.items())]
        return doc

    def health_doc(self) -> list[Any]:
        return [e.consul for e in self.entries]

    def header(self, rev: int | None = None) -> dict[str, str]:
        return {"cluster_id": "1", "member_id": "2", "revision": str(self.revision if rev is None else rev),
                "raft_term": "2"}

    async def good(self, stream: trio.SocketStream, req: Request, where: str) -> None:
        if where == "range":
            await stream.send_all(http(200, json.dumps(self.range_doc()).encode()))
        elif where == "watch":
            await self.good_watch(stream, req)
        elif where == "health":
            await self.good_health(stream, req)
        else:
            await stream.send_all(http(404, b"404 page not found\n"))

    async def good_watch(self, stream: trio.SocketStream, req: Request) -> None:
        start = int(json.loads(req.body)["create_request"]["start_revision"])
        seen = self.state_at(start - 1)
        await stream.send_all(http(200, b"", framing="chunked")[:-5])  # the head, no end
        created = {"result": {"header": self.header(), "created": True}}
        await stream.send_all(chunk(json.dumps(created).encode() + b"\n"))
        while True:
            current = self.kvs()
            events = [{"kv": {"key": b64(k), "create_revision": "3", "mod_revision": str(self.revision),
                              "version": "1", "value": b64(v)}} for k, v in current.items() if seen.get(k) != v]
            events += [{"type": "DELETE", "kv": {"key": b64(k), "mod_revision": str(self.revision)}}
                       for k in seen if k not in current]
            if events:
                line = {"result": {"header": self.header(), "events": events}}
                await stream.send_all(chunk(json.dumps(line).encode() + b"\n"))
            seen = current
            if self.compact_watches or self.plan:  # a plan is pending: move the client on to its next range
                self.compact_watches = False
                line = {"result": {"header": self.header(), "canceled": True, "compact_revision": str(self.revision)}}
                await stream.send_all(chunk(json.dumps(line).encode() + b"\n") + b"0\r\n\r\n")
                return
            self.idle.set()
            await self.changed.wait()

    async def good_health(self, stream: trio.SocketStream, req: Request, body: bytes | None = None) -> None:
        index = int(req.query.get("index", ["0"])[0])
        wait = req.query.get("wait", ["300s"])[0]
        seconds = float(wait[:-2]) / 1000 if wait.endswith("ms") else float(wait[:-1])
        if index > 0 and index >= self.index:
            with trio.move_on_after(seconds):
                while index >= self.index:
                    self.idle.set()
                    await self.changed.wait()
        payload = json.dumps(self.health_doc()).encode() if body is None else body
        await stream.send_all(http(200, payload, [("X-Consul-Index", str(self.index)),
                                                  ("X-Consul-Knownleader", "true")]))

    # -- serving --------------------------------------------------------------------------------------------------

    def where(self, req: Request) -> str:
        if req.path == "/v3/kv/range":
            return "range"
        if req.path == "/v3/watch":
            return "watch"
        if req.path == f"/v1/health/service/{SERVICE}":
            return "health"
        return "other"

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                req = await read_request(stream)
                if req is None:
                    return
                where = self.where(req)
                self.requests.append((time.monotonic(), where))
                if self.planned and not self.plan and len(self.served) == self.planned:
                    self.after_plan.set()
                if self.plan and self.plan[0].where == where:
                    mutation = self.plan.pop(0)
                    self.served.append(mutation.name)
                    await mutation.act(self, stream, req)
                else:
                    await self.good(stream, req, where)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


# ---- mutations ----------------------------------------------------------------------------------------------------


def send(data: bytes) -> Act:
    async def act(fake: Fake, stream: trio.SocketStream, req: Request) -> None:
        await stream.send_all(data)
    return act


def send_then_stall(data: bytes, then: bytes = b"", seconds: float = 1.5) -> Act:
    """Send `data`, then drip `then` a byte at a time until `seconds` passed (slower than any timeout)."""
    async def act(fake: Fake, stream: trio.SocketStream, req: Request) -> None:
        await stream.send_all(data)
        with trio.move_on_after(seconds):
            for b in then:
                await trio.sleep(0.1)
                await stream.send_all(bytes([b]))
            await trio.sleep_forever()
    return act


def drip(data: bytes, pieces: int) -> Act:
    """Send `data` in small pieces with short pauses: slow, but well within the timeout."""
    async def act(fake: Fake, stream: trio.SocketStream, req: Request) -> None:
        step = max(1, len(data) // pieces)
        for i in range(0, len(data), step):
            await stream.send_all(data[i:i + step])
            await trio.sleep(0.005)
    return act


def wire_mutations(rng: random.Random, body: bytes, status_body: Callable[[int], bytes],
                   headers: list[tuple[str, str]]) -> list[tuple[str, Act]]:
    """Transport-level breakage of an answer whose body is `body` (a well-formed but wrong answer)."""
    half = max(1, len(body) // 2)
    ok_head = http(200, b"", headers)[: -len(b"Content-Length: 0\r\n\r\n")]
    return [
        ("cl_long", send(ok_head + f"Content-Length: {len(body) + 50}\r\n\r\n".encode() + body)),
        ("cl_short", send(ok_head + f"Content-Length: {half}\r\n\r\n".encode() + body)),
        ("chunk_bad_hex", send(ok_head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + body + b"\r\n0\r\n\r\n")),
        ("chunk_no_crlf", send(ok_head + b"Transfer-Encoding: chunked\r\n\r\n"
                               + f"{half:x}\r\n".encode() + body + b"0\r\n\r\n")),
        ("chunk_short_close", send(ok_head + b"Transfer-Encoding: chunked\r\n\r\n"
                                   + f"{len(body) + 100:x}\r\n".encode() + body)),
        ("chunk_no_end", send(ok_head + b"Transfer-Encoding: chunked\r\n\r\n" + chunk(body))),
        ("close_mid_head", send(ok_head[: len(ok_head) // 2])),
        ("close_mid_body", send(http(200, body, headers)[: -half])),
        ("close_at_once", send(b"")),
        ("not_http", send(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")),
        ("bad_status_line", send(b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\n{}")),
        ("bad_header_line", send(b"HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 2\r\n\r\n{}")),
        ("huge_header", send(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")),
        ("te_gzip", send(ok_head + b"Transfer-Encoding: gzip\r\n\r\n" + body)),
        ("switching_protocols", send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade"
                                     b"\r\n\r\n" + body)),
        ("stall_head", send_then_stall(b"", b"HTTP/1.1 200 OK\r\n")),
        ("stall_body", send_then_stall(ok_head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:half],
                                       body[half:])),
        ("huge_body", send(http(200, b" " * (MAX_BODY + MAX_BODY // 2) + body, headers, rng.choice(["cl", "chunked",
                                                                                                    "close"]), rng))),
        ("non_utf8", send(http(200, body[:half] + b"\xff\xfe\xc3(" + body[half:], headers))),
        ("nesting", send(http(200, b"[" * 200_000 + b"]" * 200_000, headers))),
        ("status_500", send(http(500, status_body(500), headers))),
        ("status_503", send(http(503, b"no leader\r\nsecond line " + b"x" * 5000, headers))),
        ("status_404", send(http(404, status_body(404), headers))),
        ("status_429", send(http(429, status_body(429), headers + [("Retry-After", "1")]))),
        ("status_400", send(http(400, status_body(400), headers))),
        ("status_403", send(http(403, b"ACL not found\n\x1b[31mred\x1b[0m\xff", headers))),
    ]


def etcd_status_body(status: int) -> bytes:
    return json.dumps({"error": f"etcdserver: boom {status}\nline two", "code": 14,
                       "message": f"etcdserver: boom {status}\nline two " + "y" * 3000}).encode()


def etcd_range_mutations(rng: random.Random, fake: Fake) -> list[tuple[str, bool, Act]]:
    alt = alt_targets(rng)
    alt_kvs = {(PREFIX + f"alt{j}").encode(): f"{h}:{p}".encode() for j, (h, p) in enumerate(alt)}
    good_alt = fake.range_doc({**fake.kvs(), **alt_kvs})
    kv_ok = good_alt.get("kvs", [])

    def with_kvs(*extra: Any, header: Any = KEEP) -> bytes:
        doc = dict(good_alt)
        doc["kvs"] = [*kv_ok, *extra]
        if header is not KEEP:
            doc["header"] = header
        return json.dumps(doc).encode()

    key = b64((PREFIX + "zz").encode())
    shapes: list[tuple[str, bytes]] = [
        ("list_body", json.dumps([good_alt]).encode()),
        ("number_body", b"42"), ("string_body", b'"ok"'), ("null_body", b"null"), ("empty_body", b""),
        ("kvs_object", json.dumps({**good_alt, "kvs": {"a": kv_ok}}).encode()),
        ("kvs_string", json.dumps({**good_alt, "kvs": "x"}).encode()),
        ("kvs_null", json.dumps({**good_alt, "kvs": None}).encode()),
        ("kv_number", with_kvs(5)),
        ("kv_list", with_kvs([key])),
        ("kv_key_number", with_kvs({"key": 5, "value": b64(b"10.0.0.1:80")})),
        ("kv_key_bad_b64", with_kvs({"key": "!!not base64!!", "value": b64(b"10.0.0.1:80")})),
        ("kv_key_bad_padding", with_kvs({"key": key[:-2] + "A", "value": b64(b"10.0.0.1:80")})),
        ("kv_value_bad_b64", with_kvs({"key": key, "value": "%%%"})),
        ("kv_value_null", with_kvs({"key": key, "value": None})),
        ("kv_value_list", with_kvs({"key": key, "value": [b64(b"10.0.0.1:80")]})),
        ("kv_key_outside_prefix", with_kvs({"key": b64(b"/other/x"), "value": b64(b"10.0.0.1:80")})),
        ("kv_key_missing", with_kvs({"value": b64(b"10.0.0.1:80")})),
        ("kv_mod_revision_text", with_kvs({"key": key, "value": b64(b"10.0.0.1:80"), "mod_revision": "abc"})),
        ("kv_mod_revision_nan", with_kvs({"key": key, "value": b64(b"10.0.0.1:80"), "mod_revision": float("nan")})),
        ("kv_mod_revision_inf", with_kvs({"key": key, "value": b64(b"10.0.0.1:80"),
                                          "mod_revision": float("-inf")})),
        ("header_list", with_kvs(header=[1])),
        ("header_null", with_kvs(header=None)), ("header_missing", json.dumps({"kvs": kv_ok}).encode()),
        ("empty_object", b"{}"),
        ("revision_text", with_kvs(header={"revision": "twelve"})),
        ("revision_float", with_kvs(header={"revision": 12.5})),
        ("revision_inf", with_kvs(header={"revision": float("inf")})),
        ("revision_huge", with_kvs(header={"revision": "9" * 5000})),
        ("revision_negative", with_kvs(header={"revision": "-5"})),
        ("error_field", json.dumps({**good_alt, "error": "partial\nanswer"}).encode()),
        ("error_list_body", b'["error", "message"]'),
        ("truncated", json.dumps(good_alt).encode()[:-3]),
    ]
    out: list[tuple[str, bool, Act]] = [(f"range_{n}", True, send(http(200, body, framing=rng.choice(
        ["cl", "chunked", "close"]), rng=rng))) for n, body in shapes]
    out += [(f"range_{n}", True, act) for n, act in wire_mutations(rng, json.dumps(good_alt).encode(),
                                                                   etcd_status_body, [])]

    def benign_body() -> bytes:
        doc = fake.range_doc()
        doc["unknown"] = {"nested": [1, 2, {"x": None}]}
        for kv in doc.get("kvs", []):
            kv["lease"] = "0"
        return json.dumps(doc, indent=rng.choice([None, 1])).encode()

    async def benign_framed(f: Fake, stream: trio.SocketStream, req: Request) -> None:
        await stream.send_all(http(200, benign_body(), framing=rng.choice(["chunked", "close"]), rng=rng))

    async def benign_drip(f: Fake, stream: trio.SocketStream, req: Request) -> None:
        await drip(b"HTTP/1.1 100 Continue\r\n\r\n" + http(200, benign_body()), 8)(f, stream, req)

    out += [("range_benign_framing", False, benign_framed), ("range_benign_drip", False, benign_drip)]
    return out


def etcd_watch_mutations(rng: random.Random, fake: Fake) -> list[tuple[str, bool, Act]]:
    alt = alt_targets(rng)
    ok_ev = [{"kv": {"key": b64((PREFIX + f"alt{j}").encode()), "mod_revision": "50",
                     "value": b64(f"{h}:{p}".encode())}} for j, (h, p) in enumerate(alt)]
    key = b64((PREFIX + "zz").encode())

    def events(*extra: Any, header: Any = KEEP) -> bytes:
        result: dict[str, Any] = {"header": fake.header() if header is KEEP else header, "events": [*ok_ev, *extra]}
        return json.dumps({"result": result}).encode()

    lines: list[tuple[str, bytes]] = [
        ("not_json", b"this is not json"), ("list_line", b"[1, 2]"), ("number_line", b"5"), ("null_line", b"null"),
        ("string_line", b'"result"'),
        ("result_list", b'{"result": []}'), ("result_string", b'{"result": "x"}'),
        ("events_string", b'{"result": {"events": "x"}}'), ("events_object", b'{"result": {"events": {"a": 1}}}'),
        ("event_number", events(5)), ("event_no_kv", events({"type": "PUT"})),
        ("event_kv_null", events({"type": "PUT", "kv": None})), ("event_kv_list", events({"kv": [1]})),
        ("event_type_number", events({"type": 1, "kv": {"key": key, "value": b64(b"10.0.0.1:80")}})),
        ("event_type_unknown", events({"type": "EXPLODE", "kv": {"key": key, "value": b64(b"10.0.0.1:80")}})),
        ("event_key_bad_b64", events({"kv": {"key": "!!", "value": b64(b"10.0.0.1:80")}})),
        ("event_value_bad_b64", events({"kv": {"key": key, "value": "%%%"}})),
        ("event_key_outside_prefix", events({"kv": {"key": b64(b"/other/x"), "value": b64(b"10.0.0.1:80")}})),
        ("event_mod_revision_text", events({"kv": {"key": key, "value": b64(b"h:1"), "mod_revision": "x"}})),
        ("event_mod_revision_inf", events({"kv": {"key": key, "value": b64(b"h:1"), "mod_revision": float("inf")}})),
        ("header_revision_text", events(header={"revision": "abc"})),
        ("header_revision_nan", events(header={"revision": float("nan")})),
        ("header_revision_huge", events(header={"revision": "9" * 5000})),
        ("header_list", events(header=[1])), ("header_null", events(header=None)),
        ("error_string", b'{"error": "multi\\nline\\nerror ' + b"z" * 3000 + b'"}'),
        ("error_object", b'{"error": {"grpc_code": 14, "message": "gone\\naway", "http_code": 503}}'),
        ("error_number", b'{"error": 14}'),
        ("canceled", b'{"result": {"canceled": true, "cancel_reason": "evil\\nreason ' + b"r" * 3000 + b'"}}'),
        ("non_utf8", b'{"result": {"header": {"revision": "\xff\xfe"}}}'),
        ("nan_line", b'{"result": {"header": {"revision": NaN}, "events": []}}'),
        ("nesting", b"[" * 200_000 + b"]" * 200_000),
    ]

    def stream_of(line: bytes, end: bytes = b"0\r\n\r\n") -> Act:
        async def act(f: Fake, stream: trio.SocketStream, req: Request) -> None:
            created = {"result": {"header": f.header(), "created": True}}
            head = http(200, b"", framing="chunked")[:-5]
            await stream.send_all(head + chunk(json.dumps(created).encode() + b"\n"))
            await stream.send_all(chunk(line + b"\n") + end)
        return act

    out: list[tuple[str, bool, Act]] = [(f"watch_{n}", True, stream_of(line)) for n, line in lines]
    # the stream itself breaks: after a good `created`, the line is cut, oversized, or the framing is wrong
    good_line = events()
    created = json.dumps({"result": {"header": fake.header(), "created": True}}).encode() + b"\n"
    head = http(200, b"", framing="chunked")[:-5]
    out += [
        ("watch_status_500", True, send(http(500, etcd_status_body(500)))),
        ("watch_status_404", True, send(http(404, b"404 page not found\n"))),
        ("watch_status_400", True, send(http(400, etcd_status_body(400)))),
        ("watch_close_mid_line", True, send(head + chunk(created) + chunk(good_line[:-7]))),
        ("watch_chunk_bad_hex", True, send(head + chunk(created) + b"qq\r\n" + good_line + b"\n\r\n")),
        ("watch_chunk_short", True, send(head + chunk(created) + f"{len(good_line) + 50:x}\r\n".encode()
                                         + good_line)),
        ("watch_line_too_long", True, send_then_stall(head + chunk(created) + chunk(b"{" + b" " * (MAX_BODY + 100))
                                                      )),
        ("watch_stall_mid_line", True, send_then_stall(head + chunk(created) + chunk(good_line[:20]),
                                                       b"1\r\n \r\n" * 3, seconds=0.6)),
        ("watch_end_mid_line", True, send(head + chunk(created) + chunk(good_line[:-7]) + b"0\r\n\r\n")),
        ("watch_stall_head", True, send_then_stall(b"")),
        ("watch_not_http", True, send(b"\x00\x01\x02 garbage\r\n\r\n")),
    ]

    def benign(lines_: list[bytes]) -> Act:
        async def act(f: Fake, stream: trio.SocketStream, req: Request) -> None:
            created_ = json.dumps({"result": {"header": f.header(), "created": True, "watch_id": "0"}}).encode()
            data = created_ + b"\n" + b"\n".join(lines_) + b"\n"
            cut = rng.randrange(1, len(data))  # one record split across chunks
            await stream.send_all(http(200, b"", framing="chunked")[:-5] + chunk(data[:cut]))
            await trio.sleep(0.01)
            await stream.send_all(chunk(data[cut:]) + b"0\r\n\r\n")
        return act

    progress = json.dumps({"result": {"header": fake.header()}}).encode()
    out += [("watch_benign_progress", False, benign([progress, b"", b"   ", progress])),
            ("watch_benign_unknown_fields",
             False, benign([json.dumps({"result": {"header": fake.header(), "events": [], "fragment": False},
                                        "extra": [1, {"a": None}]}).encode()]))]
    return out


def consul_mutations(rng: random.Random, fake: Fake) -> list[tuple[str, bool, Act]]:
    alt = alt_targets(rng)
    alt_entries = [{"Node": _node(), "Service": _svc(f"alt{j}", h, p), "Checks": PASSING}
                   for j, (h, p) in enumerate(alt)]
    alt_body = json.dumps(fake.health_doc() + alt_entries).encode()

    def idx() -> list[tuple[str, str]]:
        return [("X-Consul-Index", str(fake.index + 5))]

    shapes: list[tuple[str, bytes]] = [
        ("object_body", json.dumps({"Nodes": alt_entries}).encode()), ("number_body", b"42"),
        ("string_body", b'"ok"'), ("null_body", b"null"), ("empty_body", b""), ("true_body", b"true"),
        ("truncated", alt_body[:-2]),
    ]
    out: list[tuple[str, bool, Act]] = [(f"health_{n}", True, send(http(200, body, idx(), rng.choice(
        ["cl", "chunked", "close"]), rng))) for n, body in shapes]
    # a well-formed body with an index header Consul would never send: refused as a whole (next_index's rule)
    for n, value in [("missing", None), ("text", "abc"), ("superscript", "\u00b2"), ("negative", "-5"),
                     ("float", "1e3"), ("empty", ""), ("huge", "9" * 5000), ("over_uint64", str(2**64)),
                     ("hex", "0x10"), ("spaces_inside", "1 2")]:
        headers = [] if value is None else [("X-Consul-Index", value)]
        out.append((f"health_index_{n}", True, send(http(200, alt_body, headers))))
    out += [(f"health_{n}", True, act) for n, act in wire_mutations(
        rng, alt_body, lambda s: f"rpc error {s}\nsecond line".encode(), idx())]

    def benign(make_index: Callable[[Fake], str], framing: str = "cl") -> Act:
        async def act(f: Fake, stream: trio.SocketStream, req: Request) -> None:
            body = json.dumps(f.health_doc()).encode()
            await stream.send_all(http(200, body, [("X-Consul-Index", make_index(f))], framing, rng))
        return act

    async def benign_drip(f: Fake, stream: trio.SocketStream, req: Request) -> None:
        body = json.dumps(f.health_doc()).encode()
        data = b"HTTP/1.1 100 Continue\r\n\r\n" + http(200, body, [("X-Consul-Index", str(f.index))])
        await drip(data, 8)(f, stream, req)

    out += [
        ("health_benign_index_backwards", False, benign(lambda f: str(max(1, f.index - 50)))),
        ("health_benign_index_zero", False, benign(lambda f: "0")),
        ("health_benign_index_same", False, benign(lambda f: str(f.index))),
        ("health_benign_index_padded", False, benign(lambda f: f"  {f.index}")),
        ("health_benign_close_delimited", False, benign(lambda f: str(f.index), "close")),
        ("health_benign_chunked", False, benign(lambda f: str(f.index), "chunked")),
        ("health_benign_drip", False, benign_drip),
    ]
    return out


def pick_plan(rng: random.Random, kind: str, fake: Fake, index: int) -> list[Mutation]:
    if kind == "etcd":
        menu = [Mutation(n, "range", r, a) for n, r, a in etcd_range_mutations(rng, fake)]
        menu += [Mutation(n, "watch", r, a) for n, r, a in etcd_watch_mutations(rng, fake)]
    else:
        menu = [Mutation(n, "health", r, a) for n, r, a in consul_mutations(rng, fake)]
    first = menu[index % len(menu)]  # every mutation is the first of some case: index N covers menu[N % len]
    return [first] + [rng.choice(menu) for _ in range(rng.choice([0, 0, 1, 2]))]


def menu_names(kind: str) -> list[str]:
    rng = random.Random(0)
    fake = Fake(kind, [], rng)
    if kind == "etcd":
        return [n for n, _, _ in etcd_range_mutations(rng, fake) + etcd_watch_mutations(rng, fake)]
    return [n for n, _, _ in consul_mutations(rng, fake)]


# ---- the case -------------------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.reports: list[tuple[str, list[TargetInfo]]] = []
        self.changed = trio.Event()

    def __call__(self, upstream: str, targets: list[TargetInfo]) -> None:
        self.reports.append((upstream, list(targets)))
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, want: list[TargetInfo]) -> None:
        while not self.reports or self.reports[-1][1] != want:
            await self.changed.wait()


def discovery_config(kind: str, port: int, **settings: Any) -> Any:
    block: dict[str, Any] = {"type": kind, "endpoints": [f"127.0.0.1:{port}"], "timeout_s": TIMEOUT_S,
                             "retry_initial_s": RETRY[0], "retry_max_s": RETRY[1], "default_weight": DEFAULT_WEIGHT,
                             **settings}
    if kind == "etcd":
        block["prefix"] = PREFIX
    else:
        block.update({"service": SERVICE, "wait_s": WAIT_S})
    return parse_config(json.dumps({"upstreams": [{"name": UPSTREAM, "discovery": block}]}), "<fuzz config>")


def describe(entries: list[Entry]) -> str:
    out = []
    for e in entries:
        raw = e.etcd_value[:60] if e.consul is None else json.dumps(e.consul)[:120]
        out.append(f"{e.name!r}->{e.expected.name if e.expected else e.invalid or 'filtered'} {raw!r}")
    return "[" + "; ".join(out) + "]"


def one_line_problems(records: list[logging.LogRecord]) -> list[str]:
    problems = []
    for r in records:
        msg = r.getMessage()
        if r.exc_info or r.stack_info or "Traceback" in msg:
            problems.append(f"a traceback logged by {r.name}: {msg[:200]!r}")
        if re.search(r"[\r\n\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u2028\u2029]", msg):
            problems.append(f"a log line that is not one clean line ({r.name}): {msg[:300]!r}")
        if len(msg) > 1000:
            problems.append(f"a log line of {len(msg)} characters ({r.name}): {msg[:200]!r}...")
    return problems


def named(entry: Entry, messages: list[str], position: int) -> bool:
    if entry.consul is None:  # etcd: the key
        return any(PREFIX + entry.name in m for m in messages)
    return any(f"entry {position}" in m and (entry.name.startswith("#") or entry.name in m) for m in messages)


async def run_case(kind: str, index: int, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(f"{MASTER_SEED}:{kind}:{index}")
    s1 = gen_state(rng, kind, 0)
    s2 = gen_state(rng, kind, 100)
    fake = Fake(kind, s1, rng)
    plan = pick_plan(rng, kind, fake, index)
    refuse = any(m.refuse for m in plan)
    recorder = Recorder()
    case = (f"{kind} case {index} (seed {MASTER_SEED}:{kind}:{index}): plan {[m.name for m in plan]}\n"
            f"  S1 {describe(s1)}\n  S2 {describe(s2)}")
    phase = "start"
    failure = ""
    first_mark = len(caplog.records)
    mark = first_mark
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(fake.serve)
            with trio.fail_after(CASE_BUDGET):
                await nursery.start(run_discovery, discovery_config(kind, port), recorder)
                phase = "converging to S1"
                with trio.fail_after(CONVERGE):
                    await recorder.wait_for(expected(s1))
                with trio.fail_after(CONVERGE):  # the client is idle on its watch / blocking query
                    await fake.idle.wait()
                    await trio.testing.wait_all_tasks_blocked()  # (and has read all the fake sent it)
                mark = len(caplog.records)
                phase = "serving the mutations"
                fake.begin(plan)
                with trio.fail_after(RETRY_BOUND + 3 * TIMEOUT_S * len(plan)):
                    await fake.after_plan.wait()
                phase = "converging to S2"
                fake.set_state(s2)
                with trio.fail_after(CONVERGE):
                    await recorder.wait_for(expected(s2))
            nursery.cancel_scope.cancel()
    except BaseException as e:  # noqa: BLE001 - reported with the case, then failed
        served = f"served {fake.served}, {len(fake.requests)} requests, the last {[w for _, w in fake.requests[-8:]]}"
        failure = f"{case}\n  while {phase}: {e!r}; {served}; reports {[r[1] for r in recorder.reports]}"
    if failure:
        log = "\n    ".join(r.getMessage()[:300] for r in caplog.records[first_mark:])
        pytest.fail(f"{failure}\n  log:\n    {log}", pytrace=False)

    problems: list[str] = []
    good = [expected(s1), expected(s2)]
    lists = [targets for _, targets in recorder.reports]
    for i, targets in enumerate(lists):
        if targets not in good:
            problems.append(f"on_change #{i} got a list that is neither S1's nor S2's: {targets}")
        if i and targets == lists[i - 1]:
            problems.append(f"on_change #{i} repeated the same list")
    if lists and lists[0] != good[0]:
        problems.append(f"the first list was not S1's: {lists[0]}")
    records = caplog.records[first_mark:]
    problems += one_line_problems(records)
    discovery_records = [r for r in caplog.records[mark:] if r.name.startswith("gateway.discovery")]
    if refuse and not any(r.levelno >= logging.WARNING for r in discovery_records):
        problems.append("a refused answer was not logged")
    messages = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    for state in (s1, s2):
        for position, entry in enumerate(state):
            if entry.invalid and entry.plain_name and not named(entry, messages, position):
                problems.append(f"invalid entry {entry.name!r} ({describe([entry])}) dropped without a warning "
                                f"naming it")
    if problems:
        log = "\n    ".join(r.getMessage()[:300] for r in records)
        pytest.fail(f"{case}\n  " + "\n  ".join(problems) + f"\n  log:\n    {log}", pytrace=False)


@pytest.fixture
def fuzz_env(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    monkeypatch.setattr(disc_http, "MAX_BODY", MAX_BODY)
    monkeypatch.setattr(disc_consul, "MIN_QUERY_INTERVAL", 0.002)  # (0.1 s a query would be most of the run time)
    caplog.set_level(logging.INFO)
    return caplog


@pytest.mark.parametrize("index", range(ETCD_CASES))
async def test_etcd_fuzz(index: int, fuzz_env: pytest.LogCaptureFixture) -> None:
    await run_case("etcd", index, fuzz_env)


@pytest.mark.parametrize("index", range(CONSUL_CASES))
async def test_consul_fuzz(index: int, fuzz_env: pytest.LogCaptureFixture) -> None:
    await run_case("consul", index, fuzz_env)


def test_the_fuzz_reaches_every_mutation() -> None:
    """Every mutation is the first of some case (case N opens with mutation N % len(menu)), or passing means less."""
    for kind, cases in (("etcd", ETCD_CASES), ("consul", CONSUL_CASES)):
        names = menu_names(kind)
        assert len(set(names)) == len(names), "mutation names are unique"
        assert cases >= len(names) or "DISCFUZZ_CASES" in os.environ, (
            f"{kind}: {len(names)} mutations but only {cases} cases")


# ---- what the fuzz found, minimized (each was a failing case above; all fixed in gateway/discovery) ---------------


@pytest.mark.parametrize("value", [
    b"\xff\xfe10.0.0.1:80",  # was TargetInfo("\ufffd\ufffd10.0.0.1", 80): a host nobody registered
    b"h\x01x:80",  # was a host with a control character
    "h:\u0668\u0660".encode(),  # was port 80, from Arabic-Indic digits
    b"{" * 100_000,  # was a RecursionError out of run_etcd
])
def test_etcd_values_that_are_no_target(value: bytes) -> None:
    with pytest.raises(ValueError):
        parse_target_value(value, 100)


@pytest.mark.parametrize("doc", [
    {},  # an empty 200 body (read as {}) was an empty range: every target dropped
    {"header": {"revision": "9"}, "kvs": {"a": 1}},  # AttributeError
    {"header": {"revision": "9"}, "kvs": [{"key": "!!", "value": ""}]},  # binascii.Error
    {"header": {"revision": "twelve"}},  # ValueError
    {"header": {"revision": float("-inf")}},  # OverflowError
    {"header": {"revision": "9"}, "kvs": [{"key": b64(b"/other/k"), "value": b64(b"10.0.0.1:80")}]},  # applied
])
def test_etcd_range_answers_refused_whole(doc: dict[str, Any]) -> None:
    with pytest.raises(TransportError, match="malformed answer"):
        decode_answer(doc, RangeResponse, "etcd", b"/p/")


@pytest.mark.parametrize("header", ["\u00b2", "9" * 5000, str(2**64), "0x10", "-5", ""])
def test_consul_index_headers_refused(header: str) -> None:
    # "²" and 5000 digits were a ValueError out of run_consul
    with pytest.raises(TransportError, match="X-Consul-Index"):
        next_index(10, header)


@pytest.mark.parametrize("entry", [
    {"Node": {"Address": "10.0.0.1"}, "Service": [], "Checks": []},  # AttributeError
    {"Node": {}, "Service": {"ID": "s", "Address": "10.0.0.1", "Port": 80}, "Checks": 5},  # TypeError
    {"Node": {}, "Service": {"ID": "s", "Address": "10.0.0.1", "Port": 80}, "Checks": [{"Status": []}]},  # TypeError
    {"Node": {}, "Service": {"ID": "s", "Address": "10.0.0.1", "Port": True}, "Checks": []},  # was port True
    {"Node": {}, "Service": {"ID": "s", "Address": "a b\r\nX: y", "Port": 80}, "Checks": []},  # was that host
    {"Node": {}, "Service": {"ID": "s", "Address": "10.0.0.1", "Port": 80, "Weights": {"Passing": -1}}},  # was 100
    "garbage",  # was dropped without a word
])
def test_consul_entries_left_out_with_a_warning(entry: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert parse_health_entries([entry], 100, True, service="s") == []
    [record] = caplog.records
    assert "ignoring entry 0" in record.getMessage() and "\n" not in record.getMessage()


def test_registry_text_in_a_log_line_is_one_bounded_line() -> None:
    text = excerpt(b"boom\r\nsecond line\x1b[31m" + b"y" * 5000)
    assert "\n" not in text and "\x1b" not in text and len(text) < 260 and text.startswith("boom\\r\\nsecond")


async def test_repeated_compaction_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    """An etcd whose every watch is canceled as compacted made run_etcd range and watch again in a hot loop."""
    caplog.set_level(logging.INFO)
    fake = Fake("etcd", [Entry("t1", TargetInfo("10.0.0.1", 80, 7), etcd_value=b"10.0.0.1:80")], random.Random(1))

    async def compacted(f: Fake, stream: trio.SocketStream, req: Request) -> None:
        line = {"result": {"header": f.header(), "canceled": True, "compact_revision": str(f.revision)}}
        await stream.send_all(http(200, json.dumps(line).encode() + b"\n", framing="chunked"))

    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(fake.serve)
        fake.begin([Mutation("compacted", "watch", False, compacted)] * 10_000)
        config = discovery_config("etcd", port, retry_initial_s=0.05, retry_max_s=0.05)
        await nursery.start(run_discovery, config, recorder)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert recorder.reports == [("fz", [TargetInfo("10.0.0.1", 80, 7)])]
    assert 3 <= len(fake.served) <= 25, f"{len(fake.served)} compacted watches in 0.5 s"


async def test_a_watch_that_keeps_failing_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    """A range that works before a watch that always fails (an HTTP error, or garbage before `created`) counted as
    etcd being back: the backoff was reset every cycle, so run_etcd read the prefix every retry_initial_s forever and
    logged a "connected again" and an "unreachable" line each time. Now only a created watch (or events) resets
    it; a watch that was created and then breaks is still retried at the initial delay."""
    caplog.set_level(logging.INFO)
    fake = Fake("etcd", [Entry("t1", TargetInfo("10.0.0.1", 80, 7), etcd_value=b"10.0.0.1:80")], random.Random(1))
    failing = [Mutation("watch_500", "watch", True, send(http(500, etcd_status_body(500)))),
               Mutation("watch_garbage", "watch", True, send(http(200, b"garbage\n", framing="chunked")))]

    async def created_then_error(f: Fake, stream: trio.SocketStream, req: Request) -> None:
        created = {"result": {"header": f.header(), "created": True}}
        error = {"error": {"grpc_code": 14, "message": "etcdserver: no leader"}}
        await stream.send_all(http(200, b"", framing="chunked")[:-5] + chunk(json.dumps(created).encode() + b"\n")
                              + chunk(json.dumps(error).encode() + b"\n") + b"0\r\n\r\n")

    def lines(text: str) -> int:
        return sum(text in r.getMessage() for r in caplog.records)

    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(fake.serve)
        fake.begin([failing[i % 2] for i in range(10_000)])
        config = discovery_config("etcd", port, retry_initial_s=0.01, retry_max_s=0.4)
        await nursery.start(run_discovery, config, recorder)
        await trio.sleep(1.0)
        ranges = sum(where == "range" for _, where in fake.requests)
        # 0.01 s doubling to 0.4 s, each scaled by [0.5, 1]: at most about 10 attempts in a second (it was ~100)
        assert 3 <= ranges <= 15, f"{ranges} range requests in 1 s while every watch failed"
        assert lines("unreachable") == 1 and lines("connected") == 0, [r.getMessage() for r in caplog.records]
        assert recorder.reports == [("fz", [TargetInfo("10.0.0.1", 80, 7)])]  # (the ranges still report)

        fake.plan.clear()  # healed: the next watch is created
        with trio.fail_after(2.0):
            while not lines("connected again"):
                await trio.sleep(0.01)
        assert lines("connected again") == 1
        fake.begin([Mutation("created_then_error", "watch", True, created_then_error)])
        served = len(fake.requests)

        def after_break() -> tuple[float, float] | None:
            if fake.served[-1] != "created_then_error":
                return None
            watches = [i for i, (_, where) in enumerate(fake.requests) if i >= served and where == "watch"]
            ranges = [t for t, where in fake.requests[watches[0]:] if where == "range"] if watches else []
            return (fake.requests[watches[0]][0], ranges[0]) if ranges else None

        with trio.fail_after(2.0):
            while (times := after_break()) is None:
                await trio.sleep(0.005)
        broken, again = times
        assert again - broken < 0.1, f"an established watch that broke was retried after {again - broken:.3f}s"
        nursery.cancel_scope.cancel()
