"""A PCRE regex as ngx.re.find(subject, regex, "jo") runs it, in Python's re.

"jo" has no "u": PCRE works on bytes, so the pattern and the subject are their UTF-8 bytes (read here as latin-1
characters, one per byte) and \\w, \\d, \\s, \\b and caseless matching are ASCII's. PCRE syntax that Python's re
spells differently is rewritten: named groups (?<n>...) and (?'n'...), named back references \\k<n>, \\k'n', \\k{n},
\\g{n}, \\gN; \\z and \\Z; \\Q...\\E; \\h \\H \\v \\V \\R \\N; \\e, \\cX, \\x{hh}; POSIX classes [:alpha:]
inside brackets; a "[" or "]" first in a class. What re has not (recursion, branch reset, \\p, callouts, negated
POSIX classes, inline options after the start) does not compile, and neither does what PCRE refuses: check-config
says so (pattern_problem), as nginx refuses a bad regex at load, where Kong accepts it and answers 500 to every
request the guard checks with it.
"""

from __future__ import annotations

import re

from gateway.config.patterns import regex_problem

_GROUP = re.compile(r"\(\?(?:<([A-Za-z_]\w*)>|'([A-Za-z_]\w*)')")
_BACKREF = re.compile(r"\\(?:k<([A-Za-z_]\w*)>|k'([A-Za-z_]\w*)'|k\{([A-Za-z_]\w*)\}|g\{([A-Za-z_]\w*)\})")
_NUMBERED = re.compile(r"\\g(?:\{(\d+)\}|(\d+))")
_HEX = re.compile(r"\\x\{([0-9A-Fa-f]+)\}")
_POSIX = re.compile(r"\[:(\^?)([a-z]+):\]")
_POSIX_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v", "blank": " \\t", "punct": "!-/:-@\\[-`{-~", "xdigit": "0-9A-Fa-f",
    "word": "a-zA-Z0-9_", "cntrl": "\\x00-\\x1f\\x7f", "print": " -~", "graph": "!-~", "ascii": "\\x00-\\x7f",
}
_VERTICAL = "\\n\\x0b\\f\\r\\x85"  # PCRE's \v without UTF
_HORIZONTAL = "\\t \\xa0"  # PCRE's \h without UTF
_OUTSIDE = {"z": "\\Z", "Z": "(?=\\n?\\Z)", "G": "\\A", "h": f"[{_HORIZONTAL}]", "H": f"[^{_HORIZONTAL}]",
            "v": f"[{_VERTICAL}]", "V": f"[^{_VERTICAL}]", "R": f"(?:\\r\\n|[{_VERTICAL}])", "N": "[^\\n]",
            "e": "\\x1b"}
_INSIDE = {"h": _HORIZONTAL, "v": _VERTICAL, "e": "\\x1b"}


def as_bytes(text: str) -> str:
    """`text`'s UTF-8 bytes, one latin-1 character each (what PCRE without UTF sees)."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("latin-1")


def compile_pcre(pattern: str) -> re.Pattern[str]:
    """The regex to search subjects given by as_bytes(), for a pattern pattern_problem passed."""
    return re.compile(translate(as_bytes(pattern)), re.ASCII)


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` cannot run here (PCRE refuses it, or it uses PCRE syntax Python's re lacks), or None."""
    try:
        return regex_problem(translate(as_bytes(pattern)), re.ASCII)
    except re.error as e:
        return str(e)


def translate(pattern: str) -> str:
    """PCRE syntax as Python's re spells it (see the module's docstring)."""
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            i = _escape(pattern, i, in_class, out)
            continue
        if in_class:
            posix = _POSIX.match(pattern, i) if ch == "[" else None
            if posix is not None:
                if posix[1] or posix[2] not in _POSIX_CLASSES:
                    raise re.error(f"unsupported POSIX class {posix[0]}", pattern, i)
                out.append(_POSIX_CLASSES[posix[2]])
                i = posix.end()
                continue
            if ch == "]":
                in_class = False
                out.append(ch)
            else:
                out.append("\\" + ch if ch in "[&~|" else ch)  # literal in PCRE; re would warn of set operations
            i += 1
            continue
        if ch == "[":
            in_class = True
            out.append("[")
            i += 1
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):  # a "]" first in a class is one of its characters
                out.append("\\]")
                i += 1
            continue
        if ch == "(":
            named = _GROUP.match(pattern, i)
            if named is not None:
                out.append(f"(?P<{named[1] or named[2]}>")
                i = named.end()
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def _escape(pattern: str, i: int, in_class: bool, out: list[str]) -> int:
    """An escape at pattern[i] (a backslash), written to `out`; where the pattern goes on."""
    nxt = pattern[i + 1:i + 2]
    if nxt == "Q":  # \Q...\E: literal text
        end = pattern.find("\\E", i + 2)
        text = pattern[i + 2:] if end < 0 else pattern[i + 2:end]
        out.append("".join("\\" + c if not c.isalnum() else c for c in text))
        return len(pattern) if end < 0 else end + 2
    if nxt == "E":  # an \E without \Q is ignored
        return i + 2
    if nxt == "x" and (hexa := _HEX.match(pattern, i)) is not None:
        value = int(hexa[1], 16)
        if value > 0xFF:
            raise re.error("character code point value in \\x{} is too large", pattern, i)
        out.append(f"\\x{value:02x}")
        return hexa.end()
    if nxt == "c" and i + 2 < len(pattern):
        out.append(f"\\x{ord(pattern[i + 2].upper()) ^ 0x40:02x}")
        return i + 3
    if in_class:
        if nxt in _INSIDE:
            out.append(_INSIDE[nxt])
            return i + 2
    else:
        ref = _BACKREF.match(pattern, i)
        if ref is not None:
            out.append(f"(?P={next(g for g in ref.groups() if g)})")
            return ref.end()
        numbered = _NUMBERED.match(pattern, i)
        if numbered is not None:
            out.append(f"(?:\\{numbered[1] or numbered[2]})")
            return numbered.end()
        if nxt in _OUTSIDE:
            out.append(_OUTSIDE[nxt])
            return i + 2
    out.append(pattern[i:i + 2])
    return i + 2
