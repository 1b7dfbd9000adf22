"""Kong's basic-auth: `Authorization: Basic base64(username:password)` (or Proxy-Authorization) against the
consumers' basicauth credentials, whose passwords are only kept hashed (gateway.config.consumers.PasswordHash).

Every failure is 401 "Unauthorized" with `WWW-Authenticate: Basic realm="<realm>"`, as Kong answers.
"""

from __future__ import annotations

import re

from gateway.config.consumers import PasswordHash
from gateway.http.server import Exchange
from gateway.memo import Memo
from gateway.policies.basic_auth.schema import BasicAuthConfig
from gateway.policies.consumers import (
    AuthPolicy,
    Directory,
    Identity,
    Rejection,
    decode_base64,
    remove_header,
)
from gateway.policies.header_list import request_header

# Kong's pattern (PCRE, unanchored, "." stops at a newline) \s*[Bb]asic\s*(.+), without its leading \s*: that changes
# no capture, and costs a scan per space (a quadratic search: 1.4 s for 20 KB of spaces inside a header)
_BASIC = re.compile(rb"[Bb]asic\s*(.+)")
_DECOY = PasswordHash("")  # checked against when the username is unknown, so both cases cost the same
CACHE_ENTRIES = 4096  # Authorization values verified, per plugin instance and worker (a config load starts afresh)


def basic_decoded(header: bytes) -> bytes | None:
    """The decoded credentials of a Basic header value; None if it is not Basic or not base64 (ngx.decode_base64)."""
    m = _BASIC.search(header)
    return decode_base64(m.group(1)) if m is not None else None


def split_basic(decoded: bytes) -> tuple[bytes, bytes] | None:
    """(username, password) from decoded Basic credentials; None without a colon after a username."""
    # Kong's ([^:]+):(.*), searched: from the first character that is not a colon to the next colon, and the rest of
    # that line. (As a regex search it is quadratic in a decoded value without a colon.)
    start = len(decoded) - len(decoded.lstrip(b":"))
    colon = decoded.find(b":", start)
    if colon < 0:
        return None
    return decoded[start:colon], decoded[colon + 1:].partition(b"\n")[0]


def decode_basic(header: bytes) -> tuple[bytes, bytes] | None:
    """(username, password) from a Basic credentials header value, as Kong reads it; None if it has none."""
    decoded = basic_decoded(header)
    return split_basic(decoded) if decoded is not None else None


def credential_index(directory: Directory) -> dict[bytes, tuple[PasswordHash, Identity]]:
    """The config's basic-auth credentials by username, as every instance looks them up (one table per config load,
    as Kong's one cache)."""
    return {user.encode(): found for user, found in directory.basic.items()}


class BasicAuth(AuthPolicy):
    name = "basic-auth"
    priority = 1100  # Kong's
    __slots__ = ("hide", "credentials", "unauthorized", "verified")

    def __init__(self, config: BasicAuthConfig, directory: Directory) -> None:
        super().__init__(directory.anonymous(config.anonymous), True)
        self.hide = config.hide_credentials
        self.credentials = directory.index(credential_index)
        self.unauthorized = Rejection(401, "Unauthorized", f'Basic realm="{config.realm}"')
        # an Authorization value whose password matched, and whose: the next request with it skips the decoding and
        # the hash (a value that did not match is never kept, so a wrong guess always costs the hash)
        self.verified: Memo[bytes, Identity] = Memo(CACHE_ENTRIES)

    def _read(self, ex: Exchange, name: bytes, value: bytes | None) -> tuple[bytes, bytes] | None:
        if value is None:
            return None
        decoded = basic_decoded(value)
        given = split_basic(decoded) if decoded is not None else None
        # Kong's retrieve_credentials returns before clearing a header that decodes without user:password
        if self.hide and (given is not None or decoded is None):
            remove_header(ex, name)
        return given

    def authenticate(self, ex: Exchange) -> Identity | Rejection:
        headers = ex.request.headers
        authorization = request_header(headers, b"authorization")  # (kong.request.get_header: "_" as "-")
        proxy_authorization = request_header(headers, b"proxy-authorization")
        if authorization is None and proxy_authorization is None:
            return self.unauthorized
        if proxy_authorization is None:
            who = self.verified.get(authorization)  # type: ignore[arg-type]  # (not None: both None returned above)
            if who is not None:
                if self.hide:
                    remove_header(ex, b"authorization")
                return who
        found = None
        given = self._read(ex, b"proxy-authorization", proxy_authorization)
        if given is not None:
            found = self.credentials.get(given[0])
        if found is None:
            given = self._read(ex, b"authorization", authorization)
            if given is None:
                return self.unauthorized
            found = self.credentials.get(given[0])
        if found is None:
            _DECOY.matches(given[1])  # type: ignore[index]  # `given` is set whenever this is reached
            return self.unauthorized
        password, who = found
        if not password.matches(given[1]):  # type: ignore[index]  # found came from it
            return self.unauthorized
        if proxy_authorization is None:
            self.verified.keep(authorization, who)  # type: ignore[arg-type]
        return who
