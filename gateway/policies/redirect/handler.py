"""Kong's redirect (kong/plugins/redirect/handler.lua): every request is answered `status_code` with
`Location: <location>` and the body "redirecting" (a 204: the head alone, as nginx sends it). With
`keep_incoming_path` Kong parses the location with ada (a WHATWG URL parser, 2.9 in Kong 3.x), sets its pathname to
kong.request.get_path() (the request's path, normalized) and its search to the raw query, and sends the href: scheme
and host lower-cased, a default port dropped, the location's fragment kept, the path and query percent-encoded as
WHATWG's setters encode them (see `url_path` and `url_query`)."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from gateway.http.server import Exchange
from gateway.policies.redirect.schema import RedirectConfig
from gateway.routing.normalize import normalize_path

BODY = b"redirecting"

# WHATWG's special schemes (their default ports): "\" separates their path segments as "/" does
SPECIAL = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21, "file": None}
# WHATWG's percent-encode sets (C0 controls, and every octet past "~", in all of them)
_PATH_SET = re.compile(rb'[\x00-\x20"#<>?`{}\x7f-\xff]')
_QUERY_SET = re.compile(rb'[\x00-\x20"#<>\x7f-\xff]')
_SPECIAL_QUERY_SET = re.compile(rb'[\x00-\x20"#<>\'\x7f-\xff]')
_FRAGMENT_SET = re.compile(rb'[\x00-\x20"<>`\x7f-\xff]')


def _escape(m: re.Match[bytes]) -> bytes:
    return b"%%%02X" % m.group(0)[0]


def url_path(path: bytes, special: bool) -> bytes:
    """ada's set_pathname of an already normalized path: for a special scheme "\\" is a "/" (and the dot segments
    that makes are removed), then the octets of the path percent-encode set are escaped ("%" is left as it is)."""
    if special and b"\\" in path:
        parts = path.replace(b"\\", b"/").split(b"/")
        if parts[0] == b"":
            del parts[0]
        kept: list[bytes] = []
        for i, segment in enumerate(parts):
            if segment in (b".", b".."):
                if segment == b".." and kept:
                    kept.pop()
                if i == len(parts) - 1:
                    kept.append(b"")
            else:
                kept.append(segment)
        path = b"/" + b"/".join(kept)
    elif not path.startswith(b"/"):
        path = b"/" + path
    return _PATH_SET.sub(_escape, path)


def url_query(query: bytes, special: bool) -> bytes:
    """ada's set_search: nothing (no "?") for an empty query, else "?" and the query less one leading "?", with the
    octets of the (special-)query percent-encode set escaped."""
    if not query:
        return b""
    encode_set = _SPECIAL_QUERY_SET if special else _QUERY_SET
    return b"?" + encode_set.sub(_escape, query[1:] if query[:1] == b"?" else query)


def _origin(location: str) -> tuple[bytes, bytes, bool]:
    """(scheme://userinfo@host:port, #fragment, special) of the location as ada writes them in an href."""
    parts = urlsplit(location)
    scheme = parts.scheme.lower()
    _, hash_mark, after = location.partition("#")
    fragment = _FRAGMENT_SET.sub(_escape, (hash_mark + after).encode())
    if scheme not in SPECIAL:  # an opaque host, kept as written
        return f"{scheme}://{parts.netloc}".encode(), fragment, False
    try:
        port = parts.port
    except ValueError:  # not a port number: left as written
        return f"{scheme}://{parts.netloc}".encode(), fragment, True
    userinfo = parts.netloc.rpartition("@")[0]
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address (urlsplit took its brackets off)
        host = "[" + (ipaddress.IPv6Address(host).compressed if _is_ipv6(host) else host) + "]"
    elif not host.isascii():
        try:
            host = host.encode("idna").decode()
        except UnicodeError:
            pass
    if port is not None and port != SPECIAL.get(scheme):
        host += f":{port}"
    return f"{scheme}://{userinfo + '@' if userinfo else ''}{host}".encode(), fragment, True


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


class Redirect:
    name = "redirect"
    priority = 779  # Kong's: after the limits and transformations, before what calls the upstream

    def __init__(self, config: RedirectConfig) -> None:
        self.status = config.status_code
        self.location = config.location.encode()
        self.keep = config.keep_incoming_path
        # (only keep_incoming_path reads the location, which the schema then made sure urlsplit can)
        self.origin, self.fragment, self.special = _origin(config.location) if self.keep else (b"", b"", False)

    async def access(self, ex: Exchange) -> bool:
        location = self.location
        if self.keep:
            path, _, query = ex.request.target.partition(b"?")
            location = self.origin + url_path(normalize_path(path), self.special) + \
                url_query(query, self.special) + self.fragment
        if self.status == 204:  # nginx's header filter: a 204 is the head alone, without Content-Length
            await ex.send_head(204, [(b"location", location)], end=True)
        else:
            await ex.send_head(self.status, [(b"location", location), (b"content-length", b"%d" % len(BODY))], BODY,
                               end=True)
        return True
