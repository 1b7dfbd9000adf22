"""standard-webhooks: Kong's check of Standard Webhooks signatures (HMAC-SHA256 over id, timestamp and body)."""

from gateway.policies.standard_webhooks.handler import StandardWebhooks
from gateway.policies.standard_webhooks.schema import StandardWebhooksConfig

name = "standard-webhooks"
priority = StandardWebhooks.priority
schema = StandardWebhooksConfig
consumer_scoped = False  # Kong's no_consumer


def build(config: StandardWebhooksConfig, plugin_id: str, shared: object) -> StandardWebhooks:
    return StandardWebhooks(config)
