"""Gateway session ids (sans-I/O): the upstream's `Mcp-Session-Id` and its target, sealed with an HMAC.

The gateway hands the client its own session id instead of the upstream's. The id carries the target that created
the session ("host:port") and the upstream's own id, authenticated with HMAC-SHA256, so any worker process, and the
gateway after a restart, can route a request to its session's target without a shared store. The mac also covers
the name of the Kong upstream the target belongs to, so that an id opens only on routes to that upstream: two
upstreams may list a target at one address (one ingress, told apart by host_header), each a server of its own. A
session created by an authenticated request is bound to its caller: the id also carries a digest of the caller's
identity.

    <key id> "." base64url( version(1) | len(target)(1) | target | [subject(16)] | upstream id | mac(16) )

- Version 1 has no subject (a session created unauthenticated, or sealed before subjects were); version 2 has one.
  Versions 3 and 4 are 1 and 2 with a two-byte (big-endian) target length, for a target past 255 bytes (a named
  target's `name:port@address`, the name up to DNS's 253 bytes).
- The subject is HMAC-SHA256(key, "mcp-gw-subject\\0" | identity) truncated to 128 bits, keyed so that a holder of
  the id cannot test guesses of whose it is; the key is the one the id's key id names, as for the mac.
- The key id names the key that signed; verification uses that key. The first configured key signs, every key
  verifies, so a key is rotated by putting a new one first and keeping the old one until its sessions are gone.
- The mac is HMAC-SHA256(key, "mcp-gw-session\\0" | key id | "\\0" | payload) truncated to 128 bits for a service's
  own host:port (which the target names whole), and HMAC-SHA256(key, "mcp-gw-upstream-session\\0" | upstream |
  "\\0" | key id | "\\0" | payload) for a target of the Kong upstream named `upstream` (a host name: no NUL). The
  upstream is not in the id, which stays as short: an id of another upstream, or one sealed for an upstream before
  the mac covered it, fails the mac and gets the 404 of an unknown session.
- Every character is visible ASCII (the spec's rule for session ids); ids are at most MAX_ID bytes.
- The upstream id is authenticated, not hidden: the client could have seen it anyway without the gateway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence

from gateway.memo import Memo

VERSION = 1  # no subject
BOUND_VERSION = 2  # with the subject of the caller that created the session
LONG_VERSION = 3  # VERSION with a two-byte target length: a named target's `name:port@address` may pass 255 bytes
LONG_BOUND_VERSION = 4  # BOUND_VERSION likewise
MAX_TARGET = 320  # bytes of a target: a 253-byte DNS name, ":65535", "@" and "[v6]:port" (307); MAX_ID holds it
MAC_BYTES = 16
SUBJECT_BYTES = 16
MAX_UPSTREAM_ID = 4096  # a JWT's worth (the spec's example of an id); the spec sets no bound
MAX_ID = 6144  # longer incoming ids are refused without decoding (a sealed MAX_UPSTREAM_ID is at most 5,880)
MIN_SECRET_BYTES = 16
_DOMAIN = b"mcp-gw-session\x00"
_UPSTREAM_DOMAIN = b"mcp-gw-upstream-session\x00"
_SUBJECT_DOMAIN = b"mcp-gw-subject\x00"
_KEY_ID = re.compile(rb"^[A-Za-z0-9_-]{1,32}$")
OPENED_CACHE = 4096  # ids verified lately, per codec (a client sends its session's id with every call)

Opened = tuple[str, bytes, bytes | None]  # target, upstream id, subject digest (None: the session is not bound)
NO_UPSTREAM = b""  # the upstream of a service's own host:port (gateway.mcp.affinity): the target alone names it


class SessionCodec:
    """Seals and opens gateway session ids with a list of (key id, secret); the first key signs."""

    __slots__ = ("_signer", "_keys", "_opened", "_subjects")

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("at least one session key is needed")
        table: dict[bytes, bytes] = {}
        for kid, secret in keys:
            kid_b = kid.encode()
            if not _KEY_ID.match(kid_b):
                raise ValueError(f"session key id {kid!r}: use 1-32 of A-Z a-z 0-9 _ -")
            if len(secret) < MIN_SECRET_BYTES:
                raise ValueError(f"session key {kid!r}: the secret must be at least {MIN_SECRET_BYTES} bytes")
            if kid_b in table:
                raise ValueError(f"session key id {kid!r} is used twice")
            table[kid_b] = secret
        self._keys = table
        first = keys[0][0].encode()
        self._signer = (first, table[first])
        self._opened: Memo[bytes, tuple[bytes, Opened]] = Memo(OPENED_CACHE)  # id -> (upstream, what it opened to)
        self._subjects: Memo[tuple[bytes, bytes], bytes] = Memo(OPENED_CACHE)  # (key id, identity) -> subject

    @property
    def key_ids(self) -> list[str]:
        return [k.decode() for k in self._keys]

    def encode(self, target: str, upstream_id: bytes, identity: bytes | None = None,
               upstream: bytes = NO_UPSTREAM) -> bytes:
        """The gateway's id for the session `upstream_id` created by `target` ("host:port") of the Kong upstream
        named `upstream`, bound to `identity` (the caller's, gateway.mcp.affinity.caller_identity) unless None."""
        t = target.encode()
        if not 0 < len(t) <= MAX_TARGET:
            raise ValueError(f"target name must be 1-{MAX_TARGET} bytes")
        if len(upstream_id) > MAX_UPSTREAM_ID:
            raise ValueError(f"upstream session id longer than {MAX_UPSTREAM_ID} bytes")
        kid, secret = self._signer
        bound = identity is not None
        if len(t) < 256:
            head = bytes((BOUND_VERSION if bound else VERSION, len(t)))
        else:
            head = bytes((LONG_BOUND_VERSION if bound else LONG_VERSION,)) + len(t).to_bytes(2, "big")
        payload = head + t + (self._subject(kid, secret, identity) if identity is not None else b"") + upstream_id
        mac = _mac(secret, kid, upstream, payload)
        return kid + b"." + base64.urlsafe_b64encode(payload + mac).rstrip(b"=")

    def decode(self, session_id: bytes, upstream: bytes = NO_UPSTREAM) -> Opened | None:
        """(target, upstream id, subject: None when unbound) of a gateway session id sealed for the Kong upstream
        named `upstream`, or None when it is malformed, forged, another upstream's, or signed by a key that is no
        longer configured. An id verified lately is looked up, not verified again: the HMAC and base64 work is done
        once per session, not per call (only valid ids are kept, so forged ones cannot fill it). The subject is the
        caller's business (same_subject), checked on every call."""
        known = self._opened.get(session_id)
        if known is not None:
            return known[1] if known[0] == upstream else None
        opened = self._open(session_id, upstream)
        if opened is not None:
            self._opened.keep(session_id, (upstream, opened))
        return opened

    def same_subject(self, session_id: bytes, subject: bytes, identity: bytes) -> bool:
        """Whether `subject`, what this codec decoded from `session_id`, is the digest of `identity` (under the key
        that sealed the id: compared on every request, as a cached decoding says nothing of the caller)."""
        kid = session_id.partition(b".")[0]
        secret = self._keys.get(kid)
        return secret is not None and hmac.compare_digest(subject, self._subject(kid, secret, identity))

    def _subject(self, kid: bytes, secret: bytes, identity: bytes) -> bytes:
        """The subject of `identity` under key `kid`, made once per caller and key (a session's every call and
        every answer that carries its id need it)."""
        subject = self._subjects.get((kid, identity))
        if subject is None:
            subject = self._subjects.keep((kid, identity), _subject(secret, identity))
        return subject

    def _open(self, session_id: bytes, upstream: bytes) -> Opened | None:
        if len(session_id) > MAX_ID:
            return None
        kid, dot, body = session_id.partition(b".")
        if not dot:
            return None
        secret = self._keys.get(kid)
        if secret is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) < 2 + MAC_BYTES or base64.urlsafe_b64encode(raw).rstrip(b"=") != body:
            return None  # too short, or not the one canonical spelling (so no two ids name one session)
        payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not hmac.compare_digest(mac, _mac(secret, kid, upstream, payload)):
            return None
        version = payload[0]
        if version == VERSION or version == BOUND_VERSION:
            at, tlen = 2, payload[1]
        elif (version == LONG_VERSION or version == LONG_BOUND_VERSION) and len(payload) >= 3:
            at, tlen = 3, int.from_bytes(payload[1:3], "big")
        else:
            return None
        end = at + tlen  # of the target
        start = end if version == VERSION or version == LONG_VERSION else end + SUBJECT_BYTES  # of the upstream id
        if tlen == 0 or len(payload) < start:
            return None
        try:
            target = payload[at:end].decode()
        except UnicodeDecodeError:
            return None
        return target, payload[start:], payload[end:start] if start > end else None


def _mac(secret: bytes, kid: bytes, upstream: bytes, payload: bytes) -> bytes:
    head = _UPSTREAM_DOMAIN + upstream + b"\x00" + kid if upstream else _DOMAIN + kid
    return hmac.new(secret, head + b"\x00" + payload, hashlib.sha256).digest()[:MAC_BYTES]


def _subject(secret: bytes, identity: bytes) -> bytes:
    return hmac.digest(secret, _SUBJECT_DOMAIN + identity, "sha256")[:SUBJECT_BYTES]


def valid_header_value(value: bytes) -> bool:
    """An upstream session id we can carry: visible ASCII only (0x21-0x7E), as the spec requires."""
    return 0 < len(value) <= MAX_UPSTREAM_ID and all(0x21 <= b <= 0x7E for b in value)
