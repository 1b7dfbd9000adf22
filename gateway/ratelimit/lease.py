"""Worker side of rate limiting: leases of the keeper's tokens, spent on the request path without a round trip.

Rules:
1. A request spends one local token. When the lease falls below LOW_WATER of its last grant, or is empty, the key
   is due, and `refills` asks the keeper for LEAD_S worth of the key's recent demand, ahead of need. One request
   per key is in flight at a time (re-sent after RESEND_S without an answer).
2. Tokens belong to the windows current when they were granted and expire when the shortest of them ends; bucket
   tokens expire after the keeper's lease TTL. A grant for newer windows voids older tokens. Expired tokens are
   given back by `sweep` (ReturnedLease), so the keeper credits the windows still current and the bucket.
   A key not asked for in IDLE_S is forgotten, its tokens given back the same way (leased ahead of need, they
   would otherwise keep it until its shortest window ends, a day for `day: n`, for any identifier a client made
   up), unless it has local-share use to report (rule 4) or a request in flight for less than IDLE_S.
3. No token: if the keeper said a limit is exhausted (Grant.retry) the request is denied here until then, without
   asking (sooner than the window's end while tokens charged to it may come back unspent, ledger.py rule 9; this
   worker's expired tokens go back with its next request). The keeper says so once the tokens other workers held of
   it were recalled (ledger.py rule 12), the request waiting meanwhile as for any grant. A denial reports a window
   that has ended since that grant as this worker counts it (Kong: limit - usage of a period that did not stop the
   request).
   Otherwise the answer is WAIT: the caller waits for the grant (`apply`) and calls `take` again with
   `waited=True`, as often as it answers WAIT, until its wait is over (WAIT_S; under policy redis as long as the
   keeper waits for Redis, remote.wait_s, when that is longer); its last call has `final=True`,
   which never answers WAIT. WAIT again means the grant is still on its way, or the keeper had room but this
   worker's other requests took the tokens (a race, not the limit: the next grant is asked for), or it said other
   workers hold what is left (no retry: the next request is held while they are recalled, ledger.py rule 12). After
   that a last call is denied, never admitted over the limit.
4. The keeper lost (`fallback(True, n)`: no heartbeat for KEEPER_LOST_S, gateway/state/shared.py), or silent on
   this key through a whole wait (rule 3; longer than that): the worker admits on a local share, per window
   limit // n (at least 1) counting all it admitted in that window, and a bucket of capacity / n refilled at
   rate / n that leased tokens spent here drain too (so a keeper late on one request does not open a fresh burst).
   `reports` hands what it admitted so to the keeper once it is back (to a new keeper incarnation, `restate`: rule
   5). A keeper that is merely slow is waited for: what a worker admits on its own the keeper counts only
   afterwards, on top of what it already handed out.
   Under policy local it does so whatever fault_tolerant says: Kong's local counters are a shared dict, which no
   process's crash makes fail to read (rate-limiting policies/init.lua:318-327), so Kong never answers 500 there.
   So does a lost keeper under policy redis: Redis is not what failed, and Kong's workers reach their Redis
   themselves. A live keeper silent on a redis key, with fault_tolerant off, is answered UNAVAILABLE: its Redis is
   slow, and Kong fails closed with a 500 when its Redis cannot be read. There the share is limit // (n x hosts),
   hosts as the keeper last heard from Redis (Grant.hosts); a grant that says Redis is away with fault_tolerant
   off (Grant.unavailable) is answered UNAVAILABLE too.
5. A keeper restarted is a new incarnation with empty windows and full buckets: `restate` tells it, per key, what
   this worker admitted in each window still current (leased tokens spent and local-share use, `Lease.counts`),
   and how far its admissions drew the key's bucket down (`Lease.drawn`: the bucket's capacity, refilled at the
   full rate, less one per request admitted here, leased or not; stated in whole tokens, rounded up: exact when one
   worker carried the key, as one client's connection does, and never emptier than nginx's zone when several
   did), which replaces
   the report of local-share use (so nothing is counted twice). Each worker states only its own admissions, so the
   keeper's sum is what the gateway admitted, and its bucket starts where the old one was (nginx keeps limit_req's
   state in shared memory, which a worker's crash leaves). Under policy redis only the local-share use is stated:
   what the leases admitted is claimed in Redis already, and stays (ledger.py rule 7). The old keeper's tokens,
   unspent or expired, are dropped: they were not admitted, and the new keeper never granted them; so is its word
   that a limit is exhausted (Grant.retry), which counted those tokens. (A key forgotten after IDLE_S is not stated: its
   windows count from 0 at the new keeper, as an evicted key's do, ledger.py rule 8.)
   Requests and reports name the keeper incarnation they are for (`keeper`): what a worker sent to a keeper that
   died before reading it goes to the next one (ZeroMQ keeps a DEALER's queue across a reconnect), which ignores it
   (gateway/keeper/state.py), since the restate replaces it. Granted there, ahead of the restate, a request's tokens
   were dropped by the restate yet stayed counted (a window's last 20 of 100 were never admitted); a report was
   counted twice. (Tokens given back name no keeper: sent in that moment, they are credited by the next keeper
   though it never granted them, at most one sweep's expired tokens, once.)
6. At most MAX_LEASES keys are kept: a new key beyond them evicts one not asked for since it last came up in the
   eviction order (CLOCK, an approximate LRU: a take only stamps `touched`, which the hot path does anyway), its
   tokens given back at the next `sweep` as rule 2's idle key's are, and a grant still on its way for it when it
   comes. An evicted key seen again starts afresh, as at the keeper (ledger.py rule 8); its local-share use not yet
   reported goes to the keeper all the same, unless the keeper is lost (then it is forgotten with the key).
7. A recall (the keeper's, ledger.py rule 12: another worker's request waits on a window exhausted while this worker
   holds tokens of it) gives back at once every unspent token of the key, expired or not, and tells what was spent
   since last told (`recall`): all of them, not what this worker may need next, which it asks for when it needs it,
   as for any key (rule 1). The bus task answers between two requests, so a token spent before is spent, and none
   is both spent and given back. Tokens of the key evicted since the last sweep (rule 6) go back with the answer.
   A key that gave tokens back is no longer denied here on the keeper's word that its limit was exhausted (rule 3),
   and a request waiting for it asks again: they are the keeper's to grant again, to this worker too. A request
   tells the keeper how many requests wait for it beyond the tokens here, which they take next (LeaseRequest.waiting:
   `take` counts one from its first WAIT to its last answer): one asked ahead of need is never held for a recall,
   which would take tokens from a worker that needs them now for one that does not. A request that left mid-wait
   (its client gone) never takes again, where every waiting one takes again after each grant for its key: a `sweep`
   that finds none in flight counts at most those told WAIT since the last sweep.
   A recall of a keeper incarnation other than the one this table's messages are for is not answered: that keeper's
   tokens were dropped (rule 5), and a new one waits for no answer of this worker to an older one.
8. An exact grant (Grant.exact: another spec with other limits counts on the key's counter, ledger.py rule 13) is
   a token for each request waiting for it (rule 7's count, within the limit), valid a moment only: the key is never
   due ahead of need, so each request asks the keeper when it finds no token (rule 3), and its grant compares the
   counter's live count with its spec's limits, as Kong compares each request. Counted, the requests waiting at
   once get their tokens in one round trip, not one a round trip each (past WAIT_S, a 429 Kong never answers).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from enum import IntEnum
from math import ceil, inf
from operator import attrgetter

from msgspec.structs import replace

from gateway.ratelimit.bucket import Bucket
from gateway.ratelimit.messages import FallbackUsage, Grant, LeaseRequest, ReturnedLease
from gateway.ratelimit.spec import LimitSpec
from gateway.ratelimit.windows import kong_reset, reset_at, window_bounds

LOW_WATER = 0.5  # ask for more once a lease is below this share of its last grant
LEAD_S = 0.05  # ask for this many seconds of the key's recent demand
RATE_SPAN_MIN_S = 0.01  # shortest span a demand rate is measured over (the first request of a key)
MAX_WANT = 10_000  # tokens one request may ask for
WAIT_S = 1.0  # longest a request waits for a grant: longer than a lost keeper takes to be noticed (rule 4)
RESEND_S = 0.25  # a lease request unanswered this long is sent again
IDLE_S = 60.0  # a key not asked for this long is forgotten, its tokens given back (rule 2)
# Keys a worker keeps (rule 6): the keeper's (ledger.py MAX_KEYS), so a worker's bound never makes it forget a key the
# keeper still counts (and a restarted keeper hears of every key it can hold). A lease takes about 1 KB with one
# window (1.3 KB with four), its key and last grant included: 65 to 85 MiB per worker at most, where without a bound a
# client making up identifiers grew a worker by as many leases as it sent requests in IDLE_S.
MAX_LEASES = 65_536
EVICT_SCAN = 64  # keys asked for since they last came up are passed over this many times at most, then one goes
ROUNDING = 1e-9  # a refilled bucket level's float rounding, not a token to state (rule 5)


class Status(IntEnum):
    ADMIT = 0
    DENY = 1
    WAIT = 2  # no token here yet, a grant is on its way: wait for it, then take again (rule 3)
    UNAVAILABLE = 3  # keeper unreachable and fault_tolerant is off: answer 500 as Kong does


class Decision:
    """One `take`'s answer and a snapshot of what the rate-limit headers report (WAIT and UNAVAILABLE are shared)."""

    __slots__ = ("status", "spec", "grant", "tokens", "local", "delay", "retry_after", "wall")

    def __init__(self, status: Status, spec: LimitSpec | None, grant: Grant | None, tokens: int,
                 local: tuple[int, ...] | None, delay: float, retry_after: int, wall: float) -> None:
        self.status = status
        self.spec = spec
        self.grant = grant  # the keeper's last word on the key (per-window remaining)
        self.tokens = tokens  # tokens left here after this request
        self.local = local  # per-window remaining when not the grant's: the local share's, or a denial's (rule 3)
        self.delay = delay  # seconds to hold an admitted request (limit-req without nodelay)
        self.retry_after = retry_after  # seconds, when denied (Retry-After: see _retry_after)
        self.wall = wall

    @property
    def admitted(self) -> bool:
        return self.status is Status.ADMIT

    def remaining(self, index: int) -> int:
        """Requests left in the spec's window `index` across the gateway, as far as this worker knows."""
        if self.local is not None:
            return self.local[index]
        if self.grant is None:
            return self.spec.windows[index].limit  # type: ignore[union-attr]  # a decision with a limit has its spec
        return max(0, self.grant.remaining[index] + self.tokens)


