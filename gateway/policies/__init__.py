"""Policies (Kong's plugins): one package each, with a schema, a priority and a handler."""

from __future__ import annotations

from types import ModuleType

from gateway.policies import circuit_breaker, jwt, rate_limiting, request_size_limiting

REGISTRY: dict[str, ModuleType] = {m.name: m for m in (request_size_limiting, rate_limiting, circuit_breaker, jwt)}
