"""One host-wide cache dictionary, as an nginx shared dict (`ngx.shared.DICT`) behaves for Kong's proxy-cache.

Rules (lua-nginx-module's shared dict):
1. `set(key, value, ttl)` stores bytes for `ttl` seconds (0: until evicted or deleted), replacing any older value.
2. `get` answers None for a key that is absent or expired; an expired entry is dropped when found.
3. The dict holds at most `capacity` bytes (keys and values). A set that does not fit evicts the least recently used
   entries first, as the shm's LRU does; a value larger than the whole dict is refused (False: "no memory").
4. `delete` and `flush` remove one entry or all.
"""

from __future__ import annotations

from collections import OrderedDict
from math import inf

from gateway.bus.protocol import MAX_MESSAGE

DEFAULT_DICTIONARY = "kong_db_cache"  # proxy-cache's memory.dictionary_name default
ENTRY_LIMIT = MAX_MESSAGE - (64 << 10)  # bytes of one entry: it travels in one bus frame, with room to spare
DEFAULT_CAPACITY = 128 << 20  # Kong's kong_db_cache: mem_cache_size, 128m by default
ENTRY_OVERHEAD = 64  # bytes charged per entry beyond key and value (the shm's node), so tiny entries are bounded too


class HostCache:
    """Entries of one dictionary, least recently used first."""

    __slots__ = ("capacity", "size", "_entries")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self.size = 0
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[1] <= now:
            self._drop(key, found[0])
            return None
        self._entries.move_to_end(key)
        return found[0]

    def set(self, key: str, value: bytes, ttl: float, now: float) -> bool:
        cost = _cost(key, value)
        if cost > self.capacity:
            return False
        self.delete(key)
        while self.size + cost > self.capacity:
            oldest, (old, _) = next(iter(self._entries.items()))
            self._drop(oldest, old)
        self._entries[key] = (value, now + ttl if ttl > 0 else inf)
        self.size += cost
        return True

    def delete(self, key: str) -> bool:
        found = self._entries.get(key)
        if found is None:
            return False
        self._drop(key, found[0])
        return True

    def flush(self) -> int:
        """Remove every entry; how many there were."""
        count = len(self._entries)
        self._entries.clear()
        self.size = 0
        return count

    def _drop(self, key: str, value: bytes) -> None:
        del self._entries[key]
        self.size -= _cost(key, value)


def _cost(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD
