"""etcd v3 through its JSON gRPC gateway (plain HTTP/1.1: /v3/kv/range, /v3/watch, /v3/lease/*), no gRPC stack.

Keys and values travel base64-encoded; 64-bit integers are JSON strings. A watch is one long POST whose
response streams one JSON object per line: `{"result": {"header": ..., "events": [...]}}`, `created` first,
`canceled` with `compact_revision` when the start revision was compacted away.

`run_etcd` serves one upstream: every key under its prefix is a target, value `{"target": "host:port",
"weight": 100}` or plain "host:port". It reads the prefix (range), reports, then watches from the revision after
the one it read. Losing etcd keeps the last known targets; it retries with capped, jittered backoff, then reads the
prefix again (changes made meanwhile are reported) and watches anew. etcd counts as back once a watch is created
(or delivers events): a range that works while every watch fails keeps backing off.

While a watch runs, the member serving it is asked a linearizable read of one key every PROBE_INTERVAL_S (within
`timeout_s`): a member that hung, or lost its leader, leaves its watch silent without closing it, and etcd's Go
client would leave it too (keepalive pings, WithRequireLeader). A failed probe counts as losing etcd: the next
endpoint is read and watched.

An answer is decoded whole (msgspec Structs: base64 keys and values, revisions as int64) before any of it is
applied: one that is malformed anywhere (a wrong JSON shape, invalid base64, a revision that is not an integer, a
key outside the prefix) is refused as a whole, like a lost etcd. A well-formed key whose value is not a target is
one bad entry: it is left out with a warning naming the key, and the other keys apply.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import trio

from gateway.config.discovery import DiscoverySettings
from gateway.config.errors import show
from gateway.discovery.backoff import Backoff, LinkState
from gateway.discovery.http import Endpoint, TransportError, excerpt, open_stream, request
from gateway.discovery.liveness import while_responsive
from gateway.discovery.types import OnChange, TargetInfo, normalise, parse_host_port

log = logging.getLogger("gateway.discovery.etcd")

PROBE_INTERVAL_S = 5.0  # one small read per watch this often: a hung member is left within this plus timeout_s


class EtcdError(Exception):
    """etcd answered, but with an error (bad request, permission, a lease not found, ...); `status` is the HTTP one."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Compacted(Exception):
    """The watch's start revision was compacted: read the prefix again."""


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def prefix_range_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with `prefix` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"  # all keys


Revision = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # an int64 (a JSON string, through the gateway)
LeaseID = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]  # etcd grants ids 1..2**63-1 (0 is "no lease")
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class KeyValue(msgspec.Struct):
    key: bytes  # base64 in JSON
    value: bytes = b""  # (the JSON gateway leaves out empty fields)
    mod_revision: Revision = 0


class WatchEvent(msgspec.Struct):
    kv: KeyValue
    type: Literal["PUT", "DELETE"] = "PUT"  # PUT is the enum's zero value, so it is left out


class ResponseHeader(msgspec.Struct):
    revision: Revision = 0


class RangeResponse(msgspec.Struct):
    header: ResponseHeader  # always sent: without it, an empty body or {} would read as "no keys"
    kvs: list[KeyValue] = []


class WatchResult(msgspec.Struct):
    header: ResponseHeader = msgspec.field(default_factory=ResponseHeader)
    events: list[WatchEvent] = []
    created: bool = False
    canceled: bool = False
    compact_revision: Revision = 0
    cancel_reason: str = ""


# Self-registration's answers: every field registration relies on is required, so a truncated or empty answer is
# refused rather than read as "no lease" or "done".


class Acknowledged(msgspec.Struct):
    """A put, revoke or delete: etcd always sends the header."""

    header: ResponseHeader
    deleted: Revision = 0  # (deleterange)


class LeaseGrant(msgspec.Struct):
    header: ResponseHeader
    ID: LeaseID
    TTL: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class LeaseKeepAliveResult(msgspec.Struct):
    header: ResponseHeader
    ID: LeaseID
    TTL: Int64 = 0  # (left out when the lease is gone)


class LeaseKeepAlive(msgspec.Struct):
    result: LeaseKeepAliveResult


