"""The upstream path of a proxied request: Kong's join of the service path, the matched route path and the request
path (kong/router/utils.lua get_upstream_uri_v0). A route's path_handling v1 was the traditional router's; Kong's
default router (traditional_compatible, whose precedence gateway.routing.router follows) joins every route as v0
(kong/router/atc.lua), and so does this one.

`base` is the service's path ("/" when it has none), `req` the request path (without the query), `prefix_len` the
length of the part the route matched when strip_path is set and a path matched (0 otherwise).
"""

from __future__ import annotations

SLASH = ord("/")


def sanitize_postfix(postfix: bytes) -> bytes:
    """Kong's sanitize_uri_postfix: a postfix of "." or ".." is empty, a leading "./" or "../" is dropped."""
    if postfix in (b".", b".."):
        return b""
    if postfix[:2] == b"./":
        return postfix[2:]
    if postfix[:3] == b"../":
        return postfix[3:]
    return postfix


def join_v0(base: bytes, req: bytes, postfix: bytes, strip: bool) -> bytes:
    """Kong's get_upstream_uri_v0."""
    if base[-1:] == b"/":
        if strip:
            if not postfix:
                if base == b"/":
                    return b"/"
                return base if req[-1:] == b"/" else base[:-1]
            if postfix[0] == SLASH:
                return base[:-1] + postfix
            return base + postfix
        return base + req[1:]
    if strip:
        if not postfix:
            return base + b"/" if len(req) > 1 and req[-1:] == b"/" else base
        if postfix[0] == SLASH:
            return base + postfix
        return base + b"/" + postfix
    if req == b"/":
        return base
    return base + req


def upstream_path(base: bytes, req: bytes, prefix_len: int, strip: bool) -> bytes:
    """The path sent upstream. Without a stripped prefix the postfix is the request path minus its first "/"."""
    return join_v0(base, req, sanitize_postfix(req[prefix_len:] if strip and prefix_len else req[1:]), strip)
