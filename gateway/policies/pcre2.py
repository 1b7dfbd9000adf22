"""The regexes Kong runs with ngx.re.find(subject, regex, "jo"), run on PCRE2 (the system's libpcre2-8, via ctypes).

As in OpenResty: the pattern is compiled once ("o") with no options but those it sets inline, JIT-compiled when the
library has a JIT ("j"), and matched under a match limit, so a pattern that backtracks without end stops with an
error (PcreMatchError) instead of holding the worker. "jo" has no "u": no UTF, the subject is bytes, and \\w, \\d, \\s,
\\b and caseless matching are ASCII's. The library is loaded at first use; when it cannot be, unavailable() says so
in a sentence and check-config refuses the plugins that need it.

A Regex keeps one match block for its matches, so it is used by one thread at a time (a gateway worker's Trio loop).
"""

from __future__ import annotations

import ctypes
import weakref
from functools import cache
from typing import Any

LIBRARY = "libpcre2-8.so.0"
# Kong's nginx_http_lua_regex_match_limit default (kong/templates/kong_defaults.lua), lua_regex_match_limit in nginx
MATCH_LIMIT = 100000
ANCHORED = 0x80000000  # PCRE2_ANCHORED: ngx.re's "a" flag
# compile options a route regex takes to be read as Rust's regex crate reads it (gateway.routing.kong_regex)
UTF = 0x00080000  # PCRE2_UTF: the pattern and subjects are UTF-8 text, matched by characters
UCP = 0x00020000  # PCRE2_UCP: \w, \d, \s, \b and POSIX classes by Unicode properties
DOLLAR_ENDONLY = 0x00000010  # PCRE2_DOLLAR_ENDONLY: `$` is the end of the subject only (not before a final \n)
_ERROR_NOMATCH = -1
_ERROR_MATCHLIMIT = -47
_JIT_COMPLETE = 0x1
_CONFIG_JIT = 1
_INFO_CAPTURECOUNT, _INFO_NAMECOUNT, _INFO_NAMEENTRYSIZE, _INFO_NAMETABLE = 4, 17, 18, 19


class PcreMatchError(Exception):
    """pcre2_match failed (the match limit reached, most often): ngx.re.find's `err`."""

    def __init__(self, code: int, pattern: str) -> None:
        self.code = code
        self.pattern = pattern
        limit = f" (the match limit is {MATCH_LIMIT}, Kong's default)" if code == _ERROR_MATCHLIMIT else ""
        super().__init__(f"pcre2_match() failed: {code}: {_lib().message(code)}{limit}")


class _Lib:
    """libpcre2-8's functions this module calls, with their C signatures, and the shared match context."""

    def __init__(self, dll: ctypes.CDLL) -> None:
        p, size, u32, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_int
        self.compile = _fn(dll, "pcre2_compile_8", p, [ctypes.c_char_p, size, u32, ctypes.POINTER(i),
                                                       ctypes.POINTER(size), p])
        self.jit_compile = _fn(dll, "pcre2_jit_compile_8", i, [p, u32])
        self.match = _fn(dll, "pcre2_match_8", i, [p, ctypes.c_char_p, size, size, u32, p, p])
        self.data_create = _fn(dll, "pcre2_match_data_create_from_pattern_8", p, [p, p])
        self.data_free = _fn(dll, "pcre2_match_data_free_8", None, [p])
        self.code_free = _fn(dll, "pcre2_code_free_8", None, [p])
        self.error_message = _fn(dll, "pcre2_get_error_message_8", i, [i, ctypes.c_char_p, size])
        self.pattern_info = _fn(dll, "pcre2_pattern_info_8", i, [p, u32, p])
        self.ovector = _fn(dll, "pcre2_get_ovector_pointer_8", p, [p])
        context = _fn(dll, "pcre2_match_context_create_8", p, [p])(None)
        if not context:
            raise MemoryError("pcre2_match_context_create failed")
        _fn(dll, "pcre2_set_match_limit_8", i, [p, u32])(context, MATCH_LIMIT)
        self.context = ctypes.c_void_p(context)  # for the life of the process
        jit = ctypes.c_uint32(0)
        _fn(dll, "pcre2_config_8", i, [u32, p])(_CONFIG_JIT, ctypes.addressof(jit))
        self.jit = bool(jit.value)

    def message(self, code: int) -> str:
        buffer = ctypes.create_string_buffer(256)
        self.error_message(code, buffer, len(buffer))
        return buffer.value.decode("latin-1")

    def free(self, code: int, data: int | None) -> None:
        if data:
            self.data_free(data)
        self.code_free(code)


def _fn(dll: ctypes.CDLL, name: str, restype: Any, argtypes: list[Any]) -> Any:
    fn = getattr(dll, name)
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


@cache
def _load() -> _Lib | str:
    """The library, or why it cannot be loaded."""
    try:
        return _Lib(ctypes.CDLL(LIBRARY))
    except (OSError, AttributeError) as e:
        return (f"the regex library {LIBRARY} (PCRE2, which Kong's ngx.re runs) cannot be loaded ({e}): install "
                "the system's libpcre2-8-0 package")