Answer = TypeVar("Answer", bound=msgspec.Struct)


def decode_answer(doc: Any, shape: type[Answer], what: str, prefix: bytes = b"") -> Answer:
    """`doc` (decoded JSON) as a `shape` Struct, every key under `prefix`; TransportError naming the first defect."""
    try:
        answer = msgspec.convert(doc, shape, strict=False)
    except msgspec.ValidationError as e:
        raise TransportError(f"{what}: malformed answer: {excerpt(e)}") from None
    kvs = (answer.kvs if isinstance(answer, RangeResponse) else
           [ev.kv for ev in answer.events] if isinstance(answer, WatchResult) else [])
    for kv in kvs:
        if not kv.key.startswith(prefix):
            raise TransportError(f"{what}: malformed answer: key {excerpt(show(kv.key.decode('utf-8', 'replace')))} "
                                 f"is not under {prefix.decode('utf-8', 'replace')}")
    return answer


def loads(data: bytes) -> Any:
    """json.loads, with nesting too deep for the parser (RecursionError) reported as the ValueError it is."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


class EtcdClient:
    """The few v3 calls discovery and registration need, over one of several endpoints (next one on failure)."""

    def __init__(self, endpoints: list[str], timeout: float = 5.0) -> None:
        self.endpoints = [Endpoint.parse(e) for e in endpoints]
        self.timeout = timeout
        self._current = 0

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self._current]

    def rotate(self) -> None:
        self._current = (self._current + 1) % len(self.endpoints)

    async def call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        resp = await request(self.endpoint, "POST", path, body=json.dumps(payload).encode(), timeout=self.timeout)
        try:
            doc = loads(resp.body or b"{}")
        except ValueError:
            raise TransportError(f"{self.endpoint}: {path} answered {resp.status} with non-JSON") from None
        if not isinstance(doc, dict):
            raise TransportError(f"{self.endpoint}: {path} answered {resp.status} with JSON that is not an object")
        if resp.status != 200 or "error" in doc:
            message = excerpt(doc.get("message") or doc.get("error") or resp.body)
            # a 404 is a wrong path or a proxy, unless it is etcd's own (a gRPC code: "requested lease not found")
            if resp.status >= 500 or (resp.status == 404 and not isinstance(doc.get("code"), int)):
                raise TransportError(f"{self.endpoint}: {path}: HTTP {resp.status}: {message}")
            raise EtcdError(f"{path}: HTTP {resp.status}: {message}", resp.status)
        return doc

    async def range_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """(revision, key-values) of every key under `prefix`."""
        key = prefix.encode()
        doc = await self.call("/v3/kv/range", {"key": b64(key), "range_end": b64(prefix_range_end(key))})
        answer = decode_answer(doc, RangeResponse, f"{self.endpoint}: /v3/kv/range", key)
        return answer.header.revision, answer.kvs

    async def probe(self, key: str) -> None:
        """A linearizable read of `key`, counting only: a member answers it only when it is live and has a leader
        (it asks the leader for its commit index), so a hung or cut-off member fails it within the timeout."""
        raw = key.encode()
        try:
            await self._decoded("/v3/kv/range", {"key": b64(raw), "count_only": True}, RangeResponse, raw)
        except TransportError as e:
            raise TransportError(f"liveness probe: {e}") from None

    async def watch_prefix(self, prefix: str,
                           start_revision: int) -> AsyncGenerator[tuple[int, list[WatchEvent]], None]:
        """(revision, events) per watch response with events, from `start_revision` on, and (revision, []) for the
        one saying the watch was created; raises Compacted or TransportError."""
        key = prefix.encode()
        body = {"create_request": {"key": b64(key), "range_end": b64(prefix_range_end(key)),
                                   "start_revision": str(start_revision)}}
        async with open_stream(self.endpoint, "POST", "/v3/watch", body=json.dumps(body).encode(),
                               timeout=self.timeout) as resp:
            if resp.status != 200:
                raise TransportError(f"{self.endpoint}: /v3/watch: HTTP {resp.status}")
            async for line in resp.lines():
                try:
                    doc = loads(line)
                except ValueError:
                    raise TransportError(f"{self.endpoint}: /v3/watch sent non-JSON: {line[:100]!r}") from None
                if not isinstance(doc, dict):
                    raise TransportError(f"{self.endpoint}: /v3/watch sent JSON that is not an object: "
                                         f"{line[:100]!r}")
                if "error" in doc:
                    err = doc["error"]
                    message = err.get("message", err) if isinstance(err, dict) else err
                    raise TransportError(f"{self.endpoint}: /v3/watch: {excerpt(message)}")
                result = decode_answer(doc.get("result", {}), WatchResult, f"{self.endpoint}: /v3/watch", key)
                if result.compact_revision and result.canceled:
                    raise Compacted(f"revision {start_revision} compacted (now {result.compact_revision})")
                if result.canceled:
                    raise TransportError(f"{self.endpoint}: watch canceled: {excerpt(result.cancel_reason)}")
                if result.events or result.created:
                    yield result.header.revision, result.events
            raise TransportError(f"{self.endpoint}: the watch stream ended")

    # -- leases and writes (self-registration) ---------------------------------------------------------------------

    async def _decoded(self, path: str, payload: dict[str, Any], shape: type[Answer], prefix: bytes = b"") -> Answer:
        return decode_answer(await self.call(path, payload), shape, f"{self.endpoint}: {path}", prefix)

    async def lease_grant(self, ttl: int) -> int:
        return (await self._decoded("/v3/lease/grant", {"TTL": str(ttl)}, LeaseGrant)).ID

    async def lease_keepalive(self, lease: int) -> int:
        """The lease's remaining TTL; 0 (or less) when it no longer exists."""
        result = (await self._decoded("/v3/lease/keepalive", {"ID": str(lease)}, LeaseKeepAlive)).result
        if result.ID != lease:
            raise TransportError(f"{self.endpoint}: /v3/lease/keepalive: malformed answer: about lease {result.ID}, "
                                 f"not {lease}")
        return result.TTL

    async def lease_revoke(self, lease: int) -> None:
        await self._decoded("/v3/lease/revoke", {"ID": str(lease)}, Acknowledged)

    async def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        payload: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            payload["lease"] = str(lease)
        return (await self._decoded("/v3/kv/put", payload, Acknowledged)).header.revision

    async def delete(self, key: str) -> int:
        return (await self._decoded("/v3/kv/deleterange", {"key": b64(key)}, Acknowledged)).deleted

    async def get(self, key: str) -> bytes | None:
        """The value of `key`, None when there is no such key."""
        raw = key.encode()
        kvs = (await self._decoded("/v3/kv/range", {"key": b64(raw)}, RangeResponse, raw)).kvs
        if len(kvs) > 1 or (kvs and kvs[0].key != raw):
            raise TransportError(f"{self.endpoint}: /v3/kv/range: malformed answer: not just the key asked for")
        return kvs[0].value if kvs else None


