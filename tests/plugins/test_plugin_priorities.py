"""Plugins run in Kong's order: each registered plugin has its Kong PRIORITY (kong/plugins/<name>/handler.lua;
ai-mcp-* from Kong EE 3.12 data/priorities/ee/3.12.x.json; circuit-breaker is no Kong plugin), the priorities are
unique, so Kong's tie-break by name (kong/db/dao/plugins.lua:361-368, `a.name > b.name`) never applies, and a chain
runs highest priority first."""

from __future__ import annotations

from types import SimpleNamespace

from gateway.plugin_index import ordered
from gateway.policies import REGISTRY

KONG = {
    "correlation-id": 100001, "zipkin": 100000, "bot-detection": 2500, "cors": 2000, "session": 1900,
    "jwt": 1450, "key-auth": 1250, "ldap-auth": 1200, "basic-auth": 1100, "hmac-auth": 1030,
    "ai-mcp-oauth2": 1015, "ip-restriction": 990, "request-size-limiting": 951, "acl": 950,
    "rate-limiting": 910, "response-ratelimiting": 900, "ai-mcp-proxy": 820, "request-transformer": 801,
    "response-transformer": 800, "redirect": 779, "ai-prompt-template": 773, "ai-prompt-decorator": 772,
    "ai-prompt-guard": 771, "standard-webhooks": 760, "proxy-cache": 100, "opentelemetry": 14, "prometheus": 13,
    "http-log": 12, "statsd": 11, "datadog": 10, "file-log": 9, "udp-log": 8, "tcp-log": 7, "loggly": 6,
    "syslog": 4, "request-termination": 2,
}
NOT_KONG = {"circuit-breaker"}


def test_every_registered_kong_plugin_has_kongs_priority():
    assert {name: t.priority for name, t in REGISTRY.items() if name not in NOT_KONG} == KONG


def test_the_priorities_are_unique():
    priorities = [t.priority for t in REGISTRY.values()]
    assert len(priorities) == len(set(priorities))


def test_a_chain_runs_highest_priority_first():
    """kong/db/dao/plugins.lua:361-368 sort_by_handler_priority: `prio_a > prio_b`."""
    chosen = {n: (0, (None, None, SimpleNamespace(name=n, priority=p))) for n, p in KONG.items()}
    assert [p.name for p in ordered(chosen)] == sorted(KONG, key=lambda n: -KONG[n])  # type: ignore[arg-type]