WAIT = Decision(Status.WAIT, None, None, 0, None, 0.0, 0, 0.0)
UNAVAILABLE = Decision(Status.UNAVAILABLE, None, None, 0, None, 0.0, 0, 0.0)


class Lease:
    """One key's tokens at this worker, its request state and its per-window counts."""

    __slots__ = ("key", "spec", "bucketed", "pace", "tokens", "low", "expires", "grant", "blocked_until", "due",
                 "in_flight", "asked_at", "sent_at", "demand", "demand_since", "touched", "aged", "used", "unused",
                 "unused_grant", "release_next", "admitted", "bases", "ends", "resets", "next_roll", "unreported",
                 "unreported_total", "flagged", "local", "drawn", "waiting", "waits")

    def __init__(self, key: str, spec: LimitSpec, now: float, wall: float) -> None:
        self.key = key
        self.spec = spec
        self.bucketed = spec.bucketed
        self.pace = 1.0 / spec.rate if spec.paced else 0.0
        self.tokens = 0
        self.low = 0.0
        self.expires = 0.0  # monotonic
        self.grant: Grant | None = None
        self.blocked_until = 0.0  # monotonic; while empty, deny until then
        self.due = False  # listed for the next `refills`
        self.in_flight = False
        self.asked_at = 0.0  # first unanswered request
        self.sent_at = 0.0  # last (re)sent request
        self.demand = 0  # takes since the last request
        self.demand_since = now
        self.touched = now
        self.aged = now  # `touched` when the key last came up in the eviction order (rule 6)
        self.used = 0  # tokens spent since last told to the keeper
        self.unused = 0  # expired tokens to give back
        self.unused_grant: Grant | None = None
        self.release_next = 0.0  # monotonic time the next paced token may go
        bounds = [window_bounds(w.period, wall) for w in spec.windows]
        self.ends = [end for _, end in bounds]  # local windows (wall)
        # when Kong's RateLimit-Reset of each local window runs out (wall): not its end for a month or a year
        self.resets = [reset_at(w.period, start) for w, (start, _) in zip(spec.windows, bounds, strict=True)]
        self.next_roll = min(self.ends, default=inf)
        self.admitted = 0  # requests admitted here, ever; in local window i: admitted - bases[i] (see counts)
        self.bases = [0] * len(spec.windows)
        self.unreported = [0] * len(spec.windows)  # admitted on the local share, not yet reported
        self.unreported_total = 0
        self.flagged = False  # listed for the next `reports`
        self.local: Bucket | None = None  # the local bucket share
        self.drawn: Bucket | None = None  # the bucket as this worker's admissions drew it down (rule 5)
        self.waiting = 0  # requests waiting for a grant (LeaseRequest.waiting: rule 7)
        self.waits = 0  # WAIT answers since the last sweep (at least every request still waiting: rule 7)

    def counts(self) -> list[int]:
        """Requests admitted here in each local window (spent leased tokens and local-share admissions)."""
        return [self.admitted - base for base in self.bases]


