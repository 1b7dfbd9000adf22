"""etcd v3 through its JSON gRPC gateway (plain HTTP/1.1: /v3/kv/range, /v3/watch, /v3/lease/*), no gRPC stack.

Keys and values travel base64-encoded; 64-bit integers are JSON strings. A watch is one long POST whose
response streams one JSON object per line: `{"result": {"header": ..., "events": [...]}}`, `created` first,
`canceled` with `compact_revision` when the start revision was compacted away.

`run_etcd` serves one upstream: every key under its prefix is a target, value `{"target": "host:port",
"weight": 100}` or plain "host:port". It reads the prefix (range), reports, then watches from the revision after
the one it read. Losing etcd keeps the last known targets; it retries with capped, jittered backoff, then reads the
prefix again (changes made meanwhile are reported) and watches anew.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import msgspec
import trio

from gateway.config.discovery import DiscoverySettings
from gateway.config.errors import show
from gateway.discovery.backoff import Backoff, LinkState
from gateway.discovery.http import Endpoint, TransportError, open_stream, request
from gateway.discovery.types import OnChange, TargetInfo, normalise, parse_host_port

log = logging.getLogger("gateway.discovery.etcd")


class EtcdError(Exception):
    """etcd answered, but with an error (bad request, permission, ...)."""


class Compacted(Exception):
    """The watch's start revision was compacted: read the prefix again."""


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_range_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with `prefix` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"  # all keys


class KeyValue(msgspec.Struct):
    key: bytes
    value: bytes
    mod_revision: int = 0


class WatchEvent(msgspec.Struct):
    type: str  # "PUT" | "DELETE"
    kv: KeyValue


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
            doc = json.loads(resp.body or b"{}")
        except ValueError:
            raise TransportError(f"{self.endpoint}: {path} answered {resp.status} with non-JSON") from None
        if resp.status != 200 or "error" in doc:
            message = doc.get("message") or doc.get("error") or resp.body[:200].decode("utf-8", "replace")
            if resp.status >= 500 or resp.status == 404:
                raise TransportError(f"{self.endpoint}: {path}: HTTP {resp.status}: {message}")
            raise EtcdError(f"{path}: HTTP {resp.status}: {message}")
        return doc

    async def range_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """(revision, key-values) of every key under `prefix`."""
        key = prefix.encode()
        doc = await self.call("/v3/kv/range", {"key": b64(key), "range_end": b64(prefix_range_end(key))})
        revision = int(doc.get("header", {}).get("revision", 0))
        kvs = [KeyValue(unb64(kv.get("key", "")), unb64(kv.get("value", "")), int(kv.get("mod_revision", 0)))
               for kv in doc.get("kvs", [])]
        return revision, kvs

    async def watch_prefix(self, prefix: str,
                           start_revision: int) -> AsyncGenerator[tuple[int, list[WatchEvent]], None]:
        """(revision, events) per watch response, from `start_revision` on; raises Compacted or TransportError."""
        key = prefix.encode()
        body = {"create_request": {"key": b64(key), "range_end": b64(prefix_range_end(key)),
                                   "start_revision": str(start_revision)}}
        async with open_stream(self.endpoint, "POST", "/v3/watch", body=json.dumps(body).encode(),
                               timeout=self.timeout) as resp:
            if resp.status != 200:
                raise TransportError(f"{self.endpoint}: /v3/watch: HTTP {resp.status}")
            async for line in resp.lines():
                try:
                    doc = json.loads(line)
                except ValueError:
                    raise TransportError(f"{self.endpoint}: /v3/watch sent non-JSON: {line[:100]!r}") from None
                if "error" in doc:
                    err = doc["error"]
                    message = err.get("message", err) if isinstance(err, dict) else err
                    raise TransportError(f"{self.endpoint}: /v3/watch: {message}")
                result = doc.get("result", {})
                if result.get("compact_revision") and result.get("canceled"):
                    raise Compacted(f"revision {start_revision} compacted (now {result['compact_revision']})")
                if result.get("canceled"):
                    raise TransportError(f"{self.endpoint}: watch canceled: {result.get('cancel_reason', '')}")
                events = [WatchEvent(ev.get("type", "PUT"),
                                     KeyValue(unb64(ev["kv"].get("key", "")), unb64(ev["kv"].get("value", "")),
                                              int(ev["kv"].get("mod_revision", 0))))
                          for ev in result.get("events", [])]
                revision = int(result.get("header", {}).get("revision", 0))
                if events:
                    yield revision, events
            raise TransportError(f"{self.endpoint}: the watch stream ended")

    # -- leases and writes (self-registration) ---------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> int:
        doc = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        return int(doc["ID"])

    async def lease_keepalive(self, lease: int) -> int:
        """The lease's remaining TTL; 0 when it no longer exists."""
        doc = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(doc.get("result", {}).get("TTL", 0))

    async def lease_revoke(self, lease: int) -> None:
        await self.call("/v3/lease/revoke", {"ID": str(lease)})

    async def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        payload: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            payload["lease"] = str(lease)
        doc = await self.call("/v3/kv/put", payload)
        return int(doc.get("header", {}).get("revision", 0))

    async def delete(self, key: str) -> int:
        doc = await self.call("/v3/kv/deleterange", {"key": b64(key)})
        return int(doc.get("deleted", 0))

    async def get(self, key: str) -> bytes | None:
        doc = await self.call("/v3/kv/range", {"key": b64(key)})
        kvs = doc.get("kvs", [])
        return unb64(kvs[0].get("value", "")) if kvs else None


