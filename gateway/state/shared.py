"""A worker's view of the state shared through the keeper, and its line to it.

The data plane reads only local structures: token leases (`leases`), the breaker view, and each upstream group's
`unusable` set (drained, circuit-open or unhealthy targets; all of them when the upstream is below its healthchecks
threshold), kept current by messages from the keeper. This task talks to the
keeper: it asks for leases ahead of need, sends outcomes in batches (a failure within FLUSH_S, a passive one that counts
towards unhealthy on the next scheduler turn; successes alone every SUCCESS_BATCHES flushes: they only add to the
keeper's volume counts), and watches the keeper's heartbeat. When its
connection closes (the keeper exited) or no heartbeat came for KEEPER_LOST_S (it hangs), rate limits fall back to
local shares (limit / workers) and breakers keep their last published states; when a keeper (possibly a new
incarnation) is heard again, the worker resynchronises.

`gateway run` (no supervisor, no bus) uses the same class with the keeper's logic in-process.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import trio
import zmq

from gateway.balancing.base import FollowsHealth
from gateway.breaker.messages import given_up
from gateway.breaker.state import State
from gateway.breaker.view import BreakerView
from gateway.bus import protocol as p
from gateway.bus.channel import KeeperChannel
from gateway.health.threshold import unusable_targets
from gateway.metrics import LEASE_ROUND_TRIPS, RECORDER
from gateway.ratelimit.lease import LeaseTable
from gateway.ratelimit.ledger import MAX_KEYS
from gateway.ratelimit.messages import FallbackUsage
from gateway.runtime import Runtime, TargetRuntime, UpstreamGroup
from gateway.stores.cache import ENTRY_LIMIT as CACHE_ENTRY_LIMIT
from gateway.stores.counters import WorkerCounters

log = logging.getLogger("gateway.state")
T = TypeVar("T")

FLUSH_S = 0.02  # outcomes and lease requests leave at most this late (a request never waits on it: see wait_grant)
IDLE_FLUSH_S = 0.1  # ... once the worker has been quiet a while (the first after a pause at most this late)
SUCCESS_BATCHES = 10  # a target's outcomes without a failure go with every 10th flush only (0.2 s)
KEEPER_LOST_S = 0.75  # no heartbeat for this long (3 of HEARTBEAT_S): the keeper is gone, use local shares
LOST_SLACK_S = 0.01  # a quiet worker looks for the keeper's next heartbeat until KEEPER_LOST_S and this after the last
SWEEP_S = 1.0  # expired leases are given back this often
CALL_TIMEOUT_S = 0.25  # a host-wide store's answer later than this counts as none (the keeper is busy or gone)
REPORT_BYTES = 1 << 20  # rate-limit reports go to the keeper in GiveBacks of about this size
REPORT_ENTRY_BYTES = 256  # a report's size beside its key, at most (spec, worker, counts)
COUNTER_ENTRY_BYTES = 32  # a counter's add beside its key, at most (increment, ttl)


class SharedState:
    """Leases, breakers and target overrides for one worker process."""

    def __init__(self, worker_id: str, workers: int) -> None:
        self.worker_id = worker_id
        self.workers = workers
        self.leases = LeaseTable(worker_id, workers)
        self.counts = WorkerCounters()  # what this worker added to the host's counters (stores/counters.py rules 5-7)
        self.breakers = BreakerView(self._wake_flush)
        self.keeper_up = False
        self.incarnation = ""
        self.synced = trio.Event()  # set by the first snapshot from a keeper (targets discovered, health, drains)
        self._last_heartbeat = -1e9
        self._beat: trio.Event | None = None  # while a quiet worker's flush waits for the keeper's next heartbeat
        self._soon: trio.CancelScope | None = None  # a busy worker's FLUSH_S sleep: cancelled, it flushes now
        self._flushes = 0
        self._gone = ("", 0.0)  # the incarnation whose connection closed, and until when its heartbeats are stale
        self._waiters: dict[str, trio.Event] = {}
        self._calls: dict[int, list[Any]] = {}  # store call id -> [event, answer], while it waits
        self._call_ids = itertools.count(1)
        self._outbox: list[Any] = []  # store calls and stores of this scheduler turn (StoreBatch's items)
        self._outbox_ready = trio.Event()  # set when the outbox has something: its task sends it on the next turn
        self._groups: dict[str, list[tuple[UpstreamGroup, int]]] = {}
        self._by_name: dict[str, list[UpstreamGroup]] = {}
        self._drained: set[str] = set()
        self._unhealthy: set[str] = set()
        self._weights: dict[str, int] = {}  # the admin channel's weights (key -> weight), over the config's
        self._thresholds: dict[str, float] = {}  # upstream name -> its healthchecks.threshold, when not 0
        self._passive: list[tuple[str, str, int]] = []
        self._asked: dict[str, float] = {}  # key -> when its oldest unanswered lease request left (monotonic)
        self._send: Callable[[p.Msg], bool] = lambda msg: False
        self._pump: Callable[[], None] = _nothing  # hands over what the bus has received, now
        self._local: Any = None  # the keeper's logic (gateway.keeper.state.Keeper), in-process, when there is no bus
        self._beside: list[Callable[[p.Msg], None]] = []  # ... and who else in this process hears it (`local_line`)
        # Called when a breaker opens on a target of a group with sweep_force_shutdown (the forwarder's sweep).
        self.on_sweep: Callable[[UpstreamGroup, int], None] | None = None

    def attach(self, runtime: Runtime) -> None:
        """Learn the runtime's targets, so published states reach their upstream groups."""
        self._by_name.clear()
        for group in runtime.all_groups():
            self._by_name.setdefault(group.name, []).append(group)
        self._index_targets()
        self._thresholds = {up.name: up.healthchecks.threshold for up in runtime.config.upstreams
                            if up.healthchecks.threshold}
        for name in self._thresholds:  # a threshold of 100 (or any, with no target) is unhealthy from the start
            for group in self._by_name.get(name, ()):
                self._recompute_group(group)

    def _index_targets(self) -> None:
        self._groups.clear()
        for groups in self._by_name.values():
            for group in groups:
                for index, key in enumerate(group.keys):
                    self._groups.setdefault(key, []).append((group, index))

    # ---- hot path helpers ---------------------------------------------------------------------------------------

    async def wait_grant(self, key: str, timeout: float) -> None:
        """Ask for due leases now (not at the next flush) and wait, bounded, for the answer for `key`."""
        event = self._waiters.get(key)
        if event is None:
            event = self._waiters[key] = trio.Event()
        if self.keeper_up:
            requests = self.leases.refills(time.monotonic())
            if requests:
                self._ask(requests)  # in-process keeper: answered (event set) right here
        with trio.move_on_after(timeout):
            await event.wait()

    def _ask(self, requests: list) -> None:  # type: ignore[type-arg]
        """Send lease requests, noting when, for the round-trip metric (gateway_keeper_lease_round_trip_ms)."""
        now = time.monotonic()
        for r in requests:
            self._asked.setdefault(r.key, now)
        self._send(p.AskLeases(requests=requests))

    def is_drained(self, key: str) -> bool:
        return key in self._drained

    def is_down(self, key: str) -> bool:
        """Whether target `key` itself fails: unhealthy, or its circuit open (not merely drained, weighted 0 or
        in an upstream unhealthy as a whole): an MCP session pinned to it starts again elsewhere."""
        return key in self._unhealthy or self.breakers.is_open(key)

    def begin(self, group: UpstreamGroup, index: int) -> bool:
        """A request goes to a breaker-covered target: True if it is a half-open probe (spending our permit)."""
        if not self.breakers.permits:  # no breaker half-open here: the common case
            return False
        key = group.keys[index]
        if self.breakers.started(key):
            self._recompute(key)
            return True
        return False

    def outcome(self, key: str, ok: bool, probe: bool) -> None:
        """A request to a breaker-covered target ended: batch it, or send a probe's result at once (a successful
        one's permit kept for this worker's next request: BreakerView._probed)."""
        single = self.breakers.record(key, ok, probe)
        if single is not None:
            if single.kept:
                self._recompute(key)
            self._send(p.Outcomes(items=[single]))

    def probe_given_up(self, key: str) -> None:
        """A half-open probe ended without a result (its client left): the permit goes back to the keeper now,
        rather than lapsing after probe_ttl_s while no other request may probe."""
        self._send(p.Outcomes(items=[given_up(key)]))

    def passive(self, key: str, code: int, counts: bool) -> None:
        """A result for passive health checks (status, or -1 TCP failure, -2 timeout), sent with the next batch; one
        that `counts` towards unhealthy (in the group's passive_failures) with the next scheduler turn's flush: an
        in-process keeper's verdict is in before the next request picks, as Kong's (kong/init.lua:1325-1337)."""
        upstream, _, target = key.partition("|")
        self._passive.append((upstream, target, code))
        if counts and self._soon is not None:
            self._soon.cancel()  # the flusher's busy sleep; a burst within this turn still leaves as one message
        else:
            self._wake_flush()

    # ---- messages from the keeper -------------------------------------------------------------------------------

    def on_message(self, msg: p.Msg) -> None:
        now = trio.current_time()
        if isinstance(msg, p.Heartbeat):
            if msg.incarnation == self._gone[0] and now < self._gone[1]:
                return  # sent before that keeper exited, read after its connection closed
            self._last_heartbeat = now
            if msg.incarnation != self.incarnation or not self.keeper_up:
                self._keeper_found(msg.incarnation)
            if self._beat is not None:
                self._beat.set()
        elif isinstance(msg, p.Grants):
            mono, wall = time.monotonic(), time.time()
            for grant in msg.grants:
                asked = self._asked.pop(grant.key, None)
                if asked is not None:
                    RECORDER.observe(LEASE_ROUND_TRIPS, (), (mono - asked) * 1000.0)
                self.leases.apply(grant, mono, wall)
                event = self._waiters.pop(grant.key, None)
                if event is not None:
                    event.set()
        elif isinstance(msg, p.Recall):
            if msg.keeper == self.leases.keeper:  # (an older keeper's: the restate dropped its tokens, lease.py rule 7)
                returned, recalled = self.leases.recall(msg.keys)
                self._send(p.GiveBack(returned=returned, recalled=recalled, keeper=msg.keeper))
        elif isinstance(msg, p.StoreBatch):
            for answer in msg.items:
                self.on_message(answer)
        elif isinstance(msg, (p.CacheEntry, p.CounterValues)):
            slot = self._calls.get(msg.id)
            if slot is not None:
                slot[1] = msg
                slot[0].set()
        elif isinstance(msg, p.BreakersChanged):
            for update in msg.updates:
                self.breakers.apply(update)
            groups = self._groups
            self._recompute_groups(g for u in msg.updates for g, _ in groups.get(u.target, ()))  # then sweep
            if self.on_sweep is not None:
                for update in msg.updates:
                    if update.state in _OPEN:
                        for group, index in self._groups.get(update.target, ()):
                            if group.sweep:
                                self.on_sweep(group, index)
        elif isinstance(msg, p.ProbePermit):
            (self.breakers.withdraw if msg.withdrawn else self.breakers.permit)(msg.target)
            self._recompute(msg.target)
        elif isinstance(msg, p.TargetsChanged):
            self._recompute_groups(self._apply_targets(msg.targets))
        elif isinstance(msg, p.UpstreamTargets):
            self._recompute_groups(self._replace_targets(msg.upstream, msg.targets))
        elif isinstance(msg, p.Snapshot):
            if not self.incarnation:  # the answer to the Hello sent at start: the keeper is up, no need to wait for
                self.incarnation = msg.incarnation  # its next heartbeat (up to HEARTBEAT_S) to know it
                self.leases.keeper = msg.incarnation
                self.keeper_up = True
                self._last_heartbeat = now
                self.leases.fallback(False, self.workers)
            for up in msg.upstreams:
                self._replace_targets(up.upstream, up.targets)
            for update in msg.breakers:
                self.breakers.apply(update)
            self._apply_targets(msg.targets)
            self._recompute_groups(g for groups in self._by_name.values() for g in groups)
            self.synced.set()

    def _keeper_found(self, incarnation: str) -> None:
        if self.incarnation and incarnation != self.incarnation:
            log.info("worker %s: state keeper %s replaced %s; resynchronising", self.worker_id, incarnation,
                     self.incarnation)
        elif not self.keeper_up and self.incarnation:
            log.info("worker %s: state keeper %s is back; resynchronising", self.worker_id, incarnation)
        replaced = self.incarnation and incarnation != self.incarnation
        self.incarnation = self.leases.keeper = incarnation  # what is sent from now on is for it (lease.py rule 5)
        self.keeper_up = True
        self.leases.fallback(False, self.workers)
        self._send(p.Hello(worker=self.worker_id, pid=os.getpid()))
        # A new incarnation counts every window from 0: it hears all this worker admitted in them, not only the
        # local-share use (gateway/ratelimit/lease.py rule 5); at most as many keys as it keeps.
        wall = time.time()
        self._give_reports(self.leases.restate(wall, time.monotonic())[-MAX_KEYS:] if replaced
                           else self.leases.reports(wall))
        if replaced:
            # all this worker added to the host's counters as well (stores/counters.py rule 5)
            self._add_counters(self.counts.restate(wall))
            # what was asked of the old keeper, ask of this one (after the reports, as always)
            self.leases.requests_lost()
            requests = self.leases.refills(time.monotonic())
            if requests:
                self._ask(requests)

    def _give_reports(self, usages: list[FallbackUsage]) -> None:
        """Send reports in GiveBacks of about REPORT_BYTES each: a worker may hold many keys, each of a client's
        making, and a frame beyond the bus's MAX_MESSAGE would be refused."""
        for batch in _batches(usages, [len(usage.key) + REPORT_ENTRY_BYTES for usage in usages]):
            self._send(p.GiveBack(fallback=batch))

    def _add_counters(self, items: list[tuple[str, int, float]]) -> None:
        """Send adds to the host's counters for the keeper now up, in CountersAdd of about REPORT_BYTES each."""
        for batch in _batches(items, [len(item[0]) + COUNTER_ENTRY_BYTES for item in items]):
            if batch:
                self._send(p.CountersAdd(items=batch, keeper=self.incarnation))

    def keeper_disconnected(self) -> None:
        """The connection to the keeper closed: it exited (the supervisor restarts it). No need to wait for the
        heartbeats to stop."""
        if self.keeper_up:
            self._gone = (self.incarnation, trio.current_time() + KEEPER_LOST_S)
            self._keeper_lost("the state keeper's connection closed")

    def start_without_keeper(self) -> None:
        """The worker starts serving before any keeper answered (one hangs, or is being restarted): local shares
        until one is heard, as for a keeper lost later (without this, every rate-limited request waited for grants
        no one would send, then was denied)."""
        if not self.keeper_up:
            self._keeper_lost("no state keeper answered at start")

    def _keeper_lost(self, why: str) -> None:
        self.keeper_up = False
        self.leases.fallback(True, self.workers)
        log.warning("worker %s: %s; rate limits use local shares (limit / %d) and breakers keep their last states "
                    "until it is back", self.worker_id, why, self.workers)
        self._asked.clear()
        for event in self._waiters.values():  # the requests waiting for grants decide on the local shares
            event.set()
        self._waiters.clear()

    def _replace_targets(self, upstream: str, infos: list[p.TargetInfo]) -> list[UpstreamGroup]:
        """Discovery's new list for `upstream`: new targets and balancers for its groups (the admin channel's weights
        kept), indexed again; returns the groups, for the caller to recompute once each."""
        groups = self._by_name.get(upstream, ())
        for group in groups:  # a key names its upstream: only these groups hold the keys `upstream|...`
            for key in group.keys:
                self._groups.pop(key, None)
        prefix = upstream + "|"
        overrides = self._weights
        for group in groups:
            targets = [TargetRuntime(t.host, t.port, t.weight, group.host_header, t.hostname, t.target) for t in infos]
            group.replace_targets(targets, [overrides.get(prefix + t.name, t.weight) for t in targets])
            for index, key in enumerate(group.keys):
                self._groups.setdefault(key, []).append((group, index))
        return list(groups)

    def _apply_targets(self, targets: list[p.TargetState]) -> list[UpstreamGroup]:
        """Drains, health verdicts and weights from the keeper; returns the groups they touch, to recompute once
        each (one recompute per state would walk a group once per target of it)."""
        touched: dict[int, UpstreamGroup] = {}
        for state in targets:
            (self._drained.add if state.drained else self._drained.discard)(state.key)
            if state.healthy is not None:
                (self._unhealthy.discard if state.healthy else self._unhealthy.add)(state.key)
            # A balancer holds the override, or the target's own weight when there is none: re-weight it (which
            # may rebuild its whole schedule) only when one is set or lifted.
            reweight = state.weight is not None or self._weights.pop(state.key, None) is not None
            if state.weight is not None:
                self._weights[state.key] = state.weight
            for group, index in self._groups.get(state.key, ()):
                touched[id(group)] = group
                if reweight:
                    weight = state.weight if state.weight is not None else group.targets[index].weight
                    group.balancer.set_weight(index, weight)
        return list(touched.values())

    def _recompute(self, key: str) -> None:
        for group, _ in self._groups.get(key, ()):
            self._recompute_group(group)

    def _recompute_groups(self, groups: Iterable[UpstreamGroup]) -> None:
        """Recompute each group once, however many of its targets a message named."""
        seen: set[int] = set()
        for group in groups:
            if id(group) not in seen:
                seen.add(id(group))
                self._recompute_group(group)

    def _recompute_group(self, group: UpstreamGroup) -> None:
        """A group skips what is drained, circuit-open or unhealthy, and every target when its healthy weight is
        not above its healthchecks.threshold (Kong's unhealthy balancer: 503); with panic_mode, an unhealthy
        upstream uses its unhealthy targets anyway (Envoy's panic mode). gateway.health.threshold has the rules.
        A group a circuit-breaker covers gets `unbroken` too: the same without its circuits, for the requests the
        plugin does not run for (gateway.runtime._Unbroken). A balancer that follows health (Kong's latency) hears
        which targets are out for their own sake."""
        keys = group.keys
        weights = self._weights
        unhealthy = self._unhealthy
        weighted = [weights.get(k, t.weight) for k, t in zip(keys, group.targets, strict=True)]
        sick = {i for i, k in enumerate(keys) if k in unhealthy}
        drained = {i for i, k in enumerate(keys) if k in self._drained}
        threshold = self._thresholds.get(group.name, 0)
        group.unusable = unusable_targets(
            weighted, sick, drained | {i for i, k in enumerate(keys) if self.breakers.is_open(k)}, threshold,
            group.panic)
        if group.breakers:
            group.unbroken = unusable_targets(weighted, sick, drained, threshold, group.panic)
        balancer = group.balancer
        if isinstance(balancer, FollowsHealth):
            # Kong forgets an unavailable address's EWMA (afterHostUpdate): here an unhealthy or drained target that
            # no request may go to. Not a circuit-open one (still open to the requests the plugin does not run
            # for), nor one skipped only because the whole upstream is below its threshold (Kong's addresses stay
            # available then), nor an unhealthy one panic mode sends to.
            out = group.unusable & (sick | drained)
            balancer.set_unavailable(out & group.unbroken if group.breakers else out)

    # ---- the periodic work --------------------------------------------------------------------------------------

    def flush(self, now: float) -> None:
        """Send what is due: fallback reports, lease requests, outcome batches; notice a silent keeper."""
        if self.keeper_up and now - self._last_heartbeat > KEEPER_LOST_S:
            self._pump()  # heartbeats may be waiting, unread while this worker was busy (a burst of connections)
            if self.keeper_up and now - self._last_heartbeat > KEEPER_LOST_S:
                self._keeper_lost(f"no heartbeat from the state keeper for {KEEPER_LOST_S:.1f}s")
        if not self.keeper_up:
            self.breakers.drain_outcomes()  # nobody to tell; the keeper starts fresh counts anyway
            self._passive.clear()
            return
        wall = time.time()
        reports = self.leases.reports(wall)
        if reports:  # (after an outage: every key's local use, in frames the bus takes)
            self._give_reports(reports)
        if self.counts.pending:  # the adds to the host's counters made while the keeper was away
            self._add_counters(self.counts.take_unsent(wall))
        requests = self.leases.refills(time.monotonic())
        if requests:
            self._ask(requests)
        self._flushes += 1
        outcomes = self.breakers.drain_outcomes(successes=self._flushes % SUCCESS_BATCHES == 0)
        if outcomes:
            self._send(p.Outcomes(items=outcomes))
        if self._passive:
            passive, self._passive = self._passive, []
            self._send(p.PassiveOutcomes(items=passive))

    def sweep(self, now: float) -> None:
        returned = self.leases.sweep(time.monotonic())
        if returned and self.keeper_up:
            self._send(p.GiveBack(returned=returned))

    # ---- host-wide stores: Kong's shared dicts, held by the keeper (gateway.stores) --------------------------------

    async def cache_fetch(self, dictionary: str, key: str) -> bytes | None:
        """An entry of the host's cache dictionary; None when absent, expired, or the keeper did not answer in
        CALL_TIMEOUT_S (a cache that cannot be read is a miss)."""
        call_id = next(self._call_ids)
        reply = await self._call(call_id, p.CacheFetch(id=call_id, dictionary=dictionary, key=key))
        return reply.entry if isinstance(reply, p.CacheEntry) else None

    def cache_store(self, dictionary: str, key: str, entry: bytes, ttl: float) -> None:
        """Store an entry for `ttl` seconds (0: until evicted); entries over CACHE_ENTRY_LIMIT are the caller's to
        refuse. Not acknowledged, as a shared dict's set is not awaited."""
        # Sent at once, not with the turn's batch: before the response it was made from reaches the client, so that
        # the client's next request, whichever worker takes it, finds it (as a shared dict's set is seen at once)
        if self.keeper_up and len(entry) <= CACHE_ENTRY_LIMIT:
            self._send(p.CacheStore(dictionary=dictionary, key=key, entry=entry, ttl=ttl))

    def cache_purge(self, dictionary: str, key: str) -> None:
        if self.keeper_up:
            self._send(p.CachePurge(dictionary=dictionary, key=key))

    def cache_flush(self, dictionary: str) -> None:
        if self.keeper_up:
            self._send(p.CachePurge(dictionary=dictionary))

    async def counters_get(self, keys: list[str]) -> list[int] | None:
        """Current values of host-wide counters (0: absent or expired); None when the keeper is away or did not
        answer in CALL_TIMEOUT_S."""
        call_id = next(self._call_ids)
        reply = await self._call(call_id, p.CountersGet(id=call_id, keys=keys))
        return reply.values if isinstance(reply, p.CounterValues) else None

    async def counters_usage(self, keys: list[str], ends: list[float]) -> list[int]:
        """Kong's shm:get of host-wide counters, which cannot fail: the keeper's values, or, the keeper away or silent
        for CALL_TIMEOUT_S, this worker's view of them (stores/counters.py rule 6). `ends`: each key's end (wall)."""
        values = await self.counters_get(keys)
        if values is None:
            return self.counts.known(keys, time.time())
        self.counts.read(keys, values, ends, time.time())
        return values

    def counters_add(self, items: list[tuple[str, int, float]]) -> None:
        """(key, increment, seconds a key lives from its first increment) each; not acknowledged. Remembered here,
        for a keeper restarted empty, and kept for the keeper while it is away (stores/counters.py rules 5-7)."""
        if items:
            self.counts.add(items, time.time(), self.keeper_up)
            if self.keeper_up:
                self._post(p.CountersAdd(items=items, keeper=self.incarnation))

    async def _call(self, call_id: int, msg: p.Msg) -> p.Msg | None:
        if not self.keeper_up:
            return None
        slot: list[Any] = [trio.Event(), None]
        self._calls[call_id] = slot  # before sending: an in-process keeper answers within the send
        try:
            if not self._post(msg):
                return None
            if slot[1] is None:
                with trio.move_on_after(CALL_TIMEOUT_S):
                    await slot[0].wait()
            return slot[1]
        finally:
            del self._calls[call_id]

    def _post(self, msg: p.Msg) -> bool:
        """A store call or counters_add: sent at once to an in-process keeper; over the bus, with the others of this
        scheduler turn in one StoreBatch (_send_outbox runs on the next turn, after every task running now)."""
        if self._local is not None:
            return self._send(msg)
        if not self._outbox:
            self._outbox_ready.set()
        self._outbox.append(msg)
        return True

    async def _send_outbox(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready = trio.Event()
            batch, self._outbox = self._outbox, []
            if self._send(batch[0] if len(batch) == 1 else p.StoreBatch(items=batch)):
                continue
            for msg in batch:  # the keeper cannot be reached: the calls among them end now, unanswered
                slot = self._calls.get(getattr(msg, "id", 0))
                if slot is not None:
                    slot[0].set()

    def release(self) -> None:
        """The worker is stopping (its connections are done): give back every unspent token, which an exact limit
        would otherwise lose until its window ends."""
        returned = self.leases.release()
        if returned and self.keeper_up:
            self._send(p.GiveBack(returned=returned))

    async def run_bus(self, ctx: zmq.Context, endpoint: str,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Talk to the keeper over ZeroMQ until cancelled."""
        channel = KeeperChannel(ctx, endpoint, self.on_message, self.keeper_disconnected)
        self._send = channel.send
        self._pump = channel.pump
        channel.send(p.Hello(worker=self.worker_id, pid=os.getpid()))  # answered with a snapshot: `synced`
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(channel.run)
                nursery.start_soon(self._periodic)
                nursery.start_soon(self._send_outbox)
                task_status.started()
        finally:
            self._send = lambda msg: False
            self._pump = _nothing

    async def run_local(self, keeper: object, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """No bus (`gateway run`): the keeper's logic runs here, exact for this one process."""
        from gateway.keeper.redis_level import run_redis_level
        from gateway.keeper.state import Keeper

        assert isinstance(keeper, Keeper)

        def send(msg: p.Msg) -> bool:
            replies, broadcasts = keeper.handle(b"local", msg, trio.current_time(), time.time())
            self._from_local(*replies, *(direct for _, direct in keeper.outbox()), *broadcasts)
            return True

        self._send = send
        self._local = keeper
        self.on_message(p.Heartbeat(incarnation=keeper.incarnation))  # (its Hello makes this process the worker)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._periodic)
            nursery.start_soon(keeper.drop_ended_limits)  # (the keeper process's own task)
            nursery.start_soon(run_redis_level, keeper, lambda sender, msg: self.on_message(msg))
            task_status.started()

    def local_line(self, on_message: Callable[[p.Msg], None]) -> Callable[[p.Msg], bool]:
        """With the keeper's logic in this process (`run_local`), a line to it for another part of the process
        (`gateway run`'s health checker, gateway.health.local): `on_message` hears all it sends, after this worker;
        the function returned sends to it."""
        self._beside.append(on_message)
        return lambda msg: self._send(msg)

    def _from_local(self, *msgs: p.Msg) -> None:
        for msg in msgs:
            self.on_message(msg)
            for listener in self._beside:
                listener(msg)

    def _wake_flush(self) -> None:
        """Something is waiting to be sent: a quiet worker waiting for the keeper's heartbeat flushes now."""
        if self._beat is not None:
            self._beat.set()

    def _pending(self) -> bool:
        """Is anything waiting for a flush (outcomes, passive results, lease refills or reports)?"""
        return bool(self.breakers.pending or self._passive or self.leases.pending or self.counts.pending)

    async def _periodic(self) -> None:
        """Flush every FLUSH_S while there is traffic; a quiet worker backs off to IDLE_FLUSH_S, and then flushes
        when the keeper's next heartbeat (every HEARTBEAT_S, 0.25 s) wakes it anyway, when that heartbeat is overdue,
        or at once when traffic brings outcomes again (a busy one too, for a passive failure that counts): a host of
        idle workers is not woken 50 times a second each for nothing, nor twice for one thing (issue 19), and the
        first failure after a quiet spell is not late."""
        next_sweep = trio.current_time() + SWEEP_S
        pause = FLUSH_S
        while True:
            if pause < IDLE_FLUSH_S or self._local is not None or not self.keeper_up:
                with trio.move_on_after(pause) as self._soon:
                    await trio.sleep_forever()
                self._soon = None
            else:
                self._beat = beat = trio.Event()
                with trio.move_on_at(self._last_heartbeat + KEEPER_LOST_S + LOST_SLACK_S):
                    await beat.wait()
                self._beat = None
            now = trio.current_time()
            if self._local is not None:
                self._last_heartbeat = now
                direct, broadcasts = self._local.tick(now)
                self._from_local(*(m for _, m in direct), *broadcasts)
            self.flush(now)
            if now >= next_sweep:
                next_sweep = now + SWEEP_S
                self.sweep(now)
            pause = FLUSH_S if self._pending() else min(pause * 2, IDLE_FLUSH_S)


_OPEN = (State.OPEN, State.FORCED_OPEN)


def _nothing() -> None:
    """No bus to pump (gateway run, or not connected yet)."""


def _batches(items: list[T], costs: list[int]) -> Iterator[list[T]]:
    """`items` in batches of about REPORT_BYTES by their `costs` (the last, maybe empty, always given): a frame beyond
    the bus's MAX_MESSAGE would be refused."""
    batch: list[T] = []
    size = 0
    for item, cost in zip(items, costs, strict=True):
        if batch and size + cost > REPORT_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += cost
    yield batch