def _lib() -> _Lib:
    lib = _load()
    if isinstance(lib, str):
        raise RuntimeError(lib)
    return lib


def unavailable() -> str | None:
    """Why PCRE2 cannot be used here (a sentence for check-config), or None when it can."""
    lib = _load()
    return lib if isinstance(lib, str) else None


def utf8(text: str | bytes) -> bytes:
    """A config or request string's bytes as Lua holds them (UTF-8; a lone surrogate JSON allowed as its 3 bytes)."""
    if isinstance(text, bytes):
        return text
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _compile(lib: _Lib, pattern: bytes, options: int) -> tuple[int, str | None]:
    """The compiled code (0 when refused) and PCRE2's reason, with its offset."""
    error, offset = ctypes.c_int(0), ctypes.c_size_t(0)
    code = lib.compile(pattern, len(pattern), options, ctypes.byref(error), ctypes.byref(offset), None)
    if code:
        return code, None
    return 0, f"{lib.message(error.value)} at offset {offset.value}"


def pattern_problem(pattern: str | bytes, options: int = 0) -> str | None:
    """PCRE2's reason for refusing `pattern` (with its offset), or None when it compiles; check-config's message."""
    lib = _load()
    if isinstance(lib, str):
        return lib
    code, problem = _compile(lib, utf8(pattern), options)
    if code:
        lib.code_free(code)
    return problem


class Regex:
    """A pattern compiled as ngx.re.find(subject, pattern, "jo") compiles it (`options`: ANCHORED for "ajo")."""

    __slots__ = ("__weakref__", "_code", "_context", "_data", "_match", "pattern")

    def __init__(self, pattern: str | bytes, options: int = 0) -> None:
        lib = _lib()
        self.pattern = pattern if isinstance(pattern, str) else pattern.decode("latin-1")
        code, problem = _compile(lib, utf8(pattern), options)
        if not code:
            raise ValueError(f"{self.pattern!r} is not a valid regex: {problem}")
        if lib.jit:
            lib.jit_compile(code, _JIT_COMPLETE)  # (if it fails, pcre2_match interprets the pattern: no harm)
        data = lib.data_create(code, None)
        weakref.finalize(self, lib.free, code, data)
        if not data:
            raise MemoryError("pcre2_match_data_create failed")
        self._code, self._data, self._match, self._context = code, data, lib.match, lib.context

    def search(self, subject: bytes) -> bool:
        """Whether the pattern finds `subject` (ngx.re.find's `from` is not nil); PcreMatchError when PCRE2 fails."""
        rc: int = self._match(self._code, subject, len(subject), 0, 0, self._data, self._context)
        if rc >= 0:  # (0: a match whose groups the match block could not all hold)
            return True
        if rc == _ERROR_NOMATCH:
            return False
        raise PcreMatchError(rc, self.pattern)

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


class CaptureRegex(Regex):
    """A Regex whose search also gives where each of its groups matched (`groups` of them, besides the whole match),
    and the numbers of its named groups (`names`): a route regex's captures."""

    __slots__ = ("groups", "names", "_ovector")

    def __init__(self, pattern: str | bytes, options: int = 0) -> None:
        super().__init__(pattern, options)
        lib = _lib()
        count = ctypes.c_uint32(0)
        lib.pattern_info(self._code, _INFO_CAPTURECOUNT, ctypes.byref(count))
        self.groups: int = count.value
        self.names: dict[str, int] = _names(lib, self._code)
        # (the match block's offsets, read in place: the block lives as long as this object)
        self._ovector = (ctypes.c_size_t * (2 * self.groups + 2)).from_address(lib.ovector(self._data))

    def find(self, subject: bytes) -> list[int] | None:
        """The start and end offsets of the whole match and of each group (UNSET for a group that took no part) when
        the pattern finds `subject`, else None: also when PCRE2 fails, the match limit reached (bounded work, for a
        caller that has no error to report) or a UTF pattern's subject not UTF-8."""
        if self._match(self._code, subject, len(subject), 0, 0, self._data, self._context) >= 0:
            return self._ovector[:]  # (a match: the match block holds every group)
        return None


UNSET = ctypes.c_size_t(-1).value  # PCRE2_UNSET: the offsets of a group that took no part in the match


def _names(lib: _Lib, code: int) -> dict[str, int]:
    """A compiled pattern's named groups, name -> number (PCRE2's name table: 2 bytes of number, then the name)."""
    count, size, table = ctypes.c_uint32(0), ctypes.c_uint32(0), ctypes.c_void_p(0)
    lib.pattern_info(code, _INFO_NAMECOUNT, ctypes.byref(count))
    if not count.value:
        return {}
    lib.pattern_info(code, _INFO_NAMEENTRYSIZE, ctypes.byref(size))
    lib.pattern_info(code, _INFO_NAMETABLE, ctypes.byref(table))
    raw = ctypes.string_at(table.value or 0, count.value * size.value)
    entries = (raw[i:i + size.value] for i in range(0, len(raw), size.value))
    return {e[2:].split(b"\0", 1)[0].decode(): int.from_bytes(e[:2], "big") for e in entries}