def parse_target_value(value: bytes, default_weight: int) -> TargetInfo:
    """A key's value: JSON {"target": "host:port", "weight": N} (other keys ignored), or "host:port".

    Raises ValueError with a reason for anything else.
    """
    text = value.decode("utf-8", "replace").strip()
    weight = default_weight
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise ValueError(f"invalid JSON: {e}") from None
        target = doc.get("target")
        if not isinstance(target, str):
            raise ValueError('expected a "target": "host:port" field')
        if "weight" in doc:
            w = doc["weight"]
            if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 65535:
                raise ValueError(f"weight: expected an int 0..65535, got {w!r}")
            weight = w
        text = target
    elif text.startswith('"'):  # a JSON string
        try:
            text = json.loads(text)
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
                log.warning("upstream %s: ignoring etcd key %s: %s", self.upstream, key.decode("utf-8", "replace"), e)
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
        return normalise(list(self.targets.values()))


async def run_etcd(upstream: str, settings: DiscoverySettings, on_change: OnChange, *,
                   link: LinkState | None = None,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Watch `settings.etcd_prefix(upstream)` and report the upstream's targets on every change, forever.

    task_status.started() after the first attempt, whether it reached etcd or not: a gateway starts on its
    config's targets when etcd is down, and picks up etcd's as soon as it is back.
    """
    prefix = settings.etcd_prefix(upstream)
    client = EtcdClient(settings.endpoint_list(), settings.timeout_s)
    backoff = Backoff(settings.retry_initial_s, settings.retry_max_s)
    link = link or LinkState(f"discovery: upstream {upstream} (etcd {prefix})", log)
    link.extra.update({"type": "etcd", "prefix": prefix})
    state = _PrefixState(upstream, settings.default_weight)
    reported: list[TargetInfo] | None = None
    started = False

    def report() -> None:
        nonlocal reported
        current = state.current()
        link.extra["targets"] = len(current)
        if current != reported:
            reported = current
            on_change(upstream, list(current))

    while True:
        try:
            revision, kvs = await client.range_prefix(prefix)
            state.reset(kvs)
            link.up(str(client.endpoint), f" ({len(state.targets)} targets under {prefix})")
            backoff.reset()
            report()
            if not started:
                started = True
                task_status.started()
            async with aclosing(client.watch_prefix(prefix, revision + 1)) as watch:
                async for revision, events in watch:
                    for ev in events:
                        if ev.type == "DELETE":
                            state.delete(ev.kv.key)
                        else:
                            state.put(ev.kv.key, ev.kv.value)
                    link.extra["revision"] = revision
                    report()
        except Compacted as e:
            log.info("upstream %s: %s; reading %s again", upstream, e, prefix)
            continue
        except (TransportError, EtcdError) as e:
            kept = f"; keeping {len(reported)} last known targets" if reported is not None else ""
            link.down(str(client.endpoint), str(e), kept)
            client.rotate()
        if not started:
            started = True
            task_status.started()
        await trio.sleep(backoff.next_delay())
