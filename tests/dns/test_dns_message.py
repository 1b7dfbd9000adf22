"""The DNS wire format (gateway/dns/message.py) against bytes built by hand, and replies no parser may trip on.

Follows lua-resty-dns (lib/resty/dns/resolver.lua: _build_request, parse_response), the wire client of Kong's DNS
client (kong/resty/dns/client.lua); unlike it, the reply's question must be the one asked. The reply builders here
(`reply`, `rr`, ...) are also what test_dns_client's scripted DNS server answers with.
"""

from __future__ import annotations

import struct

import pytest
from dns_server import a, aaaa, cname, reply, rr, srv, wire_name

from gateway.dns.message import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    TYPE_SRV,
    DnsFormatError,
    DnsMismatchError,
    Record,
    build_query,
    parse_response,
)

QUESTION_OFFSET = 12  # where the question's name starts: the target of a pointer 0xC00C


# -- queries --------------------------------------------------------------------------------------------------------


def test_query_is_a_header_with_rd_and_one_question() -> None:
    assert build_query(0x1234, "Example.com", TYPE_SRV) == (
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        b"\x07Example\x03com\x00\x00\x21\x00\x01")


def test_query_for_an_fqdn_drops_the_trailing_dot() -> None:
    assert build_query(1, "a.b.", TYPE_A) == build_query(1, "a.b", TYPE_A)


@pytest.mark.parametrize(("name", "message"), [
    ("a" * 64 + ".com", "label of 64 octets (at most 63)"),
    (".".join(["a" * 63] * 4), "is 257 octets long (at most 255)"),
    ("a..b", "has an empty label"),
    ("bücher.de", "is not ASCII"),
])
def test_query_refuses_a_name_dns_cannot_carry(name: str, message: str) -> None:
    with pytest.raises(DnsFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_query(1, name, TYPE_A)


def test_query_refuses_an_id_over_16_bits() -> None:
    with pytest.raises(DnsFormatError, match="not a 16-bit number"):
        build_query(0x10000, "a.b", TYPE_A)


# -- replies --------------------------------------------------------------------------------------------------------


def test_reply_records_of_each_type_with_name_and_ttl() -> None:
    data = reply(7, "svc.test", TYPE_SRV, answers=[
        srv("svc.test", 10, 20, 8080, "Host.Test", ttl=60),
        cname("www.test", "svc.test", ttl=5),
        a("host.test", "10.0.0.1", ttl=30),
        aaaa("host.test", "2001:db8::1", ttl=31),
    ])
    parsed = parse_response(data, 7, "svc.test", TYPE_SRV)
    assert (parsed.id, parsed.rcode, parsed.truncated) == (7, 0, False)
    assert parsed.answers == [
        Record("svc.test", TYPE_SRV, 60, priority=10, weight=20, port=8080, target="host.test"),
        Record("www.test", TYPE_CNAME, 5, cname="svc.test"),
        Record("host.test", TYPE_A, 30, address="10.0.0.1"),
        Record("host.test", TYPE_AAAA, 31, address="2001:db8::1"),
    ]


def test_reply_ttl_with_the_top_bit_set_is_zero() -> None:
    """RFC 2181 8: "a TTL value received with the most significant bit set ... treated as if the entire value
    received was zero"; lua-resty-dns reads such a TTL as a negative number (resolver.lua v0.23:389, LuaJIT's
    signed lshift), which Kong's cache does not keep either (kong/resty/dns/client.lua:270)."""
    data = reply(7, "big.test", TYPE_A, answers=[a("big.test", "10.0.0.1", ttl=0x80000005),
                                                 a("big.test", "10.0.0.2", ttl=0x7FFFFFFF)])
    assert [r.ttl for r in parse_response(data, 7, "big.test", TYPE_A).answers] == [0, 0x7FFFFFFF]


def test_reply_names_through_compression_pointers() -> None:
    pointer = b"\xc0\x0c"  # -> the question's name
    data = reply(1, "host.test", TYPE_A, answers=[a(pointer, "10.0.0.1"), a(b"\x03www" + pointer, "10.0.0.2")])
    names = [r.name for r in parse_response(data, 1, "host.test", TYPE_A).answers]
    assert names == ["host.test", "www.host.test"]


def test_reply_skips_other_types_and_classes_and_the_authority_section() -> None:
    txt = rr("host.test", 16, b"\x05hello")
    chaos = rr("host.test", TYPE_A, b"\x01\x02\x03\x04", rclass=3)
    ns = rr("test", 2, wire_name("ns.test"))
    data = reply(1, "host.test", TYPE_A, answers=[txt, chaos, a("host.test", "10.0.0.1")], authority=[ns],
                 additional=[a("ns.test", "10.0.0.53")])
    parsed = parse_response(data, 1, "host.test", TYPE_A)
    assert [r.address for r in parsed.answers] == ["10.0.0.1"]
    assert parsed.additional == [Record("ns.test", TYPE_A, 300, address="10.0.0.53")]


def test_reply_with_an_error_rcode_has_no_records() -> None:
    parsed = parse_response(reply(9, "gone.test", TYPE_A, rcode=3), 9, "gone.test", TYPE_A)
    assert (parsed.rcode, parsed.answers) == (3, [])


def test_truncated_reply_is_flagged_without_parsing_its_cut_records() -> None:
    data = reply(2, "big.test", TYPE_A, answers=[a("big.test", "10.0.0.1")], tc=True)[:-3]
    parsed = parse_response(data, 2, "big.test", TYPE_A)
    assert parsed.truncated and parsed.answers == []


def test_reply_question_matches_case_insensitively_and_with_an_fqdn() -> None:
    data = reply(3, "HoSt.TeSt", TYPE_A, answers=[a("host.test", "10.0.0.1")])
    assert parse_response(data, 3, "host.test.", TYPE_A).answers[0].address == "10.0.0.1"


# -- replies that must be refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "message"), [
    (reply(8, "host.test", TYPE_A), "reply id 8 does not match the query id 7"),
    (reply(7, "other.test", TYPE_A), "is for 'other.test' type 1 class 1, not the question asked"),
    (reply(7, "host.test", TYPE_AAAA), "type 28 class 1, not the question asked"),
    (reply(7, "host.test", TYPE_A, qclass=3), "class 3, not the question asked"),
])
def test_reply_to_another_query_is_a_mismatch(data: bytes, message: str) -> None:
    with pytest.raises(DnsMismatchError, match=message):
        parse_response(data, 7, "host.test", TYPE_A)


