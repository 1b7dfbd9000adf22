"""The upstream path of a proxied request: Kong's join of the service path, the matched route path and the request
path, for path_handling v0 (kong/router/utils.lua get_upstream_uri_v0) and v1 (the traditional router's).

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


def join_v1(base: bytes, req: bytes, postfix: bytes, strip: bool) -> bytes:
    """The traditional router's path_handling v1: the matched part is replaced by the service path."""
    if strip:
        if base[-1:] == b"/" and postfix[:1] == b"/":
            return base[:-1] + postfix
        return base + postfix
    return base + req[1:]


def upstream_path(base: bytes, req: bytes, prefix_len: int, strip: bool, v1: bool = False) -> bytes:
    """The path sent upstream. Without a stripped prefix the postfix is the request path minus its first "/"."""
    postfix = sanitize_postfix(req[prefix_len:] if strip and prefix_len else req[1:])
    return join_v1(base, req, postfix, strip) if v1 else join_v0(base, req, postfix, strip)
