"""hmac-auth compiled (gateway/policies/hmac_auth/handler.py): what a credentials header value says under the config
(its fields, the credential, the algorithm, enforce_headers, the signature decoded) is read once per value as a Plan,
the HMAC key schedule is hashed once per credential and algorithm, the headers are read in one pass, and a signing
string a Plan has verified is not hashed again. These tests hold it to the handler as it was before (`Reference`
below, a frozen copy of its per-request code): for generated configs and sequences of requests (valid and invalid
signatures in every spelling, headers missing or repeated, dates in and out of the clock skew, digests and bodies,
algorithms, realms, anonymous, hide_credentials), both give the same answer, the same consumer and send the same
request upstream. (Kong's header pattern, which both read with `parse_signature`, is held to Kong's own in
tests/auth/test_auth_fuzz.py.)"""

from __future__ import annotations

import base64
import hmac
from binascii import b2a_base64
from email.utils import formatdate
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plugin_helpers import run_without_waiting

from gateway.config import parse_config
from gateway.http.codec import Request
from gateway.http.dates import parse_http_time
from gateway.http.server import REQUEST_URI, Exchange
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
from gateway.policies.hmac_auth import handler
from gateway.policies.hmac_auth.handler import HmacAuth, Keyed, body_digest, parse_signature
from gateway.policies.hmac_auth.schema import HmacAuthConfig

NOW = 1_767_225_600.75  # the clock both read (a fraction, as time.time() has: ngx.time() is whole seconds)
LONG_SECRET = "s" * 200  # longer than any hash's block: HMAC hashes it first
BLOCK_SECRET = "b" * 64  # exactly SHA-1's and SHA-256's block
ANON_ID = "2a1f0c3e-5b7d-4e9a-8c6b-0d4e2f1a3b5c"
SECRETS = {b"bob": b"secret", b"long": LONG_SECRET.encode(), b"block": BLOCK_SECRET.encode()}
DIRECTORY = Directory(parse_config(
    "consumers:\n"
    "- username: bob\n"
    "  custom_id: '1234'\n"
    "  hmacauth_credentials: [{username: bob, secret: secret}]\n"
    "- username: carol\n"
    f"  hmacauth_credentials: [{{username: long, secret: {LONG_SECRET}}},\n"
    f"                         {{username: block, secret: {BLOCK_SECRET}}}]\n"
    "- username: anon\n"
    f"  id: {ANON_ID}\n"))
HASHES = {b"hmac-sha1": "sha1", b"hmac-sha256": "sha256", b"hmac-sha384": "sha384", b"hmac-sha512": "sha512"}
ALGORITHMS = ["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"]


class Reference(AuthPolicy):
    """The handler's per-request code before it was compiled (commit 4406f07), but for its clock, which is `now`."""

    name = "hmac-auth"
    priority = 1030

    def __init__(self, config: HmacAuthConfig, directory: Directory, now: Any) -> None:
        super().__init__(directory.anonymous(config.anonymous), True)
        self.now = now
        self.dates: Memo[bytes, int | None] = Memo(256)
        self.hide = config.hide_credentials
        self.skew = config.clock_skew
        self.reads_body = config.validate_request_body
        self.enforce = [name.encode() for name in config.enforce_headers]
        self.algorithms = {name.encode(): HASHES[name.encode()] for name in config.algorithms}
        self.credentials = {user.encode(): (secret.encode(), who) for user, (secret, who) in directory.hmac.items()}
        self.keyed: Memo[tuple[bytes, str], hmac.HMAC] = Memo(1024)
        realm = f'hmac realm="{config.realm}"' if config.realm is not None else "hmac"
        self.unauthorized = Rejection(401, "Unauthorized", realm)
        self.no_date = Rejection(401, "HMAC signature cannot be verified, a valid date or x-date header is required "
                                      "for HMAC Authentication", realm)
        self.unverified = Rejection(401, "HMAC signature cannot be verified", realm)
        self.mismatch = Rejection(401, "HMAC signature does not match", realm)

    def _fresh(self, headers: list[tuple[bytes, bytes]]) -> bool:
        now = int(self.now())
        for name in (b"x-date", b"date"):
            value = header_value(headers, name)
            if value is not None:
                dates = self.dates
                when = dates[value] if value in dates else dates.keep(value, parse_http_time(value))
                if when is not None and abs(now - when) <= self.skew:
                    return True
        return False

    def authenticate(self, ex: Any) -> Identity | Rejection:
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
                remove_header(ex, b"authorization")
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
        if keyed is None:
            keyed = self.keyed.keep(key, hmac.new(secret, digestmod=digest))
        mac = keyed.copy()
        mac.update(reference_signing_string(req, given.headers, ex.request_uri()))
        expected = mac.digest()
        if hmac.compare_digest(given.signature.partition(b"=")[0], b2a_base64(expected, newline=False).rstrip(b"=")):
            return who
        signature = decode_base64(given.signature)
        if signature is None or not hmac.compare_digest(expected, signature):
            return self.mismatch
        return who

    async def check_body(self, ex: Any, found: Identity) -> Identity | Rejection:
        body, whole = await ex.read_body(handler.BODY_LIMIT)
        if not whole:
            return self.mismatch
        given = header_value(ex.request.headers, b"digest")
        if given is None:
            return found if not body else self.mismatch
        return found if hmac.compare_digest(given, body_digest(body)) else self.mismatch


