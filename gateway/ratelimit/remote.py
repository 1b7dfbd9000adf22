"""The host's side of policy redis: what a state keeper holds of each limit shared through Redis (sans-I/O).

Rules (the keeper's Ledger applies them to keys whose spec has a `store`):
1. A host grants its workers only tokens it took from Redis: each window's `held` (tokens taken for it) caps what
   the Ledger grants in it. Blocks are asked for ahead of need: when what the host holds falls below LOW_WATER of
   its last block, or a request finds nothing; `want` is LEAD_S of the host's recent grants (and what waits), or
   Kong's sync_rate seconds of them when the plugin sets it: how long a host may go on without asking Redis.
2. One call per key is in flight at a time; it states the host's claim on each window, max(held, used): what it
   took, less what it gave back, or what it admitted if that is more (rule 4). A claim that differs from what Redis
   last acknowledged makes the key due. A block that arrives after its shortest window ended is not used: the next
   claim leaves it out, which gives it back to the longer windows. A key's claims are its `claimant`'s, one per
   keeper incarnation and key state (ledger.py rule 7): a restarted keeper, or a key's state started afresh, begins
   empty and claims beside what the earlier one claimed, never over it.
3. When a shorter window ends, the tokens it left unspent leave `held` of the longer windows still current (and so
   their next claim): a long window's count holds only tokens its shorter windows spent.
4. Redis unreachable (a call failed or timed out, or a request waited the plugin's redis.timeout for a block, as
   long as Kong's request waits for its Redis): the store is down. A worker waits for that answer `wait_s`.
   With fault_tolerant, each window's cap becomes max(held, limit // hosts), hosts being the gateway hosts Redis saw
   within SEEN_S; a bucket is backed by a local one of capacity / hosts refilled at rate / hosts. What the host admits
   beyond what it held is part of its next claim, sent RETRY_S after the failure and then every RETRY_S until Redis
   answers (resynchronisation; a Redis that lost its data gets every host's claim back the same way). Without
   fault_tolerant the keeper's grants say `unavailable` (Kong: 500).
5. Bucket tokens taken from Redis are the host's `pool`, void after POOL_TTL_S; spent ones are reported (`spent`),
   unspent ones given back (`back`), so Redis knows what each host still holds (its outstanding).
6. In Redis a key's windows (and the hosts active on them) are named by its counter (spec.py: the key past its spec's
   tag), so the specs of every instance counting on it claim on the same windows, each as its own claimant
   (ledger.py rule 11), as Kong's instances of one route and service INCR one key; its bucket by the whole key.
"""

from __future__ import annotations

from math import ceil, inf

from gateway.ratelimit.bucket import Bucket
from gateway.ratelimit.lease import WAIT_S
from gateway.ratelimit.redis_script import Call, Reply, WindowArgs, build_call
from gateway.ratelimit.spec import LimitSpec, counter_of

LOW_WATER = 0.5  # ask for the next block once what the host holds is below this share of the last one
LEAD_S = 0.1  # a block covers this many seconds of the host's recent grants
RATE_SPAN_MIN_S = 0.05  # shortest span a host's grant rate is measured over
MAX_BLOCK = 100_000  # the most tokens one call asks for
ACTIVE_S = 2.0  # a host that called for a key this recently shares in the sizing of its blocks
SEEN_S = 60.0  # hosts Redis saw this recently divide a limit into fallback shares
STALE_S = 10.0  # a host silent this long on a bucket is forgotten by Redis, with the tokens it held
POOL_TTL_S = 1.0  # bucket tokens a host took and did not grant go back to Redis after this
WAIT_MARGIN_S = 0.5  # a worker waits for a block this much longer than its keeper waits for Redis (rule 4)
RETRY_S = 0.2  # while the store is down, a key with something to say calls again this often
RESEND_S = 5.0  # a call unanswered this long is given up (the client's own timeout should have ended it)


