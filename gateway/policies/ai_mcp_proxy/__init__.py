"""ai-mcp-proxy: Kong AI Gateway's MCP proxy plugin in passthrough-listener mode: per-tool access control for
tools/call, tools/list answers filtered per caller, batches judged element by element, a bounded body."""

from gateway.mcp.step import McpShared
from gateway.policies.ai_mcp_proxy.handler import AiMcpProxy
from gateway.policies.ai_mcp_proxy.schema import AiMcpProxyConfig

name = "ai-mcp-proxy"
priority = AiMcpProxy.priority
schema = AiMcpProxyConfig


def build(config: AiMcpProxyConfig, plugin_id: str, shared: object, mcp: McpShared) -> AiMcpProxy:
    return AiMcpProxy(config, plugin_id, mcp.audit_log, shared)