def reference_signing_string(request: Any, names: list[bytes], target: bytes) -> bytes:
    """The signing string as the handler made it before it was compiled."""
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


class FakeExchange:
    """What the policy uses of an Exchange: the request, its state, the body it reads and what it answers."""

    request_uri = Exchange.request_uri

    def __init__(self, request: Request, state: dict | None, body: bytes, whole: bool) -> None:
        self.request = request
        self.state = state
        self.consumer: Identity | None = None
        self.body = (body, whole)
        self.sent: list[tuple] = []

    async def read_body(self, limit: int) -> tuple[bytes, bool]:
        return self.body

    async def respond_error(self, status: int, message: str | None = None, extra: Any = None) -> None:
        self.sent.append((status, message, extra))

    async def respond(self, status: int, body: bytes, content_type: bytes = b"", extra: Any = None) -> None:
        self.sent.append((status, body, content_type, extra))


def exchange(spec: dict) -> FakeExchange:
    request = Request(spec["method"], spec["target"], list(spec["headers"]), spec["version"], True)
    return FakeExchange(request, {REQUEST_URI: spec["sent_target"]} if spec["sent_target"] else None, *spec["body"])


def verdict(policy: AuthPolicy, spec: dict) -> tuple:
    """What `policy.authenticate` says of the request (even when `anonymous` would hide it): who, or the rejection."""
    with mock.patch.object(handler, "clock", lambda: NOW):
        found = policy.authenticate(exchange(spec))
    if isinstance(found, Identity):
        return found.id, found.credential_id
    return found.status, found.message, found.extra


def outcome(policy: AuthPolicy, spec: dict) -> tuple:
    """What `policy` does with the request `spec` describes: whether it answered, what, the consumer it set, and
    the request that goes upstream."""
    ex = exchange(spec)
    with mock.patch.object(handler, "clock", lambda: NOW):
        answered = run_without_waiting(policy.access(ex))
    consumer = None if ex.consumer is None else (ex.consumer.id, ex.consumer.credential_id, ex.consumer.anonymous,
                                                 ex.consumer.upstream_headers)
    return answered, ex.sent, consumer, ex.request.method, ex.request.target, ex.request.headers


# --- what the generated requests are made of ---------------------------------------------------------------------

NAMES = [b"date", b"Date", b"x-date", b"request-line", b"@request-target", b"X_Custom", b"x-custom", b"digest",
         b"authorization", b"proxy-authorization", b"content-md5", b""]
GARBAGE = [b"asd", b"Basic Ym9iOnNlY3JldA==", b'hmac username="bob"', b"hmac username=\"bob\", algorithm=\"x\"",
           b'hmac username="", algorithm="hmac-sha1", headers="date", signature="x"']
# Seconds from now of a Date or X-Date (mostly 0, so that most requests reach the signature)
DATE_OFFSETS = [None, -301, -300, -2, 0, 0, 0, 0, 0, 2, 300, 301, "garbage"]


def date_of(offset: int | str | None) -> bytes | None:
    if offset is None:
        return None
    if offset == "garbage":
        return b"yesterday"
    return formatdate(int(NOW) + int(offset), usegmt=True).encode()


