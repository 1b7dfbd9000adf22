"""hmac-auth: Kong's HMAC signature authentication."""

from gateway.policies.consumers import Directory
from gateway.policies.hmac_auth.handler import HmacAuth
from gateway.policies.hmac_auth.schema import HmacAuthConfig

name = "hmac-auth"
priority = HmacAuth.priority
schema = HmacAuthConfig
consumer_scoped = False  # it finds the consumer


def build(config: HmacAuthConfig, plugin_id: str, shared: object, consumers: Directory) -> HmacAuth:
    return HmacAuth(config, consumers)
