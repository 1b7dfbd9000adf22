"""ldap-auth: Kong's LDAP authentication (a simple bind per username and password, its outcome cached)."""

from gateway.policies.consumers import Directory
from gateway.policies.ldap_auth.handler import LdapAuth
from gateway.policies.ldap_auth.schema import LdapAuthConfig

name = "ldap-auth"
priority = LdapAuth.priority
schema = LdapAuthConfig
consumer_scoped = False  # it finds who the request is


def build(config: LdapAuthConfig, plugin_id: str, shared: object, consumers: Directory) -> LdapAuth:
    return LdapAuth(config, consumers, shared=shared)
