"""acl: Kong's access control by consumer group."""

from gateway.policies.acl.handler import Acl
from gateway.policies.acl.schema import AclConfig

name = "acl"
priority = Acl.priority
schema = AclConfig
consumer_scoped = False  # Kong's no_consumer: it applies to whoever authenticated


def build(config: AclConfig, plugin_id: str, shared: object) -> Acl:
    return Acl(config)
