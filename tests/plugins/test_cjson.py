"""JSON as Kong's lua-cjson writes it (gateway.policies.cjson): what the gateway's own JSON answers look like."""

from __future__ import annotations

from gateway.policies.cjson import encode


def test_output_is_compact_with_slashes_escaped():
    assert encode({"message": "a/b", "n": [1, 2]}) == b'{"message":"a\\/b","n":[1,2]}'


def test_control_characters_and_del_are_escaped_as_lua_cjson_escapes_them():
    """lua_cjson.c's char2escape: 0x00-0x1f and 0x7f as \\uXXXX (\\b \\t \\n \\f \\r by name)."""
    assert encode("\x01\t\x7f") == b'"\\u0001\\t\\u007f"'


def test_non_ascii_text_is_written_as_utf8():
    assert encode({"m": "café"}) == '{"m":"café"}'.encode()
