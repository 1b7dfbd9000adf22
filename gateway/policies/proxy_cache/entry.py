"""One cached response as the plugin stores it in a host-wide cache dictionary (MessagePack), and as Kong's Admin API
shows it (GET /proxy-cache/:cache_key: the JSON of the table kong/plugins/proxy-cache/strategies/memory.lua stored).
Sans-I/O.

What Kong stores: the status; the response headers as they were when the plugin's header_filter ran (after the
header filters of plugins of higher priority, with the X-Cache-Status and X-Cache-Key set on the way in, before
Kong adds its request id); the body as the plugin's body_filter saw it; when it was stored (whole seconds); how long
it is fresh (`ttl`, a double as Lua's numbers are, kept to the 16 significant digits Kong's cjson writes); the
format version; the request body, when it was read (on a miss, up to 8 KiB, Kong's
client_body_buffer_size; absent after a Refresh, as in Kong). Not Kong's: `sent_names`, the header names as a hit
sends them when one has a "_" (Kong's hit sets each with ngx.header, which writes "_" as "-"), worked out once when
the entry is stored.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.http.uri_args import add_arg

VERSION = 1  # Kong's CACHE_VERSION: an entry of another version is purged and fetched again


class Entry(msgspec.Struct, forbid_unknown_fields=False):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    timestamp: int
    ttl: float
    version: int = VERSION
    req_body: bytes | None = None
    sent_names: list[bytes] | None = None  # the names of `headers` as a hit sends them; None: as they are


def sent_names(headers: list[tuple[bytes, bytes]]) -> list[bytes] | None:
    """The names of `headers` as kong.response.exit sets them on a hit (ngx.header: lua-nginx-module's
    lua_transform_underscores_in_response_headers, on by default, writes each "_" as "-"), or None when none has a
    "_" (the names go out as stored)."""
    if not any(b"_" in name for name, _ in headers):
        return None
    return [name.replace(b"_", b"-") for name, _ in headers]


_encode = msgspec.msgpack.Encoder().encode
_decoder = msgspec.msgpack.Decoder(Entry)


def encode(entry: Entry) -> bytes:
    return _encode(entry)


def stored_number(value: float) -> float:
    """A number as Kong's stored entry has it: cjson.safe writes 16 significant digits (CJSON_MAX_PRECISION), so a
    TTL of 17 digits is read back rounded."""
    return float(f"{value:.16g}")


def decode(raw: bytes) -> Entry | None:
    """The entry, or None when the bytes are not one (Kong: "could not decode request object")."""
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _number(value: float) -> int | float:
    """As cjson writes a Lua number: 60, not 60.0; 1e+20 (an integer of more than 16 digits is written with an
    exponent, and stays a float here: an int that large cannot travel in a bus frame)."""
    return int(value) if float(value).is_integer() and abs(value) < 1e16 else value


def render(raw: bytes) -> dict[str, Any] | None:
    """The entry as Kong's GET /proxy-cache/:cache_key answers it: status, headers (name -> value, or a list of
    values for a repeated header; names lower case here), body, body_len, timestamp, ttl, version and req_body (when
    one was kept). Texts are decoded as UTF-8 (bytes that are not become U+FFFD). None: not an entry."""
    entry = decode(raw)
    if entry is None:
        return None
    headers: dict[str, str | list[str]] = {}
    for name, value in entry.headers:
        add_arg(headers, name.decode("latin-1"), _text(value))
    doc: dict[str, Any] = {"status": entry.status, "headers": headers, "body": _text(entry.body),
                           "body_len": len(entry.body), "timestamp": entry.timestamp, "ttl": _number(entry.ttl),
                           "version": entry.version}
    if entry.req_body is not None:
        doc["req_body"] = _text(entry.req_body)
    return doc
