"""A service's `url` as Kong 3.9.3 reads it: LuaSocket's `socket.url` parse, then the services shorthand.

Kong 3.9.3 pins luasocket 3.0-rc1 (kong-3.9.3-0.rockspec:17), whose src/url.lua (tag v3.0-rc1) `parse` takes a url
apart with Lua patterns, one after the other (lines 131-174); kong/db/schema/entities/services.lua:75-101 makes the
service's protocol, host, port and path of what it gives. urllib's urlsplit reads some urls otherwise (a `?` or a
second `@` before the path, an empty port, no scheme), so the gateway follows the Lua steps here.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

_SCHEME = re.compile(r"[A-Za-z0-9][A-Za-z0-9+.\-]*:")  # url.lua:140, "^([%w][%w%+%-%.]*)%:" (%w: ASCII)
_PORT = re.compile(r":([^:\]]*)\Z")  # url.lua:163, ":([^:%]]*)$": after the last ":" with no "]" behind it
_BRACKETED = re.compile(r"\[(.+)\]", re.DOTALL)  # url.lua:167, "^%[(.+)%]$" (Lua's "." takes any byte)
_LUA_SPACE = " \t\n\v\f\r"  # lj_char_isspace: what LuaJIT's tonumber skips around a number
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?")
_BINARY = re.compile(r"[+-]?0[bB][01]+")
DEFAULT_PROTOCOL = "http"  # services.lua:17


class UrlParts(NamedTuple):
    """What socket.url's parse gives that the services shorthand uses (None: the url has none)."""

    scheme: str | None
    authority: str | None  # what follows "//", up to the first "/"
    host: str | None
    port: str | None  # as written (maybe empty, or no number)
    path: str | None


class ServiceUrl(NamedTuple):
    """The service fields Kong's url shorthand sets (services.lua:83-101), before its schema checks them."""

    protocol: str  # the scheme as written; without one, "https" for port 443, else "http"
    host: str | None
    port: float | str | None  # Lua's tonumber of the url's port, else the port as written; None: not given
    path: str | None
    absolute: bool  # whether the url has an authority (`//...`): without one it names no host

    def port_problem(self) -> str | None:
        """Kong's typedefs.port check of the url's port (kong/db/schema/init.lua:978-984, 216), or None."""
        if self.port is None:
            return None
        if isinstance(self.port, str) or not math.isfinite(self.port) or self.port != int(self.port):
            return "expected an integer"
        return None if 0 <= self.port <= 65535 else "value should be between 0 and 65535"

    def url(self) -> str:
        """The url written back so that urlsplit reads what Kong read: scheme, [IPv6] host, port if given, path."""
        host = self.host or ""
        port = "" if self.port is None else f":{int(self.port)}"
        return f"{self.protocol}://{f'[{host}]' if ':' in host else host}{port}{self.path or ''}"


def parse(url: str) -> UrlParts | None:
    """socket.url's parse (url.lua:126-175 at v3.0-rc1), step by step; None for an empty url, as its nil."""
    if not url:  # :131
        return None
    url = url.partition("#")[0]  # :135-138: the fragment first, from the first "#"
    scheme = None
    if m := _SCHEME.match(url):  # :140-141
        scheme, url = m[0][:-1], url[m.end():]
    authority = None
    if url.startswith("//"):  # :143-146: the authority runs to the first "/" ("?" and ";" included)
        authority, slash, rest = url[2:].partition("/")
        url = slash + rest
    url = url.partition("?")[0].partition(";")[0]  # :148-156: the query, then the params
    path = url or None  # :158
    if authority is None:  # :160
        return UrlParts(scheme, None, None, None, path)
    hostport = authority.partition("@")[2] if "@" in authority else authority  # :161-162: userinfo to the first @
    port = None
    if m := _PORT.search(hostport):  # :163-164
        port, hostport = m[1], hostport[:m.start()]
    host = None
    if hostport:  # :165-168: an IPv6 address loses its brackets
        host = m[1] if (m := _BRACKETED.fullmatch(hostport)) else hostport
    return UrlParts(scheme, authority, host, port, path)


def fragment_and_query(url: str) -> tuple[str | None, str | None]:
    """The fragment and the query socket.url's parse gives (url.lua:135-152), which `parse` leaves out: the fragment
    from the first "#", the query from the first "?" after the authority; None: the url has none."""
    url, hash_sign, fragment = url.partition("#")
    if m := _SCHEME.match(url):
        url = url[m.end():]
    if url.startswith("//"):
        _, slash, rest = url[2:].partition("/")
        url = slash + rest
    _, question_mark, query = url.partition("?")
    return (fragment if hash_sign else None), (query if question_mark else None)


def userinfo(parts: UrlParts) -> str | None:
    """socket.url's userinfo (url.lua:161): the authority up to its first "@", as written; None without an "@"."""
    return parts.authority.partition("@")[0] if parts.authority is not None and "@" in parts.authority else None


def url_problem(url: str) -> str | None:
    """Kong's typedefs.url check (kong/db/schema/typedefs.lua:205-221): socket.url's parse must give a host, then a
    scheme. Kong's words and what to write, or None where Kong takes the url."""
    parts = parse(url)
    if parts is None:
        return "could not parse url. invalid url"
    if parts.host is None:
        return ("missing host in url (Kong's url takes the host after the scheme's //, up to the first /, less a "
                "user info ending in @ and a :port; write scheme://host/path, nothing before the scheme)")
    if parts.scheme is None:
        return ("missing scheme in url (Kong's url takes one only at the very start: a letter or digit, then "
                "letters, digits, +, - and ., then a colon, as in http://)")
    return None


def lua_tonumber(text: str) -> float | None:
    """LuaJIT's tonumber of a string (lj_strscan.c): decimal, 0x hex or 0b binary, with a sign and spaces around;
    None for what it refuses (inf and nan are numbers to it, but no port: None serves the same)."""
    text = text.strip(_LUA_SPACE)
    if _DECIMAL.fullmatch(text):
        return float(text)
    if _HEX.fullmatch(text):
        return float.fromhex(text)
    if _BINARY.fullmatch(text):
        return float(int(text, 0))
    return None


def read_service_url(url: str) -> ServiceUrl | None:
    """A service url as Kong's shorthand reads it (services.lua:79-101); None where it sets nothing (an empty
    url)."""
    parts = parse(url)
    if parts is None:  # services.lua:80-83
        return None
    number = None if parts.port is None else lua_tonumber(parts.port)
    inferred = "http" if number == 80 else "https" if number == 443 else None  # :85-91
    protocol = parts.scheme or inferred or DEFAULT_PROTOCOL  # :93
    port = number if number is not None else parts.port  # :97-101 (without one, the protocol's: left to the url)
    return ServiceUrl(protocol, parts.host, port, parts.path, parts.authority is not None)
