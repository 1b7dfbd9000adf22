"""The keeper's proxy-cache dictionaries have the sizes of Kong's shared dicts of the same names, so a dictionary
holds what Kong's does and a full one evicts as Kong's does."""

from __future__ import annotations

import time

import pytest

from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.keeper.state import Keeper
from gateway.policies.proxy_cache.schema import DICTIONARIES
from gateway.stores.cache import SIZES

CONFIG = """
_format_version: '3.0'
services:
  - {name: s, url: 'http://127.0.0.1:9'}
routes:
  - {name: r, service: s, paths: ['/']}
plugins:
  - {name: proxy-cache, config: {strategy: memory, memory: {dictionary_name: kong}}}
"""


def stored(dictionary: str, entries: int, size: int) -> Keeper:
    """A keeper that was sent `entries` entries of `size` bytes for `dictionary`."""
    keeper = Keeper(parse_config(CONFIG), workers=1)
    entry = b"x" * size
    for i in range(entries):
        keeper.handle(b"w1", p.CacheStore(dictionary=dictionary, key=f"k{i}", entry=entry, ttl=300.0), 0.0,
                      time.time())
    return keeper


def test_proxy_cache_in_the_kong_dictionary_holds_at_most_kongs_5m() -> None:
    """kong/templates/nginx_kong.lua:15 `lua_shared_dict kong 5m;`: a full shm evicts its least recently used
    entries, so a proxy-cache on `kong` never holds more than 5 MiB."""
    cache = stored("kong", 16, 512 << 10).caches["kong"]  # 8 MiB of entries
    assert cache.capacity == 5 << 20
    assert cache.size <= 5 << 20


def test_the_default_dictionary_has_mem_cache_sizes_default_128m() -> None:
    """nginx_kong.lua:22 `lua_shared_dict kong_db_cache ${{MEM_CACHE_SIZE}};`, kong_defaults.lua `mem_cache_size =
    128m` (a key the gateway refuses: it has no entity cache)."""
    assert stored("kong_db_cache", 1, 10).caches["kong_db_cache"].capacity == 128 << 20


@pytest.mark.parametrize(("name", "mib"), [("kong_locks", 8), ("kong_rate_limiting_counters", 12),
                                           ("kong_core_db_cache", 128), ("kong_db_cache_miss", 12),
                                           ("kong_secrets", 5), ("prometheus_metrics", 5)])
def test_each_dictionary_has_the_size_of_kongs_shared_dict(name: str, mib: int) -> None:
    """nginx_kong.lua:16-24 (http); prometheus_metrics 5m is what kong/conf_loader/init.lua injects."""
    assert stored(name, 1, 10).caches[name].capacity == mib << 20


def test_every_dictionary_proxy_cache_accepts_has_a_size() -> None:
    """proxy-cache's schema accepts the names of Kong's shared dicts (check_shdict: `ngx.shared[name]`), and any
    other is refused: each accepted name has its Kong size, and no size is kept for a name that is refused."""
    assert set(SIZES) == set(DICTIONARIES)
