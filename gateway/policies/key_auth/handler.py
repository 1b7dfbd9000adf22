"""Kong's key-auth: an API key from a header, the query string or (key_in_body) the body names a consumer's keyauth
credential. Each of `key_names` in turn is looked for in the headers, then the query, then the body; the first
found is the key.

Kong's answers: 401 "No API key found in request", "Duplicate API key found" (the same name given twice),
"Unauthorized" (no such key, or one whose credential's `ttl`, a Unix time, is past), each with
`WWW-Authenticate: Key` (or `Key realm="..."`).

The body is read only when a name is in neither the headers nor the query, or to take the key out of it
(hide_credentials), and as Kong's kong.request.get_body reads it (gateway.policies.request_body): a form, JSON or
multipart body, read whole up to BODY_LIMIT (Kong's buffer is 8 KiB). One that cannot be read so holds no key.
With hide_credentials the name is taken out of the body and the body written again in its type, as Kong's
kong.service.request.set_body writes it, whichever of the three places the key came from.

Headers and query arguments are read as Kong's get_headers and get_query read them: the first 100 of each
(lua_max_req_headers, lua_max_uri_args); a key name is looked up lower-cased, else that with "_" as "-"
(ngx.req.get_headers' table: key name "Api_Key" finds a header `api_key`, else `api-key`). hide_credentials removes the
name from the query as Kong's clear_query_arg does (the query parsed and written again by ada's URLSearchParams) and
the header it names; unlike Kong it also removes the header the key was read from when that is spelled otherwise
(Kong leaves `api-key` upstream for key name "api_key").
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote_to_bytes

from gateway.http.codec import Request
from gateway.http.server import Exchange
from gateway.policies.consumers import (
    AuthPolicy,
    Directory,
    Identity,
    Rejection,
    first_headers,
    header_value,
    header_values,
    query_values,
    remove_header,
)
from gateway.policies.header_list import set_header
from gateway.policies.key_auth.schema import KeyAuthConfig
from gateway.policies.request_body import get_body, set_body

BODY_LIMIT = 1024 * 1024  # bytes of a body searched for a key; a larger one holds none (Kong: over its buffer)
_UNREAD: Any = object()
# ada 2.9.2's application/x-www-form-urlencoded serializing of each byte (its table leaves "\\" as is), with Kong's
# "+" for a space then written "%20"
_FORM_BYTE = [bytes([b]) if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "*-._\\") else
              b"%20" if b == 0x20 else b"%%%02X" % b for b in range(256)]


class KeyName:
    """One of key_names, prepared at config load: the query argument, the headers it is looked up as, in order, and
    the headers hide_credentials removes."""

    __slots__ = ("name", "query", "headers", "hidden")

    def __init__(self, name: str) -> None:
        self.name = name
        self.query = name.encode("utf-8", "surrogateescape")
        lowered = name.lower()
        normal = lowered.replace("_", "-").encode()
        # ngx.req.get_headers' table: its keys are the (lower-case) names as sent, "_" kept; lua-resty-core's
        # metatable looks a name up lower-cased, then (a miss) with "_" as "-"
        self.headers = (lowered.encode(), normal) if "_" in name else (normal,)
        self.hidden = tuple(dict.fromkeys((lowered.encode(), *self.headers)))  # clear_header(name), and the above


Keys = dict[bytes, Identity]
ExpiringKeys = dict[bytes, tuple[float, Identity]]


def key_index(directory: Directory) -> tuple[Keys, ExpiringKeys]:
    """The config's keys as every key-auth instance looks them up (one table per config load, as Kong's one cache):
    those without a ttl, and those with one, looked up only on a miss: (Unix time they end at, identity)."""
    expiry = directory.api_key_expiry
    keys: Keys = {}
    expiring: ExpiringKeys = {}
    for key, who in directory.api_keys.items():
        raw = key.encode("utf-8", "surrogateescape")
        if key in expiry:
            expiring[raw] = (expiry[key], who)
        else:
            keys[raw] = who
    return keys, expiring


class KeyAuth(AuthPolicy):
    name = "key-auth"
    priority = 1250  # Kong's
    __slots__ = ("names", "in_header", "in_query", "searches_body", "hide", "keys", "expiring", "no_key", "duplicate",
                 "invalid")

    def __init__(self, config: KeyAuthConfig, directory: Directory) -> None:
        super().__init__(directory.anonymous(config.anonymous), config.run_on_preflight)
        self.names = [KeyName(name) for name in config.key_names]
        self.in_header = config.key_in_header
        self.in_query = config.key_in_query
        self.searches_body = config.key_in_body
        self.hide = config.hide_credentials
        self.keys, self.expiring = directory.index(key_index)
        realm = f'Key realm="{config.realm}"' if config.realm is not None else "Key"
        self.no_key = Rejection(401, "No API key found in request", realm)
        self.duplicate = Rejection(401, "Duplicate API key found", realm)
        self.invalid = Rejection(401, "Unauthorized", realm)

    def authenticate(self, ex: Exchange) -> Identity | Rejection:
        req = ex.request
        key: bytes | None = None
        for kn in self.names:
            values = self._lookup(req, kn)
            if len(values) > 1:
                return self.duplicate
            if not values or values[0] is None:  # absent, or a bare `?apikey`: try the next name
                continue
            value = values[0]
            key = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
            if self.hide:
                _hide(ex, kn)
            break
        return self._identify(key)

    def _lookup(self, req: Request, kn: KeyName) -> list[bytes] | list[str | None]:
        """The values of `kn` in the headers (key_in_header), else in the query (key_in_query), as Kong finds them."""
        if self.in_header:
            headers = first_headers(req.headers)
            for hname in kn.headers:
                found = header_values(headers, hname)
                if found:
                    return found
        return query_values(req.target, kn.name) if self.in_query else []

    def _identify(self, key: bytes | None) -> Identity | Rejection:
        if not key:
            return self.no_key
        who = self.keys.get(key)
        if who is not None:
            return who
        if self.expiring:
            return self._unexpired(key)
        return self.invalid

    def _unexpired(self, key: bytes) -> Identity | Rejection:
        """A key with a ttl: its consumer until that Unix time, then unknown (DB-less Kong returns no credential
        whose ttl is past: kong/db/strategies/off/init.lua, process_ttl_field)."""
        entry = self.expiring.get(key)
        if entry is None or time.time() >= entry[0]:
            return self.invalid
        return entry[1]

    async def authenticate_body(self, ex: Exchange) -> Identity | Rejection:
        """key_in_body: the same search, the body as the third place (read when first needed)."""
        req = ex.request
        body: Any = _UNREAD  # (media type, arguments) once read; None: no arguments in it
        key: bytes | None = None
        for kn in self.names:
            values: list[Any] = self._lookup(req, kn)
            if not values:
                if body is _UNREAD:
                    body = await _read_body(ex)
                found = body[1].get(kn.name) if body is not None and isinstance(body[1], dict) else None
                if isinstance(found, (list, dict)):
                    return self.duplicate
                values = [found] if isinstance(found, str) else []
            if len(values) > 1:
                return self.duplicate
            if not values or not isinstance(values[0], (str, bytes)):  # absent, a bare `?apikey`, a JSON number
                continue
            value = values[0]
            key = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
            if self.hide:
                _hide(ex, kn)
                if body is _UNREAD:
                    body = await _read_body(ex)
                if body is not None:
                    _rewrite_body(ex, body[0], body[1], kn.name)
            break
        return self._identify(key)



def _hide(ex: Exchange, kn: KeyName) -> None:
    """hide_credentials: the key name out of the query (Kong's clear_query_arg) and out of the headers."""
    _clear_query_arg(ex, kn.query)
    for hname in kn.hidden:
        remove_header(ex, hname)


def _clear_query_arg(ex: Exchange, name: bytes) -> None:
    """kong.service.request.clear_query_arg: the query parsed by ada's URLSearchParams ("+" a space, %XX decoded,
    empty parts dropped), every `name` taken out, the rest written again as "name=value" pairs, encoded as ada writes
    them and a space as "%20"; the order is kept. Nothing happens to a target without a query."""
    path, _, query = ex.request.target.partition(b"?")
    if not query:
        return
    kept = []
    for part in query.split(b"&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition(b"=")
        arg = unquote_to_bytes(raw_name.replace(b"+", b" "))
        if arg != name:
            kept.append(_form(arg) + b"=" + _form(unquote_to_bytes(raw_value.replace(b"+", b" "))))
    ex.rewrite_target(path + b"?" + b"&".join(kept) if kept else path)


def _form(data: bytes) -> bytes:
    return b"".join([_FORM_BYTE[b] for b in data])


async def _read_body(ex: Exchange) -> tuple[str, Any] | None:
    raw, whole = await ex.read_body(BODY_LIMIT)
    return get_body(header_value(ex.request.headers, b"content-type"), raw) if whole else None


def _rewrite_body(ex: Exchange, kind: str, args: Any, name: str) -> None:
    """The body goes upstream without `name`, written again as Kong's set_body writes a body of its type."""
    if isinstance(args, dict):
        args.pop(name, None)
    req = ex.request
    body, content_type = set_body(kind, args, header_value(req.headers, b"content-type") or b"")
    ex.replace_body(body)
    headers = [hv for hv in req.headers if hv[0] != b"transfer-encoding"]
    headers = set_header(headers, b"content-length", b"%d" % len(body))
    req.headers = set_header(headers, b"content-type", content_type)
