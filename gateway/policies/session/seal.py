"""The session cookie's sealing, sans-I/O: lua-resty-session 4.0's format and keys (what Kong 3.x's session plugin
stores with `storage: cookie`).

A cookie value is base64url(header) followed by base64url(ciphertext), no padding. The header (82 bytes):

    type 1 | flags 2 | session id 32 | creation time 5 | rolling offset 4 | data size 3 | tag 16 | idling offset 3
    | mac 16

integers little-endian; `data size` is the length of the encoded ciphertext. The data (JSON, raw-deflated when over
COMPRESSION_THRESHOLD and smaller so) is encrypted with AES-256-GCM, the first 47 header bytes as associated data;
the mac is HMAC-SHA256 (cut to 16 bytes) over the first 66 header bytes. Keys come from ikm = SHA-256(secret):
HKDF-SHA256 (empty salt) expanded with info "encryption:<session id>" (44 bytes: key and IV) and
"authentication:<session id>" (the HMAC key); the remember cookie's encryption key is PBKDF2-HMAC-SHA256 instead
(10000 rounds: resty-session's remember_safety "Medium", Kong's). Every save draws a new random session id, so
every cookie has its own keys and IV.

A value longer than a cookie can hold is split over up to MAX_COOKIES cookies: NAME, NAME2, NAME3, ... (4096 bytes
each, name included).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import zlib
from typing import TYPE_CHECKING

from gateway.memo import Memo

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

COOKIE_TYPE = 1
SID_SIZE = 32
TAG_SIZE = 16
MAC_SIZE = 16
HEADER_TAG_SIZE = 1 + 2 + SID_SIZE + 5 + 4 + 3  # what the tag authenticates (47)
HEADER_TOUCH_SIZE = HEADER_TAG_SIZE + TAG_SIZE  # kept as it is when only the idling offset changes (63)
HEADER_MAC_SIZE = HEADER_TOUCH_SIZE + 3  # what the mac covers (66)
HEADER_SIZE = HEADER_MAC_SIZE + MAC_SIZE  # 82
HEADER_ENCODED_SIZE = math.ceil(4 * HEADER_SIZE / 3)  # 110

MAX_COOKIE_SIZE = 4096
MAX_COOKIES = 9
MAX_COOKIES_SIZE = MAX_COOKIES * MAX_COOKIE_SIZE
MAX_CREATION_TIME = 2 ** 40 - 1
MAX_ROLLING_OFFSET = 2 ** 32 - 1
MAX_IDLING_OFFSET = 2 ** 24 - 1
MAX_DATA_SIZE = 2 ** 24 - 1
COMPRESSION_THRESHOLD = 1024  # bytes of JSON above which the data is deflated (resty-session's default)
MAX_INFLATED = 1024 * 1024  # bytes a deflated payload may grow to; more is a broken cookie
OPENED_MEMO = 1024  # split values whose opening a plugin remembers (only authentic ones are opened)
REMEMBER_ROUNDS = 10000  # PBKDF2 rounds of the remember cookie's key (remember_safety "Medium")

FLAG_STORAGE = 0x0001
FLAG_FORGET = 0x0002
FLAG_DEFLATE = 0x0010

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes | None:
    """ngx.base64.decode_base64url: the URL-safe alphabet, no padding; None when it is not that."""
    if len(text) % 4 == 1 or not _B64URL.fullmatch(text):
        return None
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encoded_size(size: int) -> int:
    """The length of `size` bytes in unpadded base64."""
    return math.ceil(4 * size / 3)


def cookie_chunks(name_size: int, data_size: int) -> int | None:
    """How many cookies a value of `data_size` encoded bytes needs under a name of `name_size` (None: over the
    limit), as resty-session's calculate_cookie_chunks counts them."""
    needed = name_size + 1 + HEADER_ENCODED_SIZE + data_size
    if needed > MAX_COOKIES_SIZE:
        return None
    if needed <= MAX_COOKIE_SIZE:
        return 1
    for i in range(2, MAX_COOKIES + 1):
        needed += name_size + 2
        if needed > MAX_COOKIES_SIZE:
            return None
        if needed <= MAX_COOKIE_SIZE * i:
            return i
    return None


def first_chunk_size(name_size: int) -> int:
    """Encoded ciphertext bytes in the first cookie of a split value (the header fills the rest)."""
    return MAX_COOKIE_SIZE - HEADER_ENCODED_SIZE - name_size - 1


def next_chunk_size(name_size: int) -> int:
    """Encoded ciphertext bytes in each further cookie (NAME2=...)."""
    return MAX_COOKIE_SIZE - name_size - 2


def pack(value: int, size: int) -> bytes:
    return value.to_bytes(size, "little")


