"""session: Kong's session plugin with cookie storage (lua-resty-session 4.0's sealed cookie)."""

from gateway.policies.consumers import Directory
from gateway.policies.session.handler import SessionPolicy
from gateway.policies.session.schema import SessionConfig

name = "session"
priority = SessionPolicy.priority
schema = SessionConfig
consumer_scoped = False  # Kong's no_consumer: it finds the consumer


def build(config: SessionConfig, plugin_id: str, shared: object, consumers: Directory) -> SessionPolicy:
    return SessionPolicy(config, consumers)
