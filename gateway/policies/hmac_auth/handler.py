"""Kong's hmac-auth: `Authorization` (or `Proxy-Authorization`) `hmac username="...", algorithm="...",
headers="...", signature="..."`, an HMAC of the listed request headers under the secret of the consumer's
hmacauth credential, with a Date or X-Date within `clock_skew` seconds of now.

What is signed is Kong's signing string (`signing_string`). Each listed name gives a line. A header gives
`name: value` (its first value; the name as the client spelled it) and a missing one gives `name:`.
`request-line` gives `GET /path?query HTTP/1.1`, and `@request-target` gives `@request-target: get /path?query`.
The lines are joined with newlines.

Kong's answers are all 401 with `WWW-Authenticate: hmac` (or `hmac realm="..."`):
- "Unauthorized": neither header is there.
- "HMAC signature cannot be verified, a valid date or x-date header is required for HMAC Authentication".
- "HMAC signature cannot be verified": the header does not parse, an enforced header is not signed, the algorithm
  is not allowed, or there is no such username.
- "HMAC signature does not match": the signature, or with `validate_request_body` the body's `Digest:
  SHA-256=<base64>`, is wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from base64 import b64encode
from binascii import b2a_base64

from gateway.http.codec import Request
from gateway.http.dates import parse_http_time
from gateway.http.server import Exchange
from gateway.memo import Memo
from gateway.policies.consumers import (
    AuthPolicy,
    Directory,
    Identity,
    Rejection,
    decode_base64,
    header_value,
    remove_header,
)
from gateway.policies.hmac_auth.schema import HmacAuthConfig

# Kong reads the header with a PCRE pattern (unanchored; "." stops at a newline):
#     \s*[Hh]mac\s*username="(.+)",\s*algorithm="(.+)",\s*headers="(.+)",\s*signature="(.+)"
# Its four greedy groups backtrack in time that grows with the fourth power of the length (650 ms for a 4.5 KB
# header in Python's re), so it is not run as written. A value with exactly the 8 quotes of the fields has one
# reading, which this finds in one pass; any other is read by `_greedy_fields`, in linear time.
_HMAC_8 = re.compile(  # (without the leading \s*, which changes no capture and would cost a scan per space)
    rb'[Hh]mac\s*username="([^"\n]+)",\s*algorithm="([^"\n]+)",\s*headers="([^"\n]+)",\s*signature="([^"\n]+)"')
_START = re.compile(rb'[Hh]mac\s*username="')
_SEPARATOR = re.compile(rb'",\s*(algorithm|headers|signature)="')
_DIGESTS = {"hmac-sha1": "sha1", "hmac-sha256": "sha256", "hmac-sha384": "sha384", "hmac-sha512": "sha512"}
# Dates as read: the clients of one second send the same few (a client's distinct dates cannot grow it past the bound)
_DATES: Memo[bytes, int | None] = Memo(256)
BODY_LIMIT = 1024 * 1024  # bytes of body whose digest is checked; a longer one fails, as Kong's over its buffer


class Signature:
    """What an hmac credentials header says."""

    __slots__ = ("username", "algorithm", "headers", "signature")

    def __init__(self, username: bytes, algorithm: bytes, headers: list[bytes], signature: bytes) -> None:
        self.username = username
        self.algorithm = algorithm
        self.headers = headers
        self.signature = signature


def parse_signature(value: bytes | None) -> Signature | None:
    """The fields of an hmac credentials header, as Kong's pattern finds them; None if it does not match."""
    if value is None:
        return None
    if value.count(b'"') == 8:
        m = _HMAC_8.search(value)
        fields = m.groups() if m is not None else None
    else:
        fields = _greedy_fields(value)
    if fields is None:
        return None
    username, algorithm, headers, signature = fields
    return Signature(username, algorithm, headers.split(b" "), signature)


def _greedy_fields(value: bytes) -> tuple[bytes, bytes, bytes, bytes] | None:
    """What Kong's pattern captures, without backtracking. A greedy group ends at the last place from which the rest
    can still match: the signature at the last quote; the headers at the last `", signature="` that leaves a
    signature; the algorithm at the last `", headers="` before such a one; the username at the last `",
    algorithm="` before that; and the match starts at the first `hmac username="` before the username's end."""
    if b"\n" in value:
        return None  # (never in a header value: the codecs refuse it; "." would stop there)
    separators: dict[bytes, list[tuple[int, int]]] = {b"algorithm": [], b"headers": [], b"signature": []}
    at = value.find(b'"')
    while at >= 0:  # every quote that starts a separator, overlapping ones too (`algorithm="", headers=...`)
        m = _SEPARATOR.match(value, at)
        if m is not None:
            separators[m.group(1)].append((at, m.end()))
        at = value.find(b'"', at + 1)
    end = value.rfind(b'"')
    fields = []
    for name in (b"signature", b"headers", b"algorithm"):
        found = [(start, after) for start, after in separators[name] if after < end]
        if not found:
            return None
        start, after = found[-1]
        fields.append(value[after:end])
        end = start
    for m in _START.finditer(value):
        if m.end() < end:
            return value[m.end():end], fields[2], fields[1], fields[0]
    return None


