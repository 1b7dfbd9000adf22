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
"""

from __future__ import annotations

from collections import OrderedDict
from math import inf

from gateway.stores.cache import ENTRY_OVERHEAD, SIZES

SWEEP_EVERY = 4096
CAPACITY = SIZES["kong_rate_limiting_counters"]
NUMBER = 8  # bytes of a counter's value: the shm stores a Lua number, a double


class Counters:
    __slots__ = ("capacity", "size", "_values", "_adds")

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.size = 0  # bytes charged for the keys held (rule 3)
        # key -> [value, ends at], least recently used first (an OrderedDict: moving a key and dropping the first
        # are O(1))
        self._values: OrderedDict[str, list[float]] = OrderedDict()
        self._adds = 0

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: str, now: float) -> int:
        found = self._values.get(key)
        if found is None or found[1] <= now:
            return 0
        self._values.move_to_end(key)
        return int(found[0])

    def add(self, key: str, n: int, ttl: float, now: float) -> int:
        """Add n to the key; its new value."""
        self._adds += 1
        if self._adds % SWEEP_EVERY == 0:
            self.sweep(now)
        values = self._values
        found = values.get(key)
        if found is None or found[1] <= now:
            if found is not None:
                del values[key]  # a restarted key is the most recently used (its size stays charged)
            else:
                cost = _cost(key)
                if cost > self.capacity:
                    return n  # kept nowhere: the shm's "no memory"
                while self.size + cost > self.capacity:
                    self.size -= _cost(values.popitem(last=False)[0])
                self.size += cost
            values[key] = [n, now + ttl if ttl > 0 else inf]
            return n
        values.move_to_end(key)
        found[0] += n
        return int(found[0])

    def sweep(self, now: float) -> int:
        """Forget expired keys; how many."""
        dead = [key for key, (_, ends) in self._values.items() if ends <= now]
        for key in dead:
            del self._values[key]
            self.size -= _cost(key)
        return len(dead)


def _cost(key: str) -> int:
    """What the shm is charged for a counter (HostCache's charge for an entry, gateway/stores/cache.py)."""
    return len(key) + NUMBER + ENTRY_OVERHEAD
