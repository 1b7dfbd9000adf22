"""The admin channel's wire format, sans-I/O: one JSON object per request and per reply, versioned.

    request: {"v": 1, "cmd": "status", "args": {...}, "timeout_ms": 5000}   (timeout_ms: optional)
    reply:   {"v": 1, "ok": true, "result": ...}  or  {"v": 1, "ok": false, "error": "what went wrong"}

Argument values are scalars (string, number, boolean, null): no command takes more, and a request is at most
MAX_REQUEST_BYTES, so neither its size nor its nesting can cost the gateway more than the decoding of a short list.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024
MAX_TIMEOUT_MS = 86_400_000  # a day: the scripts' longest --timeout


Scalar = str | Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | float | bool | None  # what the bus carries
Timeout = Annotated[int, msgspec.Meta(gt=0, le=MAX_TIMEOUT_MS)]

# The arguments each command takes (the keeper's, which default to action=list, per action); one it does not take is
# refused, never ignored (`reload conifg=F` would reload the running file). `KONG_*`: any name with that prefix.
ARGUMENTS: dict[str, tuple[str, ...]] = {
    "status": (), "workers": (), "stop": (), "reload": ("config", "KONG_*"),
    "breakers list": ("action",), "breakers reset": ("action", "target"), "breakers open": ("action", "target"),
    "limits list": ("action", "key"), "limits show": ("action", "key"), "limits reset": ("action", "key"),
    **{f"targets {a}": ("action", "target") for a in ("drain", "enable", "healthy", "unhealthy")},
    "targets list": ("action",), "targets weight": ("action", "target", "weight"),
    "proxy-cache list": ("action", "plugin"), "proxy-cache flush": ("action", "plugin"),
    "proxy-cache get": ("action", "key", "plugin"), "proxy-cache purge": ("action", "key", "plugin"),
}
ACTIONED = frozenset({"breakers", "limits", "targets", "proxy-cache"})  # whose arguments depend on their action


class AdminRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One command. `timeout_ms`: how long its client waits for the answer (an old client's None: no limit), which
    serve_admin (gateway.node.admin) counts from its arrival: a change still waiting past it is never carried out."""

    cmd: str
    args: dict[str, Scalar] = {}
    v: int = VERSION
    timeout_ms: Timeout | None = None


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


def encode_request(cmd: str, args: dict[str, Any] | None = None, timeout_ms: int | None = None) -> bytes:
    """The request's JSON; `timeout_ms` (the client's patience) only when given."""
    request = {"v": VERSION, "cmd": cmd, "args": args or {}}
    return _encoder.encode(request if timeout_ms is None else {**request, "timeout_ms": timeout_ms})


def older_gateway(reply: AdminReply) -> bool:
    """Whether a gateway started before requests carried `timeout_ms` refused one for it (a CLI upgraded under a
    running gateway): asked again without it, `gateway stop` and `reload` still reach that gateway."""
    return not reply.ok and (reply.error or "").startswith("malformed request") and "timeout_ms" in (reply.error or "")


def timeout_ms(seconds: float) -> int:
    """A client's timeout as the request carries it: whole milliseconds, rounded down (the gateway must give up no
    later than its client), at least 1 and at most MAX_TIMEOUT_MS."""
    return min(max(int(seconds * 1000), 1), MAX_TIMEOUT_MS)


def argument_problem(cmd: str, args: dict[str, Any]) -> str | None:
    """The first argument `cmd` (with its action) does not take, named with those it takes; None if it takes them all,
    or if the command or action is unknown (its handler says so)."""
    what = f"{cmd} {args.get('action', 'list')}" if cmd in ACTIONED else cmd
    takes = ARGUMENTS.get(what)
    if takes is None:
        return None
    for name in args:
        if name not in takes and not any(t.endswith("*") and name.startswith(t[:-1]) for t in takes):
            return (f"unknown argument {name!r} for {what}; it takes "
                    + (", ".join(f"{t}=..." for t in takes) if takes else "none"))
    return None


def encode_reply(reply: AdminReply) -> bytes:
    """The reply's JSON: `v` always (omit_defaults alone would drop it), then ok and result or error."""
    return _encoder.encode({"v": reply.v, **msgspec.to_builtins(reply)})


def decode_reply(data: bytes) -> AdminReply:
    return _reply_decoder.decode(data)
