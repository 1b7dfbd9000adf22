"""key-auth: Kong's API key authentication."""

from gateway.policies.consumers import Directory
from gateway.policies.key_auth.handler import KeyAuth
from gateway.policies.key_auth.schema import KeyAuthConfig

name = "key-auth"
priority = KeyAuth.priority
schema = KeyAuthConfig
consumer_scoped = False  # it finds the consumer


def build(config: KeyAuthConfig, plugin_id: str, shared: object, consumers: Directory) -> KeyAuth:
    return KeyAuth(config, consumers)
