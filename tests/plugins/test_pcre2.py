"""gateway/policies/pcre2.py: the binding to the system's PCRE2 that runs the regexes Kong runs with
ngx.re.find(subject, regex, "jo") (bot-detection, ai-prompt-guard, cors), compared with what PCRE does in Kong."""

from __future__ import annotations

import gc
import re
import time

import pytest

from gateway.policies import pcre2
from gateway.policies.pcre2 import ANCHORED, MATCH_LIMIT, PcreMatchError, Regex, pattern_problem


def finds(pattern: str, subject: bytes) -> bool:
    return Regex(pattern).search(subject)


def test_a_compile_error_is_pcre2s_own_message_with_its_offset():
    assert pattern_problem("[]") == "missing terminating ] for character class at offset 2"
    assert re.fullmatch(r"number too big in \{\} quantifier at offset \d+", pattern_problem("a{4294967296}") or "")
    assert pattern_problem("(") == "missing closing parenthesis at offset 1"
    with pytest.raises(ValueError, match=r"'\(' is not a valid regex: missing closing parenthesis at offset 1"):
        Regex("(")


@pytest.mark.parametrize("pattern", ["(?R)", r"\p{L}", r"(?<n>a)\k<n>", r"a\z", "[[:digit:]]", r"\Qa.b\E", "(?|a)"])
def test_pcre_syntax_pythons_re_lacks_compiles(pattern):
    """Recursion, Unicode properties, named groups, \\z, POSIX classes, \\Q..\\E, branch reset: all PCRE."""
    assert pattern_problem(pattern) is None


def test_a_posix_class_is_pcres_not_a_set_of_its_letters():
    """Python's re reads `[[:digit:]]` as the set `[:digt` then "]": PCRE's is any digit."""
    assert finds("^python-requests/[[:digit:]]", b"python-requests/2.31.0")
    assert not finds("^python-requests/[[:digit:]]", b"python-requests/d]")
    assert finds("^[[:alpha:]]+$", b"Googlebot") and not finds("^[[:^alpha:]]", b"Googlebot")


def test_named_groups_back_references_and_end_of_subject():
    assert finds(r"^(?<tool>curl)/\d+(\.\d+)*\z", b"curl/8.5.0")
    assert not finds(r"^(?<tool>curl)/\d+(\.\d+)*\z", b"curl/8.5.0\n")  # \z: the very end, unlike $
    assert finds(r"^(?<tool>curl)/\d+(\.\d+)*$", b"curl/8.5.0\n")
    assert finds(r"(?<c>brie) and \k<c>", b"brie and brie") and not finds(r"(?<c>brie) and \k<c>", b"brie and edam")


def test_without_utf_a_character_is_a_byte_and_classes_are_ascii():
    """"jo" has no "u": "é" is two bytes, \\w and caseless matching know ASCII letters only."""
    cafe = "café".encode()
    assert finds("^caf..$", cafe) and not finds("^caf.$", cafe)
    assert not finds(r"^\w+$", cafe) and finds(r"^\w+$", b"cafe")
    assert finds("(?i)CAFE", b"cafe") and not finds("(?i)É", "é".encode())
    assert finds("é", cafe)  # a pattern's UTF-8 bytes find the same bytes


def test_a_subject_is_searched_whole_nul_bytes_included():
    assert finds("b$", b"a\x00b") and finds("\x00", b"a\x00b")


def test_caseless_only_when_the_pattern_says_so():
    assert not finds("googlebot", b"Googlebot") and finds("(?i)googlebot", b"Googlebot")


def test_anchored_matches_only_at_the_start():
    """ngx.re's "a" flag (cors's "ajo")."""
    assert not Regex(r"b\.test$", ANCHORED).search(b"a.b.test") and Regex(r".*\.test$", ANCHORED).search(b"a.b.test")


def test_the_match_limit_stops_catastrophic_backtracking_with_an_error():
    """`^(\\w+\\s?)+$` over 40 letters and a "!" backtracks exponentially (hours in Python's re); Kong's match limit
    (nginx_http_lua_regex_match_limit, 100000) makes PCRE stop with an error instead."""
    assert MATCH_LIMIT == 100000
    regex = Regex(r"^(\w+\s?)+$")
    started = time.process_time()  # CPU time: a busy host's other work does not count
    with pytest.raises(PcreMatchError, match="match limit exceeded") as caught:
        regex.search(b"a" * 40 + b"!")
    assert time.process_time() - started < 0.5
    assert caught.value.code == -47 and caught.value.pattern == r"^(\w+\s?)+$"
    assert "100000" in str(caught.value)
    assert regex.search(b"a" * 40)  # and the same regex still matches what it should


def test_a_leading_dotstar_is_linear():
    """PCRE anchors a pattern starting with `.*` (it can only match at the start or after a newline): Kong's
    documented `.*(A|a)pples.*` over 32 KiB takes microseconds where Python's re took seconds."""
    regex = Regex(".*(A|a)pples.*")
    started = time.thread_time()  # CPU time: another test process (pytest-xdist) may hold the core meanwhile
    assert not regex.search(b"x" * 32768)
    assert regex.search(b"x" * 32768 + b" Apples")
    assert time.thread_time() - started < 0.05


def test_compiled_code_and_match_data_are_freed_with_the_regex():
    freed: list[tuple[int, int]] = []
    lib = pcre2._lib()
    real = lib.free
    lib.free = lambda code, data: (freed.append((code, data)), real(code, data))  # type: ignore[method-assign]
    try:
        regex = Regex("abc")
        del regex
        gc.collect()
    finally:
        del lib.free
    assert len(freed) == 1 and all(freed[0])


def test_a_missing_library_is_one_sentence_naming_it(monkeypatch):
    monkeypatch.setattr(pcre2, "LIBRARY", "libpcre2-8-absent.so.0")
    pcre2._load.cache_clear()
    try:
        why = pcre2.unavailable()
        assert why is not None and why.startswith("the regex library libpcre2-8-absent.so.0 (PCRE2, which Kong's")
        assert "\n" not in why and pattern_problem("a") == why
    finally:
        monkeypatch.undo()
        pcre2._load.cache_clear()
    assert pcre2.unavailable() is None
