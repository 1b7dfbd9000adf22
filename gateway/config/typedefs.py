"""Kong's typedefs (kong/db/schema/typedefs.lua) as checks: each returns what is wrong with a value, in Kong's
words, or None for a value Kong takes. The entities' checks (gateway.config.loader, gateway.config.schema) name the
field."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

import msgspec

from gateway.config.errors import inline, show
from gateway.config.patterns import regex_problem
from gateway.routing.normalize import normalize_path

_KONG_PATH = re.compile(r"/[A-Za-z0-9._~/%:@!$&'()*+,;=-]*")  # typedefs.path's RFC 3986 characters
HEADER_NAME = re.compile(r"[A-Za-z0-9_-]+")  # typedefs.header_name (kong.tools.http.validate_header_name)
# Kong's string field: "" is refused, "length must be at least 1" (kong/db/schema/init.lua gives every string without
# its own len_min a len_min of 1; gateway.config.errors words msgspec's refusal so)
KongString = Annotated[str, msgspec.Meta(min_length=1)]


def kong_path_problem(path: str) -> str | None:
    """Kong's typedefs.path check (its messages), or None for a path it takes."""
    if not path.startswith("/"):
        return "should start with: /"
    if "//" in path:
        return "must not have empty segments"
    if not _KONG_PATH.fullmatch(path):
        return f"invalid path: '{inline(path)}' (characters outside of the reserved list of RFC 3986 found)"
    bad = re.search(r"%(?![0-9A-Fa-f]{2}).{0,2}", path)
    if bad:
        return f"invalid url-encoded value: '{inline(bad.group(0))}'"
    return None


_KONG_IPV4 = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})(?::([0-9]+))?")
_KONG_IPV6 = re.compile(":".join([r"[0-9A-Fa-f]{1,4}"] * 8))
_KONG_HOSTNAME = re.compile(r"[0-9A-Za-z._-]+")
_BAD_PORT = "invalid port number"


def kong_address(address: str) -> tuple[str, str, int | None] | str:
    """kong.tools.ip's normalize_ip: ("ipv4" | "ipv6" | "name", host, port or None) for "host", "host:port",
    "ipv6", "[ipv6]" or "[ipv6]:port", or its error message. The kind is decided by the characters alone, as Kong's
    hostname_type: two colons make an IPv6 address, digits and dots an IPv4 one, anything else a name."""
    if address.count(":") > 1:
        return _kong_ipv6(address)
    if re.fullmatch(r"[0-9.]+", address.replace(":", "")):
        m = _KONG_IPV4.fullmatch(address)
        octets = [int(o) for o in m.groups()[:4]] if m else []
        if not m or (":" in address) != (m.group(5) is not None) or max(octets) > 255:
            return f"invalid ipv4 address: {address}"
        port = int(m.group(5)) if m.group(5) else None
        if port is not None and port > 65535:
            return _BAD_PORT
        return "ipv4", ".".join(map(str, octets)), port
    name, port = address, None
    digits = re.search(r":([0-9]+)\Z", address)  # check_hostname's ":(%d+)$": Lua's `$` takes no final "\n"
    if digits:
        name, port = address[:digits.start()], int(digits.group(1))
        if port > 65535:
            return _BAD_PORT
    segments = name.split(".")
    if not _KONG_HOSTNAME.fullmatch(name) or any(s.endswith("-") or (not s and i < len(segments) - 1)
                                                 for i, s in enumerate(segments)):
        return f"invalid hostname: {inline(address)}"
    return "name", name, port


def _kong_ipv6(address: str) -> tuple[str, str, int | None] | str:
    check, port = address, None
    bracketed = re.fullmatch(r"\[([^\]]*)\](.*)", address, re.DOTALL)
    if bracketed:
        check, rest = bracketed.groups()
        if rest:
            m = re.fullmatch(r":([0-9]+)", rest)
            if not m:
                return "invalid ipv6 address"
            port = int(m.group(1))
            if port > 65535:
                return _BAD_PORT
    if check.startswith(":"):
        check = "0" + check
    if check.endswith(":"):
        check += "0"
    if "::" in check:
        check = check.replace("::", ":" + "0:" * (8 - check.count(":")), 1)
    if not _KONG_IPV6.fullmatch(check):
        return f"invalid ipv6 address: {inline(address)}"
    return "ipv6", ":".join(group.rjust(4, "0") for group in check.lower().split(":")), port


