"""Kong's key-auth: an API key from a header or the query string names a consumer's keyauth credential.

Kong's answers: 401 "No API key found in request", "Duplicate API key found" (the same name given twice),
"Unauthorized" (no such key), each with `WWW-Authenticate: Key` (or `Key realm="..."`).
"""

from __future__ import annotations

from gateway.http.server import Exchange
from gateway.policies.consumers import (
    AuthPolicy,
    Directory,
    Identity,
    Rejection,
    header_key,
    header_values,
    query_values,
    remove_header,
    remove_query_arg,
)
from gateway.policies.key_auth.schema import KeyAuthConfig


class KeyAuth(AuthPolicy):
    name = "key-auth"
    priority = 1250  # Kong's
    __slots__ = ("names", "in_header", "in_query", "hide", "keys", "no_key", "duplicate", "invalid")

    def __init__(self, config: KeyAuthConfig, directory: Directory) -> None:
        super().__init__(directory.anonymous(config.anonymous), config.run_on_preflight)
        self.names = [(name, header_key(name)) for name in config.key_names]
        self.in_header = config.key_in_header
        self.in_query = config.key_in_query
        self.hide = config.hide_credentials
        self.keys = {key.encode("utf-8", "surrogateescape"): who for key, who in directory.api_keys.items()}
        realm = f'Key realm="{config.realm}"' if config.realm is not None else "Key"
        self.no_key = Rejection(401, "No API key found in request", realm)
        self.duplicate = Rejection(401, "Duplicate API key found", realm)
        self.invalid = Rejection(401, "Unauthorized", realm)

    def authenticate(self, ex: Exchange) -> Identity | Rejection:
        req = ex.request
        key: bytes | None = None
        for name, hname in self.names:
            values: list[bytes] | list[str | None] = header_values(req.headers, hname) if self.in_header else []
            if not values and self.in_query:
                values = query_values(req.target, name)
            if len(values) > 1:
                return self.duplicate
            if not values or values[0] is None:  # absent, or a bare `?apikey`: try the next name
                continue
            value = values[0]
            key = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
            if self.hide:
                remove_query_arg(ex, name)
                remove_header(ex, hname)
            break
        if not key:
            return self.no_key
        who = self.keys.get(key)
        return who if who is not None else self.invalid
