"""DNS messages, sans-I/O: a query to send (`build_query`) and the parsed reply to it (`parse_response`).

The model is lua-resty-dns (lib/resty/dns/resolver.lua), the wire client of Kong's DNS client: one question, the
recursion-desired flag, no EDNS; from a reply the A, AAAA, SRV and CNAME records of the answer and additional
sections (Kong asks with `additional_section = true`), each with its owner name and TTL (0 for one with its top
bit set, as RFC 2181 8 says); other types and classes are skipped. Unlike lua-resty-dns, the reply's question must
be the one asked (a spoofed or stray reply is refused), and every length, offset and compression pointer is
checked: whatever the bytes, the outcome is a Reply or a DnsFormatError (DnsMismatchError when the reply is well
formed but answers another query).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
TYPE_SRV = 33
CLASS_IN = 1

TYPE_NAMES = {TYPE_A: "A", TYPE_CNAME: "CNAME", TYPE_AAAA: "AAAA", TYPE_SRV: "SRV"}

# rcode -> lua-resty-dns's text for it (resolver_errstrs)
RCODE_TEXT = {1: "format error", 2: "server failure", 3: "name error", 4: "not implemented", 5: "refused"}

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_MAX_NAME = 255  # octets on the wire, length octets and the root included (RFC 1035 2.3.4)
_MAX_LABEL = 63
_MAX_POINTERS = 64

FLAG_QR = 0x8000
FLAG_TC = 0x0200
FLAG_RD = 0x0100


class DnsFormatError(ValueError):
    """A DNS message that cannot be built or parsed: truncated, malformed, or not the reply to our query."""


class DnsMismatchError(DnsFormatError):
    """A well-formed reply to another query (its id or question differs): a resolver ignores it and keeps waiting."""


@dataclass(frozen=True)
class Record:
    """One resource record: A/AAAA carry `address`, CNAME `cname`, SRV `priority`, `weight`, `port` and `target`.

    Addresses are plain (an IPv6 one without brackets), ready for a socket."""

    name: str
    type: int
    ttl: float
    address: str = ""
    cname: str = ""
    priority: int = 0
    weight: int = 0
    port: int = 0
    target: str = ""


@dataclass
class Reply:
    """A parsed reply: its rcode, whether it was truncated (TC: ask again over TCP, its records are not parsed),
    and the supported records of its answer and additional sections."""

    id: int
    rcode: int
    truncated: bool
    answers: list[Record] = field(default_factory=list)
    additional: list[Record] = field(default_factory=list)


def encode_name(name: str) -> bytes:
    """A domain name in wire format (a trailing dot is optional); DnsFormatError for an empty label, a label over
    63 octets, a name over 255 or a name that is not ASCII."""
    text = name[:-1] if name.endswith(".") else name
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise DnsFormatError(f"DNS name {name!r} is not ASCII") from None
    out = bytearray()
    if raw:
        for label in raw.split(b"."):
            if not label:
                raise DnsFormatError(f"DNS name {name!r} has an empty label")
            if len(label) > _MAX_LABEL:
                raise DnsFormatError(f"DNS name {name!r} has a label of {len(label)} octets (at most 63)")
            out.append(len(label))
            out += label
    out.append(0)
    if len(out) > _MAX_NAME:
        raise DnsFormatError(f"DNS name {name!r} is {len(out)} octets long (at most 255)")
    return bytes(out)


def build_query(qid: int, name: str, qtype: int) -> bytes:
    """A standard query for `name`/`qtype` (class IN) with id `qid` and recursion desired."""
    if not 0 <= qid <= 0xFFFF:
        raise DnsFormatError(f"DNS query id {qid} is not a 16-bit number")
    if not 0 <= qtype <= 0xFFFF:
        raise DnsFormatError(f"DNS query type {qtype} is not a 16-bit number")
    return _HEADER.pack(qid, FLAG_RD, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


def decode_name(data: bytes, pos: int) -> tuple[str, int]:
    """(the name at `pos`, lower-cased and without a trailing dot; the offset just after it in the message).

    Compression pointers must point before the part of the name read so far, so a name can never loop."""
    labels: list[str] = []
    wire_len = 1  # the root label
    end: int | None = None
    floor = pos  # a pointer must land before this: every jump goes strictly backwards
    pointers = 0
    while True:
        if pos >= len(data):
            raise DnsFormatError(f"DNS name at offset {pos} runs past the end of the message ({len(data)} bytes)")
        length = data[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(data):
                raise DnsFormatError(f"DNS compression pointer at offset {pos} is cut off by the end of the message")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= floor:
                raise DnsFormatError(
                    f"DNS compression pointer at offset {pos} points forward or into itself (to {target}): a loop")
            pointers += 1
            if pointers > _MAX_POINTERS:
                raise DnsFormatError(f"DNS name at offset {pos} follows more than {_MAX_POINTERS} pointers")
            if end is None:
                end = pos + 2
            pos = floor = target
            continue
        if kind:
            raise DnsFormatError(f"DNS label at offset {pos} has the unsupported type bits {kind >> 6:#x}")
        if length == 0:
            break
        if pos + 1 + length > len(data):
            raise DnsFormatError(f"DNS label at offset {pos} runs past the end of the message ({len(data)} bytes)")
        wire_len += length + 1
        if wire_len > _MAX_NAME:
            raise DnsFormatError(f"DNS name at offset {pos} is longer than 255 octets")
        labels.append(data[pos + 1:pos + 1 + length].decode("latin-1").lower())
        pos += 1 + length
    return ".".join(labels), (pos + 1 if end is None else end)


def _record(data: bytes, pos: int, section: str) -> tuple[Record | None, int]:
    """The record at `pos` (None when its type or class is not one we use) and the offset after it."""
    name, pos = decode_name(data, pos)
    if pos + _RR_FIXED.size > len(data):
        raise DnsFormatError(f"DNS {section} record {name!r} is cut off by the end of the message")
    rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
    if ttl & 0x80000000:
        ttl = 0  # RFC 2181 8 (lua-resty-dns reads it negative, and Kong's cache then drops the answer)
    start = pos + _RR_FIXED.size
    stop = start + rdlength
    if stop > len(data):
        raise DnsFormatError(
            f"DNS {section} record {name!r}: its data ({rdlength} bytes at offset {start}) runs past the end of "
            f"the message ({len(data)} bytes)")
    if rclass != CLASS_IN or rtype not in TYPE_NAMES:
        return None, stop
    what = f"DNS {TYPE_NAMES[rtype]} record {name!r}"
    if rtype == TYPE_A:
        if rdlength != 4:
            raise DnsFormatError(f"{what} has {rdlength} bytes of address (4 expected)")
        return Record(name, rtype, ttl, address=".".join(str(b) for b in data[start:stop])), stop
    if rtype == TYPE_AAAA:
        if rdlength != 16:
            raise DnsFormatError(f"{what} has {rdlength} bytes of address (16 expected)")
        return Record(name, rtype, ttl, address=str(ipaddress.IPv6Address(data[start:stop]))), stop
    if rtype == TYPE_CNAME:
        cname, after = decode_name(data, start)
        if after != stop:
            raise DnsFormatError(f"{what}: its name does not fill its {rdlength} bytes of data")
        return Record(name, rtype, ttl, cname=cname), stop
    if rdlength < 7:
        raise DnsFormatError(f"{what} has {rdlength} bytes of data (at least 7 expected)")
    priority, weight, port = struct.unpack_from("!HHH", data, start)
    target, after = decode_name(data, start + 6)
    if after != stop:
        raise DnsFormatError(f"{what}: its target does not fill its {rdlength} bytes of data")
    return Record(name, rtype, ttl, priority=priority, weight=weight, port=port, target=target), stop


def parse_response(data: bytes, qid: int, name: str, qtype: int) -> Reply:
    """The reply to query `qid` for `name`/`qtype`; DnsMismatchError when it answers another query, DnsFormatError
    when it is malformed."""
    if len(data) < _HEADER.size:
        raise DnsFormatError(f"DNS reply of {len(data)} bytes is shorter than a header (12)")
    rid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data, 0)
    if rid != qid:
        raise DnsMismatchError(f"DNS reply id {rid} does not match the query id {qid}")
    if not flags & FLAG_QR:
        raise DnsFormatError("DNS message is a query, not a reply (QR flag clear)")
    if qdcount != 1:
        raise DnsFormatError(f"DNS reply has {qdcount} questions (1 expected)")
    qname, pos = decode_name(data, _HEADER.size)
    if pos + 4 > len(data):
        raise DnsFormatError("DNS reply's question is cut off by the end of the message")
    rtype, rclass = struct.unpack_from("!HH", data, pos)
    pos += 4
    asked = (name[:-1] if name.endswith(".") else name).lower()
    if (qname, rtype, rclass) != (asked, qtype, CLASS_IN):
        raise DnsMismatchError(
            f"DNS reply is for {qname!r} type {rtype} class {rclass}, not the question asked ({asked!r} type "
            f"{qtype} class {CLASS_IN})")
    reply = Reply(id=rid, rcode=flags & 0xF, truncated=bool(flags & FLAG_TC))
    if reply.truncated:
        return reply
    for section, count, into in (("answer", ancount, reply.answers), ("authority", nscount, None),
                                 ("additional", arcount, reply.additional)):
        for _ in range(count):
            record, pos = _record(data, pos, section)
            if record is not None and into is not None:
                into.append(record)
    return reply
