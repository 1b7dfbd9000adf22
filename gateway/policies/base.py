"""What every policy (Kong calls them plugins) provides: a config schema, a priority, and an access step."""

from __future__ import annotations

from typing import Any, Protocol

from gateway.http.server import Exchange


class Policy(Protocol):
    """A configured policy instance; `access` runs before the request is forwarded."""

    name: str
    priority: int

    async def access(self, exchange: Exchange) -> bool:
        """Return True when the policy answered the request itself (the pipeline stops there)."""
        ...


class PolicyType(Protocol):
    """A policy's module-level description, registered in gateway.policies.REGISTRY."""

    name: str
    priority: int  # Kong's PRIORITY: higher runs first; ties broken by name
    schema: type
    enforced: bool  # False for a policy that parses and validates but is not applied yet (logged at start)

    def build(self, config: Any) -> Policy | None: ...
