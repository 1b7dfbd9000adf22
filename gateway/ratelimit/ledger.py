"""Keeper side of rate limiting: the authoritative windows and buckets, handed out to workers as small leases.

Rules (they make a cluster-wide limit exact without a round trip per request):
1. Tokens are charged to every window of the spec when granted, so workers together never hold or spend more
   than a window's limit. A grant is all-or-nothing per token across the windows (and the bucket).
2. Lease sizing: a grant is min(want, max(1, room // (2 * active workers))), where room is what the tightest limit
   has left and a worker is active on a key if it asked within ACTIVE_S. The tail of a window is thus handed out
   in ever smaller pieces, so little is stranded at a worker that cannot spend it before the window ends.
3. Windows are aligned on the UTC wall clock (windows.py); tokens are valid until the shortest window ends. Tokens
   given back unspent are credited to the windows they were charged to that are still current (the longer ones).
4. Buckets count the tokens leased and not yet reported spent (`outstanding`) as taken: the level may refill
   only up to capacity - outstanding, so admissions over any interval T stay within capacity + rate * T even when
   a worker sits on a lease. Outstanding tokens of a worker silent for WORKER_STALE_S are written off.
5. Use a worker reports after an outage (FallbackUsage) is added to the windows it fell in, if still current,
   and taken from the bucket, which may go into debt down to minus its capacity.
6. Resynchronisation: the first report in a window opens a RESYNC_S period in which the local share
   (limit // workers) of every worker not yet heard from in that window stays reserved, since its own report may
   still be on the way. A worker's reports precede its next lease request on its channel, so a request from a
   worker counts as "heard from". A grant held back only by that reserve tells the worker to retry in
   RESYNC_RETRY_S, not at the end of the window.
"""

from __future__ import annotations

from math import floor, inf

from gateway.ratelimit.bucket import Bucket
from gateway.ratelimit.messages import FallbackUsage, Grant, LeaseRequest, ReturnedLease
from gateway.ratelimit.spec import LimitSpec
from gateway.ratelimit.windows import window_bounds

ACTIVE_S = 2.0  # a worker that asked for a key this recently shares in the sizing of its leases
LEASE_TTL_S = 1.0  # bucket tokens a worker leaves unspent this long go back to the bucket
WORKER_STALE_S = 10.0  # a worker silent this long on a key is forgotten, with its outstanding bucket tokens
RESYNC_S = 1.0  # after a fallback report, the shares of workers not heard from yet stay reserved this long
RESYNC_RETRY_S = 0.02  # when to ask again after a grant held back only by that reserve


