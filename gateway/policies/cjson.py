"""JSON as Kong's lua-cjson reads and writes it (kong.request.get_body, kong.service.request.set_body,
kong.response.exit with a table body). Byte-for-byte answers are what Kong's spec tests and caches compare; clients
parse them alike either way.

encode: compact, "/" escaped as "\\/" and DEL as "\\u007f", UTF-8 as it is, numbers as "%.<precision>g" (16 for the
PDK's cjson.safe, which Kong's globalpatches set; 14 for a plugin's own instance). decode: lua-cjson's lenient
reading (see `decode`).
"""

from __future__ import annotations

import json
import math
import re
import secrets
import sys
from json.decoder import scanstring  # type: ignore[attr-defined]  # json's own string scanner
from typing import Any

# lua-cjson's number precision: kong.service.request.set_body and kong.response.exit use the module's cjson.safe,
# which Kong's globalpatches set to 16 digits; plugins that make their own instance (cjson.safe.new():
# request-transformer) keep lua-cjson's 14
PDK_PRECISION, CJSON_PRECISION = 16, 14
MAX_DEPTH = 1000  # lua-cjson's decode_max_depth and encode_max_depth



_HIGH_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abAB]|\\u[dD][c-fC-F]")
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)
_LONG_INTEGER = re.compile(rb"\d{19}")
_LLONG = 2**63
_EXACT = 2**53  # the integers a double holds exactly


def decode(raw: bytes) -> Any:
    """`raw` as lua-cjson's decode reads it (ValueError when it refuses it): strings keep bytes that are not UTF-8
    (surrogate-escaped); raw control characters in strings are taken; a NUL ends the text; \\u escapes of UTF-16
    surrogates must pair; 1000 levels of nesting at most; numbers as strtoll / strtod read them (leading zeros, "+1",
    hex, inf and nan are numbers, an integer past 64 bits is clamped)."""
    if len(raw) >= 2 and (not raw[0] or not raw[1]):
        raise ValueError("JSON parser does not support UTF-16 or UTF-32")
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    text = raw.decode("utf-8", "surrogateescape")
    try:
        if _LONG_INTEGER.search(raw):
            doc = json.loads(text, strict=False, parse_int=_strtoll)
        else:
            doc = json.loads(text, strict=False)
    except (ValueError, RecursionError):
        doc = _LenientParser(text).parse()
    if _HIGH_SURROGATE_ESCAPE.search(raw):
        _check_surrogates(text)
    return doc


def _strtoll(digits: str) -> int:
    """strtoll: an integer past 64 bits clamped (told by its digits first: int() refuses more than 4,300 of them)."""
    significant = digits.lstrip("+-").lstrip("0")
    if len(significant) > 19:
        return -_LLONG if digits[0] == "-" else _LLONG - 1
    value = int(significant or "0")
    return max(-value, -_LLONG) if digits[0] == "-" else min(value, _LLONG - 1)


def _check_surrogates(text: str) -> None:
    """lua-cjson's json_append_unicode_escape: a \\uD800-\\uDBFF escape must be followed at once by a \\uDC00-\\uDFFF
    one; a low one alone is an error (Python's json keeps them unpaired)."""
    high_end = -1
    for m in _ESCAPE.finditer(text):
        code = int(m.group(1), 16) if m.group(1) else None
        if high_end >= 0:
            if m.start() != high_end or code is None or code & 0xFC00 != 0xDC00:
                raise ValueError("invalid unicode escape code")
            high_end = -1
        elif code is not None and code & 0xF800 == 0xD800:
            if code & 0x400:
                raise ValueError("invalid unicode escape code")
            high_end = m.end()
    if high_end >= 0:
        raise ValueError("invalid unicode escape code")


_WS = re.compile(r"[ \t\n\r]*")
_STRTOLL_RE = re.compile(r"[+-]?[0-9]+")
_STRTOD_RE = re.compile(r"""[+-]?(?:
      (0[xX](?:[0-9a-fA-F]+(?:\.[0-9a-fA-F]*)?|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?)
    | ((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
    | ([iI][nN][fF](?:[iI][nN][iI][tT][yY])?)
    | ([nN][aA][nN](?:\([0-9A-Za-z_]*\))?)
)""", re.VERBOSE)


