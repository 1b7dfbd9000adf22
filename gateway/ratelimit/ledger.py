"""Keeper side of rate limiting: the authoritative windows and buckets, handed out to workers as small leases.

Rules (they make a cluster-wide limit exact without a round trip per request):
1. Tokens are charged to every window of the spec when granted, so workers together never hold or spend more
   than a window's limit. A grant is all-or-nothing per token across the windows (and the bucket).
2. Lease sizing: a grant is min(want, max(1, room // (2 * active workers))), where room is what the tightest limit
   has left and a worker is active on a key if it asked within ACTIVE_S. The tail of a window is thus handed out
   in ever smaller pieces, so little is stranded at a worker that cannot spend it before the window ends.
3. Windows are aligned on the UTC wall clock (windows.py); tokens are valid until the shortest window ends. Tokens
   given back unspent are credited to the windows they were charged to that are still current (the longer ones).
4. Buckets count the tokens leased and not yet reported spent (`outstanding`, rule 9) as taken: the level may refill
   only up to capacity - outstanding, so admissions over any interval T stay within capacity + rate * T even when
   a worker sits on a lease. Outstanding tokens of a worker silent for WORKER_STALE_S are written off.
5. Use a worker reports after an outage (FallbackUsage) is added to the windows it fell in, if still current,
   and taken from the bucket, which may go into debt down to minus its capacity. To a new Ledger (a keeper
   restarted) each worker reports in the same way all it admitted in the windows still current, leased tokens of
   the old keeper spent included (lease.py rule 5), so the sum of the reports is what the gateway admitted and a
   window is not handed out again, and as its bucket's `total` how far its admissions drew the bucket down, so a
   bucket is not full again; under policy redis only its local-share use, as Redis kept the rest (rule 7).
6. Resynchronisation: the first report in a window opens a RESYNC_S period in which the local share
   (limit // workers) of every worker not yet heard from in that window stays reserved, since its own report may
   still be on the way. A worker's reports precede its next lease request on its channel, so a request from a
   worker counts as "heard from". A grant held back only by that reserve tells the worker to retry in
   RESYNC_RETRY_S, not at the end of the window.
7. Keys of policy redis (spec.store) are shared by several gateway hosts: this host grants only the tokens it took
   from Redis in blocks (each window's `held`), as remote.py describes. A request the host cannot serve from what it
   holds, while Redis may still have room, gets no Grant yet (`grant` returns None): the keeper answers it once the
   key's next block (or the news that Redis is away) arrives. A key's claims in Redis are made as its claimant:
   the host, this Ledger's incarnation and (after the first) the generation of the key's state. A Ledger starts
   empty, and so does a key's state after a reset or a changed spec: restating (so lowering) the claims an earlier
   one left there would hand out again what it admitted (redis_script.py).
8. At most MAX_KEYS keys are kept: a new key beyond them evicts the least recently asked for, as Kong's full
   `kong_rate_limiting_counters` shared dict evicts its least recently used counters. An evicted key seen again
   starts afresh, its windows counting from 0 (as a Kong counter evicted and incremented again), so a window of it
   may admit more than its limit; what its workers still hold of the old state is spent, and credited to the new
   state when given back. A key of policy redis gets a new claimant (rule 7); its claims in Redis stay counted.
9. Kong counts admitted requests only; a window's count here also holds the tokens leased ahead of need, which
   come back if unspent: when they expire (within RETURN_S: workers give them back at their sweep, or with their
   next request) or when the worker holding them forgets the key (lease.py rule 2). Each worker's tokens are
   `outstanding` until it reports them spent (LeaseRequest.used) or gives them back, or is silent WORKER_STALE_S.
   So an exhausted window's `retry` is its end only when none of its tokens is outstanding; until then the worker
   asks again when they expire (RECHECK_S at most), and every RETURN_POLL_S while they are being given back, rather
   than refusing until the window ends what Kong, whose count has not reached the limit, admits. Tokens out at
   other workers are recalled first (rule 12), so this is for those that did not come back.
10. Kong's local policy keeps each counter with its period's TTL (policies/init.lua: `shm:incr(cache_key, value, 0,
   EXPIRATION[period])`), so `expire` (the keeper calls it every second) drops a key's ended windows, and the key
   once nothing is left to count: no window current, no bucket token out or missing, no call to Redis under way or
   owed. A key with a current window is never dropped (its tokens out stay counted). Each key is looked at when its
   first window ends (a heap of due times, so a call with nothing due costs nothing), and a key kept only by its
   bucket or by Redis EXPIRE_RECHECK_S later.
11. A key is `<spec tag>/<counter>` (spec.py): specs of several plugin instances may count on one counter, as Kong's
   instances of one route and service do (rate-limiting policies/init.lua:50-72: the plugin's route, service and the
   identifier, never its limits). Each spec has a state of its own (its grants, bucket, workers, Redis block), and
   under policy local they share the counter's windows: a grant compares what the windows count with the calling
   spec's limits and charges only its periods (Kong increments only the periods the instance limits), and tokens
   come back to the windows they were charged to. Under policy redis each spec's state claims in Redis as a claimant
   of its own on the counter's windows (redis_script.py), whose claims Redis sums, as it sums hosts'.
12. Recall: Kong refuses a request only once limit - usage <= 0, its usage counting admitted requests (rate-limiting
   handler.lua:89-114). A request refused for a window exhausted while workers the keeper can reach (`reachable`)
   hold tokens of it (of its key, or of a key counting on its counter: rule 11) is held, not answered, when a
   request waits for it (LeaseRequest.waiting): `recall` names those workers, the keeper sends each a Recall, and
   each gives back at once every unspent token of the key and tells what it spent since it last did (lease.py rule
   7). `recalled` credits an answer, and writes the worker's outstanding tokens of the key down to those granted to
   it after the recall (its answer accounts for every one before: the keeper's messages to a worker keep their
   order). Once every worker recalled answered, or after RECALL_S, the held requests are granted again, without a
   second recall: what came back is handed out as any room (rule 2), and a window still exhausted refuses them.
   Tokens a worker spent before it read the recall stay charged, so the limit is never exceeded. While tokens that
   can be recalled are out elsewhere, a grant or refusal that leaves a window exhausted says no `retry` (where rule
   9 would): its worker asks again when a request needs a token, and that request is held. A worker that let a
   recall go unanswered (busy, hung) is not recalled again until heard from (a lease request, a late answer), so no
   request waits for it past its own wait (lease.py WAIT_S); meanwhile its tokens come back as rule 9 says. Under
   policy redis the recall is this host's: what comes back is what this host holds from Redis (rule 7). A bucket
   left empty alone recalls nothing: its tokens come back within LEASE_TTL_S, and a bucket under more demand than
   its rate is empty most of the time, where a window is exhausted once.
13. Specs of one counter with other limits (rule 11, policy local): Kong compares each request with the counter's
   live count and its instance's limits (handler.lua get_usage), where a token leased ahead of need is spent later
   without the keeper, after another spec's grants may have taken the count past its spec's limit (a global {hour:
   3} and a consumer's {hour: 100} counting one address). So a key (`peers`: another spec's key counts in its
   windows) whose counter another spec's key limits with another limit in a period both limit, and that key was
   asked for within ACTIVE_S, is exact: it grants a token to each request that waits for it (LeaseRequest.waiting
   counts them: all the room allows, rule 2's sizing aside, since none is stranded) and none to one asked ahead of
   need, void after EXACT_TTL_S (its request left), and the Grant says so (Grant.exact): its worker asks when a
   request needs a token, and the count is what was admitted, as Kong's. A key of peers that
   grants ahead of need notes the workers it did (`ahead`; a key alone until a peer comes, those holding its tokens
   then); a grant with a limit above such a key's in a period both limit is held while those tokens are recalled
   (rule 12: the requesting worker's too), and so is a refusal for an exhausted window while another spec's key
   holds tokens at the requesting worker ahead of need. A worker's answer clears it (unless granted ahead since).
   Specs with the same limits in the periods both limit (a reload changing another setting) lease ahead as one
   spec: neither's grants take the count past the other's limit. A key that only workers of an older configuration
   generation than the asking worker's asked for (worker ids `<generation>.<index>`) is the spec a reload replaced
   (a changed limit makes a new spec on the same counter), or one it removed: it makes no key exact for that
   worker's requests, so a reload alone never makes a key ask per request; but its tokens out ahead of need at the
   old workers, which still serve kept connections while they drain, are recalled before a grant past its lower
   limit, as above; the old generation's workers, which ask for it, still count it a peer.
"""

