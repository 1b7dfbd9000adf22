"""The admin channel's wire format, sans-I/O: one JSON object per request and per reply, versioned.

    request: {"v": 1, "cmd": "status", "args": {...}}
    reply:   {"v": 1, "ok": true, "result": ...}  or  {"v": 1, "ok": false, "error": "what went wrong"}

Argument values are scalars (string, number, boolean, null): no command takes more, and a request is at most
MAX_REQUEST_BYTES, so neither its size nor its nesting can cost the gateway more than the decoding of a short list.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024


Scalar = str | Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | float | bool | None  # what the bus carries


class AdminRequest(msgspec.Struct, forbid_unknown_fields=True):
    cmd: str
    args: dict[str, Scalar] = {}
    v: int = VERSION


class AdminReply(msgspec.Struct, omit_defaults=True):
    ok: bool
    result: Any = None
    error: str | None = None
    v: int = VERSION


class AdminProtocolError(Exception):
    """A request we cannot act on; the message goes back to the sender."""


_decoder = msgspec.json.Decoder(AdminRequest)
_reply_decoder = msgspec.json.Decoder(AdminReply)
_encoder = msgspec.json.Encoder()


def decode_request(data: bytes) -> AdminRequest:
    if len(data) > MAX_REQUEST_BYTES:
        raise AdminProtocolError(f"request too large ({len(data)} bytes; the limit is {MAX_REQUEST_BYTES})")
    try:
        req = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise AdminProtocolError(f"malformed request: {e}") from None
    except RecursionError:  # cannot happen with scalar arguments (the decoder stops at the first nested value)
        raise AdminProtocolError("malformed request: nested too deeply") from None
    if req.v != VERSION:
        raise AdminProtocolError(f"unsupported protocol version {req.v}; this gateway speaks {VERSION}")
    return req


def encode_request(cmd: str, args: dict[str, Any] | None = None) -> bytes:
    return _encoder.encode(AdminRequest(cmd, args or {}))


def encode_reply(reply: AdminReply) -> bytes:
    """The reply's JSON: `v` always (omit_defaults alone would drop it), then ok and result or error."""
    return _encoder.encode({"v": reply.v, **msgspec.to_builtins(reply)})


def decode_reply(data: bytes) -> AdminReply:
    return _reply_decoder.decode(data)