def sni_problem(name: str) -> str | None:
    """Kong's typedefs.sni check (typedefs.lua validate_sni: normalize_ip, then its three messages in that order), or
    None for a name it takes: a host name as check_hostname has it (`_` taken, a final dot too), no IP, no port."""
    address = kong_address(name)
    if isinstance(address, str) and address != _BAD_PORT:
        return f"invalid value: {inline(name)}"
    if isinstance(address, tuple) and address[0] != "name":
        return "must not be an IP"
    if address == _BAD_PORT or (isinstance(address, tuple) and address[2] is not None):
        return "must not have a port"
    return None


_STAR_LISTEN = re.compile(r"\A\s*\*(?=:[0-9]+(?:\s|\Z))")


def any_address(entry: str) -> str:
    """A listen entry's `*:PORT` as `0.0.0.0:PORT`: Kong's listeners.lua keeps `*` as a name, and nginx listens on
    every IPv4 address for it (src/core/ngx_inet.c, `u->listen && len == 1 && *host == '*'`: INADDR_ANY)."""
    return _STAR_LISTEN.sub("0.0.0.0", entry, count=1)


def listen_host_problem(host: str) -> str | None:
    """What makes a listen address's host one no socket can bind, in Kong's words (normalize_ip: an IPv4 address,
    a bracketed IPv6 one or a host name, each by its characters), or None."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"invalid ipv6 address: {inline(host)}"
        return None
    address = kong_address(host)
    return address if isinstance(address, str) else None


def kong_host_problem(host: str) -> str | None:
    """Kong's typedefs.host check (a name or an IP, no port; its messages), or None for a host it takes."""
    address = kong_address(host)
    if address == _BAD_PORT or (isinstance(address, tuple) and address[2] is not None):
        return "must not have a port"
    if isinstance(address, str):
        return f"invalid value: {inline(host)}"
    return None


def utf8_name_problem(name: str) -> str | None:
    """Kong's typedefs.utf8_name check (services' names): ASCII letters, digits and `.-_~`, or any non-ASCII."""
    if not name:
        return "length must be at least 1"
    if problem := _utf8_problem(name):
        return problem
    if any(c.isascii() and not (c.isalnum() or c in ".-_~") for c in name):
        return f"invalid value '{inline(name)}': the only accepted ascii characters are alphanumerics or ., -, _, and ~"
    return None