def spelled(mac: bytes, how: str) -> bytes:
    """A signature of `mac` as a client may write it (or get it wrong)."""
    canonical = base64.b64encode(mac)
    if how == "canonical":
        return canonical
    if how == "unpadded":
        return canonical.rstrip(b"=")
    if how == "trailing":
        return canonical.rstrip(b"=") + b"=junk"
    if how == "bits":  # bits past the last byte set: nginx's decoder reads the same bytes
        text = canonical.rstrip(b"=")
        return text[:-1] + bytes([text[-1] + 1]) if text[-1:] in b"AQgw" else text
    if how == "wrong":
        return base64.b64encode(bytes([mac[0] ^ 1]) + mac[1:])
    return b"!not base64!"


configs = st.fixed_dictionaries({
    "hide_credentials": st.booleans(),
    "clock_skew": st.sampled_from([0.5, 1.0, 300.0, 300.0]),
    "anonymous": st.sampled_from([None, None, None, ANON_ID]),
    "validate_request_body": st.booleans(),
    "enforce_headers": st.one_of(st.just([]), st.lists(
        st.sampled_from(["date", "x-date", "request-line", "@request-target", "X_Custom"]), max_size=2)),
    "algorithms": st.one_of(st.just(list(ALGORITHMS)), st.lists(st.sampled_from(ALGORITHMS), min_size=1,
                                                                 max_size=4, unique=True)),
    "realm": st.sampled_from([None, "test-realm"]),
})


@st.composite
def requests(draw: Any, hide: bool, previous: dict | None) -> dict:
    """One request: its head, body, and credentials (made for it, garbage, absent, or the previous request's)."""
    headers: list[tuple[bytes, bytes]] = [(b"host", b"gw.test")]
    for name in (b"date", b"x-date"):
        value = date_of(draw(st.sampled_from(DATE_OFFSETS)))
        if value is not None:
            headers.append((name, value))
    if draw(st.booleans()):
        headers.append((b"x-custom", draw(st.sampled_from([b"v", b"", b"a b"]))))
    body = draw(st.sampled_from([b"", b'{"a":1}']))
    digest = draw(st.sampled_from(["right", "wrong", "empty", None]))
    if digest is not None:
        headers.append((b"digest", body_digest(body) if digest == "right" else
                        body_digest(b"") if digest == "empty" else b"SHA-256=nope"))
    if draw(st.booleans()):  # a repeated header: the first value counts
        headers.append((draw(st.sampled_from([b"date", b"x-custom", b"digest"])), b"second"))
    spec = {"method": draw(st.sampled_from([b"GET", b"POST", b"OPTIONS"])),
            "target": draw(st.sampled_from([b"/p", b"/p?q=1&r", b"/a%20b?"])),
            "sent_target": draw(st.sampled_from([None, b"/p?apikey=k"])),
            "version": draw(st.sampled_from([b"1.1", b"1.0"])),
            "body": (body, draw(st.sampled_from([True, True, False])))}
    if previous is not None and draw(st.booleans()):
        credentials = previous["credentials"]
    else:
        slot = draw(st.sampled_from([b"authorization", b"proxy-authorization"]))
        other = draw(st.sampled_from([None, None, None, *GARBAGE]))
        credentials = {slot: b"PLACEHOLDER"}
        if other is not None:
            credentials[b"proxy-authorization" if slot == b"authorization" else b"authorization"] = other
        if draw(st.integers(0, 7)) == 0:
            credentials[slot] = draw(st.sampled_from(GARBAGE))
        else:
            username = draw(st.sampled_from([b"bob", b"bob", b"long", b"block", b"nobody"]))
            algorithm = draw(st.sampled_from([*HASHES, *HASHES, b"hmac-md5"]))
            names = draw(st.lists(st.sampled_from([*NAMES, slot, slot]), min_size=1, max_size=4))
            how = draw(st.sampled_from(["canonical"] * 4 + ["unpadded", "trailing", "bits", "wrong", "garbage"]))
            spacing = draw(st.sampled_from([b", ", b",", b",  "]))
            start = draw(st.sampled_from([b"hmac ", b"Hmac", b"  hmac  "]))

            def value_of(signature: bytes) -> bytes:
                return (start + b'username="' + username + b'"' + spacing + b'algorithm="' + algorithm + b'"' + spacing
                        + b'headers="' + b" ".join(names) + b'"' + spacing + b'signature="' + signature + b'"')

            credentials[slot] = value_of(b"PLACEHOLDER")
            # What the policy signs: the headers once hide_credentials removed the one it read (which, when signed,
            # still holds the placeholder here: such a signature cannot match)
            seen = [*headers, *credentials.items()]
            if hide:
                read = b"proxy-authorization" if parse_signature(credentials.get(b"proxy-authorization")) \
                    else b"authorization"
                seen = [(n, v) for n, v in seen if n != read]
            request = Request(spec["method"], spec["target"], seen, spec["version"], True)
            signing = reference_signing_string(request, names, spec["sent_target"] or spec["target"])
            secret = SECRETS.get(username, b"unknown")
            mac = hmac.new(secret, signing, HASHES.get(algorithm, "sha256")).digest()
            credentials[slot] = value_of(spelled(mac, how))
    spec["credentials"] = credentials
    order = draw(st.permutations([*headers, *credentials.items()]))
    spec["headers"] = [(b"host", b"gw.test"), *(hv for hv in order if hv[0] != b"host")]
    return spec