def parse_target_value(value: bytes, default_weight: int) -> TargetInfo:
    """A key's value: JSON {"target": "host:port", "weight": N} (other keys ignored), or "host:port".

    Raises ValueError with a reason for anything else.
    """
    try:
        text = value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"not UTF-8: {value[:100]!r}") from None
    weight = default_weight
    if text.startswith("{"):
        try:
            doc = loads(text.encode())
        except ValueError as e:
            raise ValueError(f"invalid JSON: {e}") from None
        target = doc.get("target")
        if not isinstance(target, str):
            raise ValueError('expected a "target": "host:port" field')
        if "weight" in doc:
            w = doc["weight"]
            if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 65535:
                raise ValueError(f"weight: expected an int 0..65535, got {excerpt(show(w), 100)}")
            weight = w
        text = target
    elif text.startswith('"'):  # a JSON string
        try:
            text = loads(text.encode())
        except ValueError as e:
            raise ValueError(f"invalid JSON: {e}") from None
    hp = parse_host_port(text)
    if hp is None:
        raise ValueError(f'expected "host:port", got {show(text[:100])}')
    return TargetInfo(hp[0], hp[1], weight)


class _PrefixState:
    """The key -> target map of one prefix, and what was last reported."""

    def __init__(self, upstream: str, default_weight: int) -> None:
        self.upstream = upstream
        self.default_weight = default_weight
        self.targets: dict[bytes, TargetInfo] = {}
        self.bad: dict[bytes, bytes] = {}  # key -> value that was rejected (logged once)

    def put(self, key: bytes, value: bytes) -> None:
        try:
            self.targets[key] = parse_target_value(value, self.default_weight)
            self.bad.pop(key, None)
        except ValueError as e:
            self.targets.pop(key, None)
            if self.bad.get(key) != value:
                log.warning("upstream %s: ignoring etcd key %s: %s", self.upstream,
                            excerpt(show(key.decode("utf-8", "replace"))), e)
            self.bad[key] = value

    def delete(self, key: bytes) -> None:
        self.targets.pop(key, None)
        self.bad.pop(key, None)

    def reset(self, kvs: list[KeyValue]) -> None:
        self.targets.clear()
        for kv in kvs:
            self.put(kv.key, kv.value)
        present = {kv.key for kv in kvs}
        for key in [k for k in self.bad if k not in present]:
            del self.bad[key]

    def current(self) -> list[TargetInfo]:
        # in etcd's key order, as a range gives them: the same keys give the same targets, however they were learnt
        return normalise([self.targets[key] for key in sorted(self.targets)])


