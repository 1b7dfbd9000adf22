"""ai-mcp-oauth2: Kong AI Gateway's MCP authorization plugin; the gateway as an OAuth 2.1 resource server (JWT access
tokens verified with the authorization server's JWKS, RFC 9728 metadata, RFC 6750 challenges)."""

from gateway.policies.ai_mcp_oauth2.handler import AiMcpOauth2
from gateway.policies.ai_mcp_oauth2.schema import AiMcpOauth2Config
from gateway.policies.consumers import Directory

name = "ai-mcp-oauth2"
priority = AiMcpOauth2.priority
schema = AiMcpOauth2Config
consumer_scoped = False  # it finds the consumer


def build(config: AiMcpOauth2Config, plugin_id: str, shared: object, consumers: Directory) -> AiMcpOauth2:
    return AiMcpOauth2(config, plugin_id, consumers)