from __future__ import annotations

import heapq
import secrets
from collections import OrderedDict
from collections.abc import Container
from math import floor, inf

from gateway.ratelimit.bucket import Bucket
from gateway.ratelimit.lease import WAIT_S
from gateway.ratelimit.messages import FallbackUsage, Grant, LeaseRequest, ReturnedLease
from gateway.ratelimit.redis_script import Call, Reply
from gateway.ratelimit.remote import LEAD_S, LOW_WATER, RemoteKey, Store, window_rolled
from gateway.ratelimit.spec import LimitSpec, tag_of
from gateway.ratelimit.windows import PERIODS, usable_wall, window_bounds

ACTIVE_S = 2.0  # a worker that asked for a key this recently shares in the sizing of its leases
LEASE_TTL_S = 1.0  # bucket tokens a worker leaves unspent this long go back to the bucket
WORKER_STALE_S = 10.0  # a worker silent this long on a key is forgotten, with its outstanding bucket tokens
RESYNC_S = 1.0  # after a fallback report, the shares of workers not heard from yet stay reserved this long
RESYNC_RETRY_S = 0.02  # when to ask again after a grant held back only by that reserve
# Keys kept (rule 8). A key with one window takes about 1.45 KB here (2.25 KB with four), key string, spec, its place
# in the expiry schedule and a worker's outstanding tokens included: 90 MiB to 145 MiB in the keeper, for more keys
# than Kong's 12 MiB dict holds (some 45,000 counters, one per key and period), so a host is never evicted sooner
# than Kong would be.
MAX_KEYS = 65_536
# Rule 9. Workers give expired tokens back at their sweep, every second (gateway/state/shared.py SWEEP_S), and the
# bus takes a few ms: a window's count may still go down this long after the tokens charged to it expired.
RETURN_S = 1.5
RETURN_POLL_S = 0.1  # meanwhile a worker refused by that window asks again this often
RECHECK_S = 1.0  # and at least this often while they are valid or not yet reported spent
# A fallback report is dated by this host's clock just before it leaves the worker: one dated further ahead of the
# keeper's clock than this is no report of this host's, and would move the key's windows ahead of time (rule 5).
REPORT_AHEAD_S = 1.0
EXPIRE_RECHECK_S = 1.0  # a key kept by its bucket or its calls to Redis (rule 10) is looked at again this often
RECALL_S = WAIT_S / 2  # held requests wait this long at most for recalled workers (rule 12): half a request's wait
# Rule 13: an exact grant's token is for a request waiting now, which takes it within a scheduler turn of the grant's
# arrival; one nobody took by then (its request left) goes back rather than admit a later request unchecked.
EXACT_TTL_S = 0.25
SHOWN_KEY = 60  # characters of a key a problem's description quotes (keys are of a client's making)