def signing_string(request: Request, names: list[bytes], target: bytes) -> bytes:
    """Kong's signing string for the headers `names` lists (see the module's docstring); `target`: the one the
    client sent, even when a policy before this one (key-auth's hide_credentials) rewrote the request's."""
    lines = []
    for name in names:
        value = header_value(request.headers, name.lower().replace(b"_", b"-"))
        if value is not None:
            lines.append(name + b": " + value)
        elif name == b"request-line":
            lines.append(b"%s %s HTTP/%s" % (request.method, target, request.http_version))
        elif name == b"@request-target":
            lines.append(b"@request-target: %s %s" % (request.method.lower(), target))
        else:
            lines.append(name + b":")
    return b"\n".join(lines)


def body_digest(body: bytes) -> bytes:
    """The Digest header value that `validate_request_body` expects for `body`."""
    return b"SHA-256=" + b64encode(hashlib.sha256(body).digest())


class HmacAuth(AuthPolicy):
    name = "hmac-auth"
    priority = 1030  # Kong's
    __slots__ = ("hide", "skew", "reads_body", "enforce", "algorithms", "credentials", "keyed", "unauthorized",
                 "no_date", "unverified", "mismatch")

    def __init__(self, config: HmacAuthConfig, directory: Directory) -> None:
        super().__init__(directory.anonymous(config.anonymous), True)
        self.hide = config.hide_credentials
        self.skew = config.clock_skew
        self.reads_body = config.validate_request_body
        self.enforce = [name.encode() for name in config.enforce_headers]
        self.algorithms = {name.encode(): _DIGESTS[name] for name in config.algorithms}
        self.credentials = {user.encode(): (secret.encode(), who) for user, (secret, who) in directory.hmac.items()}
        self.keyed: Memo[tuple[bytes, str], hmac.HMAC] = Memo(1024)
        realm = f'hmac realm="{config.realm}"' if config.realm is not None else "hmac"
        self.unauthorized = Rejection(401, "Unauthorized", realm)
        self.no_date = Rejection(401, "HMAC signature cannot be verified, a valid date or x-date header is required "
                                      "for HMAC Authentication", realm)
        self.unverified = Rejection(401, "HMAC signature cannot be verified", realm)
        self.mismatch = Rejection(401, "HMAC signature does not match", realm)

    def _fresh(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Is X-Date, or else Date, a date within clock_skew seconds of now (whole seconds, as ngx.time())?"""
        now = int(time.time())
        for name in (b"x-date", b"date"):
            value = header_value(headers, name)
            if value is not None:
                when = _DATES[value] if value in _DATES else _DATES.keep(value, parse_http_time(value))
                if when is not None and abs(now - when) <= self.skew:
                    return True
        return False

    def authenticate(self, ex: Exchange) -> Identity | Rejection:
        req = ex.request
        headers = req.headers
        authorization = header_value(headers, b"authorization")
        proxy_authorization = header_value(headers, b"proxy-authorization")
        if authorization is None and proxy_authorization is None:
            return self.unauthorized
        if not self._fresh(headers):
            return self.no_date
        given = parse_signature(proxy_authorization)
        if given is None:
            given = parse_signature(authorization)
            if self.hide:
                remove_header(ex, b"authorization")  # (Kong's order: before it is checked, parsed or not)
        elif self.hide:
            remove_header(ex, b"proxy-authorization")
        if given is None or (self.enforce and any(name not in given.headers for name in self.enforce)):
            return self.unverified
        digest = self.algorithms.get(given.algorithm)
        found = self.credentials.get(given.username)
        if digest is None or found is None:
            return self.unverified
        secret, who = found
        key = (given.username, digest)
        keyed = self.keyed.get(key)
        if keyed is None:  # the key schedule, done once per credential and algorithm: each request copies it
            keyed = self.keyed.keep(key, hmac.new(secret, digestmod=digest))
        mac = keyed.copy()
        mac.update(signing_string(req, given.headers, ex.request_uri()))
        expected = mac.digest()
        # The canonical base64 is what clients send: compared as text, no decoding; any other spelling nginx's
        # decoder reads (bits past the last byte, no padding, text after "=") is decoded and compared as bytes.
        if hmac.compare_digest(given.signature.partition(b"=")[0], b2a_base64(expected, newline=False).rstrip(b"=")):
            return who
        signature = decode_base64(given.signature)
        if signature is None or not hmac.compare_digest(expected, signature):
            return self.mismatch
        return who

    async def check_body(self, ex: Exchange, found: Identity) -> Identity | Rejection:
        """validate_request_body: the Digest header is the body's SHA-256 (no Digest passes with no body)."""
        body, whole = await ex.read_body(BODY_LIMIT)
        if not whole:
            return self.mismatch
        given = header_value(ex.request.headers, b"digest")
        if given is None:
            return found if not body else self.mismatch
        return found if hmac.compare_digest(given, body_digest(body)) else self.mismatch
