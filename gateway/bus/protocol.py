"""The shared-state bus between the state keeper and the workers, sans-I/O: message types and their encoding.

Two ZeroMQ sockets, both bound by the keeper:
- ROUTER `gateway.bus` (workers connect DEALERs): requests from a worker and the keeper's direct replies;
- PUB `gateway.bus` + "-pub" (workers SUBscribe): heartbeats and state every worker must see at once.
Every message is one msgpack frame of a tagged msgspec Struct carrying the protocol version `v`; a message of
another version is dropped with a log line, so a mixed-version restart cannot corrupt state.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from gateway.breaker.messages import BreakerUpdate, Outcome
from gateway.discovery.types import TargetInfo
from gateway.ratelimit.messages import FallbackUsage, Grant, LeaseRequest, ReturnedLease

VERSION = 1
MAX_MESSAGE = 16 << 20  # bytes of one frame (ZMQ_MAXMSGSIZE on every bus socket): a cache entry fits in it


class Msg(msgspec.Struct, tag_field="t", omit_defaults=True):
    v: int = VERSION


# ---- worker -> keeper --------------------------------------------------------------------------------------------


class Hello(Msg, tag="hello"):
    """A worker (re)connected: the keeper answers with a Snapshot."""

    worker: str = ""
    pid: int = 0


class AskLeases(Msg, tag="ask"):
    requests: list[LeaseRequest] = []


class GiveBack(Msg, tag="giveback"):
    """Unused tokens of ended windows, and what a worker admitted on its own while the keeper was away; `recalled`:
    its answer to a Recall of keeper incarnation `keeper`, one ReturnedLease per key recalled (of none too), which
    that keeper alone credits (ledger.py rule 12)."""

    returned: list[ReturnedLease] = []
    fallback: list[FallbackUsage] = []
    recalled: list[ReturnedLease] = []
    keeper: str = ""


class Outcomes(Msg, tag="outcomes"):
    items: list[Outcome] = []


class PassiveOutcomes(Msg, tag="passive"):
    """Results of real traffic for passive health checks: (upstream, host:port, status or TCP_FAILURE/TIMEOUT)."""

    items: list[tuple[str, str, int]] = []


class HealthReport(Msg, tag="health"):
    """From the health checker, at start, to each new keeper and every second: the verdicts it last heard the keeper
    publish, as the targets held unhealthy (possibly none). A new keeper starts from it (it publishes no verdicts
    until this first report); a running one answers the checker, directly, with the verdicts it has wrong."""

    items: list[tuple[str, str, bool]] = []


ProbeEvent = Literal["success", "http_failure", "tcp_failure", "timeout"]  # gateway.health.machine.Event's values


class ProbeOutcomes(Msg, tag="probes"):
    """From the health checker: what each probe found (upstream, host:port, event). The keeper counts them on the
    target's one state machine with the active thresholds, as passive outcomes with the passive ones (Kong's)."""

    items: list[tuple[str, str, ProbeEvent]] = []


class Discovered(Msg, tag="discovered"):
    """From discovery: an upstream's full current target list."""

    upstream: str = ""
    targets: list[TargetInfo] = []


class AdminOp(Msg, tag="admin"):
    """From the root: an operator's command on shared state (breakers, limits, targets). `deadline`: this host's
    time.monotonic() (one clock for the root and its keeper) past which the root has stopped waiting and reported the
    command failed, so the keeper must not carry it out (0: none); but for the commands in LATE_APPLIED."""

    cmd: str = ""
    args: dict[str, Any] = {}
    id: int = 0
    deadline: float = 0.0


# Carried out however late: reload_config re-reads the config the root has written, which is right whenever it comes
# (the root says so when the keeper does not confirm: "it reads the new config when it restarts"). Its args are the
# KONG_<KEY> variables the root checked that config under, which the keeper applies over its own environment.
LATE_APPLIED = frozenset({"reload_config"})


class CacheFetch(Msg, tag="cache_fetch"):
    """An entry of a host-wide cache dictionary (proxy-cache): answered with a CacheEntry of the same id."""

    id: int = 0
    dictionary: str = ""
    key: str = ""


class CacheStore(Msg, tag="cache_store"):
    """Store an entry for `ttl` seconds (0: until evicted), as ngx.shared.DICT:set does."""

    dictionary: str = ""
    key: str = ""
    entry: bytes = b""
    ttl: float = 0.0


class CachePurge(Msg, tag="cache_purge"):
    """Delete one entry, or (key None) every entry of the dictionary."""

    dictionary: str = ""
    key: str | None = None


class CountersGet(Msg, tag="counters_get"):
    """Current values of host-wide counters (response-ratelimiting): answered with CounterValues of the same id."""

    id: int = 0
    keys: list[str] = []