async def run_etcd(upstream: str, settings: DiscoverySettings, on_change: OnChange, *,
                   link: LinkState | None = None,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Watch `settings.etcd_prefix(upstream)` and report the upstream's targets on every change, forever.

    task_status.started() after the first attempt, whether it reached etcd or not: a gateway starts on its
    config's targets when etcd is down, and picks up etcd's as soon as it is back.
    """
    prefix = settings.etcd_prefix(upstream)
    client = EtcdClient(settings.endpoint_list(), settings.registry_timeout_s)
    backoff = Backoff(settings.registry_retry_initial_s, settings.registry_retry_max_s)
    link = link or LinkState(f"discovery: upstream {upstream} (etcd {prefix})", log)
    link.extra.update({"type": "etcd", "prefix": prefix})
    state = _PrefixState(upstream, settings.registry_default_weight)
    reported: list[TargetInfo] | None = None
    started = False
    compactions = 0  # in a row, without a watch event between them

    def report() -> None:
        nonlocal reported
        current = state.current()
        link.extra["targets"] = len(current)
        if current != reported:
            reported = current
            on_change(upstream, list(current))

    async def follow(start_revision: int) -> None:
        nonlocal compactions
        async with aclosing(client.watch_prefix(prefix, start_revision)) as watch:
            async for revision, events in watch:
                # Only a watch that etcd created (or that delivers) makes etcd "back": a range that works before a
                # watch that fails at once is a failed attempt, retried with growing delays, logged once.
                link.up(str(client.endpoint), f" ({len(state.targets)} targets under {prefix})")
                backoff.reset()
                if not events:
                    continue
                compactions = 0
                for ev in events:
                    if ev.type == "DELETE":
                        state.delete(ev.kv.key)
                    else:
                        state.put(ev.kv.key, ev.kv.value)
                link.extra["revision"] = revision
                report()

    while True:
        try:
            revision, kvs = await client.range_prefix(prefix)
            state.reset(kvs)
            report()
            if not started:
                started = True
                task_status.started()
            await while_responsive(partial(follow, revision + 1), partial(client.probe, prefix), PROBE_INTERVAL_S)
        except Compacted as e:
            log.info("upstream %s: %s; reading %s again", upstream, e, prefix)
            compactions += 1
            if compactions == 1:
                continue
            # again before any event: a broken etcd (or proxy) would make this a hot loop; wait as after a failure
        except (TransportError, EtcdError) as e:
            kept = f"; keeping {len(reported)} last known targets" if reported is not None else ""
            link.down(str(client.endpoint), str(e), kept)
            client.rotate()
        if not started:
            started = True
            task_status.started()
        await trio.sleep(backoff.next_delay())