GOOD = reply(7, "host.test", TYPE_A, answers=[a("host.test", "10.0.0.1")])
NAME_END = QUESTION_OFFSET + len(wire_name("host.test"))


def _with_answer(answer: bytes, count: int = 1) -> bytes:
    return reply(7, "host.test", TYPE_A)[:6] + struct.pack("!H", count) + reply(7, "host.test", TYPE_A)[8:] + answer


@pytest.mark.parametrize(("data", "message"), [
    (b"", "shorter than a header"),
    (GOOD[:11], "reply of 11 bytes is shorter than a header"),
    (reply(7, "host.test", TYPE_A, qr=False), "a query, not a reply"),
    (GOOD[:4] + b"\x00\x02" + GOOD[6:], "has 2 questions"),
    (GOOD[:QUESTION_OFFSET + 3], "runs past the end of the message"),
    (GOOD[:NAME_END + 2], "question is cut off"),
    (GOOD[:-2], "its data .* runs past the end"),
    (GOOD[:NAME_END + 4 + len(wire_name("host.test")) + 5], "record 'host.test' is cut off"),
    (_with_answer(a("host.test", "10.0.0.1"), count=2), "runs past the end of the message"),
    (_with_answer(b"\xc0"), "pointer at offset .* is cut off"),
    (_with_answer(b"\xc0\xff" + b"\x00" * 10), "points forward or into itself"),
    (_with_answer(b"\x40abc\x00"), "unsupported type bits"),
    (_with_answer(b"\x80abc\x00"), "unsupported type bits"),
    (_with_answer(rr("host.test", TYPE_A, b"\x01\x02\x03")), "3 bytes of address \\(4 expected\\)"),
    (_with_answer(rr("host.test", TYPE_AAAA, b"\x01" * 4)), "4 bytes of address \\(16 expected\\)"),
    (_with_answer(rr("host.test", TYPE_SRV, b"\x00\x01\x00\x01")), "4 bytes of data \\(at least 7"),
    (_with_answer(rr("host.test", TYPE_SRV, b"\x00\x01\x00\x01\x00\x50" + wire_name("t.test") + b"xx")),
     "target does not fill"),
    (_with_answer(rr("host.test", TYPE_CNAME, b"\x05ab")), "runs past the end"),
])
def test_malformed_reply_is_a_clear_format_error(data: bytes, message: str) -> None:
    with pytest.raises(DnsFormatError, match=message):
        parse_response(data, 7, "host.test", TYPE_A)


