"""Kong's hmac-auth: `Authorization` (or `Proxy-Authorization`) `hmac username="...", algorithm="...",
headers="...", signature="..."`, an HMAC of the listed request headers under the secret of the consumer's
hmacauth credential, with a Date or X-Date within `clock_skew` seconds of now.

What is signed is Kong's signing string (`Plan.signing_string`). Each listed name gives a line. A header gives
`name: value` (the name as the client listed it, the value as kong.request.get_header reads it:
gateway.policies.hmac_auth.headers) and a missing one gives `name:`.
`request-line` gives `GET /path?query HTTP/1.1`, and `@request-target` gives `@request-target: get /path?query`.
The lines are joined with newlines.

Kong's answers are all 401 with `WWW-Authenticate: hmac` (or `hmac realm="..."`):
- "Unauthorized": neither header is there.
- "HMAC signature cannot be verified, a valid date or x-date header is required for HMAC Authentication".
- "HMAC signature cannot be verified": the header does not parse, an enforced header is not signed, the algorithm
  is not allowed, or there is no such username.
- "HMAC signature does not match": the signature, or with `validate_request_body` the body's `Digest:
  SHA-256=<base64>`, is wrong.

What does not depend on the request is worked out once: per credentials header value, what it says under the config
(its fields, the credential, the algorithm, enforce_headers, the signature decoded, the signing string's lines and
the names they read) as a `Plan`, remembered (`HmacAuth.plans`); per credential and algorithm, the HMAC key schedule
(`Keyed`). A request pays one pass over its headers (from which Authorization, Proxy-Authorization, X-Date, Date
and the signed headers are read), the clock, its signing string and, unless its Plan has verified that same string
before, one HMAC. Nothing that depends on the time or the body is remembered.

With `validate_request_body` the body is read as kong.request.get_raw_body() reads it: whole while nginx keeps it in
memory (gateway.policies.llm_request.raw_body: under 10 KiB of a Content-Length body left to read after the bytes
that came with the head, up to 8 KiB of a chunked one's raw bytes), else it fails ("does not match").
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from base64 import b64encode

from gateway.http.dates import parse_http_time
from gateway.http.server import Exchange
from gateway.memo import Derived, Memo
from gateway.policies.consumers import (
    AuthPolicy,
    Directory,
    Identity,
    Rejection,
    decode_base64,
    remove_header,
)
from gateway.policies.header_list import request_header
from gateway.policies.hmac_auth.headers import HeaderName, RequestHeaders
from gateway.policies.hmac_auth.schema import HmacAuthConfig
from gateway.policies.llm_request import LENGTH_BODY_BUFFER, raw_body

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
_IPAD = bytes(byte ^ 0x36 for byte in range(256))  # RFC 2104's inner and outer pads, as bytes.translate tables
_OPAD = bytes(byte ^ 0x5C for byte in range(256))
# Dates as read: the clients of one second send the same few (a client's distinct dates cannot grow it past the bound)
_DATES: Derived[bytes, int | None] = Derived(parse_http_time, 256)
# nginx's in-memory bound for a Content-Length body past its preread (raw_body; a chunked one's: 8 KiB of raw bytes):
# kong.request.get_raw_body() fails for a longer one (written to a file)
BODY_LIMIT = LENGTH_BODY_BUFFER
PLANS = 1024  # credentials header values remembered per plugin instance and worker (a config load starts afresh)
PLAN_VALUE_BYTES = 1024  # a longer header value, or verified signing string, is read each time, not remembered
KEYED = 1024  # (credential, algorithm) key schedules remembered per plugin instance and worker

clock = time.time  # the wall clock (tests replace it)
AUTHORIZATION, PROXY_AUTHORIZATION = HeaderName(b"authorization"), HeaderName(b"proxy-authorization")
X_DATE, DATE = HeaderName(b"x-date"), HeaderName(b"date")


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


class Keyed:
    """HMAC (RFC 2104) under one secret and hash: the padded key's two blocks hashed once, so a message costs two
    copies of those states (hmac.HMAC's copy, update and digest, in its Python wrapper, cost over twice as much)."""

    __slots__ = ("inner", "outer")

    def __init__(self, secret: bytes, digest: str) -> None:
        block = hashlib.new(digest).block_size
        key = (hashlib.new(digest, secret).digest() if len(secret) > block else secret).ljust(block, b"\0")
        self.inner = hashlib.new(digest, key.translate(_IPAD))
        self.outer = hashlib.new(digest, key.translate(_OPAD))

    def mac(self, message: bytes) -> bytes:
        inner = self.inner.copy()
        inner.update(message)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class Plan:
    """What one credentials header value says under this config, once it names a credential and an allowed algorithm
    and signs the enforced headers: the signing string's lines, the credential's keyed HMAC, the signature decoded,
    whose it is, and the last signing string it verified."""

    __slots__ = ("lines", "keyed", "signature", "who", "verified")

    def __init__(self, names: list[bytes], keyed: Keyed, signature: bytes | None, who: Identity) -> None:
        # Per listed name: the header kong.request.get_header looks up, its line's start when it is there, and its
        # line when it is not (None: the request line or target, made per request)
        lines = []
        for name in names:
            missing = None if name in (b"request-line", b"@request-target") else name + b":"
            lines.append((HeaderName(name), name + b": ", missing, name))
        self.lines = lines
        self.keyed = keyed
        # The signature as nginx's decode_base64 reads it (None: it does not decode, so nothing matches). Kong compares
        # the HMAC with these bytes: any spelling that decodes to them matches (no padding, bits past the last byte,
        # text after "=").
        self.signature = signature
        self.who = who
        # A signing string this HMAC matched: the same one again matches without hashing (the HMAC is a function of
        # the secret, the algorithm and the string, and the signature it is compared with is this header's). The
        # string is the client's, no secret: compared with ==. The time and the body are checked every time.
        self.verified: bytes | None = None

    def signing_string(self, headers: RequestHeaders, ex: Exchange) -> bytes:
        """Kong's signing string (see the module's docstring) over `headers`; the request line or target from the one
        the client sent, even when a policy before this one (key-auth's hide_credentials) rewrote the request's."""
        out = []
        for header, start, missing, name in self.lines:
            value = headers.get(header)
            if value is not None:
                out.append(start + value)
            elif missing is not None:
                out.append(missing)
            else:
                req = ex.request
                if name == b"request-line":
                    out.append(b"%s %s HTTP/%s" % (req.method, ex.request_uri(), req.http_version))
                else:
                    out.append(b"@request-target: %s %s" % (req.method.lower(), ex.request_uri()))
        return b"\n".join(out)


def body_digest(body: bytes) -> bytes:
    """The Digest header value that `validate_request_body` expects for `body`."""
    return b"SHA-256=" + b64encode(hashlib.sha256(body).digest())


def credential_index(directory: Directory) -> dict[bytes, tuple[bytes, Identity]]:
    """The config's hmac-auth credentials by username, (secret, identity), as every instance looks them up (one table
    per config load, as Kong's one cache)."""
    return {user.encode(): (secret.encode(), who) for user, (secret, who) in directory.hmac.items()}


class HmacAuth(AuthPolicy):
    name = "hmac-auth"
    priority = 1030  # Kong's
    __slots__ = ("hide", "skew", "reads_body", "enforce", "algorithms", "credentials", "keyed", "plans",
                 "unauthorized", "no_date", "unverified", "mismatch")

    def __init__(self, config: HmacAuthConfig, directory: Directory) -> None:
        super().__init__(directory.anonymous(config.anonymous), True)
        self.hide = config.hide_credentials
        self.skew = config.clock_skew
        self.reads_body = config.validate_request_body
        self.enforce = [name.encode() for name in config.enforce_headers]
        self.algorithms = {name.encode(): _DIGESTS[name] for name in config.algorithms}
        self.credentials = directory.index(credential_index)
        # The key schedule, once per credential and algorithm asked for (not for all at config load: there may be
        # thousands of credentials)
        self.keyed: Memo[tuple[bytes, str], Keyed] = Memo(KEYED)
        # What a credentials header value says under this config (Plan; the Rejection when it names no credential
        # or algorithm allowed, or leaves an enforced header unsigned; None when it does not parse)
        self.plans: Derived[bytes, Plan | Rejection | None] = Derived(self._plan, PLANS)
        realm = f'hmac realm="{config.realm}"' if config.realm is not None else "hmac"
        self.unauthorized = Rejection(401, "Unauthorized", realm)
        self.no_date = Rejection(401, "HMAC signature cannot be verified, a valid date or x-date header is required "
                                      "for HMAC Authentication", realm)
        self.unverified = Rejection(401, "HMAC signature cannot be verified", realm)
        self.mismatch = Rejection(401, "HMAC signature does not match", realm)

    def _plan(self, value: bytes) -> Plan | Rejection | None:
        """What a credentials header value says (see `plans`), as Kong's validate_params and load_credential
        judge it."""
        given = parse_signature(value)
        if given is None:
            return None
        if self.enforce and any(name not in given.headers for name in self.enforce):
            return self.unverified
        digest = self.algorithms.get(given.algorithm)
        found = self.credentials.get(given.username)
        if digest is None or found is None:
            return self.unverified
        secret, who = found
        key = (given.username, digest)
        keyed = self.keyed.get(key)
        if keyed is None:
            keyed = self.keyed.keep(key, Keyed(secret, digest))
        return Plan(given.headers, keyed, decode_base64(given.signature), who)

    def authenticate(self, ex: Exchange) -> Identity | Rejection:
        req = ex.request
        headers = RequestHeaders(req.headers)
        authorization = headers.get(AUTHORIZATION)
        proxy_authorization = headers.get(PROXY_AUTHORIZATION)
        if authorization is None and proxy_authorization is None:
            return self.unauthorized
        # X-Date, or else Date, within clock_skew seconds of now (whole seconds, as ngx.time())
        now = int(clock())
        x_date = headers.get(X_DATE)
        when = _DATES[x_date] if x_date is not None else None
        if when is None or abs(now - when) > self.skew:
            date = headers.get(DATE)
            when = _DATES[date] if date is not None else None
            if when is None or abs(now - when) > self.skew:
                return self.no_date
        # The plans of the values (a longer value than any client sends is read each time, not remembered)
        plans = self.plans
        plan = None
        if proxy_authorization is not None:
            plan = plans[proxy_authorization] if len(proxy_authorization) <= PLAN_VALUE_BYTES else \
                self._plan(proxy_authorization)
        if plan is None:
            if authorization is not None:
                plan = plans[authorization] if len(authorization) <= PLAN_VALUE_BYTES else self._plan(authorization)
            if self.hide:  # (Kong's order: before it is checked, parsed or not; the signing string goes without it)
                remove_header(ex, b"authorization")
                headers.forget(b"authorization")
        elif self.hide:
            remove_header(ex, b"proxy-authorization")
            headers.forget(b"proxy-authorization")
        if plan is None or isinstance(plan, Rejection):
            return self.unverified
        signing = plan.signing_string(headers, ex)
        if signing == plan.verified:
            return plan.who
        if plan.signature is None or not hmac.compare_digest(plan.keyed.mac(signing), plan.signature):
            return self.mismatch
        if len(signing) <= PLAN_VALUE_BYTES:
            plan.verified = signing
        return plan.who

    async def check_body(self, ex: Exchange, found: Identity) -> Identity | Rejection:
        """validate_request_body: the Digest header is the body's SHA-256 (no Digest passes with no body). The body
        is read as kong.request.get_raw_body() reads it: one nginx wrote to a file (past its buffer) fails."""
        body = await raw_body(ex, 0)  # (no max size: Kong calls get_raw_body() without one)
        if body is None:
            return self.mismatch
        given = request_header(ex.request.headers, b"digest")
        if given is None:
            return found if not body else self.mismatch
        return found if hmac.compare_digest(given, body_digest(body)) else self.mismatch
