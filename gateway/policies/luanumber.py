"""LuaJIT's tonumber of a string, for the plugins whose Kong reads a header's number with it (proxy-cache's
Cache-Control, standard-webhooks' timestamp, response-ratelimiting's costs): lj_strscan's rules, in linear time."""

from __future__ import annotations

import math
import re

# (the mantissa, the exponent); written so that no digit can be matched two ways: a long string that is no number
# is refused in linear time
_DECIMAL = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:[eE]([+-]?[0-9]+))?")
_HEX_NUMBER = re.compile(r"([+-]?0[xX](?:[0-9a-fA-F]+(?:\.[0-9a-fA-F]*)?|\.[0-9a-fA-F]+))(?:[pP]([+-]?[0-9]+))?")
# (the sign, the integer digits): no exponent, and a fraction of zeros only (LuaJIT drops them; any other is no number)
_BINARY = re.compile(r"([+-]?)0[bB](?=\.?[01])([01]*)(?:\.0*)?")
_SPECIAL = {"inf": math.inf, "infinity": math.inf, "nan": math.nan}  # LuaJIT's lj_strscan reads these, any case
_LUA_SPACE = " \t\n\x0b\f\r"


def tonumber(text: str) -> float | None:
    """LuaJIT's tonumber of a string, a double as Lua's numbers are (decimal, with a fraction or an exponent;
    hexadecimal, with a fraction or a "p" exponent too; binary "0b"; inf, infinity or nan in any case, signed), or
    None. What overflows is infinite, as lj_strscan makes it, never an error; linear in the length."""
    text = text.strip(_LUA_SPACE)
    m = _DECIMAL.fullmatch(text)
    if m is not None:
        exponent = m.group(2)
        if exponent is not None and len(exponent) > 5:
            text = f"{m.group(1)}e{_saturated(exponent)}"
        return float(text)  # correctly rounded, as lj_strscan's; inf past the double range
    m = _HEX_NUMBER.fullmatch(text)
    if m is not None:
        exponent = m.group(2)
        if exponent is not None and len(exponent) > 5:
            text = f"{m.group(1)}p{_saturated(exponent)}"
        try:
            return float.fromhex(text)
        except OverflowError:
            return -math.inf if text[0] == "-" else math.inf
    m = _BINARY.fullmatch(text)
    if m is not None:
        digits = m.group(2).lstrip("0")
        if len(digits) > 64:  # strscan_bin: more than 64 binary digits is no number
            return None
        value = float(int(digits or "0", 2))
        return -value if m.group(1) == "-" else value
    sign, name = (text[0], text[1:]) if text[:1] in ("+", "-") else ("", text)
    special = _SPECIAL.get(name.lower())
    if special is None:
        return None
    return -special if sign == "-" else special


def _saturated(exponent: str) -> str:
    """lj_strscan's reading of a long exponent: digits are taken while the value is below 65536, the rest ignored
    (1e700000 is 1e70000)."""
    sign = exponent[0] if exponent[0] in "+-" else ""
    digits = exponent.lstrip("+-").lstrip("0")
    value = int(digits[:5] or "0")
    if value < 65536 and len(digits) > 5:
        value = int(digits[:6])
    return f"{sign}{value}"
