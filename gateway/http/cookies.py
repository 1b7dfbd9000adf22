"""nginx's $cookie_NAME, sans-I/O: what Kong's plugins and balancer read of a Cookie header."""

from __future__ import annotations

from gateway.http.codec import Headers


def cookie_value(headers: Headers, name: bytes) -> bytes | None:
    """The first cookie named `name` (compared ignoring case) in the Cookie fields, as ngx_http_parse_cookie_lines
    finds it: items end at ";" only (a "," is part of a value), spaces around the name and after "=" are skipped,
    and the value runs to the next ";", trailing spaces included."""
    wanted = name.lower()
    for hname, value in headers:
        if hname == b"cookie":
            for part in value.split(b";"):
                k, eq, v = part.lstrip(b" ").partition(b"=")
                if eq and k.rstrip(b" ").lower() == wanted:
                    return v.lstrip(b" ")
    return None
