"""gateway.policies.ldap_auth.protocol without sockets: the requests' bytes, and responses decoded from bytes (Kong's
spec/03-plugins/20-ldap-auth/03-decode_spec.lua cases among them)."""

from __future__ import annotations

import pytest

from gateway.policies.ldap_auth.protocol import (
    BIND_RESPONSE,
    EXTENDED_RESPONSE,
    MAX_RESPONSE_BYTES,
    START_TLS_OID,
    LdapResult,
    ProtocolError,
    ResponseDecoder,
    ResponseTooLong,
    bind_request,
    encode_integer,
    encode_length,
    parse_result,
    start_tls_request,
    unbind_request,
)

BIND_OK = bytes.fromhex("300c02010161070a010004000400")  # message 1, BindResponse, success, "", ""


def decode_all(data: bytes) -> list[LdapResult]:
    decoder = ResponseDecoder()
    decoder.receive_data(data)
    out = []
    while (result := decoder.next_result()) is not None:
        out.append(result)
    return out


# ---- requests --------------------------------------------------------------------------------------------------------


def test_a_bind_request_is_a_version_3_simple_bind():
    assert bind_request(1, b"cn=a", b"pw") == bytes.fromhex("3012020101600d020103040463 6e3d6180027077")


def test_an_unbind_request_is_an_application_2_null():
    assert unbind_request(2) == bytes.fromhex("30050201024200")


def test_a_start_tls_request_names_the_start_tls_oid():
    assert START_TLS_OID == b"1.3.6.1.4.1.1466.20037"
    assert start_tls_request(1) == bytes.fromhex("301d020101771880 16") + START_TLS_OID


def test_a_long_password_gets_long_form_lengths():
    wire = bind_request(5, b"uid=x", b"p" * 300)
    assert wire[:4] == bytes.fromhex("30820141")  # 321 bytes follow
    assert wire.endswith(bytes.fromhex("80820" + "12c") + b"p" * 300)


@pytest.mark.parametrize(("value", "encoded"), [(0, "020100"), (127, "02017f"), (128, "02020080"),
                                                (256, "02020100"), (-1, "0201ff"), (-129, "0202ff7f")])
def test_integers_are_minimal_twos_complement(value, encoded):
    assert encode_integer(value) == bytes.fromhex(encoded)


@pytest.mark.parametrize(("n", "encoded"), [(0, "00"), (127, "7f"), (128, "8180"), (256, "820100")])
def test_lengths_are_short_below_128_and_long_from_it(n, encoded):
    assert encode_length(n) == bytes.fromhex(encoded)


# ---- responses -------------------------------------------------------------------------------------------------------


def test_a_successful_bind_response():
    assert decode_all(BIND_OK) == [LdapResult(1, BIND_RESPONSE, 0, b"", b"")]


def test_a_failed_bind_response_keeps_its_code_and_diagnostic():
    wire = bytes.fromhex("301502010161100a0131040004096e6f2061636365737300")[:-1]  # 49, diagnostic "no access"
    [result] = decode_all(wire)
    assert (result.result_code, result.diagnostic_message) == (49, b"no access")
    assert result.describe() == "invalidCredentials (49): no access"


def test_a_start_tls_response_with_its_name_is_read():
    oid = START_TLS_OID
    op = bytes.fromhex("0a0100 0400 0400") + bytes([0x8A, len(oid)]) + oid
    wire = bytes([0x30, 3 + 2 + len(op)]) + bytes.fromhex("020102") + bytes([0x78, len(op)]) + op
    assert decode_all(wire) == [LdapResult(2, EXTENDED_RESPONSE, 0, b"", b"")]


def test_a_response_is_handed_out_only_once_whole():
    decoder = ResponseDecoder()
    for byte in BIND_OK[:-1]:
        decoder.receive_data(bytes([byte]))
        assert decoder.next_result() is None
    decoder.receive_data(BIND_OK[-1:])
    assert decoder.next_result() == LdapResult(1, BIND_RESPONSE, 0, b"", b"")
    assert decoder.next_result() is None


def test_two_responses_in_one_read_come_out_in_turn():
    assert [r.message_id for r in decode_all(BIND_OK + BIND_OK.replace(b"\x02\x01\x01", b"\x02\x01\x07"))] == [1, 7]