@st.composite
def timelines(draw: Any) -> tuple[dict, list[dict]]:
    config = draw(configs)
    specs: list[dict] = []
    for _ in range(draw(st.integers(1, 4))):
        specs.append(draw(requests(config["hide_credentials"], specs[-1] if specs else None)))
    return config, specs


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(timeline=timelines())
def test_every_request_gets_the_answer_consumer_and_upstream_request_the_previous_code_gave(timeline):
    fields, specs = timeline
    config = HmacAuthConfig(**fields)
    compiled, reference = HmacAuth(config, DIRECTORY), Reference(config, DIRECTORY, lambda: NOW)
    for spec in specs:
        assert verdict(compiled, spec) == verdict(reference, spec), spec
        assert outcome(compiled, spec) == outcome(reference, spec), spec  # (from what the first left remembered)


@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha384", "sha512"])
@pytest.mark.parametrize("secret", [b"", b"k", b"b" * 64, b"c" * 128, b"d" * 129, b"e" * 300])
def test_the_keyed_hmac_is_rfc_2104s(digest, secret):
    keyed = Keyed(secret, digest)
    for message in (b"", b"date: x\nGET / HTTP/1.1", b"m" * 1000):
        assert keyed.mac(message) == hmac.digest(secret, message, digest)


def signed_by_bob(date: bytes) -> dict:
    """A GET whose Authorization signs `date: <date>` with bob's secret."""
    signature = base64.b64encode(hmac.digest(b"secret", b"date: " + date, "sha1"))
    authorization = b'hmac username="bob", algorithm="hmac-sha1", headers="date", signature="' + signature + b'"'
    return {"method": b"GET", "target": b"/", "sent_target": None, "version": b"1.1", "body": (b"", True),
            "headers": [(b"date", date), (b"authorization", authorization)]}


def test_a_remembered_header_with_another_date_is_checked_again():
    """The same credentials header, valid with one Date, does not pass with another (a replay with a fresh Date)."""
    policy = HmacAuth(HmacAuthConfig(clock_skew=300), DIRECTORY)
    valid = signed_by_bob(formatdate(NOW, usegmt=True).encode())
    replayed = {**valid, "headers": [(b"date", formatdate(NOW + 1, usegmt=True).encode()), valid["headers"][1]]}
    bob = DIRECTORY.hmac["bob"][1]
    assert outcome(policy, valid)[:3] == (False, [], (bob.id, bob.credential_id, False, bob.upstream_headers))
    assert outcome(policy, replayed)[:2] == (True, [(401, "HMAC signature does not match",
                                                     [(b"www-authenticate", b"hmac")])])
    assert outcome(policy, valid)[0] is False


def test_a_remembered_valid_header_out_of_the_clock_skew_is_refused():
    """What a header was remembered to say never outlives its Date: the skew is checked against the clock each time."""
    policy = HmacAuth(HmacAuthConfig(clock_skew=300), DIRECTORY)
    spec = signed_by_bob(formatdate(NOW, usegmt=True).encode())
    assert outcome(policy, spec)[0] is False
    ex = FakeExchange(Request(b"GET", b"/", list(spec["headers"]), b"1.1", True), None, b"", True)
    with mock.patch.object(handler, "clock", lambda: NOW + 301):
        assert policy.authenticate(ex) is policy.no_date
