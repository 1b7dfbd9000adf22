"""nginx's $cookie_NAME, sans-I/O: what Kong's plugins and balancer read of a Cookie header."""

from __future__ import annotations

import re

from gateway.http.codec import Headers

_PAIR_END = re.compile(rb"[;,]")


def cookie_value(headers: Headers, name: bytes) -> bytes | None:
    """The first cookie named `name` in the Cookie fields, as nginx 1.27.1 (Kong 3.x's OpenResty 1.27.1) finds it
    (src/http/ngx_http_parse.c ngx_http_parse_multi_header_lines): at the start of each pair, the name compared
    ignoring case, then spaces, "=" and spaces; the value runs to the next ";" (a "," is part of it, trailing spaces
    too). A pair that is not the one asked for ends at the next ";" or "," (and one whose name is followed by
    neither spaces nor "=" loses that character first, as nginx's `*start++`)."""
    wanted = name.lower()
    size = len(wanted)
    for hname, value in headers:
        if hname != b"cookie":
            continue
        lowered = value.lower()
        end = len(value)
        start = 0  # (a field's value comes without its leading spaces, from the codecs as from nginx's parser)
        while start < end:
            if lowered.startswith(wanted, start):
                start += size
                while start < end and value[start] == 0x20:
                    start += 1
                if start < end:
                    start += 1
                    if value[start - 1] == 0x3D:  # "="
                        while start < end and value[start] == 0x20:
                            start += 1
                        last = value.find(b";", start)
                        return value[start:] if last < 0 else value[start:last]
            found = _PAIR_END.search(value, start)
            start = end if found is None else found.end()
            while start < end and value[start] == 0x20:
                start += 1
    return None