def test_four_byte_lengths_as_active_directory_writes_them():
    wire = bytes.fromhex("308400000010 020101 618400000007 0a0100 0400 0400")
    assert decode_all(wire) == [LdapResult(1, BIND_RESPONSE, 0, b"", b"")]


def test_controls_and_referrals_after_the_result_are_skipped():
    op = bytes.fromhex("0a010a 0400 0400 a3 03 04 01 78")  # referral [3]
    content = bytes.fromhex("020101") + bytes([0x61, len(op)]) + op + bytes.fromhex("a000")  # controls [0]
    assert decode_all(bytes([0x30, len(content)]) + content)[0].result_code == 10


@pytest.mark.parametrize(("hex_content", "why"), [
    ("04010161070a010004000400", "message id should be an INTEGER"),  # Kong: message id should be an integer
    ("02010161090a010004000400", "runs past the end"),  # Kong: der with error encoding (length too long)
    ("020101610704010004000400", "result code should be an ENUMERATED"),
    ("02010161080a01000201010400", "matched DN should be an OCTET STRING"),
    ("02010161080a01000400020101", "diagnostic message should be an OCTET STRING"),
    ("0202000161070a010004000400", "message id: not minimally encoded"),  # Kong: failed to decode ASN1_INTEGER
    ("02010161080a02000104000400", "result code: not minimally encoded"),  # Kong: failed to decode ASN1_ENUMERATED
    ("020101", "protocol operation: truncated"),
    ("0201013107 0a010004000400", "0x31 is not a constructed"),
    ("0200", "message id: 0 bytes"),
], ids=["id-not-integer", "op-too-long", "code-not-enumerated", "dn-not-string", "diagnostic-not-string",
        "id-padded", "code-padded", "no-op", "op-universal", "id-empty"])
def test_malformed_results_are_protocol_errors(hex_content, why):
    with pytest.raises(ProtocolError, match=why):
        parse_result(bytes.fromhex(hex_content))


def test_a_frame_that_is_no_sequence_is_refused():
    decoder = ResponseDecoder()
    decoder.receive_data(bytes.fromhex("310c02010161070a010004000400"))
    with pytest.raises(ProtocolError, match="should be a SEQUENCE"):
        decoder.next_result()


@pytest.mark.parametrize("wire", ["1f", "3080", "3089" + "00" * 8], ids=["one-byte", "indefinite", "length-of-9"])
def test_an_incomplete_frame_waits_for_more_bytes(wire):
    decoder = ResponseDecoder()
    decoder.receive_data(bytes.fromhex(wire))
    assert decoder.next_result() is None


def test_an_indefinite_length_is_read_as_128_bytes_as_kong_reads_it():
    """kong/plugins/ldap-auth/ldap.lua:34-55: only a first length byte over 128 is the long form; 0x80 is 128."""
    content = BIND_OK[2:] + b"\x00" * (128 - len(BIND_OK[2:]))
    decoder = ResponseDecoder()
    decoder.receive_data(b"\x30\x80" + content[:-1])
    assert decoder.next_result() is None
    decoder.receive_data(content[-1:])
    assert decoder.next_result() == LdapResult(1, BIND_RESPONSE, 0, b"", b"")


def test_a_long_form_length_may_take_up_to_127_bytes_as_kong_reads_it():
    """kong/plugins/ldap-auth/ldap.lua:34-55: elen - 128 length bytes, whatever their number."""
    assert decode_all(b"\x30\xff" + b"\x00" * 126 + BIND_OK[1:]) == [LdapResult(1, BIND_RESPONSE, 0, b"", b"")]


def test_an_oversized_response_is_too_long_before_it_is_read():
    """Not a ProtocolError (a refused bind): Kong would wait for the bytes and fail with a server error."""
    decoder = ResponseDecoder()
    decoder.receive_data(b"\x30\x84" + (MAX_RESPONSE_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(ResponseTooLong, match="at most"):
        decoder.next_result()


def test_after_a_protocol_error_the_decoder_keeps_refusing():
    decoder = ResponseDecoder()
    decoder.receive_data(bytes.fromhex("310c02010161070a010004000400"))
    with pytest.raises(ProtocolError):
        decoder.next_result()
    decoder.receive_data(BIND_OK)
    with pytest.raises(ProtocolError, match="should be a SEQUENCE"):
        decoder.next_result()


def test_a_multi_byte_tag_is_refused():
    with pytest.raises(ProtocolError, match="multi-byte tag"):
        parse_result(bytes.fromhex("1f0101"))
