"""Policies (Kong's plugins): one package each, with a schema, a priority and a handler.

Only what is here is accepted: any other plugin name, and any config key a schema does not list, is refused by
check-config (runtime._plugins), so a configured plugin is always an enforced one."""

from __future__ import annotations

from types import ModuleType

from gateway.policies import (
    acl,
    ai_mcp_oauth2,
    ai_mcp_proxy,
    ai_prompt_decorator,
    ai_prompt_guard,
    ai_prompt_template,
    basic_auth,
    bot_detection,
    circuit_breaker,
    correlation_id,
    cors,
    datadog,
    file_log,
    hmac_auth,
    http_log,
    ip_restriction,
    jwt,
    key_auth,
    ldap_auth,
    loggly,
    opentelemetry,
    prometheus,
    proxy_cache,
    rate_limiting,
    redirect,
    request_size_limiting,
    request_termination,
    request_transformer,
    response_ratelimiting,
    response_transformer,
    session,
    standard_webhooks,
    statsd,
    syslog,
    tcp_log,
    udp_log,
    zipkin,
)

REGISTRY: dict[str, ModuleType] = {m.name: m for m in (
    jwt, key_auth, ldap_auth, basic_auth, hmac_auth, session, ip_restriction, acl, request_size_limiting,
    rate_limiting, response_ratelimiting, circuit_breaker, cors, correlation_id, request_termination, redirect,
    bot_detection, request_transformer, response_transformer, proxy_cache, standard_webhooks, prometheus, file_log,
    http_log, statsd, datadog, tcp_log, udp_log, syslog, loggly, opentelemetry, zipkin, ai_mcp_oauth2, ai_mcp_proxy,
    ai_prompt_template, ai_prompt_decorator, ai_prompt_guard)}
