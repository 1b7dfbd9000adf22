"""nginx's conditional request checks (ngx_http_not_modified_filter), sans-I/O.

nginx runs them on a 200 the server makes itself; Kong's kong.response.exit answers (request-termination, a
proxy-cache hit, a CORS preflight) are such answers, while a proxied answer skips them (nginx's
`r->disable_not_modified` for an upstream that is not cached). The ETag and Last-Modified they compare with are the
answer's own: without them If-Match and If-Unmodified-Since fail (412), and only `If-None-Match: *` gives a 304.
"""

from __future__ import annotations

from gateway.http.codec import Headers
from gateway.http.dates import parse_http_time

_CONDITIONS = frozenset({b"if-unmodified-since", b"if-match", b"if-modified-since", b"if-none-match"})
# What a 304 loses (the filter clears the Content-Type, the length, Accept-Ranges and Content-Encoding)
NOT_MODIFIED_DROPS = frozenset({b"content-type", b"content-length", b"accept-ranges", b"content-encoding"})
_BLANKS = b" \t"
_SEPARATORS = b" \t,"


def precondition(request: Headers, response: Headers) -> int:
    """412 (a precondition failed), 304 (not modified) or 0 (the 200 goes as it is), for a 200 with `response`'s
    headers answering a request with `request`'s (each condition at most once: the codec refuses a repeated one)."""
    asked: dict[bytes, bytes] | None = None
    for name, value in request:
        if name in _CONDITIONS:
            if asked is None:
                asked = {}
            asked[name] = value
    if asked is None:
        return 0
    etag = modified = None
    for name, value in response:
        if name == b"etag":
            etag = value
        elif name == b"last-modified":
            modified = parse_http_time(value)
    if (since := asked.get(b"if-unmodified-since")) is not None:
        unmodified_since = parse_http_time(since)
        # no date is nginx's -1 (NGX_ERROR), which a Last-Modified before 1969-12-31 23:59:59 still passes
        if modified is None or (-1 if unmodified_since is None else unmodified_since) < modified:
            return 412
    if (tags := asked.get(b"if-match")) is not None and not etag_matches(tags, etag, weak=False):
        return 412
    ims, inm = asked.get(b"if-modified-since"), asked.get(b"if-none-match")
    if ims is None and inm is None:
        return 0
    if ims is not None and (modified is None or parse_http_time(ims) != modified):
        return 0  # nginx's if_modified_since exact (the default): modified unless the dates are equal
    if inm is not None and not etag_matches(inm, etag, weak=True):
        return 0
    return 304


def etag_matches(tags: bytes, etag: bytes | None, weak: bool) -> bool:
    """ngx_http_test_if_match: `*` matches any answer; otherwise the ETag must stand where a tag of `tags` starts and
    be followed (blanks aside) by a comma or the end. The list is not split at its commas first, so an ETag holding
    one (`"v1,2"`) matches itself. `weak` (If-None-Match) ignores a `W/` on either side."""
    if tags == b"*":
        return True
    if etag is None:
        return False
    if weak and len(etag) > 2 and etag[:2] == b"W/":
        etag = etag[2:]
    size = len(etag)
    start, end = 0, len(tags)
    while start < end:
        if weak and end - start > 2 and tags[start:start + 2] == b"W/":
            start += 2
        if size > end - start:
            return False
        if tags.startswith(etag, start):
            start += size
            while start < end and tags[start] in _BLANKS:
                start += 1
            if start == end or tags[start] == 0x2C:  # ,
                return True
        comma = tags.find(b",", start)  # the next tag starts after the next comma and the blanks and commas after it
        if comma < 0:
            return False
        start = comma + 1
        while start < end and tags[start] in _SEPARATORS:
            start += 1
    return False
