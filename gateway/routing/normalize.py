"""Request paths as Kong routes them (kong/tools/uri.lua), sans-I/O: `normalize_path` before matching, so that
`/%61dmin`, `/public/../admin` and `//admin` reach the route (and its plugins) that `/admin` reaches, and
`escape_path` for the path then sent upstream.

Normalizing: percent-encoded octets are decoded, except those of reserved characters (RFC 3986 gen-delims and
sub-delims, and "%"), whose triplets are upper-cased; dot segments are removed; and runs of slashes are merged.
"""

from __future__ import annotations

import re

_RESERVED = frozenset(b"!#$%&'()*+,/:;=?@[]")
_TRIPLET = re.compile(rb"%([0-9A-Fa-f]{2})")
# What escape_path leaves as it is (Kong's escape: everything else becomes %XX)
_UNSAFE = re.compile(rb"[^!#$&'()*+,/:;=?@\[\]A-Za-z0-9\-_.~%]")


def _decode(m: re.Match[bytes]) -> bytes:
    octet = int(m.group(1), 16)
    return m.group(0).upper() if octet in _RESERVED else bytes((octet,))


def normalize_path(path: bytes) -> bytes:
    """Kong's normalize(path, merge_slashes=true). A path with no "%", no "/." and no "//" is returned as it is (the
    same object: the router tells by `is` that nothing changed)."""
    if b"%" in path:
        path = _TRIPLET.sub(_decode, path)
    return _resolve_segments(path)


def _octet(m: re.Match[bytes]) -> bytes:
    return bytes((int(m.group(1), 16),))


def nginx_uri(path: bytes) -> bytes:
    """nginx's $uri of a request path (ngx_http_parse_complex_uri, merge_slashes on): cut at a "#" (`goto done`; a
    "%23" is kept), every %XX decoded once, the octet then read as if sent raw (a decoded "/" separates segments), dot
    segments removed, slashes merged."""
    if b"#" in path:
        path = path[:path.index(b"#")]
    if b"%" in path:
        path = _TRIPLET.sub(_octet, path)
    return _resolve_segments(path)


_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def nginx_refusal(target: bytes) -> str | None:
    """Why nginx answers a request target (origin form) 400 "client sent invalid request" before any Lua runs, or
    None: ngx_http_parse_complex_uri refuses, in the path alone (up to the first "?" or "#"), a "%" not followed by
    two hex digits, an escaped NUL (%00) and a ".." segment above the root once every %XX is decoded ("%2e%2e" too).
    (nginx parses only a path with a "%" or "/." so: the codecs call this for those alone.)"""
    path = target.partition(b"?")[0].partition(b"#")[0]
    if b"%" in path:
        if _BAD_ESCAPE.search(path) is not None:
            return "invalid request: a \"%\" in the path is not followed by two hex digits (send \"%\" as %25)"
        path = _TRIPLET.sub(_octet, path)
        if b"\x00" in path:  # (the codecs refuse a raw NUL: this one was %00)
            return "invalid request: an encoded NUL (%00) in the path"
    if b"/.." in path and _climbs(path):
        return "invalid request: a \"..\" segment of the path climbs above its root"
    return None


def _climbs(path: bytes) -> bool:
    """Whether a ".." segment of `path` has no segment left to remove (nginx's sw_dot_dot reaching the start)."""
    depth = 0
    for segment in path.split(b"/"):
        if segment == b"..":
            if not depth:
                return True
            depth -= 1
        elif segment and segment != b".":
            depth += 1
    return False


def _resolve_segments(path: bytes) -> bytes:
    """`path` with its dot segments removed and runs of slashes merged; `path` itself when it has none."""
    if b"/." not in path and b"//" not in path and path[:1] != b".":  # (a dot segment starts after a slash)
        return path
    kept: list[bytes] = []  # segments, each with the slash that ended it
    start = 1 if path[:1] == b"/" else 0
    while True:
        end = path.find(b"/", start)
        segment = path[start:] if end < 0 else path[start:end]
        if segment == b"..":
            if kept:
                kept.pop()
        elif segment not in (b"", b"."):
            kept.append(segment if end < 0 else path[start:end + 1])
        if end < 0:
            break
        start = end + 1
    return (b"/" if path[:1] == b"/" else b"") + b"".join(kept)


def needs_escape(path: bytes) -> bool:
    """Whether `escape_path` would change `path`."""
    return _UNSAFE.search(path) is not None


_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def header_safe(value: bytes) -> bytes:
    """`value` with its control bytes (CR, LF, NUL, ...) %-escaped, so that it can go in a header line."""
    return _CONTROL.sub(lambda m: b"%%%02X" % m.group(0)[0], value)


def escape_path(path: bytes) -> bytes:
    """Kong's escape: any octet outside the unreserved and reserved characters (and "%") as an upper-case %XX."""
    return _UNSAFE.sub(lambda m: b"%%%02X" % m.group(0)[0], path)
