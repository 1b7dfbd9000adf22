"""Host-wide stores the state keeper holds for the workers, sans-I/O: what Kong keeps in nginx shared dicts that all
workers of a host see (proxy-cache's entries, response-ratelimiting's counters)."""

from gateway.stores.cache import HostCache as HostCache
from gateway.stores.counters import Counters as Counters
