"""Policies (Kong's plugins): one package each, with a schema, a priority and a handler.

Only what is here is accepted: any other plugin name, and any config key a schema does not list, is refused by
check-config (runtime._plugins), so a configured plugin is always an enforced one."""

from __future__ import annotations

from types import ModuleType

from gateway.policies import (
    acl,
    ai_mcp_oauth2,
    ai_mcp_proxy,
    basic_auth,
    circuit_breaker,
    ip_restriction,
    jwt,
    key_auth,
    rate_limiting,
    request_size_limiting,
)

REGISTRY: dict[str, ModuleType] = {m.name: m for m in (
    jwt, key_auth, basic_auth, ip_restriction, acl, request_size_limiting, rate_limiting, circuit_breaker,
    ai_mcp_oauth2, ai_mcp_proxy)}