class _Window:
    __slots__ = ("start", "end", "used", "resync_until", "heard", "held")

    def __init__(self, start: float, end: float, held: float = inf) -> None:
        self.start = start
        self.end = end
        self.used = 0
        self.resync_until = 0.0  # wall; see rule 6
        self.heard: set[str] | None = None  # workers heard from since the resynchronisation began (rule 6)
        self.held = held  # tokens taken from Redis for this window (rule 7); inf: this host owns the limit

    def room(self, limit: int, wall: float, worker: str, workers: int, share: int = 0) -> int:
        """What is left to grant to `worker`, less the shares reserved while resynchronising."""
        left = int(min(limit, max(self.held, share))) - self.used
        if wall < self.resync_until and self.heard is not None:
            self.heard.add(worker)
            left -= max(0, workers - len(self.heard)) * max(1, limit // workers)
        return left

    def reported(self, worker: str, wall: float) -> None:
        """`worker` reported fallback use in this window: begin or continue resynchronising."""
        if wall >= self.resync_until or self.heard is None:
            self.heard = set()
            self.resync_until = wall + RESYNC_S
        self.heard.add(worker)


class _Recall:
    """A recall under way for the requests of one key held by the keeper (rule 12)."""

    __slots__ = ("awaited", "until")

    def __init__(self, until: float) -> None:
        self.awaited: set[tuple[str, str]] = set()  # the (key, worker) answers it waits for
        self.until = until  # monotonic: when the held requests are answered without them


class _Awaited:
    """A worker recalled from a key (rule 12): the recalls waiting for its answer, and what it was granted since."""

    __slots__ = ("recalls", "lent", "ahead")

    def __init__(self) -> None:
        self.recalls: set[str] = set()  # keys whose held requests wait for it
        self.lent = 0  # tokens of the key granted to the worker since the recall was sent
        self.ahead = False  # some of them ahead of need (rule 13)


class _Key:
    __slots__ = ("key", "spec", "windows", "bucket", "outstanding", "seen", "remote", "lent_until", "check_at", "peers",
                 "ahead")

    def __init__(self, key: str, spec: LimitSpec, now: float, remote: RemoteKey | None = None,
                 windows: dict[str, _Window] | None = None) -> None:
        self.key = key
        self.spec = spec
        # by period: policy local's are its counter's, shared with the other specs' keys of it (rule 11)
        self.windows: dict[str, _Window] = {} if windows is None else windows
        self.remote = remote
        self.bucket = Bucket(spec.capacity, now) if spec.bucketed and remote is None else None
        self.outstanding: dict[str, int] = {}  # tokens leased per worker, not yet reported spent or given back
        self.seen: dict[str, float] = {}  # worker -> last request (monotonic)
        self.lent_until = 0.0  # wall: when the tokens granted last expire (rule 9)
        self.check_at = inf  # wall: when `expire` looks at the key next (rule 10)
        self.peers = False  # other specs' keys may count in its windows (rule 13)
        self.ahead: set[str] | None = None  # with peers: the workers it granted tokens ahead of need (rule 13)


class Ledger:
    """All keys' authoritative state; one per gateway, in the state keeper, which knows the number of workers.

    `host` names this gateway host in Redis (rule 7), `claimant` this Ledger's claims there; `stores` maps a spec's
    store to its Redis.
    """

    def __init__(self, workers: int = 1, host: str = "") -> None:
        self.workers = max(1, workers)
        self.host = host
        self.claimant = f"{host}#{secrets.token_hex(6)}"
        self._generation = 0  # remote key states started afresh: each gets a claimant of its own
        self.stores: dict[str, Store] = {}
        self._keys: OrderedDict[str, _Key] = OrderedDict()  # least recently asked for first (rule 8)
        self._tags: dict[str, int] = {}  # spec tag (with its TAG_END) -> how many keys have it (rule 11)
        self._remote: dict[str, _Key] = {}  # the keys of policy redis
        self._due: list[str] = []  # remote keys whose next call is due
        self._checks: list[tuple[float, str]] = []  # heap of (wall, key): when `expire` looks at a key (rule 10)
        # The workers a Recall can be sent to (rule 12): the keeper's; none for a Ledger alone, which recalls nothing
        self.reachable: Container[str] = frozenset()
        self._silent: set[str] = set()  # workers that let a recall go unanswered, until heard from again (rule 12)
        self._recalls: dict[str, _Recall] = {}  # key -> the recall its held requests wait for (rule 12)
        self._awaited: dict[tuple[str, str], _Awaited] = {}  # (key, worker) recalled -> who waits for its answer

    def grant(self, key: str, spec: LimitSpec, want: int, now: float, wall: float, worker: str,
              used: int = 0, waiting: int = 1) -> Grant | None:
        """Up to `want` tokens of `key` for `worker` (0 when a limit is exhausted); `used` settles its bucket lease;
        `waiting`: how many requests wait for them (an exact key grants them one each, and nothing else: rule 13).

        None: a key of policy redis needs the next block first (rule 7); ask again after `remote_applied` or
        `remote_failed` for it, with used=0.
        """
        state = self._state(key, spec, now, wall)
        state.seen[worker] = now
        if self._silent:
            self._silent.discard(worker)
        remote = state.remote
        if used:
            if remote is not None:
                remote.spent += used
            _settle(state, worker, used)
        windows = [self._current(state, w.period, wall) for w in spec.windows]
        if remote is not None:
            return self._grant_remote(state, remote, windows, want, now, wall, worker)
        room = min((win.room(w.limit, wall, worker, self.workers) for w, win in zip(spec.windows, windows,
                                                                                     strict=True)), default=inf)
        bucket = state.bucket
        if bucket is not None:
            room = min(room, floor(bucket.refill(now, spec.rate, spec.capacity - sum(state.outstanding.values()))))
        granted = 0
        if want > 0 and room >= 1:
            granted = min(want, max(1, int(room) // (2 * self._active(state, now))))
        exact = False
        if state.peers:
            exact, granted = self._peer_grant(state, granted, worker, waiting, now, room)
        if granted:
            for win in windows:
                win.used += granted
        expires = min((win.end for win in windows), default=inf)
        if bucket is not None:
            expires = min(expires, wall + LEASE_TTL_S)
        if exact:
            expires = min(expires, wall + EXACT_TTL_S)
        if granted:
            self._lend(state, worker, granted, expires, exact)
        remaining = tuple(max(0, w.limit - win.used) for w, win in zip(spec.windows, windows, strict=True))
        retry = max((self._exhausted_retry_of(state, win, wall) for left, win in zip(remaining, windows, strict=True)
                     if not left), default=0.0)
        if retry and self._held_elsewhere(state, worker):
            retry = 0.0  # the worker asks again when it needs a token, and waits for a recall then (rule 12)
        delay = 0.0
        if bucket is not None:
            if granted:
                if spec.paced:
                    delay = (spec.capacity - bucket.level) / spec.rate
                bucket.level -= granted
            if bucket.level < 1:
                retry = max(retry, (1 - bucket.level) / spec.rate)
        if not granted and not retry and want > 0 and room < 1 and min(remaining, default=1) > 0:
            retry = RESYNC_RETRY_S  # held back only by the shares reserved while resynchronising
        return Grant(key, granted, remaining, tuple(win.end for win in windows), wall, expires, retry, delay,
                     exact=exact)

    def _grant_remote(self, state: _Key, remote: RemoteKey, windows: list[_Window], want: int, now: float,
                      wall: float, worker: str) -> Grant | None:
        """`grant` for a key shared through Redis: from what this host holds (or its fallback share, rule 7)."""
        spec, key = state.spec, remote.key
        down = remote.store.down
        if down and not spec.fault_tolerant:
            self._check_due(state, remote, windows, now)
            return Grant(key, 0, tuple(w.limit for w in spec.windows), tuple(win.end for win in windows), wall,
                         wall, retry=0.0, hosts=remote.hosts(), unavailable=True)
        shares = [remote.share(w.limit) if down else 0 for w in spec.windows]
        rooms = [win.room(w.limit, wall, worker, self.workers, share)
                 for w, win, share in zip(spec.windows, windows, shares, strict=True)]
        room = min(rooms, default=inf)
        bucket_room = remote.bucket_room(spec, now) if spec.bucketed else inf
        if spec.bucketed:
            room = min(room, floor(bucket_room))
        granted = 0
        if want > 0 and room >= 1:
            granted = min(want, max(1, int(room) // (2 * self._active(state, now))))
            for win in windows:
                win.used += granted
            if spec.bucketed:
                remote.take_bucket(spec, granted, now)
            remote.granted += granted
            if down:
                remote.fallback_granted += granted
        if down:
            remaining = tuple(max(0, int(min(w.limit, max(win.held, share))) - win.used)
                              for w, win, share in zip(spec.windows, windows, shares, strict=True))
        else:
            remaining = tuple(max(0, min(w.limit - win.used, remote.left(w.period, win.start, w.limit) +
                                         int(win.held) - win.used)) for w, win in zip(spec.windows, windows,
                                                                                       strict=True))
        expires = min((win.end for win in windows), default=inf)
        if spec.bucketed:
            expires = min(expires, wall + LEASE_TTL_S)
        if granted:
            self._lend(state, worker, granted, expires)
        retry = exhausted = 0.0
        if want > 0 and not granted:
            for win, left, host_room in zip(windows, remaining, rooms, strict=True):
                if host_room < 1 and (down or not left):
                    exhausted = retry = max(retry, self._exhausted_retry_of(state, win, wall))
            if bucket_room < 1:
                if down:
                    retry = max(retry, (1 - bucket_room) / (spec.rate / remote.hosts()))
                elif remote.level is not None and remote.level < 1:
                    retry = max(retry, (1 - remote.level) / spec.rate)
            if not retry:
                if down:
                    retry = RESYNC_RETRY_S
                else:  # Redis may have room: wait for the next block
                    remote.waiting += want
                    self._check_due(state, remote, windows, now, force=True)
                    return None
            if exhausted and bucket_room >= 1 and self._held_elsewhere(state, worker):
                retry = 0.0  # ask again when a token is needed, and wait for a recall then (rule 12)
        self._check_due(state, remote, windows, now)
        return Grant(key, granted, remaining, tuple(win.end for win in windows), wall, expires, retry,
                     hosts=remote.hosts())

    def _check_due(self, state: _Key, remote: RemoteKey, windows: list[_Window], now: float,
                   force: bool = False) -> None:
        """List the key for a call when it runs low (rule 1 of remote.py), owes Redis something, or `force`."""
        if remote.due or remote.in_flight:
            return
        if not force:
            left = min((win.held - win.used for win in windows), default=inf)
            if state.spec.bucketed:
                left = min(left, remote.pool)
            owes = remote.owes([(w.period, win) for w, win in zip(state.spec.windows, windows, strict=True)])
            if not owes and left >= max(1.0, remote.last_block * LOW_WATER):
                return
        remote.due = True
        self._due.append(remote.key)

    def grant_request(self, request: LeaseRequest, now: float, wall: float) -> Grant | None:
        """`grant` for a worker's LeaseRequest, after crediting the expired tokens it gives back with it (rule 9)."""
        if request.unused:
            self.return_unused(ReturnedLease(request.key, request.worker, request.unused, 0, request.unused_wall))
        return self.grant(request.key, request.spec, request.want, now, wall, request.worker, request.used,
                          request.waiting)

    # ---- recalls (rule 12): the keeper holds a refused request while the tokens out at other workers come back ----

    def recall(self, request: LeaseRequest, grant: Grant, now: float) -> list[tuple[str, str]] | None:
        """After `grant` answered `request`: None when it is to be sent (no refusal for an exhausted window or for
        other specs' tokens out ahead of need (rule 13), asked ahead of need, or no worker holds tokens that could
        come back); else the request is held (rule 12), and these are the (key, worker) pairs to send a Recall now
        (none new: those recalled already are waited for)."""
        if not request.waiting or grant.granted or grant.unavailable:
            return None
        state = self._keys.get(request.key)
        if state is None:
            return None
        if min(grant.remaining, default=1) > 0:  # not exhausted: held back for other specs' tokens, or not at all
            if grant.retry or not state.peers:
                return None
            holders = self._endangered(state, self._peers(state, request.worker) or [])
        else:
            holders = self._holders(state, request.worker)
        recall = self._recalls.get(request.key)
        if recall is None:
            if not holders:
                return None
            recall = self._recalls[request.key] = _Recall(now + RECALL_S)
        fresh = []
        for pair in holders:
            if pair in recall.awaited:
                continue
            recall.awaited.add(pair)
            awaited = self._awaited.get(pair)
            if awaited is None:
                awaited = self._awaited[pair] = _Awaited()
                fresh.append(pair)
            awaited.recalls.add(request.key)
        return fresh

    def recalled(self, returned: ReturnedLease) -> list[str]:
        """A recalled worker's answer for one key (rule 12): its tokens credited, its outstanding tokens of the key
        written down to those granted to it since; the keys whose held requests it was the last to be waited for."""
        self.return_unused(returned)
        self._silent.discard(returned.worker)
        pair = (returned.key, returned.worker)
        awaited = self._awaited.pop(pair, None)
        if awaited is None:  # not recalled, or no longer waited for (RECALL_S)
            return []
        state = self._keys.get(returned.key)
        if state is not None:
            if awaited.lent:
                state.outstanding[returned.worker] = awaited.lent
            else:
                state.outstanding.pop(returned.worker, None)
            if state.ahead and not awaited.ahead:  # none of its tokens there is ahead of need now (rule 13)
                state.ahead.discard(returned.worker)
        done = []
        for key in awaited.recalls:
            recall = self._recalls[key]
            recall.awaited.discard(pair)
            if not recall.awaited:
                del self._recalls[key]
                done.append(key)
        return done

    def recalls_overdue(self, now: float) -> list[str]:
        """The keys whose recall waited RECALL_S (rule 12): their held requests are answered now, without the answers
        still to come."""
        late = [key for key, recall in self._recalls.items() if now >= recall.until]
        for key in late:
            for pair in self._recalls.pop(key).awaited:
                self._silent.add(pair[1])
                awaited = self._awaited[pair]
                awaited.recalls.discard(key)
                if not awaited.recalls:
                    del self._awaited[pair]
        return late

    def _held_elsewhere(self, state: _Key, worker: str) -> bool:
        """Can tokens of the key's windows be recalled for `worker`'s refusal (rule 12, `_holders`)?"""
        return bool(self._holders(state, worker))

    def _holders(self, state: _Key, worker: str) -> list[tuple[str, str]]:
        """The (key, worker) pairs that hold tokens of the key's windows a Recall can bring back for `worker`'s
        refusal (rule 12): those at other workers, and those other specs' keys limiting a period of its granted
        `worker` ahead of need (rule 13)."""
        pairs = []
        periods = {w.period for w in state.spec.windows}
        for key in self._sharing(state):
            ahead = key.ahead if key is not state and any(w.period in periods for w in key.spec.windows) else None
            for other, count in key.outstanding.items():
                if count > 0 and (other != worker or ahead and other in ahead) and self._recallable(other):
                    pairs.append((key.key, other))
        return pairs

    def _recallable(self, worker: str) -> bool:
        """Can a Recall reach `worker` and be answered: the keeper's and not silent (rule 12)?"""
        return worker in self.reachable and worker not in self._silent

    @property
    def recalling(self) -> bool:
        """Are held requests waiting for recalled workers (the keeper then looks for overdue recalls every tick)?"""
        return bool(self._recalls)

    def _lend(self, state: _Key, worker: str, granted: int, expires: float, exact: bool = False) -> None:
        """`granted` tokens out at `worker` (`_lent`), noted when it is recalled from the key (rule 12); `exact`:
        for the request waiting for them (rule 13)."""
        _lent(state, worker, granted, expires)
        if self._awaited:
            awaited = self._awaited.get((state.key, worker))
            if awaited is not None:
                awaited.lent += granted
                awaited.ahead = awaited.ahead or not exact

    # ---- specs of one counter with other limits (rule 13) ------------------------------------------------------------

    def _peer_grant(self, state: _Key, granted: int, worker: str, waiting: int, now: float,
                    room: float) -> tuple[bool, int]:
        """(exact, tokens to grant) for a key whose windows other specs' keys may count in, which would grant
        `granted` of `room`: one per waiting request while a peer with other limits is asked for, none while peers'
        tokens out ahead of need would go over their limits (the request is held for them: `recall`)."""
        peers = self._peers(state, worker)
        if peers is None:  # they went (rule 10): alone again
            state.peers, state.ahead = False, None
            return False, granted
        exact = any(now - seen < ACTIVE_S for peer, _, replaced in peers if not replaced for seen in peer.seen.values())
        if granted and self._endangered(state, peers):
            granted = 0
        elif exact:
            granted = int(min(room, waiting)) if granted else 0
        elif granted:
            if state.ahead is None:
                state.ahead = set()
            state.ahead.add(worker)
        return exact, granted

    def _peers(self, state: _Key, worker: str) -> list[tuple[_Key, bool, bool]] | None:
        """The other specs' keys counting in the key's windows with another limit in a period both limit, each with
        whether the key's limit there is above theirs and whether a reload replaced it for `worker` (rule 13: it
        makes no key exact, but its tokens out ahead at old workers are still recalled); None: no other key counts
        in them (rule 11)."""
        sharing = self._sharing(state)
        if len(sharing) == 1:
            return None
        mine = {w.period: w.limit for w in state.spec.windows}
        generation = _generation(worker)
        found = []
        for peer in sharing[1:]:
            replaced = all(_generation(other) < generation for other in peer.seen)  # (old workers', or none's)
            limits = [(mine[w.period], w.limit) for w in peer.spec.windows if w.period in mine]
            if any(own != theirs for own, theirs in limits):
                found.append((peer, any(own > theirs for own, theirs in limits), replaced))
        return found

    def _endangered(self, state: _Key, peers: list[tuple[_Key, bool, bool]]) -> list[tuple[str, str]]:
        """The (key, worker) pairs a Recall can bring back before the key grants (rule 13): tokens of peers with a
        lower limit that they granted ahead of need."""
        pairs = []
        for peer, above, _ in peers:
            ahead = peer.ahead
            if not above or not ahead:
                continue
            for worker in list(ahead):
                if peer.outstanding.get(worker, 0) <= 0:
                    ahead.discard(worker)  # spent and told, or given back
                elif self._recallable(worker):
                    pairs.append((peer.key, worker))
        return pairs

    # ---- the Redis level (rule 7): calls are built here, run by the keeper, and their outcomes applied here -----

    def add_store(self, name: str, prefix: str, fault_tolerant: bool = True, lead_s: float = 0.0) -> Store:
        """Register the Redis of plugin `name` (keys under `prefix`); an existing one is kept, with its state."""
        store = self.stores.get(name)
        if store is None:
            store = self.stores[name] = Store(name, prefix)
        store.prefix = prefix
        store.fault_tolerant = fault_tolerant
        store.lead_s = lead_s if lead_s > 0 else LEAD_S
        return store

    def remote_calls(self, now: float, wall: float) -> list[tuple[str, str, Call]]:
        """(key, store, call) for every remote key due; each is in flight until applied or failed."""
        calls: list[tuple[str, str, Call]] = []
        due, self._due = self._due, []
        for key in due:
            state = self._keys.get(key)
            remote = state.remote if state is not None else None
            if state is None or remote is None or remote.in_flight:
                continue
            if remote.store.down and now < remote.next_try:
                self._due.append(key)  # stays due until its retry time
                continue
            remote.due = False
            spec = state.spec
            windows = [self._current(state, w.period, wall) for w in spec.windows]
            remote.bucket_room(spec, now) if spec.bucketed else None  # an expired pool is given back
            calls.append((key, remote.store.name, remote.build(self.host, spec, windows, now)))
        return calls

    def remote_tick(self, now: float, wall: float) -> None:
        """Periodic: list the remote keys that owe Redis something (an ended window, an expired pool, a fallback)."""
        for state in self._remote.values():
            remote = state.remote
            if remote is None or remote.due or remote.in_flight:
                continue
            spec = state.spec
            windows = [self._current(state, w.period, wall) for w in spec.windows]
            if spec.bucketed:
                remote.bucket_room(spec, now)
            if remote.owes([(w.period, win) for w, win in zip(spec.windows, windows, strict=True)]):
                self._check_due(state, remote, windows, now, force=True)

    def remote_applied(self, key: str, reply: Reply, now: float, wall: float) -> bool:
        """Redis answered the key's call: take the block; the store is up. True if the store was down."""
        state = self._keys.get(key)
        if state is None or state.remote is None:
            return False
        remote, spec = state.remote, state.spec
        windows = [self._current(state, w.period, wall) for w in spec.windows]
        was_down = remote.store.down
        remote.store.down = False
        remote.waiting = 0
        remote.applied(reply, spec, windows, now)
        self._check_due(state, remote, windows, now)
        return was_down

    def remote_failed(self, key: str, why: str, now: float) -> bool:
        """The key's call failed (`why`): its store is down (rule 4 of remote.py). True if it just went down."""
        state = self._keys.get(key)
        if state is None or state.remote is None:
            return False
        remote = state.remote
        remote.failed(now)
        remote.waiting = 0
        if not remote.due:
            remote.due = True
            self._due.append(key)
        return self.store_down(remote.store.name, why)

    def store_down(self, name: str, why: str) -> bool:
        """Mark a store down (a failure, or a request waited too long for a block). True if it was up."""
        store = self.stores.get(name)
        if store is None or store.down:
            return False
        store.down, store.why = True, why
        return True

    def remote_keys(self, store: str) -> list[str]:
        """Keys of a store (the keeper answers their waiting requests when it goes down)."""
        return [k for k, s in self._remote.items() if s.remote is not None and s.remote.store.name == store]

    def fallback_granted(self) -> dict[str, int]:
        """Tokens granted on fallback shares, per store, ever (for the metric)."""
        totals: dict[str, int] = {}
        for state in self._remote.values():
            if state.remote is not None:
                name = state.remote.store.name
                totals[name] = totals.get(name, 0) + state.remote.fallback_granted
        return totals

    def return_unused(self, returned: ReturnedLease) -> None:
        """Credit tokens a worker gave back unspent to the windows they were charged to, if still current."""
        state = self._keys.get(returned.key)
        if state is None:
            return
        remote, spec = state.remote, state.spec
        shortest = state.windows.get(spec.windows[0].period) if spec.windows else None
        lapsed = shortest is None or not shortest.start <= returned.wall < shortest.end
        for win in _own_windows(state):  # (the windows they were charged to: the key's spec's, rule 11)
            if win.start <= returned.wall < win.end:
                win.used = max(0, win.used - returned.unused)
                if remote is not None and lapsed:  # a longer window's tokens go back to Redis (the next claim)
                    win.held = max(0.0, win.held - returned.unused)
        if remote is not None:
            if spec.bucketed:
                remote.back_bucket += returned.unused
                remote.spent += returned.used
        elif state.bucket is not None:
            state.bucket.level += returned.unused
        _settle(state, returned.worker, returned.unused + returned.used)

    def report_fallback(self, usage: FallbackUsage, now: float) -> None:
        """Account for requests a worker admitted on its local share while the keeper was unreachable."""
        spec = usage.spec
        state = self._state(usage.key, spec, now, usage.wall)
        for w, count in zip(spec.windows, usage.windows, strict=True):
            win = self._current(state, w.period, usage.wall)
            if count and win.start <= usage.wall:  # a report from an already replaced window is dropped
                win.used += count
                win.reported(usage.worker, usage.wall)
        if state.remote is not None:  # confessed to Redis with the key's next call (rule 4 of remote.py)
            if spec.bucketed:
                state.remote.force_bucket += usage.total
            return
        bucket = state.bucket
        if bucket is not None and usage.total:
            bucket.refill(now, spec.rate, spec.capacity - sum(state.outstanding.values()))
            bucket.level = max(-spec.capacity, bucket.level - usage.total)

    def usage(self, key: str, now: float, wall: float) -> dict[str, float]:
        """Used count per current window (its counter's: rule 11), plus the bucket's tokens and outstanding leases;
        {} for an unknown key."""
        state = self._keys.get(key)
        if state is None:
            return {}
        result = {period: float(win.used if win.start <= wall < win.end else 0)
                  for period, win in state.windows.items()}
        if state.bucket is not None:
            outstanding = sum(state.outstanding.values())
            result["tokens"] = state.bucket.refill(now, state.spec.rate, state.spec.capacity - outstanding)
            result["outstanding"] = float(outstanding)
        return result

    def keys(self) -> list[str]:
        """Keys with state (for the admin channel)."""
        return list(self._keys)

    def reset(self, key: str) -> bool:
        """Forget a key's usage (an operator's `limits reset`), with every key counting on its counter (rule 11: the
        windows they share); True if it had any. (Under policy redis this host's part only: the counts in Redis
        stay.)"""
        state = self._keys.get(key)
        if state is None:
            return False
        for other in self._sharing(state):
            self._drop(other.key, renew=True)
        return True

    def _drop(self, key: str, renew: bool = False) -> bool:
        """Forget a key; `renew`: its state may start afresh in windows still current (a new claimant then)."""
        if self._remote.pop(key, None) is not None and renew:
            self._generation += 1
        if self._keys.pop(key, None) is None:
            return False
        tag = tag_of(key)
        if tag and self._tags[tag] > 1:
            self._tags[tag] -= 1
        elif tag:
            del self._tags[tag]
        return True

    def expire(self, now: float, wall: float) -> int:
        """Drop the ended windows of the keys due to be looked at by `wall`, and those of them left with nothing to
        remember (rule 10); return how many keys went. Nothing due: one look at the heap."""
        dropped = 0
        checks = self._checks
        while checks and checks[0][0] <= wall:
            at, key = heapq.heappop(checks)
            state = self._keys.get(key)
            if state is None or state.check_at != at:
                continue  # dropped, or due again at another time
            if self._expire_key(state, now, wall):
                dropped += 1
                continue
            own = _own_windows(state)
            due = min((win.end for win in own), default=inf)
            if not own or (state.bucket is not None and state.outstanding):
                due = min(due, wall + EXPIRE_RECHECK_S)  # (stale workers' bucket tokens are written off here)
            self._check(state, due)
        return dropped

    def _expire_key(self, state: _Key, now: float, wall: float) -> bool:
        """Drop the key's ended windows and silent workers; drop the key, True, if nothing is left to count."""
        for period, win in list(state.windows.items()):
            if wall >= win.end:
                if state.remote is not None:
                    self._rolled(state, period, win, wall)
                del state.windows[period]
        for worker, seen in list(state.seen.items()):
            if now - seen >= WORKER_STALE_S:
                del state.seen[worker]
                state.outstanding.pop(worker, None)
        spec, bucket, remote = state.spec, state.bucket, state.remote
        counting = bool(_own_windows(state))  # (the counter's other windows are other specs' periods: rule 11)
        if not counting and bucket is None:
            state.outstanding.clear()  # void with the windows they were charged to (only a bucket counts them on)
        if remote is not None and (remote.in_flight or remote.due or remote.back_bucket or remote.force_bucket or
                                   remote.spent or remote.pool):
            return False
        if not counting and not state.outstanding and (
                bucket is None or bucket.refill(now, spec.rate, spec.capacity) >= spec.capacity):
            self._drop(state.key)
            return True
        return False

    def _check(self, state: _Key, at: float) -> None:
        """Have `expire` look at the key at `at` (wall), instead of when it was to; inf: never."""
        state.check_at = at
        if at == inf:
            return
        heapq.heappush(self._checks, (at, state.key))
        if len(self._checks) > 2 * len(self._keys) + 1024:  # entries of keys since dropped or rescheduled
            self._checks = [(s.check_at, k) for k, s in self._keys.items() if s.check_at != inf]
            heapq.heapify(self._checks)

    def _state(self, key: str, spec: LimitSpec, now: float, wall: float) -> _Key:
        """The key's state, created on first use; a changed spec keeps the windows' counts (a reload), unless it
        moves the key to or from Redis (then it starts afresh). A redis key first asked for before its store was
        known (a new generation's worker, ahead of the keeper's reload) moves to Redis once the store is there."""
        state = self._keys.get(key)
        if state is not None and (state.spec != spec and (state.remote is not None or spec.remote) or
                                  state.remote is None and spec.remote and spec.store in self.stores):
            self._drop(key, renew=True)
            state = None
        if state is None:
            if len(self._keys) >= MAX_KEYS:  # rule 8
                self._drop(next(iter(self._keys)), renew=True)
            store = self.stores.get(spec.store) if spec.remote else None
            remote = RemoteKey(key, spec, store, now, self._claimant(key)) if store is not None else None
            windows = self._counter_windows(key, spec)
            state = self._keys[key] = _Key(key, spec, now, remote, windows)
            state.peers = windows is not None
            if remote is not None:
                self._remote[key] = state
            if not spec.windows:  # a bucket alone: `_current` schedules no look at it (rule 10)
                self._check(state, wall + EXPIRE_RECHECK_S)
        else:
            self._keys.move_to_end(key)
            if state.spec != spec:
                state.spec = spec
                if spec.bucketed and state.bucket is None:
                    state.bucket = Bucket(spec.capacity, now)
                elif not spec.bucketed:
                    state.bucket = None  # a reload to fixed-window: no bucket limits it (nor divides by its rate)
        return state

    def _counter_windows(self, key: str, spec: LimitSpec) -> dict[str, _Window] | None:
        """The windows a new key counts in (rule 11): under policy local its counter's, those of the other specs' keys
        of it, if any, which become its peers (rule 13); None: windows of its own (the first key of a counter; under
        policy redis, where Redis sums the claims, always)."""
        tag = tag_of(key)
        if not tag:
            return None
        self._tags[tag] = self._tags.get(tag, 0) + 1
        others = [] if spec.remote else self._sharing_keys(key, key[len(tag):])
        for other in others:
            if not other.peers:  # alone until now: what it has out may have been granted ahead of need (rule 13)
                other.peers = True
                other.ahead = {worker for worker, count in other.outstanding.items() if count > 0}
        return others[0].windows if others else None

    def _sharing(self, state: _Key) -> list[_Key]:
        """The key and the other specs' keys counting in its windows (rule 11)."""
        tag = tag_of(state.key)
        if not tag or state.spec.remote:
            return [state]
        others = self._sharing_keys(state.key, state.key[len(tag):])
        return [state, *(other for other in others if other.windows is state.windows)]

    def _sharing_keys(self, key: str, name: str) -> list[_Key]:
        """The keys of counter `name` under the spec tags of the keys kept (but `key`), of policy local."""
        found = []
        for tag in self._tags:
            other = self._keys.get(tag + name)
            if other is not None and other.key != key and not other.spec.remote:
                found.append(other)
        return found

    def _claimant(self, key: str) -> str:
        """Whose claims a new key of policy redis makes (rule 7): this Ledger's, its generation's, and its spec's
        (the counter's windows in Redis take a claim from each spec counting on them: rule 11)."""
        claimant = f"{self.claimant}.{self._generation}" if self._generation else self.claimant
        tag = tag_of(key)
        return f"{claimant}/{tag[:-1]}" if tag else claimant

    def _current(self, state: _Key, period: str, wall: float) -> _Window:
        """The key's `period` window, replaced by the one holding `wall` when that is a later one."""
        win = state.windows.get(period)
        if win is None or wall >= win.end:
            if win is not None and state.remote is not None:
                self._rolled(state, period, win, wall)
            win = state.windows[period] = _Window(*window_bounds(period, wall),
                                                  held=0.0 if state.remote is not None else inf)
        if win.end < state.check_at:  # (a window another spec's key began: rule 11)
            self._check(state, win.end)
        return win

    def _exhausted_retry_of(self, state: _Key, win: _Window, wall: float) -> float:
        """_exhausted_retry of the window `win` of `state`, counting the tokens of every key it shares it with (rule
        11: they come back to it too)."""
        return _exhausted_retry(self._sharing(state), win, wall)

    @staticmethod
    def _rolled(state: _Key, period: str, old: _Window, wall: float) -> None:
        """A remote key's window ended: its unspent tokens go back to the longer windows still current."""
        others = [w for p, w in state.windows.items() if p != period and w.start <= wall < w.end]
        window_rolled(old.held, old.used, others)

    @staticmethod
    def _active(state: _Key, now: float) -> int:
        """Workers that asked for this key within ACTIVE_S (at least 1)."""
        return max(1, sum(1 for seen in state.seen.values() if now - seen < ACTIVE_S))


# ---- what a worker's message must hold for the ledger to use it (the keeper checks a message whole, first) ---------


def spec_problem(spec: LimitSpec) -> str | None:
    """What makes `spec` one the ledger cannot keep (LimitSpec itself checks the algorithm and that a rate is above
    0), or None: each window a known period, once, with a limit of 0 or more; a bucket's rate finite, its burst >= 0."""
    periods = [w.period for w in spec.windows]
    for period in periods:
        if period not in PERIODS:
            return f"unknown rate-limit period {period!r} (expected one of {', '.join(PERIODS)})"
    if len(set(periods)) != len(periods):
        return f"a period given twice in windows {periods}"
    negative = [w.limit for w in spec.windows if w.limit < 0]
    if negative:
        return f"a negative limit {negative[0]}"
    if spec.bucketed and not (0 < spec.rate < inf):
        return f"rate {spec.rate!r}: a bucket's rate is a finite number above 0"
    if spec.burst < 0:
        return f"a negative burst {spec.burst}"
    return None


def request_problem(request: LeaseRequest) -> str | None:
    """What makes a worker's LeaseRequest one the ledger cannot grant, or None."""
    why = spec_problem(request.spec)
    if why is None and min(request.want, request.used, request.unused, request.waiting) < 0:
        why = (f"negative counts (want {request.want}, used {request.used}, unused {request.unused}, waiting "
               f"{request.waiting})")
    return None if why is None else f"lease request for key {request.key[:SHOWN_KEY]!r}: {why}"


def returned_problem(returned: ReturnedLease) -> str | None:
    """What makes a worker's ReturnedLease one the ledger cannot credit, or None (a negative count would charge)."""
    if min(returned.unused, returned.used) < 0:
        return (f"tokens given back for key {returned.key[:SHOWN_KEY]!r}: negative counts (unused {returned.unused}, "
                f"used {returned.used})")
    return None


def report_problem(usage: FallbackUsage, wall: float) -> str | None:
    """What makes a worker's FallbackUsage one the ledger cannot count (rule 5) when the keeper's clock reads `wall`,
    or None: a usable spec, one count per window of it, counts >= 0, and a date this host's clock can have made."""
    why = spec_problem(usage.spec)
    if why is None:
        why = _counts_problem(usage, wall)
    return None if why is None else f"fallback report for key {usage.key[:SHOWN_KEY]!r}: {why}"


def _counts_problem(usage: FallbackUsage, wall: float) -> str | None:
    """report_problem's part past the spec: the counts and the date."""
    if len(usage.windows) != len(usage.spec.windows):
        return f"{len(usage.windows)} count(s) for the {len(usage.spec.windows)} window(s) of its spec"
    if min(usage.windows, default=0) < 0 or usage.total < 0:
        return f"negative counts {list(usage.windows)}, total {usage.total}"
    if not usable_wall(usage.wall):
        return f"dated {usage.wall!r}, not a time windows are found for"
    if usage.wall > wall + REPORT_AHEAD_S:
        return f"dated {usage.wall - wall:.3f}s ahead of the keeper's clock"
    return None


def _own_windows(state: _Key) -> list[_Window]:
    """The key's windows that its spec limits (its counter's others are other specs' periods: rule 11)."""
    windows = state.windows
    return [windows[w.period] for w in state.spec.windows if w.period in windows]


def _generation(worker: str) -> int:
    """The configuration generation `worker` serves: its id's `<generation>.` (gateway/cli.py); 0 for another name."""
    head, dot, _ = worker.partition(".")
    return int(head) if dot and head.isdecimal() else 0


def _lent(state: _Key, worker: str, granted: int, expires: float) -> None:
    """`granted` tokens, void from `expires` (wall), are out at `worker` until reported spent or given back."""
    state.outstanding[worker] = state.outstanding.get(worker, 0) + granted
    state.lent_until = max(state.lent_until, expires)


def _exhausted_retry(keys: list[_Key], win: _Window, wall: float) -> float:
    """When to ask again for the exhausted window `win` of `keys` (rule 9): its end, unless tokens charged to it may
    still come back unspent; then when they expire (RECHECK_S at most), RETURN_POLL_S while workers give them back."""
    end = win.end - wall
    lent_until = max((k.lent_until for k in keys if k.outstanding and k.lent_until > win.start), default=0.0)
    if not lent_until:  # nothing granted in it, or nothing still out
        return end
    if wall < lent_until:
        return min(end, max(RETURN_POLL_S, min(lent_until - wall, RECHECK_S)))
    return min(end, RETURN_POLL_S if wall < lent_until + RETURN_S else RECHECK_S)


def _settle(state: _Key, worker: str, count: int) -> None:
    """`count` of a worker's leased bucket tokens are no longer outstanding (spent or given back)."""
    left = state.outstanding.get(worker, 0) - count
    if left > 0:
        state.outstanding[worker] = left
    else:
        state.outstanding.pop(worker, None)
