"""proxy-cache: Kong's response cache, strategy memory, in the host-wide cache dictionaries of the state keeper.

For the admin side (Kong's /proxy-cache endpoints): `render_entry(raw)` is an entry as GET /proxy-cache/:cache_key
shows it; a plugin's dictionary is `config.memory.dictionary_name` (ProxyCache.dictionary).
"""

from gateway.policies.proxy_cache.entry import render as render_entry
from gateway.policies.proxy_cache.handler import ProxyCache
from gateway.policies.proxy_cache.schema import DICTIONARIES, ProxyCacheConfig

name = "proxy-cache"
priority = ProxyCache.priority
schema = ProxyCacheConfig
consumer_scoped = True

__all__ = ["DICTIONARIES", "ProxyCache", "ProxyCacheConfig", "build", "render_entry"]


def build(config: ProxyCacheConfig, plugin_id: str, shared: object) -> ProxyCache:
    return ProxyCache(config, shared)