def unpack(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


class Header:
    """The fields of a parsed header, and the header's bytes."""

    __slots__ = ("flags", "sid", "creation_time", "rolling_offset", "data_size", "tag", "idling_offset", "mac", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.flags = unpack(raw[1:3])
        self.sid = raw[3:35]
        self.creation_time = unpack(raw[35:40])
        self.rolling_offset = unpack(raw[40:44])
        self.data_size = unpack(raw[44:47])
        self.tag = raw[47:63]
        self.idling_offset = unpack(raw[63:66])
        self.mac = raw[66:82]

    @classmethod
    def parse(cls, cookie: str) -> Header | None:
        """The header at the start of a cookie value; None when it is not one of ours."""
        raw = b64url_decode(cookie[:HEADER_ENCODED_SIZE])
        if raw is None or len(raw) != HEADER_SIZE or raw[0] != COOKIE_TYPE:
            return None
        return cls(raw)


def start_header(flags: int, sid: bytes, creation_time: int, rolling_offset: int, data_size: int) -> bytes:
    """The header's first HEADER_TAG_SIZE bytes (the associated data of the encryption)."""
    return (pack(COOKIE_TYPE, 1) + pack(flags, 2) + sid + pack(creation_time, 5) + pack(rolling_offset, 4)
            + pack(data_size, 3))


class Keys:
    """The keys of one secret: per session id, its encryption key and IV, and its mac key."""

    __slots__ = ("ikm", "prk", "aead", "invalid", "opened")

    def __init__(self, secret: str) -> None:
        # cryptography (~10 MiB a process) is imported only by a config with a session plugin: here, at its load
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.aead = AESGCM
        self.invalid = InvalidTag
        # What a split value's opening gave, by its bytes (a pure function of them): a browser sends the same
        # cookies until they are saved anew, so it is worked out once, not per request. (A value in one cookie is
        # remembered whole, by lifecycle.Reading.)
        self.opened: Memo[tuple[bytes, bytes, bool], bytes | None] = Memo(OPENED_MEMO)
        self.ikm = hashlib.sha256(secret.encode()).digest()
        self.prk = hmac.digest(b"", self.ikm, "sha256")  # HKDF-Extract, empty salt

    def _expand(self, usage: bytes, sid: bytes, size: int) -> bytes:
        """HKDF-Expand (RFC 5869) with info "usage:sid"."""
        info = usage + b":" + sid
        out = b""
        block = b""
        counter = 1
        while len(out) < size:
            block = hmac.digest(self.prk, block + info + bytes([counter]), "sha256")
            out += block
            counter += 1
        return out[:size]

    def cipher(self, sid: bytes, remember: bool) -> tuple[AESGCM, bytes]:
        """(AES-256-GCM with the session's key, its IV)."""
        if remember:
            material = hashlib.pbkdf2_hmac("sha256", self.ikm, b"encryption:" + sid, REMEMBER_ROUNDS, 44)
        else:
            material = self._expand(b"encryption", sid, 44)
        return self.aead(material[:32]), material[32:44]

    def mac(self, sid: bytes, message: bytes) -> bytes:
        return hmac.digest(self._expand(b"authentication", sid, 32), message, "sha256")[:MAC_SIZE]


def seal(keys: Keys, flags: int, sid: bytes, creation_time: int, rolling_offset: int, plaintext: bytes,
         remember: bool) -> tuple[bytes, str, int]:
    """(header, encoded ciphertext, flags) of a new cookie value; the data deflated when that helps."""
    if len(plaintext) > COMPRESSION_THRESHOLD:
        squeezer = zlib.compressobj(wbits=-15)
        deflated = squeezer.compress(plaintext) + squeezer.flush()
        if len(deflated) < len(plaintext):
            plaintext = deflated
            flags |= FLAG_DEFLATE
    data_size = encoded_size(len(plaintext))
    start = start_header(flags, sid, creation_time, rolling_offset, data_size)
    aead, iv = keys.cipher(sid, remember)
    sealed = aead.encrypt(iv, plaintext, start)
    ciphertext, tag = sealed[:-TAG_SIZE], sealed[-TAG_SIZE:]
    header = start + tag + pack(0, 3)
    return header + keys.mac(sid, header), b64url_encode(ciphertext), flags


def authentic(keys: Keys, header: Header) -> bool:
    return hmac.compare_digest(header.mac, keys.mac(header.sid, header.raw[:HEADER_MAC_SIZE]))


def unseal(keys: Keys, header: Header, ciphertext: bytes, remember: bool) -> bytes | None:
    """`decrypt`, remembered by the header and ciphertext."""
    key = (header.raw, ciphertext, remember)
    if key in keys.opened:
        return keys.opened[key]
    return keys.opened.keep(key, decrypt(keys, header, ciphertext, remember))


def decrypt(keys: Keys, header: Header, ciphertext: bytes, remember: bool) -> bytes | None:
    """The data of an authentic header's ciphertext; None when it does not decrypt (or inflate)."""
    aead, iv = keys.cipher(header.sid, remember)
    try:
        plaintext = aead.decrypt(iv, ciphertext + header.tag, header.raw[:HEADER_TAG_SIZE])
    except keys.invalid:
        return None
    if header.flags & FLAG_DEFLATE:
        inflater = zlib.decompressobj(wbits=-15)
        try:
            plaintext = inflater.decompress(plaintext, MAX_INFLATED)
        except zlib.error:
            return None
        if inflater.unconsumed_tail:
            return None
    return plaintext


def touched(keys: Keys, header: bytes, sid: bytes, idling_offset: int) -> bytes:
    """The header with a new idling offset (and its new mac)."""
    head = header[:HEADER_TOUCH_SIZE] + pack(idling_offset, 3)
    return head + keys.mac(sid, head)
