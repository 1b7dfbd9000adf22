"""JSON as Kong's lua-cjson writes it (gateway.policies.cjson): what the gateway's own JSON answers look like."""

from __future__ import annotations

from gateway.policies.cjson import decode, encode


def test_output_is_compact_with_slashes_escaped():
    assert encode({"message": "a/b", "n": [1, 2]}) == b'{"message":"a\\/b","n":[1,2]}'


def test_control_characters_and_del_are_escaped_as_lua_cjson_escapes_them():
    """lua_cjson.c's char2escape: 0x00-0x1f and 0x7f as \\uXXXX (\\b \\t \\n \\f \\r by name)."""
    assert encode("\x01\t\x7f") == b'"\\u0001\\t\\u007f"'


def test_non_ascii_text_is_written_as_utf8():
    assert encode({"m": "café"}) == '{"m":"café"}'.encode()


def test_integers_past_64_bits_are_clamped_however_many_digits_they_have():
    """lua-cjson reads an integer with strtoll, which clamps one past 64 bits (Python's int() refuses more than
    4,300 digits: such a document was not JSON to the gateway)."""
    assert decode(b'{"n":' + b"7" * 4400 + b"}") == {"n": 2**63 - 1}
    assert decode(b"[-" + b"9" * 5000 + b", 9223372036854775808, -9223372036854775809, 12]") == \
        [-2**63, 2**63 - 1, -2**63, 12]
    assert decode(b"[-" + b"0" * 5000 + b"5]") == [-5]  # (not JSON to Python: the lenient reader's strtoll)
