"""Host-wide counters with a lifetime, as Kong's local policies keep them in an nginx shared dict.

Rules (lua-nginx-module's `incr(key, value, init, init_ttl)` and `get(key)`, src/ngx_http_lua_shdict.c):
1. `add(key, n, ttl)` on a key that is absent or expired starts it at n, living `ttl` seconds from now (0: no end);
   on a live key it adds n and leaves its end where it was.
2. `get` answers 0 for a key that is absent or expired.
3. Both `add` and a `get` that finds a live key make the key the most recently used (ngx_http_lua_shdict_lookup
   moves it to the head of the dict's LRU queue). The counters hold at most `capacity` bytes, each key charged as
   HostCache charges an entry (the key, its number's 8 bytes, ENTRY_OVERHEAD): by default the size of Kong's
   `kong_rate_limiting_counters` (12m, kong/templates/nginx_kong.lua), so whatever keys clients make up the counters
   take what Kong's would. A new key that does not fit drops the least recently used first, as a full shm evicts the
   last of that queue (ngx_http_lua_shdict_expire with n == 0).
4. Expired keys are swept as keys are added (every SWEEP_EVERY adds), so memory follows the live keys.

A worker's side (`WorkerCounters`): Kong's shared dict outlives any worker's crash; the keeper holding the counters
here does not, so each worker remembers, per live key, as many keys as the keeper holds (rules 3 and 4 alike):
5. What it added (`mine`), the key ending where its first add (or read) put it: a keeper restarted empty (a new
   incarnation) hears every live key's `mine` as one add (`restate`), so it counts on from the sum of the workers'
   adds, what the old one held (less what a worker since replaced added).
6. What it knows of the key's value (`known`): the keeper's last answer, raised by what it added since. While the
   keeper is away or silent it answers the key's usage from `known` (0 for a key it never saw), as a shared dict's
   get never fails.
7. What it added while the keeper was away (`unsent`), for the same keeper once it is back (`take_unsent`); a new
   keeper hears it in the restate instead. It is bounded with the keys: a key forgotten takes its unsent adds along.
"""

from __future__ import annotations

from collections import OrderedDict
from math import inf

from gateway.stores.cache import ENTRY_OVERHEAD, SIZES

SWEEP_EVERY = 4096
CAPACITY = SIZES["kong_rate_limiting_counters"]
NUMBER = 8  # bytes of a counter's value: the shm stores a Lua number, a double


class _Bounded:
    """Keys charged as the shm charges them, least recently used first (rule 3), expired ones swept as keys are
    taken (rule 4): each entry `_WIDTH` numbers, then when it ends."""

    __slots__ = ("capacity", "size", "_values", "_ops")
    _WIDTH = 1

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.size = 0  # bytes charged for the keys held (rule 3)
        # (an OrderedDict: moving a key and dropping the first are O(1))
        self._values: OrderedDict[str, list[float]] = OrderedDict()
        self._ops = 0

    def __len__(self) -> int:
        return len(self._values)

    def _slot(self, key: str, now: float, ends: float) -> list[float] | None:
        """The key's live entry, made the most recently used; a new one of zeros ending at `ends` when it has none (or
        an expired one); None when the key alone is larger than the capacity (the shm's "no memory")."""
        self._ops += 1
        if self._ops % SWEEP_EVERY == 0:
            self.sweep(now)
        values = self._values
        entry = values.get(key)
        if entry is not None:
            if entry[-1] > now:
                values.move_to_end(key)
                return entry
            del values[key]  # a restarted key is the most recently used (its size stays charged)
        else:
            cost = _cost(key)
            if cost > self.capacity:
                return None
            while self.size + cost > self.capacity:
                self.size -= _cost(values.popitem(last=False)[0])
            self.size += cost
        entry = values[key] = [0.0] * self._WIDTH + [ends]
        return entry

    def sweep(self, now: float) -> int:
        """Forget expired keys; how many."""
        dead = [key for key, entry in self._values.items() if entry[-1] <= now]
        for key in dead:
            del self._values[key]
            self.size -= _cost(key)
        return len(dead)


class Counters(_Bounded):
    """The host's counters, held by the keeper: key -> [value, ends at] (rules 1-4)."""

    __slots__ = ()

    def get(self, key: str, now: float) -> int:
        found = self._values.get(key)
        if found is None or found[1] <= now:
            return 0
        self._values.move_to_end(key)
        return int(found[0])

    def add(self, key: str, n: int, ttl: float, now: float) -> int:
        """Add n to the key; its new value."""
        entry = self._slot(key, now, now + ttl if ttl > 0 else inf)
        if entry is None:
            return n  # kept nowhere: the shm's "no memory"
        entry[0] += n
        return int(entry[0])


def _cost(key: str) -> int:
    """What the shm is charged for a counter (HostCache's charge for an entry, gateway/stores/cache.py)."""
    return len(key) + NUMBER + ENTRY_OVERHEAD


class WorkerCounters(_Bounded):
    """A worker's memory of the host's counters (rules 5-7): key -> [mine, known, unsent, ends at], least recently
    used first, bounded as the keeper's Counters are (the same charge per key, the same capacity)."""

    __slots__ = ("_unsent",)
    _WIDTH = 3

    def __init__(self, capacity: int = CAPACITY) -> None:
        super().__init__(capacity)
        self._unsent = False

    @property
    def pending(self) -> bool:
        """Are adds waiting for the keeper's return (rule 7)?"""
        return self._unsent

    def add(self, items: list[tuple[str, int, float]], now: float, sent: bool) -> None:
        """(key, increment, ttl) each, added by this worker at `now`; `sent`: to the keeper (else kept for it)."""
        for key, n, ttl in items:
            entry = self._slot(key, now, now + ttl if ttl > 0 else inf)
            if entry is None:
                continue
            entry[0] += n
            entry[1] += n
            if not sent:
                entry[2] += n
                self._unsent = True

    def read(self, keys: list[str], values: list[int], ends: list[float], now: float) -> None:
        """The keeper's `values` of `keys`, read at `now`; `ends`: when each key's period ends (wall)."""
        for key, value, end in zip(keys, values, ends, strict=True):
            entry = self._slot(key, now, end)
            if entry is not None and value > entry[1]:  # (less: this worker's adds still on their way)
                entry[1] = value

    def known(self, keys: list[str], now: float) -> list[int]:
        """The value of each key as far as this worker knows (rule 6)."""
        entries = self._values
        values = []
        for key in keys:
            entry = entries.get(key)
            values.append(int(entry[1]) if entry is not None and entry[3] > now else 0)
        return values

    def restate(self, now: float) -> list[tuple[str, int, float]]:
        """(key, what this worker added, seconds left) of every live key, least recently used first, for a keeper
        restarted empty (rule 5); nothing is left unsent after it."""
        self._unsent = False
        items = []
        for key, entry in self._values.items():
            entry[2] = 0
            if entry[0] and entry[3] > now:
                items.append((key, int(entry[0]), _ttl(entry[3], now)))
        return items

    def take_unsent(self, now: float) -> list[tuple[str, int, float]]:
        """(key, increment, seconds left) of the adds kept while the keeper was away, for it now it is back."""
        self._unsent = False
        items = []
        for key, entry in self._values.items():
            if entry[2]:
                if entry[3] > now:
                    items.append((key, int(entry[2]), _ttl(entry[3], now)))
                entry[2] = 0
        return items


def _ttl(ends: float, now: float) -> float:
    """Seconds a key has left, as an add's ttl (0: no end)."""
    return 0.0 if ends == inf else ends - now
