"""jwt: Kong's JWT authentication (PyJWT, with cryptography for the RSA, EC and EdDSA families)."""

from gateway.policies.consumers import Directory
from gateway.policies.jwt.handler import Jwt
from gateway.policies.jwt.schema import JwtConfig

name = "jwt"
priority = Jwt.priority
schema = JwtConfig
consumer_scoped = False  # it finds the consumer


def build(config: JwtConfig, plugin_id: str, shared: object, consumers: Directory) -> Jwt:
    return Jwt(config, consumers)
