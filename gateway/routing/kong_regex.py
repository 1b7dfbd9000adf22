"""Kong's route regexes (a `~` path, a `~*` header value) compiled as Kong 3.x's router compiles them, on PCRE2.

Kong's router (traditional_compatible) runs them with Rust's regex crate (atc-router: `Regex::new`, regex 1.11),
which matches in time linear in the input. PCRE2 backtracks, so it runs them under Kong's match limit
(gateway.policies.pcre2.MATCH_LIMIT): a subject that reaches it counts as no match, where Rust's regex would answer.
Rust's reading of the pattern is kept: UTF-8 text matched by characters, `\\w`, `\\d`, `\\s`, `\\b` and case-folding
by Unicode (PCRE2's UTF and UCP), `$` the end of the subject (DOLLAR_ENDONLY), `.` anything but a line feed,
inline flags lasting to the end of their group, later alternatives included (PCRE2's rule too), POSIX classes ASCII,
Rust's escapes (`\\v` a vertical tab, `\\u{..}`, `\\<`, `\\b{start}`). What Rust's regex refuses (look-around, back
references, PCRE's verbs and other groups) is refused, and so is what PCRE2 would read otherwise than Rust (nested
classes and class set operations, possessive-looking repetitions, a `{` starting no repetition).
"""

from __future__ import annotations

import ctypes
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.policies.pcre2 import CaptureRegex

Captures = dict[int | str, bytes | None]  # Kong's uri_captures: groups by number and by name (None: took no part)
OPTIONS = 0x00080000 | 0x00020000 | 0x00000010  # pcre2's UTF | UCP | DOLLAR_ENDONLY
_UNSET = ctypes.c_size_t(-1).value  # pcre2.UNSET
_LF = "(*LF)"  # `.` and a multi-line `^`/`$` see only a line feed as a line's end, as Rust's regex does


class RegexRefused(ValueError):
    """A route regex Kong's router refuses, or which the gateway cannot run as Kong's router runs it."""


def _pcre2():  # noqa: ANN202
    """gateway.policies.pcre2, imported at first use: gateway.policies imports the plugins, which import the router."""
    from gateway.policies import pcre2
    return pcre2


def compile_path(regex: str) -> CaptureRegex:
    """A `~` path's regex (after the `~`) as Kong's router compiles it (kong/router/transform.lua
    path_val_transform: `"^" .. p:sub(2):gsub("?<", "?P<")`, searched unanchored, so only what comes before the
    first top-level `|` is anchored). Raises RegexRefused (ValueError) for what it cannot run."""
    return _pcre2().CaptureRegex(_LF + "^" + pcre2_pattern(regex.replace("?<", "?P<")), OPTIONS)


def compile_header(regex: str) -> CaptureRegex:
    """A `~*` header value's regex (after the `~*`) as Kong's router compiles it: lower-cased whole by Lua's
    `value:lower()` (ASCII letters only, escapes too: `\\D` is `\\d`; kong/router/transform.lua), searched in the
    request's lower-cased value."""
    return _pcre2().CaptureRegex(_LF + pcre2_pattern(ascii_lower(regex)), OPTIONS)


def problem(regex: str, header: bool = False) -> str | None:
    """Why compile_path (or compile_header) refuses `regex`, in a sentence for check-config, or None."""
    try:
        pattern = pcre2_pattern(ascii_lower(regex) if header else regex.replace("?<", "?P<"))
    except RegexRefused as e:
        return str(e)
    reason: str | None = _pcre2().pattern_problem(pattern, OPTIONS)
    if reason is not None and "unknown property" in reason:
        reason += " (the gateway's PCRE2 knows Unicode's short names, \\p{L}, \\p{Lu}, and scripts, \\p{Greek})"
    return reason


def captures(regex: CaptureRegex, subject: bytes, spans: list[int]) -> Captures:
    """Kong's uri_captures of a match: every group by number (0: the whole match), the named ones by name."""
    pairs = iter(spans)
    values = [None if start == _UNSET else subject[start:end] for start, end in zip(pairs, pairs, strict=True)]
    found: Captures = dict(enumerate(values))
    for name, number in regex.names.items():
        found[name] = values[number]
    return found


def took_part(spans: list[int]) -> int:
    """How many of a match's groups (the whole match included) took part in it."""
    return (len(spans) - spans.count(_UNSET)) // 2


