"""basic-auth: Kong's HTTP Basic authentication."""

from gateway.policies.basic_auth.handler import BasicAuth
from gateway.policies.basic_auth.schema import BasicAuthConfig
from gateway.policies.consumers import Directory

name = "basic-auth"
priority = BasicAuth.priority
schema = BasicAuthConfig
consumer_scoped = False  # it finds the consumer


def build(config: BasicAuthConfig, plugin_id: str, shared: object, consumers: Directory) -> BasicAuth:
    return BasicAuth(config, consumers)
