"""Kong's proxy-cache plugin config (kong/plugins/proxy-cache/schema.lua), strategy `memory` (the only one in OSS).

`memory.dictionary_name` names an nginx shared dict, which Kong's schema requires to exist (`ngx.shared[name]`).
Here the dictionaries are the host-wide ones of the state keeper, one per name: the names Kong's nginx template
declares for the http subsystem (with its default settings: the prometheus plugin loaded, the old DNS client) are
accepted, any other is refused with Kong's message.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from gateway.config.errors import inline
from gateway.stores.cache import DEFAULT_DICTIONARY

# kong/templates/nginx_kong.lua's lua_shared_dict lines (http), plus prometheus_metrics, which kong/conf_loader
# adds when the prometheus plugin is loaded (it is, with `plugins = bundled`). kong_dns_cache exists only with
# new_dns_client = on (off by default).
DICTIONARIES = ("kong", "kong_locks", "kong_healthchecks", "kong_cluster_events", "kong_rate_limiting_counters",
                "kong_core_db_cache", "kong_core_db_cache_miss", "kong_db_cache", "kong_db_cache_miss",
                "kong_secrets", "prometheus_metrics")

StatusCode = Annotated[int, msgspec.Meta(ge=100, le=900)]
Method = Literal["HEAD", "GET", "POST", "PATCH", "PUT"]
Text = Annotated[str, msgspec.Meta(min_length=1)]  # Kong's strings are never empty (its schema's default len_min)


class MemoryConfig(msgspec.Struct, forbid_unknown_fields=True):
    dictionary_name: Text = DEFAULT_DICTIONARY

    def __post_init__(self) -> None:
        if self.dictionary_name not in DICTIONARIES:
            raise ValueError(f"dictionary_name: missing shared dict '{inline(self.dictionary_name)}' (the "
                             "gateway's cache dictionaries are the host-wide ones named as Kong's built-in shared "
                             f"dicts: {', '.join(DICTIONARIES)})")


class ResponseHeaders(msgspec.Struct, forbid_unknown_fields=True):
    """Which of the diagnostic headers responses carry (all of them with a Kong-Debug request header). Kong's fields
    are not required: null is accepted, and is off (the handler's `conf.response_headers[header]` is nil)."""

    age: bool | None = True
    x_cache_status: bool | None = msgspec.field(default=True, name="X-Cache-Status")
    x_cache_key: bool | None = msgspec.field(default=True, name="X-Cache-Key")


class ProxyCacheConfig(msgspec.Struct, forbid_unknown_fields=True):
    strategy: Literal["memory"]  # required, no default (Kong's)
    response_code: list[StatusCode] = msgspec.field(default_factory=lambda: [200, 301, 404])
    request_method: list[Method] = msgspec.field(default_factory=lambda: ["GET", "HEAD"])
    content_type: list[Text] = msgspec.field(default_factory=lambda: ["text/plain", "application/json"])
    cache_ttl: Annotated[int, msgspec.Meta(gt=0)] = 300
    cache_control: bool = False
    ignore_uri_case: bool | None = False  # required = false in Kong: null is off
    storage_ttl: int | None = None
    memory: MemoryConfig = msgspec.field(default_factory=MemoryConfig)
    vary_query_params: list[Text] | None = None
    vary_headers: list[Text] | None = None
    response_headers: ResponseHeaders = msgspec.field(default_factory=ResponseHeaders)

    def __post_init__(self) -> None:
        if not self.response_code:
            raise ValueError("response_code: length must be at least 1")  # Kong's len_min = 1
        for name, ttl in (("cache_ttl", self.cache_ttl), ("storage_ttl", self.storage_ttl)):
            if ttl is not None and not _finite(ttl):
                raise ValueError(f"{name}: expected an integer")  # Kong reads it as inf, which is no integer


def _finite(value: int) -> bool:
    """Whether Kong's reading of an integer (a double) is finite: 1e20 is, a number of 310 digits is not."""
    try:
        float(value)
    except OverflowError:
        return False
    return True