class CountersAdd(Msg, tag="counters_add"):
    """(key, increment, seconds a key lives from its first increment) per counter, as ngx.shared.DICT:incr.
    `keeper`: the incarnation it is for ("": any); another drops it, as the worker's restate replaces it."""

    items: list[tuple[str, int, float]] = []
    keeper: str = ""


# ---- keeper -> worker (direct) -----------------------------------------------------------------------------------


class Grants(Msg, tag="grants"):
    grants: list[Grant] = []


class Recall(Msg, tag="recall"):
    """Give back at once every unspent token of `keys` (ledger.py rule 12: another worker's request waits for them),
    answered with a GiveBack's `recalled`; `keeper`: the incarnation recalling (a worker ignores an older one's)."""

    keys: list[str] = []
    keeper: str = ""


class ProbePermit(Msg, tag="probe"):
    """The bearer may send one half-open probe to `target`; withdrawn: one permit it kept (Outcome.kept) is not counted
    in flight by the keeper, and is not its to spend."""

    target: str = ""
    withdrawn: bool = False


class CacheEntry(Msg, tag="cache_entry"):
    id: int = 0
    entry: bytes | None = None  # None: absent or expired


class CounterValues(Msg, tag="counter_values"):
    id: int = 0
    values: list[int] = []


class StoreBatch(Msg, tag="store_batch"):
    """Store calls and stores of one worker's scheduler turn in one message, both ways (the keeper answers the calls
    with one StoreBatch of their answers): one wake-up of each side for all the requests that asked at once."""

    items: list[CacheFetch | CacheStore | CachePurge | CountersGet | CountersAdd | CacheEntry | CounterValues] = []


class AdminResult(Msg, tag="admin_result"):
    id: int = 0
    ok: bool = True
    result: Any = None
    error: str | None = None


# ---- keeper -> all workers (PUB) ---------------------------------------------------------------------------------


class TargetState(msgspec.Struct, array_like=True):
    """Operator state of one target: `key` is "<upstream>|<host:port>"."""

    key: str
    drained: bool = False
    weight: int | None = None  # None: as configured
    healthy: bool | None = True  # active and passive health checks; None: no verdict yet, keep the one you have


class Heartbeat(Msg, tag="hb"):
    incarnation: str = ""
    seq: int = 0


class Snapshot(Msg, tag="snapshot"):
    """Everything a worker needs after (re)connecting, or after the keeper restarted."""

    incarnation: str = ""
    breakers: list[BreakerUpdate] = []
    targets: list[TargetState] = []
    upstreams: list[UpstreamTargets] = []  # discovered target lists (upstreams from the config are not listed)


class BreakersChanged(Msg, tag="breakers"):
    updates: list[BreakerUpdate] = []


class TargetsChanged(Msg, tag="targets"):
    targets: list[TargetState] = []


class UpstreamTargets(Msg, tag="upstream_targets"):
    """Discovery changed an upstream's target list: workers rebuild its balancer, the checker its probes."""

    upstream: str = ""
    targets: list[TargetInfo] = []


AnyMsg = (Hello | AskLeases | GiveBack | Outcomes | PassiveOutcomes | HealthReport | ProbeOutcomes | Discovered |
          AdminOp | CacheFetch | CacheStore | CachePurge | CountersGet | CountersAdd | Grants | Recall | ProbePermit |
          CacheEntry | CounterValues | StoreBatch | AdminResult | Heartbeat | Snapshot | BreakersChanged |
          TargetsChanged | UpstreamTargets)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMsg)


class BadMessage(Exception):
    """A frame that is not a message of this protocol version."""


def encode(msg: Msg) -> bytes:
    return _encoder.encode(msg)


def decode(frame: bytes) -> Msg:
    try:
        msg = _decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise BadMessage(f"undecodable bus message ({len(frame)} bytes): {e}") from None
    if msg.v != VERSION:
        raise BadMessage(f"bus message of protocol version {msg.v}; this gateway speaks {VERSION}")
    return msg


def pub_endpoint(bus: str) -> str:
    """The PUB endpoint beside the ROUTER one: ipc://run/bus.sock -> ipc://run/bus-pub.sock."""
    if bus.startswith("ipc://"):
        base, dot, ext = bus.rpartition(".")
        return f"{base}-pub.{ext}" if dot and "/" not in ext else f"{bus}-pub"
    if bus.startswith("tcp://"):
        host, _, port = bus.rpartition(":")
        return f"{host}:{int(port) + 1}"
    raise ValueError(f"gateway.bus: expected ipc://PATH or tcp://HOST:PORT, got {bus!r}")