class _LenientParser:
    """lua-cjson's parser for what Python's json refuses (or cannot nest as deep): iterative, so 1000 levels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> Any:
        value = self._value(self._token())
        if self._token() != "end":
            raise ValueError("Expected the end but found invalid token")
        return value

    def _token(self) -> Any:
        """The next token: a structural character, "end", ("value", v), ("open", "{" or "[")."""
        text = self.text
        pos = self.pos = _WS.match(text, self.pos).end()  # type: ignore[union-attr]  # always matches
        if pos >= len(text):
            return "end"
        ch = text[pos]
        if ch in "{[":
            self.pos = pos + 1
            return ("open", ch)
        if ch in "}],:":
            self.pos = pos + 1
            return ch
        if ch == '"':
            value, self.pos = scanstring(text, pos + 1, False)
            return ("value", value)
        if ch == "-" or "0" <= ch <= "9":
            return ("value", self.number())
        for word, value in (("true", True), ("false", False), ("null", None)):
            if text.startswith(word, pos):
                self.pos = pos + len(word)
                return ("value", value)
        if ch == "+" or text[pos:pos + 3].lower() in ("inf", "nan"):  # json_is_invalid_number
            return ("value", self.number())
        raise ValueError(f"Expected value but found invalid token at character {pos + 1}")

    def number(self) -> int | float:
        """json_next_number_token: strtoll, or strtod when no integer was read or it stops at ".", "e", "E", "x"."""
        text, pos = self.text, self.pos
        m = _STRTOLL_RE.match(text, pos)
        if m is not None and text[m.end():m.end() + 1] not in (".", "e", "E", "x"):
            self.pos = m.end()
            return _strtoll(m.group())
        d = _STRTOD_RE.match(text, pos)
        if d is None:
            raise ValueError(f"Expected value but found invalid number at character {pos + 1}")
        self.pos = d.end()
        sign = -1.0 if text[pos] == "-" else 1.0
        if d.group(1):
            try:
                return float.fromhex(d.group())
            except OverflowError:
                return sign * math.inf
        if d.group(2):
            return float(d.group())
        return sign * (math.inf if d.group(3) else math.nan)

    def _value(self, token: Any) -> Any:
        stack: list[Any] = []  # open containers: [container, pending key or None]
        while True:
            if isinstance(token, tuple) and token[0] == "open":
                if len(stack) >= MAX_DEPTH:
                    raise ValueError(f"Found too many nested data structures ({MAX_DEPTH + 1})")
                container: Any = {} if token[1] == "{" else []
                nxt = self._token()
                if nxt == ("}" if token[1] == "{" else "]"):
                    value = container
                else:
                    stack.append([container, None])
                    if isinstance(container, dict):
                        stack[-1][1] = self._key(nxt)
                    token = nxt if isinstance(container, list) else self._token()
                    continue
            elif isinstance(token, tuple):
                value = token[1]
            else:
                raise ValueError(f"Expected value but found {token!r}")
            # a value is complete: put it in its container, and close those that end here
            while True:
                if not stack:
                    return value
                container, key = stack[-1]
                if isinstance(container, dict):
                    container[key] = value
                else:
                    container.append(value)
                sep = self._token()
                close = "}" if isinstance(container, dict) else "]"
                if sep == ",":
                    if isinstance(container, dict):
                        stack[-1][1] = self._key(self._token())
                    token = self._token()
                    break
                if sep != close:
                    raise ValueError(f"Expected comma or {close} but found {sep!r}")
                stack.pop()
                value = container

    def _key(self, token: Any) -> str:
        if not (isinstance(token, tuple) and token[0] == "value" and isinstance(token[1], str)):
            raise ValueError("Expected object key string")
        if self._token() != ":":
            raise ValueError("Expected colon")
        return token[1]  # type: ignore[no-any-return]


def encode(doc: Any, precision: int = PDK_PRECISION) -> bytes:
    """`doc` as lua-cjson encodes it: compact, "/" escaped as "\\/" and DEL as "\\u007f", UTF-8 as it is (strings
    carrying undecodable bytes, surrogate-escaped, keep them), every number as "%.<precision>g" (Lua's numbers are
    doubles: 1.0 is 1, a 64-bit integer loses digits). NaN, infinities and more than 1000 levels are lua-cjson's
    errors (ValueError)."""
    try:
        return _encode(doc, precision, fast=True)
    except RecursionError:  # deep, yet maybe within lua-cjson's 1000 levels (which the walk checks)
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(limit + 3 * MAX_DEPTH)
        try:
            return _encode(doc, precision, fast=False)
        finally:
            sys.setrecursionlimit(limit)


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _odd_number(precision: int) -> re.Pattern[str]:
    """In json.dumps' text without its strings: a number it may write otherwise than "%.<precision>g" does (an
    integral float's ".0"; as many digits as the precision, or as a double holds; NaN and infinities)."""
    return re.compile(rf"\.0(?![0-9])|[0-9.]{{{min(precision + 1, 16)}}}|NaN|Infinity")


