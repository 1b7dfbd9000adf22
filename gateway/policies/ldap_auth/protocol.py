"""The few LDAPv3 messages ldap-auth exchanges (RFC 4511), in BER, with no I/O: encoders that return the bytes to
write, and a `ResponseDecoder` fed the bytes read (`receive_data`) that hands out whole responses (`next_result`,
None while one is incomplete). Tests drive it with byte strings; gateway.policies.ldap_auth.client moves the bytes.

What is written: BindRequest (version 3, simple authentication), UnbindRequest, and the StartTLS ExtendedRequest.
What is read: the LDAPResult every response starts with (BindResponse, ExtendedResponse): message id, operation,
result code, matched DN, diagnostic message; the rest of a response (referrals, server credentials, the extended
response's name and value, controls) is skipped.

Rules of the decoder:
1. A response is a SEQUENCE (0x30) whose length is read as Kong's calculate_payload_length reads it
   (kong/plugins/ldap-auth/ldap.lua:34-55): the short form; the long form of 1 to 127 length bytes (Active Directory
   writes every length in four); and 0x80, BER's indefinite form, taken as 128 bytes. A response announcing more
   than MAX_RESPONSE_BYTES is ResponseTooLong at once: Kong would wait for bytes that do not come and fail the
   request (a server error), and the gateway never buffers that much.
2. Inside: an INTEGER message id, then an [APPLICATION n] constructed operation holding an ENUMERATED result code
   and two OCTET STRINGs (matched DN, diagnostic message).
3. INTEGER and ENUMERATED are minimal two's complement of 1 to 8 bytes, as OpenSSL's d2i (Kong's decoder) requires.
4. Anything else is a ProtocolError naming what was wrong; the connection is then useless (the decoder keeps
   raising it, or ResponseTooLong).
"""

from __future__ import annotations

from typing import NamedTuple

# operations (the number of their [APPLICATION n] tag)
BIND_REQUEST = 0
BIND_RESPONSE = 1
UNBIND_REQUEST = 2
EXTENDED_REQUEST = 23
EXTENDED_RESPONSE = 24
START_TLS_OID = b"1.3.6.1.4.1.1466.20037"
LDAP_VERSION = 3
MAX_RESPONSE_BYTES = 1 << 20  # a bind or StartTLS answer is tens of bytes; a longer one is never buffered

# result codes (RFC 4511 appendix A), by name for the log
SUCCESS = 0
RESULT_NAMES = {
    0: "success", 1: "operationsError", 2: "protocolError", 3: "timeLimitExceeded", 4: "sizeLimitExceeded",
    7: "authMethodNotSupported", 8: "strongerAuthRequired", 13: "confidentialityRequired", 32: "noSuchObject",
    34: "invalidDNSyntax", 48: "inappropriateAuthentication", 49: "invalidCredentials",
    50: "insufficientAccessRights", 51: "busy", 52: "unavailable", 53: "unwillingToPerform", 80: "other",
}

# BER identifier octets
_INTEGER = 0x02
_OCTET_STRING = 0x04
_ENUMERATED = 0x0A
_SEQUENCE = 0x30
_APPLICATION = 0x40
_CONSTRUCTED = 0x20
_CONTEXT = 0x80
_TAG_NUMBER = 0x1F  # the low five bits; all ones announces a multi-byte tag number, which LDAP's tags never need


class ProtocolError(Exception):
    """Bytes that are not the LDAP response expected."""


class ResponseTooLong(Exception):
    """A response announcing more than MAX_RESPONSE_BYTES: not malformed (Kong would wait for it), but not read."""


class LdapResult(NamedTuple):
    message_id: int
    operation: int  # BIND_RESPONSE, EXTENDED_RESPONSE, ...
    result_code: int
    matched_dn: bytes
    diagnostic_message: bytes

    def describe(self) -> str:
        """`invalidCredentials (49): <diagnostic>` for the log."""
        name = RESULT_NAMES.get(self.result_code, "result")
        text = f"{name} ({self.result_code})"
        return f"{text}: {self.diagnostic_message.decode('utf-8', 'replace')}" if self.diagnostic_message else text


# ---- encoding ---------------------------------------------------------------------------------------------------


def encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(identifier: int, content: bytes) -> bytes:
    return bytes([identifier]) + encode_length(len(content)) + content


