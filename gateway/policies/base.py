"""What every policy (Kong calls them plugins) provides: a config schema, a priority, and an access step."""

from __future__ import annotations

from typing import Any, Protocol

from gateway.http.server import Exchange


class LuaError(Exception):
    """What is a Lua runtime error in Kong's plugin (indexing a number, ipairs over a string): the pipeline answers
    Kong's 500 for a plugin that failed."""


class Policy(Protocol):
    """A configured policy instance; `access` runs before the request is forwarded."""

    name: str
    priority: int

    async def access(self, exchange: Exchange) -> bool:
        """Return True when the policy answered the request itself (the pipeline stops there)."""
        ...


class LogStep(Protocol):
    """A policy with a log step (prometheus, opentelemetry, file-log, http-log), run after every response by
    gateway.telemetry.phase: `log(ex, started, ended, status)` when `entries` is False, else `log_entry(entry)`
    with the request's Entry (Kong's serializer, made once per request for all who want it)."""

    name: str
    priority: int
    entries: bool


class PolicyType(Protocol):
    """A policy's module-level description, registered in gateway.policies.REGISTRY."""

    name: str
    # Kong's PRIORITY: higher runs first. Kong breaks a tie by name, Z before A (kong/db/dao/plugins.lua:361-368);
    # the registered priorities are unique (tests/plugins/test_plugin_priorities.py), so none arises.
    priority: int
    schema: type  # its config; a key the schema does not list is refused ("config.K is not supported")
    consumer_scoped: bool  # may be configured for a consumer (default True; False is Kong's no_consumer)

    def build(self, config: Any, plugin_id: str, shared: Any) -> Policy | None:
        """The policy for one plugin entry (None: nothing to run per request); authentication policies also take
        `consumers` (gateway.policies.consumers.Directory). ValueError("field: reason") is a config error."""
        ...