def ascii_lower(text: str) -> str:
    """Lua's string.lower: only the ASCII letters."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def pcre2_pattern(regex: str) -> str:
    """A regex in Rust's syntax as PCRE2 (with OPTIONS) reads it the same; raises RegexRefused for what Rust's regex
    refuses (as Kong does) and for what PCRE2 cannot read as Rust does."""
    out: list[str] = []
    i, n = 0, len(regex)
    while i < n:
        ch = regex[i]
        if ch == "\\":
            text, i = _escape(regex, i, in_class=False)
            out.append(text)
        elif ch == "[":
            text, i = _class(regex, i)
            out.append(text)
        elif ch == "(":
            text, i = _group(regex, i)
            out.append(text)
        elif ch in "*+?{":
            text, i = _repetition(regex, i)
            out.append(text)
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _unsupported(what: str) -> RegexRefused:
    return RegexRefused(f"{what} not supported by Kong's router (Rust's regex crate)")


def _escape(regex: str, i: int, in_class: bool) -> tuple[str, int]:
    """The escape at `i` as PCRE2 reads it the same, and where it ends."""
    esc = regex[i + 1:i + 2]
    if not esc:
        raise RegexRefused("a \\ ends the pattern (escape it as \\\\)")
    if esc in "0123456789kg":  # (Rust takes no digit after a "\\": no octal either)
        raise _unsupported(f"back references ({regex[i:i + 2]}) are")
    if esc in "dDsSwWaftnr" or (esc.isascii() and not esc.isalnum() and esc not in "<>"):
        return regex[i:i + 2], i + 2
    if esc == "v":  # Rust: the vertical tab (PCRE2: vertical space)
        return "\\x0B", i + 2
    if esc in "xuU":
        return _code_point(regex, i)
    if esc in "pP":  # (PCRE2 knows fewer property names than Rust's regex: it says which it does not)
        end = (regex.find("}", i) + 1 or len(regex)) if regex.startswith("{", i + 2) else i + 3
        return regex[i:end], end
    if in_class:
        raise RegexRefused(f"{regex[i:i + 2]} is not allowed in a character class (Rust's regex refuses it)")
    if esc in "bBAz" and not regex.startswith("\\b{", i):
        return regex[i:i + 2], i + 2
    for rust, pcre in _BOUNDARIES:
        if regex.startswith(rust, i):
            return pcre, i + len(rust)
    raise RegexRefused(f"unrecognized escape {regex[i:i + 2]} (Rust's regex refuses it)")


# Rust's word-boundary escapes, written with PCRE2's look-around (the gateway's own, not a config's)
_BOUNDARIES = (("\\<", "\\b(?=\\w)"), ("\\>", "\\b(?<=\\w)"), ("\\b{start}", "\\b(?=\\w)"),
               ("\\b{end}", "\\b(?<=\\w)"), ("\\b{start-half}", "(?<!\\w)"), ("\\b{end-half}", "(?!\\w)"))
_CODE_POINT = {"x": re.compile(r"\\x(?:([0-9A-Fa-f]{2})|\{([0-9A-Fa-f]{1,8})\})"),
               "u": re.compile(r"\\u(?:([0-9A-Fa-f]{4})|\{([0-9A-Fa-f]{1,8})\})"),
               "U": re.compile(r"\\U(?:([0-9A-Fa-f]{8})|\{([0-9A-Fa-f]{1,8})\})")}


def _code_point(regex: str, i: int) -> tuple[str, int]:
    """Rust's `\\xHH`, `\\x{H..}`, `\\uHHHH`, `\\u{H..}`, `\\UHHHHHHHH`, `\\U{H..}` as PCRE2's `\\x{H..}`."""
    m = _CODE_POINT[regex[i + 1]].match(regex, i)
    if m is None:
        raise RegexRefused(f"invalid hexadecimal escape at {regex[i:i + 4]!r} (Rust's regex refuses it)")
    return f"\\x{{{m.group(1) or m.group(2)}}}", m.end()


def _class(regex: str, i: int) -> tuple[str, int]:
    """The character class opening at `i` as PCRE2 reads it the same, and where it ends: POSIX classes as their
    ASCII ranges (PCRE2's UCP would make them Unicode's)."""
    j, n = i + 1, len(regex)
    negated = regex.startswith("^", j)
    j += negated
    items: list[str] = []
    if regex.startswith("]", j):  # a "]" first in a class is one of its characters
        items.append("]")
        j += 1
    posix_negated = False
    while j < n and regex[j] != "]":
        ch = regex[j]
        if ch == "\\":
            text, j = _escape(regex, j, in_class=True)
            items.append(text)
        elif (posix := _POSIX_CLASS.match(regex, j)) is not None:
            ranges = _POSIX_RANGES.get(posix.group(2))
            if ranges is None:
                raise RegexRefused(f"unknown POSIX class {posix.group(0)} (the ASCII classes are "
                                   f"{', '.join(_POSIX_RANGES)})")
            posix_negated = posix_negated or posix.group(1) == "^"
            items.append(ranges)
            j = posix.end()
        elif ch == "[":
            raise RegexRefused("a nested character class ([a[b]]) is not supported by the gateway: write one class, "
                               "or escape the [ as \\[")
        elif regex.startswith(("&&", "--", "~~"), j):
            raise RegexRefused(f"a class set operation ({regex[j:j + 2]}) is not supported by the gateway: write the "
                               f"class's members, or escape them as \\{ch}")
        else:
            items.append(ch)
            j += 1
    if j >= n:
        raise RegexRefused(f"unclosed character class {regex[i:i + 20]!r}")
    if posix_negated:
        if len(items) != 1:
            raise RegexRefused("a negated POSIX class ([:^name:]) is supported only alone in its class "
                               "([[:^alpha:]] or [^[:^alpha:]])")
        negated = not negated
    return "[" + "^" * negated + "".join(items) + "]", j + 1


def _group(regex: str, i: int) -> tuple[str, int]:
    """The group opening at `i` as PCRE2 reads it the same, and where its contents start."""
    if regex.startswith(("(*", "(+"), i):
        raise RegexRefused(f"a repetition with nothing to repeat at {regex[i:i + 2]!r} (PCRE's verbs (*...) are not "
                           "Rust's)")
    if not regex.startswith("(?", i):
        return "(", i + 1
    kind = regex[i + 2:i + 3]
    if kind in ("=", "!"):
        raise _unsupported(f"look-around ({regex[i:i + 3]}) is")
    if regex.startswith(("(?<=", "(?<!", "(?P<=", "(?P<!"), i):  # (Kong writes a path's `?<` as `?P<`)
        raise _unsupported(f"look-around ((?<{regex[i + 3 + (kind == 'P')]}) is")
    if regex.startswith("(?P=", i):
        raise _unsupported("back references ((?P=name)) are")
    if regex.startswith("(?P>", i):
        raise _unsupported("recursion ((?P>name)) is")
    if kind in _NO_SUCH_GROUP:
        raise _unsupported(_NO_SUCH_GROUP[kind])
    if (named := _NAMED_GROUP.match(regex, i)) is not None:
        return f"(?<{named.group(1)}>", named.end()
    if (flags := _FLAGS.match(regex, i)) is not None:
        on, off, end = flags.group(1), flags.group(2), flags.group(3)
        if off == "" or (not on and off is None and end == ")"):
            raise RegexRefused(f"a flag group without flags ({flags.group(0)}) is refused by Rust's regex")
        if "R" in on + (off or ""):
            raise RegexRefused("the CRLF flag (?R) is not supported by the gateway")
        if "u" in (off or ""):
            raise RegexRefused("turning Unicode off ((?-u)) is not supported by the gateway")
        on = on.replace("u", "")  # (Unicode is on throughout: PCRE2's UTF and UCP)
        if not on and not off:
            return ("" if end == ")" else "(?:"), flags.end()
        return "(?" + on + (f"-{off}" if off else "") + end, flags.end()
    raise _unsupported(f"the group {regex[i:i + 3]!r} is")


def _repetition(regex: str, i: int) -> tuple[str, int]:
    """A repetition operator at `i` (with its lazy `?`), and where it ends; a `+` after one is refused, PCRE2 reading
    it possessive where Rust's regex repeats the repetition."""
    if regex[i] == "{":
        m = _COUNTED.match(regex, i)
        if m is None:
            raise RegexRefused(f"a {{ that starts no repetition ({{2}}, {{2,}}, {{2,5}}) is not supported by the "
                               f"gateway, at {regex[i:i + 8]!r}: escape it as \\{{")
        end = m.end()
    else:
        end = i + 1
    if regex.startswith("?", end):
        end += 1
    if regex.startswith("+", end):
        raise RegexRefused(f"a repeated repetition ({regex[i:end + 1]}) is not supported by the gateway (PCRE2 would "
                           "read it as possessive): write (?:...) around the first")
    return regex[i:end], end


# Rust's regex crate's ASCII classes (regex-syntax ClassAsciiKind)
_POSIX_RANGES = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ", "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~", "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\x0b\\x0c\\r ", "upper": "A-Z", "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
}
_NO_SUCH_GROUP = {"#": "comments ((?#...)) are", ">": "atomic groups ((?>...)) are",
                  "(": "conditional groups ((?(1)...)) are", "|": "branch reset groups ((?|...)) are",
                  "'": "named groups written (?'name'...) are"}  # (PCRE has them, Rust's regex not)
_POSIX_CLASS = re.compile(r"\[:(\^?)([a-z]*):\]")
_FLAGS = re.compile(r"\(\?([imsUuxR]*)(?:-([imsUuxR]*))?([:)])")
_NAMED_GROUP = re.compile(r"\(\?P?<([A-Za-z_][A-Za-z0-9_.\[\]]*)>")
_COUNTED = re.compile(r"\{\d+(?:,\d*)?\}")