_ODD_NUMBER = {p: _odd_number(p) for p in (PDK_PRECISION, CJSON_PRECISION)}


def _encode(doc: Any, precision: int, fast: bool) -> bytes:
    numbers: list[str] = []
    tag = ""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False) if fast else ""
    odd = _ODD_NUMBER.get(precision) or _odd_number(precision)
    if not fast or odd.search(_JSON_STRING.sub("", text)):
        tag = f"\0{secrets.token_hex(8)}:"
        text = json.dumps(_plain_numbers(doc, precision, numbers, tag, 0), separators=(",", ":"), ensure_ascii=False)
    text = text.replace("/", "\\/").replace("\x7f", "\\u007f")
    if numbers:
        marker = re.escape(json.dumps(tag, ensure_ascii=False)[:-1])
        text = re.sub(marker + r"(\d+)\"", lambda m: numbers[int(m.group(1))], text)
    return text.encode("utf-8", "surrogateescape")


def number(value: float, precision: int) -> str:
    """A number as lua-cjson (and LuaJIT's tostring, at 14) writes it; ValueError for NaN and infinities."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError("Cannot serialise number: must not be NaN or Infinity")
    return f"{value:.{precision}g}"


def lua_string(number: float) -> bytes:
    """How Lua (LuaJIT) writes a number into a string (tostring, a header's value): "%.14g"."""
    return b"%.14g" % number


def _plain_numbers(doc: Any, precision: int, numbers: list[str], tag: str, depth: int) -> Any:
    """`doc` with each number json.dumps would not write as "%.<precision>g" writes it replaced by a tagged string
    (its text in `numbers`)."""
    if isinstance(doc, dict):
        if depth >= MAX_DEPTH:
            raise ValueError(f"Cannot serialise, excessive nesting ({MAX_DEPTH + 1})")
        return {k: _plain_numbers(v, precision, numbers, tag, depth + 1) for k, v in doc.items()}
    if isinstance(doc, list):
        if depth >= MAX_DEPTH:
            raise ValueError(f"Cannot serialise, excessive nesting ({MAX_DEPTH + 1})")
        return [_plain_numbers(v, precision, numbers, tag, depth + 1) for v in doc]
    if isinstance(doc, bool) or not isinstance(doc, (int, float)):
        return doc
    if isinstance(doc, int) and -_EXACT < doc < _EXACT and -10**precision < doc < 10**precision:
        return doc  # a double holds it, and "%.<precision>g" writes its digits
    text = number(float(doc), precision)
    if text.lstrip("-").isdigit() and text != "-0":
        return int(text)
    if isinstance(doc, float) and repr(doc) == text:
        return doc
    numbers.append(text)
    return f"{tag}{len(numbers) - 1}"
