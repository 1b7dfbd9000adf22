"""Kong's kong.response.set_header / add_header / clear_header over a header list (lower-case names, bytes)."""

from __future__ import annotations

from gateway.http.codec import Headers


def set_header(headers: Headers, name: bytes, value: bytes) -> Headers:
    """Replace every `name` header with one of `value` (appended at the end, as nginx does)."""
    headers[:] = [hv for hv in headers if hv[0] != name]
    headers.append((name, value))
    return headers


def add_header(headers: Headers, name: bytes, value: bytes) -> Headers:
    """One more `name` header, keeping those already there."""
    headers.append((name, value))
    return headers


def clear_header(headers: Headers, name: bytes) -> Headers:
    headers[:] = [hv for hv in headers if hv[0] != name]
    return headers


def get_header(headers: Headers, name: bytes) -> bytes | None:
    """The first `name` header's value, or None."""
    for hname, value in headers:
        if hname == name:
            return value
    return None


def count_header(headers: Headers, name: bytes) -> int:
    return sum(1 for hname, _ in headers if hname == name)
