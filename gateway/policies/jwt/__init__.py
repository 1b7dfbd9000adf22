"""jwt: Kong's JWT authentication (parsed and validated; not enforced yet)."""

from gateway.policies.jwt.schema import JwtConfig

name = "jwt"
priority = 1450  # Kong's
schema = JwtConfig
enforced = False


def build(config: JwtConfig, plugin_id: str, shared: object) -> None:
    return None