def _utf8_problem(text: str) -> str | None:
    """Kong's validate_utf8: YAML's escapes can make a lone surrogate, which no UTF-8 sequence encodes."""
    bad = next((i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff"), None)
    return None if bad is None else f"invalid utf-8 character sequence detected at position {bad + 1}"


def tag_problem(tag: str) -> str | None:
    """Kong's typedefs.tag check: printable ASCII but `,` and `/` (space included), or any non-ASCII."""
    if not tag:
        return "length must be at least 1"
    if problem := _utf8_problem(tag):
        return problem
    if any(c.isascii() and (not 32 <= ord(c) <= 126 or c in ",/") for c in tag):
        return f"invalid tag '{inline(tag)}': expected printable ascii (except `,` and `/`) or valid utf-8 sequences"
    return None


_HEX_TRIPLET = re.compile(r"%[0-9A-Fa-f]{2}")


def router_path_problem(path: str) -> str | None:
    """Kong's typedefs.router_path: "/" and a prefix, or "~/" and a regex; no empty segment; a prefix in the
    normalized form the router compares it in (its %XX triplets well formed)."""
    if not path.startswith(("/", "~")):
        return f'a path starts with "/" (prefix) or "~" (regex), got {show(path)}'
    if not path.startswith(("/", "~/")):
        return f'a regex path starts with "~/", got {show(path)}'
    if "//" in path:
        return f"must not have empty segments, got {show(path)}"
    if path.startswith("~"):
        if dry_run := pcre_dry_run_problem(path[1:]):  # Kong's schema check
            return dry_run
        problem = regex_problem(path[1:])  # as the router compiles it
        return None if problem is None else f"invalid regex {show(path[1:])}: {problem}"
    if _KONG_PATH.fullmatch(path):  # (Kong checks the %XX triplets of such a path only)
        raw = _HEX_TRIPLET.sub("___", path)
        if "%" in raw:
            start = raw.index("%")
            return f"invalid url-encoded value {show(raw[start:start + 3])} (a literal \"%\" is %25), got {show(path)}"
    normalized = normalize_path(path.encode())
    if normalized != path.encode():
        try:
            return (f"non-normalized path, consider using {show(normalized.decode())} instead (Kong compares a prefix "
                    f"with the normalized request path), got {show(path)}")
        except UnicodeDecodeError:
            return f"non-normalized path: its %XX triplets decode to octets that are not UTF-8, got {show(path)}"
    return None


def pcre_dry_run_problem(regex: str) -> str | None:
    """Kong's dry run of a `~` path's regex (typedefs.lua validate_path_with_regexes: `ngx.re.find("", path, "aj")`,
    PCRE2 without UTF mode, so `\\u`, `\\x{263a}` and `(?u)` are refused), in its words, or None when it compiles."""
    from gateway.policies import pcre2  # (at first use: gateway.policies' __init__ imports every plugin)
    if pcre2.unavailable():
        return None  # (regex_problem says so)
    problem = pcre2.pattern_problem(regex, pcre2.ANCHORED)
    if problem is None:
        return None
    reason, _, offset = problem.rpartition(" at offset ")
    rest = pcre2.utf8(regex)[int(offset):].decode("utf-8", "replace")
    where = f' at "{rest}"' if rest else ""  # (nginx's ngx_http_lua_regex_compile names the rest of the pattern)
    return inline(f"invalid regex: '{regex}' (PCRE returned: pcre2_compile() failed: {reason} in \"{regex}\"{where})")


def hosts_problem(host: str) -> str | None:
    """Kong's typedefs.hosts (its messages): at most one wildcard, as a whole leftmost or rightmost label; then, the
    wildcard taken for a label, an IPv4 or IPv6 address or a host name, with an optional port."""
    if not host:
        return "length must be at least 1"
    if host.count("*") > 1:
        return f"invalid wildcard: must have at most one wildcard, got {show(host)}"
    if "*" in host and not (host.startswith("*.") or host.endswith(".*")):
        return f"invalid wildcard: must be placed at leftmost or rightmost label, got {show(host)}"
    stand_in = host.replace("*", "abc")
    address = kong_address(stand_in)
    if not isinstance(address, str):
        return None
    shown_in, shown = inline(stand_in), inline(host)  # (kong_address shows the address it was given)
    return address.replace(shown_in, shown) if shown_in in address else f"{address}, got {show(host)}"


def upstream_name_problem(name: str) -> str | None:
    """Kong's upstreams name check: a host name (services name it as their host), no IP, no port."""
    address = kong_address(name)
    shown = f"Invalid name ('{inline(name)}')"
    if isinstance(address, str):
        return f"{shown}; must be a valid hostname"
    if address[0] != "name":
        return f"{shown}; no ip addresses allowed"
    if address[2] is not None:
        return f"{shown}; no port allowed"
    return None


def target_problem(target: str) -> str | None:
    """targets.target: a host name or an IP address, with or without a port (a port out of range is the loader's to
    report, with the forms a target takes)."""
    address = kong_address(target)
    if isinstance(address, str) and address != _BAD_PORT:
        return f"Invalid target ('{inline(target)}'); not a valid hostname or ip address"
    return None


def wildcard_host_problem(host: str) -> str | None:
    """typedefs.wildcard_host (routes' snis): a host name with at most one `*`, as its first or last character (a
    postfix or prefix match: `*foo.test` is any name ending in foo.test, foo.test itself too); not an IP, no port."""
    at = host.find("*")
    if at >= 0:
        if at not in (0, len(host) - 1):
            return "wildcard must be leftmost or rightmost character"
        if host.count("*") > 1:
            return "only one wildcard must be specified"
        host = host.replace("*", "wildcard")
    return sni_problem(host)  # (validate_wildcard_host's remaining checks are validate_sni's)


def header_name_problem(name: str) -> str | None:
    """typedefs.header_name (kong.tools.http.validate_header_name)."""
    if HEADER_NAME.fullmatch(name):
        return None
    return f"bad header name '{inline(name)}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"


def path_problem(path: str) -> str | None:
    """typedefs.path of a field that is set: at least one character, then kong_path_problem."""
    return "length must be at least 1" if not path else kong_path_problem(path)
