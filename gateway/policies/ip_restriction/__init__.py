"""ip-restriction: Kong's allow / deny lists of client addresses."""

from gateway.policies.ip_restriction.handler import IpRestriction
from gateway.policies.ip_restriction.schema import IpRestrictionConfig

name = "ip-restriction"
priority = IpRestriction.priority
schema = IpRestrictionConfig
consumer_scoped = True


def build(config: IpRestrictionConfig, plugin_id: str, shared: object) -> IpRestriction:
    return IpRestriction(config)
