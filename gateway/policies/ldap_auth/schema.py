"""Kong's ldap-auth plugin config (kong/plugins/ldap-auth/schema.lua), every field with Kong's default.

Refused here where Kong accepts the config but fails every authenticating request with a 500: a negative cache_ttl
(mlcache refuses the ttl), a timeout below 0 or of 2^31 ms and more (ngx's settimeout raises "bad timeout value"),
and a header_type that is not a valid regular expression (Kong puts it in one).
"""

import re
from typing import Annotated

import msgspec

from gateway.config.consumers import HeaderText
from gateway.config.errors import inline, show
from gateway.policies.tcp_log.schema import check_host

Text = Annotated[str, msgspec.Meta(min_length=1)]  # Kong's strings are at least one character
AnyPort = Annotated[int, msgspec.Meta(ge=0, le=65535)]  # Kong's typedefs.port
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Milliseconds = Annotated[float, msgspec.Meta(ge=0, le=2**31 - 1)]


class LdapAuthConfig(msgspec.Struct, forbid_unknown_fields=True):
    ldap_host: str
    base_dn: Text  # e.g. dc=example,dc=com: the bind DN is `<attribute>=<username>,<base_dn>`
    attribute: Text  # e.g. uid or cn
    ldap_port: AnyPort = 389
    ldaps: bool = False  # LDAP over TLS from the first byte (port 636, usually)
    start_tls: bool = False  # StartTLS on the plain connection before binding
    verify_ldap_host: bool = False  # check the server's certificate (system CAs or SSL_CERT_FILE) and name
    cache_ttl: NonNegative = 60  # how long a bind's outcome is remembered per username and password (0: until reload)
    hide_credentials: bool = False  # the upstream gets neither Authorization nor Proxy-Authorization
    timeout: Milliseconds | None = 10000  # for each step: connect, TLS handshake, each request (0 or null: 60 s)
    # ms an idle connection is kept, truncated to whole ms (0: as long as it lives; null: 60 s; negative: not kept)
    keepalive: float | None = 60000
    anonymous: Text | None = None  # consumer id or username admitted when authentication fails
    header_type: HeaderText = "ldap"  # the scheme of Authorization (a regular expression, compared lower-cased)
    realm: HeaderText | None = None  # WWW-Authenticate: `<scheme> realm="<realm>"`, or the scheme alone

    def __post_init__(self) -> None:
        check_host("ldap_host", self.ldap_host)
        if self.ldaps and self.start_tls:
            raise ValueError("ldaps and start_tls: 'ldaps' and 'start_tls' cannot be enabled simultaneously")
        try:
            re.compile(self.header_type.lower().encode())
        except re.error as e:
            raise ValueError(f"header_type: Kong reads it as a regular expression, and {show(self.header_type)} is "
                             f"not one ({inline(str(e))})") from None