class LeaseTable:
    """Every key's lease at one worker; `spend` and `take` are the hot path, the rest runs on the worker's bus task.

    `now` is time.monotonic() (a C call, where trio's clock costs three Python frames), `wall` time.time().
    """

    def __init__(self, worker: str, workers: int) -> None:
        self.worker = worker
        self.keeper = ""  # the keeper incarnation this table's messages are for (rule 5); the worker sets it
        self._workers = max(1, workers)
        self._fallback = False
        self._leases: OrderedDict[str, Lease] = OrderedDict()  # in eviction order (rule 6)
        self._due: list[Lease] = []
        self._flagged: dict[Lease, None] = {}  # leases with local-share use to report, in order
        self._returned: list[ReturnedLease] = []  # tokens of evicted keys, for the next `sweep` (rule 6)

    def take(self, key: str, spec: LimitSpec, now: float, wall: float, waited: bool = False,
             final: bool = False) -> Decision:
        """Admit, deny or ask to wait for one request of `key`: O(1), allocating only the Decision.

        `waited`: the caller has waited for a grant since its first call; `final`: its wait is over (rule 3).
        Pass the same LimitSpec object every time (it is compared by identity first); a different spec starts a
        new lease. Send `reports` before the next `refills` so the keeper counts fallback use first.
        """
        lease = self._leases.get(key)
        if lease is None or (lease.spec is not spec and lease.spec != spec):
            lease = self._start(key, spec, now, wall)  # a changed spec starts afresh
        decision = self._decide(lease, spec, now, wall, waited, final)
        if decision is WAIT:  # the request waits, counted once (rule 7)
            lease.waits += 1
            if not waited or not lease.waiting:
                lease.waiting += 1
        elif waited and lease.waiting:
            lease.waiting -= 1
        return decision

    def _decide(self, lease: Lease, spec: LimitSpec, now: float, wall: float, waited: bool, final: bool) -> Decision:
        """`take`'s answer for the key's lease."""
        lease.demand += 1
        lease.touched = now
        if lease.tokens:
            if now < lease.expires:
                delay = self._spend(lease, now, wall)
                return Decision(Status.ADMIT, spec, lease.grant, lease.tokens, None, delay, 0, wall)
            self._void(lease)
        grant = lease.grant
        if now < lease.blocked_until:
            return self._denied(lease, wall, lease.blocked_until - now)
        if self._fallback or (final and lease.in_flight):  # the keeper is lost, or silent on this key all along
            if spec.remote and not spec.fault_tolerant and not self._fallback:
                return UNAVAILABLE  # a live keeper silent on a redis key: its Redis is slow (Kong's 500)
            return self._local_share(lease, now, wall)
        if not lease.due:
            lease.due = True
            self._due.append(lease)
        if not waited or lease.in_flight:
            return WAIT
        if grant is not None and grant.unavailable:  # policy redis: Redis is away and fault_tolerant is off
            return UNAVAILABLE
        if not final and grant is not None and (not grant.retry or grant.granted and min(grant.remaining,
                                                                                         default=1) > 0):
            # The keeper had room and this worker's other requests (or a recall) took it, or other workers hold
            # what is left (ledger.py rule 12): wait for the next grant
            return WAIT
        # The keeper answers but had nothing for us: the limit's tail is being handed out.
        return self._denied(lease, wall, 1.0)

    def spend(self, key: str, spec: LimitSpec, now: float, wall: float) -> Lease | None:
        """`take`'s common case without a Decision: the key's lease (to read the headers from) when one of its
        tokens was spent; None when `take` must decide (no valid token here, a new spec, or a paced limit)."""
        lease = self._leases.get(key)
        if lease is None or lease.spec is not spec or not lease.tokens or now >= lease.expires or lease.pace:
            return None
        lease.demand += 1
        lease.touched = now
        self._spend(lease, now, wall)
        return lease

    def apply(self, grant: Grant, now: float, wall: float) -> None:
        """Add the keeper's grant to the key's lease (tokens of older windows are voided first)."""
        lease = self._leases.get(grant.key)
        if lease is None:  # evicted (rule 6) or forgotten meanwhile
            if grant.granted:
                self._returned.append(ReturnedLease(grant.key, self.worker, grant.granted, 0, grant.wall))
            return
        lease.in_flight = False
        if lease.tokens and (now >= lease.expires or grant.resets != lease.grant.resets):  # type: ignore[union-attr]
            self._void(lease)
        if grant.granted:
            if lease.pace and not lease.tokens:
                lease.release_next = now + grant.delay
            lease.tokens += grant.granted
            lease.low = 0.0 if grant.exact else grant.granted * LOW_WATER  # exact: never due ahead of need (rule 8)
            lease.expires = now + (grant.expires - wall)
        lease.grant = grant
        lease.blocked_until = now + grant.retry if grant.retry else 0.0

    @property
    def pending(self) -> bool:
        """Are refills or fallback reports waiting for the next flush?"""
        return bool(self._due or self._flagged)

    def refills(self, now: float) -> list[LeaseRequest]:
        """Requests for the keys that fell below their low-water mark, have none in flight and are not exhausted."""
        requests = []
        due, self._due = self._due, []
        for lease in due:
            lease.due = False
            if self._fallback or now < lease.blocked_until or self._leases.get(lease.key) is not lease:
                continue
            if lease.in_flight and now - lease.sent_at < RESEND_S:
                continue  # the answer is on its way; spending more marks the key due again
            span = max(now - lease.demand_since, RATE_SPAN_MIN_S)
            want = min(MAX_WANT, max(1, ceil(lease.demand * LEAD_S / span)))
            unused, back = lease.unused, lease.unused_grant  # expired tokens go back first (ledger.py rule 9)
            lease.unused, lease.unused_grant = 0, None
            held = lease.tokens if now < lease.expires else 0  # the waiting requests' next takes spend these
            requests.append(LeaseRequest(lease.key, lease.spec, self.worker, want, lease.used, unused,
                                         back.wall if back is not None else 0.0, self.keeper,
                                         max(0, lease.waiting - held)))
            lease.demand = lease.used = 0
            lease.demand_since = lease.sent_at = now
            if not lease.in_flight:
                lease.asked_at = now
            lease.in_flight = True
        return requests

    def sweep(self, now: float) -> list[ReturnedLease]:
        """Give back expired tokens (and bucket tokens spent since last told); forget keys idle for IDLE_S, giving
        their tokens back too (rule 2), and those of keys evicted since the last sweep (rule 6); stop counting
        requests that left mid-wait (rule 7)."""
        returned, self._returned = self._returned, []
        for key, lease in list(self._leases.items()):
            if not lease.in_flight:
                lease.waiting = min(lease.waiting, lease.waits)
            lease.waits = 0
            idle = now - lease.touched >= IDLE_S and not lease.unreported_total and not (
                lease.in_flight and now - lease.sent_at < IDLE_S)
            if lease.tokens and (idle or now >= lease.expires):
                self._void(lease)
            if lease.unused or (lease.used and lease.spec.bucketed):
                returned.append(self._give_back(lease))
            if idle:
                del self._leases[key]
        return returned

    def recall(self, keys: Sequence[str]) -> tuple[list[ReturnedLease], list[ReturnedLease]]:
        """The keeper recalls `keys` (rule 7): the tokens of those of them evicted since the last sweep, as the sweep
        would give them back, and one answer per key: its unspent tokens and those spent since last told (none
        when it has no lease)."""
        evicted: list[ReturnedLease] = []
        if self._returned:
            wanted = set(keys)
            evicted = [r for r in self._returned if r.key in wanted]
            self._returned = [r for r in self._returned if r.key not in wanted]
        answers = []
        for key in keys:
            lease = self._leases.get(key)
            if lease is None:
                answers.append(ReturnedLease(key, self.worker, 0, 0, 0.0))
                continue
            given, grant = lease.tokens, lease.grant
            self._void(lease)
            back = lease.unused_grant
            answers.append(ReturnedLease(key, self.worker, lease.unused, lease.used, back.wall if back else 0.0))
            if given and grant is not None:
                lease.blocked_until = 0.0
                lease.grant = replace(grant, retry=0.0)
            lease.unused, lease.unused_grant, lease.used = 0, None, 0
        return evicted, answers

    def release(self) -> list[ReturnedLease]:
        """Give every token back and forget all leases (the worker is stopping)."""
        returned, self._returned = self._returned, []
        for lease in self._leases.values():
            self._void(lease)
            if lease.unused or (lease.used and lease.spec.bucketed):
                returned.append(self._give_back(lease))
        self._leases.clear()
        self._due.clear()
        return returned

    def fallback(self, enabled: bool, workers: int) -> None:
        """Enter or leave local-share mode (keeper unreachable / back); `workers` sets the share (limit // workers)."""
        self._workers = max(1, workers)
        if enabled != self._fallback:
            self._fallback = enabled
            for lease in self._leases.values():
                lease.in_flight = False  # whatever was asked is lost, or stale

    def requests_lost(self) -> None:
        """A new keeper replaced the one the requests in flight went to: ask again at the next `refills`, so a
        request waiting for one of them is answered by the new keeper, not at the end of its wait."""
        for lease in self._leases.values():
            if lease.in_flight:
                lease.in_flight = False
                if not lease.due:
                    lease.due = True
                    self._due.append(lease)

    def reports(self, wall: float) -> list[FallbackUsage]:
        """What was admitted on local shares, per window still current, for the keeper (nothing while in fallback)."""
        if self._fallback:
            return []
        usages = []
        flagged, self._flagged = self._flagged, {}
        for lease in flagged:
            lease.flagged = False
            if wall >= lease.next_roll:
                self._roll(lease, wall)
            usages.append(FallbackUsage(lease.key, self.worker, lease.spec, tuple(lease.unreported),
                                        lease.unreported_total, wall, self.keeper))
            lease.unreported = [0] * len(lease.unreported)
            lease.unreported_total = 0
        return usages

    def restate(self, wall: float, now: float | None = None) -> list[FallbackUsage]:
        """For a new keeper incarnation (set `keeper` first): what each key admitted here in its windows still current
        and drew from its bucket (rule 5), the keys least recently asked for first (the keeper's LRU keeps the latest
        when full); drops the old keeper's tokens and denials. `now` (monotonic) refills the buckets first; None:
        as they were at their last request."""
        usages = []
        self._flagged.clear()
        self._returned.clear()  # the old keeper's tokens (evicted keys'): the new keeper never granted them
        for lease in sorted(self._leases.values(), key=attrgetter("touched")):
            lease.tokens = lease.unused = lease.used = 0
            lease.unused_grant = None
            lease.blocked_until = 0.0
            lease.flagged = False
            if wall >= lease.next_roll:
                self._roll(lease, wall)
            if lease.spec.remote:
                windows, total = tuple(lease.unreported), lease.unreported_total
            else:
                windows, total = tuple(lease.counts()), self._drawn_total(lease, now)
            if any(windows) or (lease.bucketed and total):
                usages.append(FallbackUsage(lease.key, self.worker, lease.spec, windows, total, wall, self.keeper))
            lease.unreported = [0] * len(lease.unreported)
            lease.unreported_total = 0
        return usages

    def _start(self, key: str, spec: LimitSpec, now: float, wall: float) -> Lease:
        """A new lease for `key`, evicting one first when MAX_LEASES are kept (rule 6)."""
        leases = self._leases
        if key not in leases and len(leases) >= MAX_LEASES:
            self._evict()
        lease = leases[key] = Lease(key, spec, now, wall)
        return lease

    def _evict(self) -> None:
        """Forget a key not asked for since it last came up (CLOCK), or the first after EVICT_SCAN that were; its
        tokens are given back at the next sweep (rule 6)."""
        leases = self._leases
        for _ in range(EVICT_SCAN):
            key, lease = leases.popitem(last=False)
            if lease.touched == lease.aged:
                break
            lease.aged = lease.touched
            leases[key] = lease  # asked for since: to the back, once
        else:
            key, lease = leases.popitem(last=False)
        self._void(lease)
        if lease.unused or (lease.used and lease.spec.bucketed):
            self._returned.append(self._give_back(lease))
        if lease.flagged and self._fallback:  # no keeper to report it to before it is gone
            del self._flagged[lease]

    def _spend(self, lease: Lease, now: float, wall: float) -> float:
        """Spend one leased token; returns how long to hold the request (limit-req without nodelay)."""
        lease.tokens -= 1
        lease.used += 1
        if wall >= lease.next_roll:
            self._roll(lease, wall)
        lease.admitted += 1
        if lease.tokens < lease.low and not lease.due:
            lease.due = True
            self._due.append(lease)
        if lease.bucketed:  # the local share counts what leases admitted, as the windows' counts do
            bucket = self._local_bucket(lease, now)
            bucket.level = max(0.0, bucket.level - 1)
            self._draw(lease, now)
        if not lease.pace:
            return 0.0
        delay = max(0.0, lease.release_next - now)
        lease.release_next += lease.pace
        return delay

    def _denied(self, lease: Lease, wall: float, wait: float) -> Decision:
        """A denial on the keeper's last grant. A window that has ended since then reports its limit less what this
        worker admitted in the new one (rule 3): the keeper has said nothing of it to this worker."""
        spec, grant = lease.spec, lease.grant
        local = None
        if grant is not None and grant.resets and wall >= grant.resets[0]:  # the shortest window (the first) ended
            if wall >= lease.next_roll:
                self._roll(lease, wall)
            counts = lease.counts()
            local = tuple(max(0, w.limit - counts[i]) if wall >= grant.resets[i] else grant.remaining[i]
                          for i, w in enumerate(spec.windows))
        return Decision(Status.DENY, spec, grant, 0, local, 0.0, _retry_after(spec, grant, local, wall, wait), wall)

    def _local_share(self, lease: Lease, now: float, wall: float) -> Decision:
        """Admit on this worker's share of every limit, counting it for `reports`."""
        spec, workers = lease.spec, self._workers * (lease.grant.hosts if lease.grant is not None else 1)
        if wall >= lease.next_roll:
            self._roll(lease, wall)
        shares = [max(1, w.limit // workers) for w in spec.windows]
        counts = lease.counts()
        retry = max((lease.ends[i] - wall for i, share in enumerate(shares) if counts[i] >= share), default=0.0)
        delay = 0.0
        if spec.bucketed:
            bucket = self._local_bucket(lease, now)
            rate, capacity, level = spec.rate / workers, max(1.0, spec.capacity / workers), bucket.level
            if level < 1:
                retry = max(retry, (1 - level) / rate)
            elif not retry:
                if spec.paced:
                    delay = (capacity - level) / rate
                bucket.level -= 1
                self._draw(lease, now)
        if not retry:
            lease.admitted += 1
            counts = lease.counts()
            for i in range(len(shares)):
                lease.unreported[i] += 1
            lease.unreported_total += 1
            if not lease.flagged:
                lease.flagged = True
                self._flagged[lease] = None
        left = tuple(max(0, share - count) for share, count in zip(shares, counts, strict=True))
        if retry:
            return Decision(Status.DENY, spec, lease.grant, 0, left, 0.0, _retry_after(spec, None, left, wall, retry),
                            wall)
        return Decision(Status.ADMIT, spec, lease.grant, 0, left, delay, 0, wall)

    def _local_bucket(self, lease: Lease, now: float) -> Bucket:
        """The key's local share of the bucket (capacity / n refilled at rate / n; full when first needed), refilled."""
        spec, workers = lease.spec, self._workers * (lease.grant.hosts if lease.grant is not None else 1)
        capacity = max(1.0, spec.capacity / workers)
        bucket = lease.local
        if bucket is None:
            bucket = lease.local = Bucket(capacity, now)
        bucket.refill(now, spec.rate / workers, capacity)
        return bucket

    def _draw(self, lease: Lease, now: float) -> None:
        """One request admitted here takes a token from the key's bucket as this worker sees it (rule 5): the full
        capacity, refilled at the full rate (a refill at rate / n would state a client pacing under the rate on one
        worker as a shortfall nginx's zone never has), never below empty."""
        spec = lease.spec
        drawn = lease.drawn
        if drawn is None:
            drawn = lease.drawn = Bucket(spec.capacity, now)
        drawn.refill(now, spec.rate, spec.capacity)
        drawn.level = max(0.0, drawn.level - 1)

    def _drawn_total(self, lease: Lease, now: float | None) -> int:
        """A bucketed key's tokens this worker's admissions took from its bucket and the refill has not put back,
        rounded up (a new keeper's bucket starts that much below full: rule 5); else its local-share use."""
        drawn, spec = lease.drawn, lease.spec
        if not lease.bucketed:
            return lease.unreported_total
        if drawn is None:
            return 0
        if now is not None:
            drawn.refill(now, spec.rate, spec.capacity)
        return max(0, ceil(spec.capacity - drawn.level - ROUNDING))

    @staticmethod
    def _roll(lease: Lease, wall: float) -> None:
        """Start the local windows that `wall` has moved into."""
        for i, w in enumerate(lease.spec.windows):
            if wall >= lease.ends[i]:
                start, lease.ends[i] = window_bounds(w.period, wall)
                lease.resets[i] = reset_at(w.period, start)
                lease.bases[i] = lease.admitted
                lease.unreported[i] = 0
        lease.next_roll = min(lease.ends)

    @staticmethod
    def _void(lease: Lease) -> None:
        """The lease's tokens expire; keep them to give back (older ones from other windows are dropped)."""
        if lease.tokens:
            if lease.unused and lease.unused_grant.resets != lease.grant.resets:  # type: ignore[union-attr]
                lease.unused = 0
            lease.unused += lease.tokens
            lease.unused_grant = lease.grant
            lease.tokens = 0

    def _give_back(self, lease: Lease) -> ReturnedLease:
        """A ReturnedLease of the lease's expired tokens and unreported spending."""
        wall = lease.unused_grant.wall if lease.unused_grant is not None else 0.0
        returned = ReturnedLease(lease.key, self.worker, lease.unused, lease.used if lease.spec.bucketed else 0, wall)
        lease.unused = 0
        if lease.spec.bucketed:
            lease.used = 0
        return returned


def _retry_after(spec: LimitSpec, grant: Grant | None, local: Sequence[int] | None, wall: float, wait: float) -> int:
    """Retry-After of a denial: with a window exhausted (as the keeper's `grant` or the `local` share says), Kong's
    RateLimit-Reset of the longest such window, the one Kong's headers report then; else the bucket's or the keeper's
    `wait`, in seconds."""
    remaining = local if local is not None else grant.remaining if grant is not None else ()
    for i in range(len(remaining) - 1, -1, -1):  # windows are in PERIODS order: the longest last
        if remaining[i] <= 0:
            return kong_reset(spec.windows[i].period, wall)
    return ceil(wait)
