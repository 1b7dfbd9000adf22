"""One host-wide cache dictionary, as an nginx shared dict (`ngx.shared.DICT`) behaves for Kong's proxy-cache.

Rules (lua-nginx-module's shared dict):
1. `set(key, value, ttl)` stores bytes for `ttl` seconds (0: until evicted or deleted), replacing any older value.
2. `get` answers None for a key that is absent or expired; an expired entry is dropped when found.
3. The dict holds at most `capacity` bytes (keys and values), the size of Kong's shared dict of its name (SIZES).
   A set that does not fit evicts the least recently used entries first, as the shm's LRU does; a value larger than
   the whole dict is refused (False: "no memory").
4. `delete` and `flush` remove one entry or all.
5. A reload empties the dictionaries Kong's reload purges (FLUSHED_BY_RELOAD); the others keep their entries.
"""

from __future__ import annotations

from collections import OrderedDict
from math import inf

from gateway.bus.protocol import MAX_MESSAGE

DEFAULT_DICTIONARY = "kong_db_cache"  # proxy-cache's memory.dictionary_name default
ENTRY_LIMIT = MAX_MESSAGE - (64 << 10)  # bytes of one entry: it travels in one bus frame, with room to spare
# kong.conf's mem_cache_size, 128m by default (kong/templates/kong_defaults.lua): the size of kong_db_cache and
# kong_core_db_cache. The gateway refuses the key (it has no entity cache), so Kong's default is theirs.
MEM_CACHE_SIZE = 128 << 20
# Each shared dict's size in Kong's nginx template (kong/templates/nginx_kong.lua, http), and prometheus_metrics's,
# which kong/conf_loader injects (5m) with the prometheus plugin loaded: a dictionary holds what Kong's would. The
# names are those proxy-cache's schema accepts (gateway/policies/proxy_cache/schema.py DICTIONARIES); others, as in
# Kong, are no shared dict (nginx_http_lua_shared_dict, to declare one, is refused: the gateway is not nginx).
SIZES = {"kong": 5 << 20, "kong_locks": 8 << 20, "kong_healthchecks": 5 << 20, "kong_cluster_events": 5 << 20,
         "kong_rate_limiting_counters": 12 << 20, "kong_core_db_cache": MEM_CACHE_SIZE,
         "kong_core_db_cache_miss": 12 << 20, "kong_db_cache": MEM_CACHE_SIZE, "kong_db_cache_miss": 12 << 20,
         "kong_secrets": 5 << 20, "prometheus_metrics": 5 << 20}
DEFAULT_CAPACITY = SIZES[DEFAULT_DICTIONARY]
# The dictionaries a reload empties. nginx's reload keeps each shared dict (src/core/ngx_cycle.c:464-473 reuses a
# zone of the same name and size), but Kong's init then flushes `kong` (kong/init.lua reset_kong_shm: flush_all but
# its preserve_keys, none a proxy-cache key), and DB-less Kong loads its file again, purging kong.core_cache and
# kong.cache (kong/db/declarative/import.lua:500-501), the mlcaches on kong_core_db_cache and kong_db_cache, with
# their `_miss` shms (kong/resty/mlcache/init.lua purge: dict and dict_miss flush_all). The others keep their entries.
FLUSHED_BY_RELOAD = ("kong", "kong_core_db_cache", "kong_core_db_cache_miss", "kong_db_cache", "kong_db_cache_miss")
ENTRY_OVERHEAD = 64  # bytes charged per entry beyond key and value (the shm's node), so tiny entries are bounded too


class HostCache:
    """Entries of one dictionary, least recently used first."""

    __slots__ = ("capacity", "size", "_entries")

    @classmethod
    def named(cls, name: str) -> HostCache:
        """The dictionary `name`, with the size of Kong's shared dict of that name."""
        return cls(SIZES.get(name, DEFAULT_CAPACITY))

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