def encode_integer(value: int, identifier: int = _INTEGER) -> bytes:
    return tlv(identifier, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _message(message_id: int, operation: bytes) -> bytes:
    return tlv(_SEQUENCE, encode_integer(message_id) + operation)


def bind_request(message_id: int, dn: bytes, password: bytes) -> bytes:
    """BindRequest ::= [APPLICATION 0] SEQUENCE { version 3, name LDAPDN, authentication simple [0] password }"""
    body = encode_integer(LDAP_VERSION) + tlv(_OCTET_STRING, dn) + tlv(_CONTEXT | 0, password)
    return _message(message_id, tlv(_APPLICATION | _CONSTRUCTED | BIND_REQUEST, body))


def unbind_request(message_id: int) -> bytes:
    """UnbindRequest ::= [APPLICATION 2] NULL"""
    return _message(message_id, tlv(_APPLICATION | UNBIND_REQUEST, b""))


def start_tls_request(message_id: int) -> bytes:
    """ExtendedRequest ::= [APPLICATION 23] SEQUENCE { requestName [0] "1.3.6.1.4.1.1466.20037" }"""
    return _message(message_id, tlv(_APPLICATION | _CONSTRUCTED | EXTENDED_REQUEST, tlv(_CONTEXT | 0, START_TLS_OID)))


# ---- decoding ---------------------------------------------------------------------------------------------------


def read_header(data: bytes | bytearray, at: int, end: int) -> tuple[int, int, int] | None:
    """(identifier octet, content length, where the content starts) of the element at `at`; None when `end` comes
    before the header is complete. ProtocolError for a multi-byte tag or an indefinite or oversized length."""
    if at + 2 > end:
        return None
    identifier = data[at]
    if identifier & _TAG_NUMBER == _TAG_NUMBER:
        raise ProtocolError(f"multi-byte tag number (identifier 0x{identifier:02x})")
    first = data[at + 1]
    if first < 0x80:
        return identifier, first, at + 2
    count = first & 0x7F
    if count == 0:
        raise ProtocolError("indefinite length (LDAP allows definite lengths only)")
    if count > 8:
        raise ProtocolError(f"a length of {count} bytes")
    if at + 2 + count > end:
        return None
    return identifier, int.from_bytes(data[at + 2:at + 2 + count], "big"), at + 2 + count


def read_response_header(data: bytes | bytearray) -> tuple[int, int, int] | None:
    """(identifier octet, content length, where the content starts) of the response at the start of `data`, the
    length read as Kong reads it (the module docstring, 1); None while the header is incomplete."""
    if len(data) < 2:
        return None
    first = data[1]
    if first <= 0x80:  # Kong's `elen > 128` test: 0x80 (indefinite in BER) is a length of 128
        return data[0], first, 2
    count = first - 0x80
    if len(data) < 2 + count:
        return None
    return data[0], int.from_bytes(data[2:2 + count], "big"), 2 + count


def _element(data: bytes, at: int, end: int, what: str) -> tuple[int, int, int]:
    """(identifier, content start, content end) of a complete element inside data[at:end]."""
    header = read_header(data, at, end)
    if header is None:
        raise ProtocolError(f"{what}: truncated")
    identifier, length, start = header
    if start + length > end:
        raise ProtocolError(f"{what}: its length ({length}) runs past the end of its container")
    return identifier, start, start + length


def _integer(data: bytes, at: int, end: int, identifier: int, what: str) -> tuple[int, int]:
    """(value, where the next element starts) of an INTEGER or ENUMERATED: minimal two's complement, 1 to 8 bytes."""
    found, start, stop = _element(data, at, end, what)
    if found != identifier:
        kind = "an INTEGER" if identifier == _INTEGER else "an ENUMERATED"
        raise ProtocolError(f"{what} should be {kind}, got identifier 0x{found:02x}")
    raw = data[start:stop]
    if not 1 <= len(raw) <= 8:
        raise ProtocolError(f"{what}: {len(raw)} bytes")
    if len(raw) > 1 and (raw[0] == 0 and raw[1] < 0x80 or raw[0] == 0xFF and raw[1] >= 0x80):
        raise ProtocolError(f"{what}: not minimally encoded")
    return int.from_bytes(raw, "big", signed=True), stop


def _octets(data: bytes, at: int, end: int, what: str) -> tuple[bytes, int]:
    found, start, stop = _element(data, at, end, what)
    if found != _OCTET_STRING:
        raise ProtocolError(f"{what} should be an OCTET STRING, got identifier 0x{found:02x}")
    return data[start:stop], stop


def parse_result(content: bytes) -> LdapResult:
    """The LDAPResult of one response, from the content of its LDAPMessage SEQUENCE."""
    message_id, at = _integer(content, 0, len(content), _INTEGER, "message id")
    identifier, start, stop = _element(content, at, len(content), "protocol operation")
    if identifier & 0xE0 != _APPLICATION | _CONSTRUCTED:
        raise ProtocolError(f"protocol operation: identifier 0x{identifier:02x} is not a constructed [APPLICATION n]")
    code, at = _integer(content, start, stop, _ENUMERATED, "result code")
    matched, at = _octets(content, at, stop, "matched DN")
    diagnostic, _ = _octets(content, at, stop, "diagnostic message")
    return LdapResult(message_id, identifier & _TAG_NUMBER, code, matched, diagnostic)


class ResponseDecoder:
    """Whole responses from a stream of bytes (the rules in the module docstring)."""

    __slots__ = ("_buffer", "_error")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: ProtocolError | ResponseTooLong | None = None

    def receive_data(self, data: bytes | bytearray) -> None:
        self._buffer += data

    @property
    def holds_bytes(self) -> bool:
        """Whether bytes past the responses taken are held (the server wrote more than was asked)."""
        return bool(self._buffer)

    def next_result(self) -> LdapResult | None:
        """The next complete response, or None until more bytes arrive."""
        if self._error is not None:
            raise self._error
        try:
            buffer = self._buffer
            header = read_response_header(buffer)
            if header is None:
                return None
            identifier, length, start = header
            if identifier != _SEQUENCE:
                raise ProtocolError(f"a response should be a SEQUENCE (0x30), got identifier 0x{identifier:02x}")
            if length > MAX_RESPONSE_BYTES:
                raise ResponseTooLong(f"a response of {length} bytes (at most {MAX_RESPONSE_BYTES} are read)")
            if len(buffer) < start + length:
                return None
            content = bytes(buffer[start:start + length])
            del buffer[:start + length]
            return parse_result(content)
        except (ProtocolError, ResponseTooLong) as e:
            self._error = e
            raise