def test_pointer_loop_is_refused() -> None:
    # an answer whose name is a pointer to itself, and one whose two pointers point at each other
    head = _with_answer(b"")
    at = len(head)
    for name in (struct.pack("!H", 0xC000 | at),
                 b"\x01x" + struct.pack("!H", 0xC000 | (at + 4)) + struct.pack("!H", 0xC000 | at)):
        with pytest.raises(DnsFormatError, match="points forward or into itself"):
            parse_response(head + name + b"\x00" * 10, 7, "host.test", TYPE_A)


def test_pointer_chain_backwards_cannot_loop() -> None:
    # pointer at P -> a label then a pointer back to the label: each jump must land before the last one
    head = _with_answer(b"")
    at = len(head)
    name = b"\x01x" + struct.pack("!H", 0xC000 | at)  # label "x" at `at`, then a pointer back to `at`
    with pytest.raises(DnsFormatError, match="points forward or into itself"):
        parse_response(head + name + b"\x00" * 10, 7, "host.test", TYPE_A)


def test_name_over_255_octets_through_pointers_is_refused() -> None:
    # a TXT record (skipped) whose data holds 5 labels of 63 bytes chained backwards by pointers, then an A record
    # named by a pointer to the last of them: each label is fine alone, the name is 321 octets
    head = _with_answer(b"", count=2)
    chain = bytearray(b"\x00")  # the root, for the first label to point at
    data_at = len(head) + len(wire_name("t")) + 10
    previous = data_at
    for _ in range(5):
        here = data_at + len(chain)
        chain += b"\x3f" + b"a" * 63 + struct.pack("!H", 0xC000 | previous)
        previous = here
    data = head + rr("t", 16, bytes(chain)) + rr(struct.pack("!H", 0xC000 | previous), TYPE_A, b"\x01\x02\x03\x04")
    with pytest.raises(DnsFormatError, match="longer than 255 octets"):
        parse_response(data, 7, "host.test", TYPE_A)


def test_no_reply_bytes_raise_anything_but_a_format_error() -> None:
    # every prefix and every single-byte corruption of a rich reply: a Reply or a DnsFormatError, nothing else
    data = reply(7, "host.test", TYPE_A, answers=[
        a(b"\xc0\x0c", "10.0.0.1"), cname(b"\xc0\x0c", "x.test"), srv(b"\xc0\x0c", 1, 2, 3, "t.test"),
        aaaa(b"\xc0\x0c", "::1")], additional=[a("t.test", "10.0.0.2")])
    variants = [data[:n] for n in range(len(data))]
    variants += [data[:i] + bytes([b]) + data[i + 1:] for i in range(len(data)) for b in (0x00, 0x3F, 0xC0, 0xFF)]
    for variant in variants:
        try:
            parse_response(variant, 7, "host.test", TYPE_A)
        except DnsFormatError:
            pass