class _Window:
    __slots__ = ("start", "end", "used", "resync_until", "heard")

    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = end
        self.used = 0
        self.resync_until = 0.0  # wall; see rule 6
        self.heard: set[str] = set()  # workers heard from since the resynchronisation began

    def room(self, limit: int, wall: float, worker: str, workers: int) -> int:
        """What is left to grant to `worker`, less the shares reserved while resynchronising."""
        left = limit - self.used
        if wall < self.resync_until:
            self.heard.add(worker)
            left -= max(0, workers - len(self.heard)) * max(1, limit // workers)
        return left

    def reported(self, worker: str, wall: float) -> None:
        """`worker` reported fallback use in this window: begin or continue resynchronising."""
        if wall >= self.resync_until:
            self.heard = set()
            self.resync_until = wall + RESYNC_S
        self.heard.add(worker)


class _Key:
    __slots__ = ("spec", "windows", "bucket", "outstanding", "seen")

    def __init__(self, spec: LimitSpec, now: float) -> None:
        self.spec = spec
        self.windows: dict[str, _Window] = {}
        self.bucket = Bucket(spec.capacity, now) if spec.bucketed else None
        self.outstanding: dict[str, int] = {}  # bucket tokens leased per worker, not yet reported spent
        self.seen: dict[str, float] = {}  # worker -> last request (monotonic)


class Ledger:
    """All keys' authoritative state; one per gateway, in the state keeper, which knows the number of workers."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)
        self._keys: dict[str, _Key] = {}

    def grant(self, key: str, spec: LimitSpec, want: int, now: float, wall: float, worker: str,
              used: int = 0) -> Grant:
        """Up to `want` tokens of `key` for `worker` (0 when a limit is exhausted); `used` settles its bucket lease."""
        state = self._state(key, spec, now)
        state.seen[worker] = now
        if used:
            _settle(state, worker, used)
        windows = [_current(state, w.period, wall) for w in spec.windows]
        room = min((win.room(w.limit, wall, worker, self.workers) for w, win in zip(spec.windows, windows,
                                                                                     strict=True)), default=inf)
        bucket = state.bucket
        if bucket is not None:
            room = min(room, floor(bucket.refill(now, spec.rate, spec.capacity - sum(state.outstanding.values()))))
        granted = 0
        if want > 0 and room >= 1:
            granted = min(want, max(1, int(room) // (2 * self._active(state, now))))
            for win in windows:
                win.used += granted
        remaining = tuple(max(0, w.limit - win.used) for w, win in zip(spec.windows, windows, strict=True))
        retry = max((win.end - wall for left, win in zip(remaining, windows, strict=True) if not left), default=0.0)
        expires = min((win.end for win in windows), default=inf)
        delay = 0.0
        if bucket is not None:
            if granted:
                if spec.paced:
                    delay = (spec.capacity - bucket.level) / spec.rate
                bucket.level -= granted
                state.outstanding[worker] = state.outstanding.get(worker, 0) + granted
            if bucket.level < 1:
                retry = max(retry, (1 - bucket.level) / spec.rate)
            expires = min(expires, wall + LEASE_TTL_S)
        if not granted and not retry and want > 0:
            retry = RESYNC_RETRY_S  # held back only by the shares reserved while resynchronising
        return Grant(key, granted, remaining, tuple(win.end for win in windows), wall, expires, retry, delay)

    def grant_request(self, request: LeaseRequest, now: float, wall: float) -> Grant:
        """`grant` for a worker's LeaseRequest."""
        return self.grant(request.key, request.spec, request.want, now, wall, request.worker, request.used)

    def return_unused(self, returned: ReturnedLease) -> None:
        """Credit tokens a worker gave back unspent to the windows they were charged to, if still current."""
        state = self._keys.get(returned.key)
        if state is None:
            return
        for win in state.windows.values():
            if win.start <= returned.wall < win.end:
                win.used = max(0, win.used - returned.unused)
        if state.bucket is not None:
            state.bucket.level += returned.unused
            _settle(state, returned.worker, returned.unused + returned.used)

    def report_fallback(self, usage: FallbackUsage, now: float) -> None:
        """Account for requests a worker admitted on its local share while the keeper was unreachable."""
        spec = usage.spec
        state = self._state(usage.key, spec, now)
        for w, count in zip(spec.windows, usage.windows, strict=True):
            win = _current(state, w.period, usage.wall)
            if count and win.start <= usage.wall:  # a report from an already replaced window is dropped
                win.used += count
                win.reported(usage.worker, usage.wall)
        bucket = state.bucket
        if bucket is not None and usage.total:
            bucket.refill(now, spec.rate, spec.capacity - sum(state.outstanding.values()))
            bucket.level = max(-spec.capacity, bucket.level - usage.total)

    def usage(self, key: str, now: float, wall: float) -> dict[str, float]:
        """Used count per current window, plus the bucket's tokens and outstanding leases; {} for an unknown key."""
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
        """Forget a key's usage (an operator's `limits reset`); True if it had any."""
        return self._keys.pop(key, None) is not None

    def expire(self, now: float, wall: float) -> int:
        """Drop ended windows, silent workers and keys left with nothing to remember; return how many keys went."""
        dropped = 0
        for key, state in list(self._keys.items()):
            for period, win in list(state.windows.items()):
                if wall >= win.end:
                    del state.windows[period]
            for worker, seen in list(state.seen.items()):
                if now - seen >= WORKER_STALE_S:
                    del state.seen[worker]
                    state.outstanding.pop(worker, None)
            spec, bucket = state.spec, state.bucket
            if not state.windows and not state.outstanding and (
                    bucket is None or bucket.refill(now, spec.rate, spec.capacity) >= spec.capacity):
                del self._keys[key]
                dropped += 1
        return dropped

    def _state(self, key: str, spec: LimitSpec, now: float) -> _Key:
        """The key's state, created on first use; a changed spec keeps the windows' counts (a reload)."""
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Key(spec, now)
        elif state.spec != spec:
            state.spec = spec
            if spec.bucketed and state.bucket is None:
                state.bucket = Bucket(spec.capacity, now)
        return state

    @staticmethod
    def _active(state: _Key, now: float) -> int:
        """Workers that asked for this key within ACTIVE_S (at least 1)."""
        return max(1, sum(1 for seen in state.seen.values() if now - seen < ACTIVE_S))


def _current(state: _Key, period: str, wall: float) -> _Window:
    """The key's `period` window, replaced by the one holding `wall` when that is a later one."""
    win = state.windows.get(period)
    if win is None or wall >= win.end:
        win = state.windows[period] = _Window(*window_bounds(period, wall))
    return win


def _settle(state: _Key, worker: str, count: int) -> None:
    """`count` of a worker's leased bucket tokens are no longer outstanding (spent or given back)."""
    left = state.outstanding.get(worker, 0) - count
    if left > 0:
        state.outstanding[worker] = left
    else:
        state.outstanding.pop(worker, None)