class Store:
    """One Redis (one plugin's settings): up, or down since a failure."""

    __slots__ = ("name", "prefix", "down", "why", "fault_tolerant", "hosts", "lead_s")

    def __init__(self, name: str, prefix: str, lead_s: float = LEAD_S) -> None:
        self.name = name
        self.prefix = prefix
        self.down = False
        self.why = ""
        self.fault_tolerant = True
        self.hosts = 1  # hosts Redis saw within SEEN_S, as of the last answer
        self.lead_s = lead_s  # a block covers this many seconds of demand (Kong's sync_rate, when set)


class RemoteKey:
    """One key's remote state at this host: the last answer, the call in flight, what is owed to Redis."""

    __slots__ = ("key", "name", "store", "remaining", "level", "active", "in_flight", "sent_at", "sent", "due",
                 "granted", "granted_since", "last_block", "waiting", "acked", "pool", "pool_expires", "spent",
                 "back_bucket", "force_bucket", "fallback_bucket", "next_try", "fallback_granted", "bucket_sent",
                 "claimant")

    def __init__(self, key: str, spec: LimitSpec, store: Store, now: float, claimant: str = "") -> None:
        self.key = key
        self.name = counter_of(key)  # what its windows are named by in Redis (rule 6)
        self.store = store
        self.claimant = claimant  # whose claims this key's calls make (redis_script.py); "": the host's name
        self.remaining: dict[str, tuple[float, int]] = {}  # period -> (window start, left across hosts) at last answer
        self.level: float | None = None  # the shared bucket's level, as of the last answer
        self.active = 1
        self.in_flight = False
        self.sent_at = 0.0
        self.sent: list[tuple[str, float, int, float]] = []  # the call in flight: (period, start, claim, held)
        self.due = False
        self.granted = 0  # tokens granted to workers since the last call (the demand a block must cover)
        self.granted_since = now
        self.last_block = 0
        self.waiting = 0  # tokens wanted by requests waiting for a block
        self.acked: dict[str, tuple[float, int]] = {}  # period -> (window start, this host's claim Redis holds)
        self.pool = 0  # bucket tokens taken from Redis, not granted yet
        self.pool_expires = 0.0
        self.spent = 0  # bucket tokens workers reported spent, to tell Redis
        self.back_bucket = 0  # bucket tokens to give back
        self.force_bucket = 0  # bucket tokens admitted on the fallback bucket, to confess
        self.fallback_bucket: Bucket | None = None
        self.next_try = 0.0  # while the store is down: not before this (monotonic)
        self.fallback_granted = 0  # tokens granted on fallback shares, ever (for the metric)
        self.bucket_sent = (0, 0, 0)  # spent, back, force of the call in flight

    def left(self, period: str, start: float, limit: int) -> int:
        """What Redis had left in a window after its last answer (the limit, for a window it has not answered on)."""
        known = self.remaining.get(period)
        return known[1] if known is not None and known[0] == start else limit

    def hosts(self) -> int:
        return max(1, self.store.hosts)

    def share(self, limit: int) -> int:
        """This host's fallback share of a window's limit."""
        return max(1, limit // self.hosts())

    def bucket_room(self, spec: LimitSpec, now: float) -> float:
        """Bucket tokens this host may grant now: its pool, and while the store is down its fallback bucket."""
        if now >= self.pool_expires and self.pool:
            self.back_bucket += self.pool
            self.pool = 0
        room = float(self.pool)
        if self.store.down and spec.fault_tolerant:
            room += self._fallback_bucket(spec, now).level
        return room

    def take_bucket(self, spec: LimitSpec, count: int, now: float) -> None:
        """`count` bucket tokens are granted: from the pool first, then from the fallback bucket (to confess)."""
        from_pool = min(self.pool, count)
        self.pool -= from_pool
        rest = count - from_pool
        if rest:
            bucket = self._fallback_bucket(spec, now)
            bucket.level -= rest
            self.force_bucket += rest

    def _fallback_bucket(self, spec: LimitSpec, now: float) -> Bucket:
        capacity = max(1.0, spec.capacity / self.hosts())
        bucket = self.fallback_bucket
        if bucket is None:
            bucket = self.fallback_bucket = Bucket(capacity, now)
        bucket.refill(now, spec.rate / self.hosts(), capacity)
        return bucket

    def want(self, now: float) -> int:
        """Tokens to ask for: LEAD_S of the recent grant rate, and at least what requests wait for."""
        span = max(now - self.granted_since, RATE_SPAN_MIN_S)
        return min(MAX_BLOCK, max(1, self.waiting, ceil(self.granted * self.store.lead_s / span)))

    def unsynced(self, windows: list) -> bool:
        """Does Redis hold a claim of this host on a current window other than the host's (rule 2)?"""
        for period, win in windows:
            claim = int(max(win.held, win.used))
            acked = self.acked.get(period)
            if (claim if acked is None or acked[0] != win.start else claim - acked[1]) != 0:
                return True
        return False

    def owes(self, windows: list) -> bool:
        """Has this host something to tell Redis (a claim, bucket tokens spent, given back or admitted)?"""
        return bool(self.spent or self.back_bucket or self.force_bucket) or self.unsynced(windows)

    def build(self, host: str, spec: LimitSpec, windows: list, now: float) -> Call:
        """The call for this key now (marks it in flight); `windows` are the Ledger's current ones, in spec order."""
        args, self.sent = [], []
        for w, win in zip(spec.windows, windows, strict=True):
            claim = int(max(win.held, win.used))
            args.append(WindowArgs(f"{self.name}|{w.period}|{int(win.start)}", w.limit, win.end, claim))
            self.sent.append((w.period, win.start, claim, win.held))
        want = self.want(now)
        self.granted, self.granted_since = 0, now
        call = build_call(self.store.prefix, self.name, host, want, args, active_s=ACTIVE_S, seen_s=SEEN_S,
                          stale_s=STALE_S, rate=spec.rate if spec.bucketed else 0.0,
                          capacity=spec.capacity if spec.bucketed else 0.0, spent=self.spent,
                          back=self.back_bucket, force=self.force_bucket, claimant=self.claimant, bucket=self.key)
        self.bucket_sent = (self.spent, self.back_bucket, self.force_bucket)
        self.spent = self.back_bucket = self.force_bucket = 0
        self.in_flight, self.sent_at, self.due = True, now, False
        return call

    def failed(self, now: float) -> None:
        """The call in flight failed: what it carried is owed again (claims are restated by the next call)."""
        self.in_flight = False
        spent, back, force = self.bucket_sent
        self.spent += spent
        self.back_bucket += back
        self.force_bucket += force
        self.sent = []
        self.next_try = now + RETRY_S

    def applied(self, reply: Reply, spec: LimitSpec, windows: list, now: float) -> None:
        """A successful answer: each window's `held` becomes the claim plus the block (rule 2); the store is up."""
        self.in_flight = False
        self.store.hosts = reply.hosts
        self.active = reply.active
        self.level = reply.level
        self.last_block = reply.block
        current = {(w.period, win.start): win for w, win in zip(spec.windows, windows, strict=True)}
        sent, self.sent = self.sent, []
        shortest_current = bool(sent) and (sent[0][0], sent[0][1]) in current
        block = reply.block if shortest_current else 0
        for (period, start, claim, held), left in zip(sent, reply.remaining, strict=False):
            self.remaining[period] = (start, left)
            self.acked[period] = (start, claim + reply.block)
            win = current.get((period, start))
            if win is not None:  # rolled-over tokens left `held` meanwhile; keep that change
                win.held += claim - held + block
        if spec.bucketed and reply.block:
            if not spec.windows or shortest_current:
                self.pool += reply.block
                self.pool_expires = now + POOL_TTL_S
            else:
                self.back_bucket += reply.block
        self.fallback_bucket = None


def wait_s(timeout_s: float) -> float:
    """How long a worker's request waits for a grant of a key of policy redis: its keeper waits for Redis up to
    the Redis timeout (rule 4), then answers; never less than the usual lease wait."""
    return max(WAIT_S, timeout_s + WAIT_MARGIN_S)


def window_rolled(old_held: float, old_used: int, others: list) -> None:
    """A window ended with tokens unspent: they leave `held` of the longer windows still current (rule 3)."""
    left = max(0.0, old_held - old_used) if old_held != inf else 0.0
    for win in others:
        win.held = max(0.0, win.held - left)
