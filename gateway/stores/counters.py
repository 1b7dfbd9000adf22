"""Host-wide counters with a lifetime, as Kong's local policies keep them in an nginx shared dict.

Rules (lua-nginx-module's `incr(key, value, init, init_ttl)`):
1. `add(key, n, ttl)` on a key that is absent or expired starts it at n, living `ttl` seconds from now (0: no end);
   on a live key it adds n and leaves its end where it was.
2. `get` answers 0 for a key that is absent or expired.
3. Expired keys are swept as keys are added (every SWEEP_EVERY adds), so memory follows the live keys; past
   MAX_KEYS live keys the oldest are dropped, as a full shm evicts.
"""

from __future__ import annotations

from math import inf

SWEEP_EVERY = 4096
MAX_KEYS = 1_000_000


class Counters:
    __slots__ = ("_values", "_adds")

    def __init__(self) -> None:
        self._values: dict[str, list[float]] = {}  # key -> [value, ends at]
        self._adds = 0

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: str, now: float) -> int:
        found = self._values.get(key)
        if found is None or found[1] <= now:
            return 0
        return int(found[0])

    def add(self, key: str, n: int, ttl: float, now: float) -> int:
        """Add n to the key; its new value."""
        self._adds += 1
        if self._adds % SWEEP_EVERY == 0:
            self.sweep(now)
        found = self._values.get(key)
        if found is None or found[1] <= now:
            if found is not None:
                del self._values[key]  # a restarted key goes to the end of the eviction order
            elif len(self._values) >= MAX_KEYS:
                del self._values[next(iter(self._values))]
            self._values[key] = [n, now + ttl if ttl > 0 else inf]
            return n
        found[0] += n
        return int(found[0])

    def sweep(self, now: float) -> int:
        """Forget expired keys; how many."""
        dead = [key for key, (_, ends) in self._values.items() if ends <= now]
        for key in dead:
            del self._values[key]
        return len(dead)
