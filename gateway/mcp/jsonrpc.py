"""A bounded look into a JSON-RPC request body (sans-I/O): its method, tool name, id, and whether it is a batch.

Only what routing and the 2026-07-28 header checks need is extracted. A whole body is decoded with msgspec into a
small Struct (unknown fields skipped in C); a body cut at the peek limit is scanned as a prefix: members of the
top-level object and of `params` are walked, any other value is skipped without being decoded (strings in C), so
`method` and `params.name` are found as long as they appear within the bytes read.

The header check follows the spec (SEP-2243; error -32020 HeaderMismatch, HTTP 400): `Mcp-Method` must equal the
body's `method`; for tools/call and prompts/get `Mcp-Name` must equal `params.name`, for resources/read (and
subscribe/unsubscribe) `params.uri`; `MCP-Protocol-Version` must equal `params._meta`'s protocol version when the
body carries one. Mcp-Name values may use the `=?base64?...?=` sentinel for values that are not plain ASCII.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from json.decoder import scanstring  # type: ignore[attr-defined]  # there, though typeshed does not say so
from typing import Any

import msgspec

HEADER_MISMATCH = -32020
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
SESSION_NOT_FOUND = -32001

# Method -> the params member mirrored in Mcp-Name.
NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri",
                "resources/subscribe": "uri", "resources/unsubscribe": "uri"}
PROTOCOL_VERSION_META = "io.modelcontextprotocol/protocolVersion"


class RpcInfo:
    """What a peek found. `method`/`name`/`version` are None when absent, not strings, or beyond the bytes read;
    `valid` is False for a body that is not a JSON-RPC request as far as it was read (not JSON, or BAD_ID)."""

    __slots__ = ("method", "name", "version", "id", "batch", "valid")

    def __init__(self, method: str | None = None, name: str | None = None, version: str | None = None,
                 id: Any = None, batch: bool = False, valid: bool = True) -> None:  # noqa: A002 - JSON-RPC's name
        self.method = method
        self.name = name  # params.name or params.uri, whichever the method mirrors in Mcp-Name
        self.version = version  # params._meta["io.modelcontextprotocol/protocolVersion"]
        self.id = id
        self.batch = batch
        self.valid = valid

    @property
    def tool(self) -> str | None:
        return self.name if self.method == "tools/call" else None

    def __repr__(self) -> str:
        return (f"RpcInfo(method={self.method!r}, name={self.name!r}, version={self.version!r}, id={self.id!r}, "
                f"batch={self.batch}, valid={self.valid})")


NOT_JSON = RpcInfo(valid=False)
BAD_ID = RpcInfo(valid=False)  # JSON, but its id is not a string, number or null: JSON-RPC's Invalid Request
BATCH = RpcInfo(batch=True)


class _Params(msgspec.Struct):
    name: Any = None
    uri: Any = None
    meta: Any = msgspec.field(default=None, name="_meta")


class _Request(msgspec.Struct):
    method: Any = None
    id: Any = None
    params: _Params | list[msgspec.Raw] | None = None


_decoder = msgspec.json.Decoder(_Request | list[msgspec.Raw])


def peek(body: bytes, complete: bool) -> RpcInfo:
    """Inspect `body`: the whole request body when `complete`, else its first bytes."""
    if complete:
        try:
            msg = _decoder.decode(body)
        except (msgspec.DecodeError, RecursionError):
            pass  # invalid JSON, a shape the Struct does not take, or nested too deep: the scanner decides
        else:
            if isinstance(msg, list):
                return BATCH
            return _info(msg.method, msg.id, msg.params)
    return _scan(body, complete)


def _info(method: Any, rpc_id: Any, params: Any) -> RpcInfo:
    method = method if isinstance(method, str) else None
    name = version = None
    if isinstance(params, _Params):
        key = NAME_BEARING.get(method) if method else None
        value = (params.name if key == "name" else params.uri) if key else None
        name = value if isinstance(value, str) else None
        meta = params.meta
        if isinstance(meta, dict):
            v = meta.get(PROTOCOL_VERSION_META)
            version = v if isinstance(v, str) else None
    if rpc_id is not None and (isinstance(rpc_id, bool) or not isinstance(rpc_id, (str, int, float))):
        return BAD_ID  # JSON-RPC ids are strings, numbers and null; an object, array or boolean is refused
    return RpcInfo(method, name, version, rpc_id)


# --- prefix scanner ---------------------------------------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")
_NESTED = re.compile(r'["{}\[\]]')
_SCALAR_END = re.compile(r"[,}\]\s]")
_NOT_AN_ID = object()  # an object or array id, never decoded (however deep: Python's parser would recurse)


class _End(Exception):
    """The text ended (or broke) before the value did."""


def _scan(body: bytes, complete: bool) -> RpcInfo:
    text = body.decode("utf-8", errors="ignore" if not complete else "replace")
    i = _WS.match(text).end()  # type: ignore[union-attr]
    if i >= len(text):
        return NOT_JSON
    if text[i] == "[":
        return BATCH
    if text[i] != "{":
        return NOT_JSON
    found: dict[str, Any] = {}
    try:
        _object(text, i, _top_member, found)
    except _End:
        if complete:
            return NOT_JSON
    except ValueError:
        return NOT_JSON
    # (a lone surrogate escape, which msgspec refused and scanstring reads, spelt out: the name is logged and keyed)
    params = _Params(_encodable(found.get("name")), _encodable(found.get("uri")), found.get("meta"))
    return _info(_encodable(found.get("method")), found.get("id"), params)


def _object(s: str, i: int, member, found: dict[str, Any]) -> int:  # noqa: ANN001 - member: a callback
    """Walk the object starting at s[i] == '{'; `member(key, s, j, found)` consumes each value, returns its end."""
    i = _WS.match(s, i + 1).end()  # type: ignore[union-attr]
    if i >= len(s):
        raise _End
    if s[i] == "}":
        return i + 1
    while True:
        if i >= len(s):
            raise _End
        if s[i] != '"':
            raise ValueError("expected a member name")
        key, i = _string(s, i)
        i = _WS.match(s, i).end()  # type: ignore[union-attr]
        if i >= len(s):
            raise _End
        if s[i] != ":":
            raise ValueError("expected ':'")
        i = _WS.match(s, i + 1).end()  # type: ignore[union-attr]
        i = member(key, s, i, found)
        i = _WS.match(s, i).end()  # type: ignore[union-attr]
        if i >= len(s):
            raise _End
        if s[i] == "}":
            return i + 1
        if s[i] != ",":
            raise ValueError("expected ',' or '}'")
        i = _WS.match(s, i + 1).end()  # type: ignore[union-attr]


# A repeated member replaces what an earlier one said (JSON parsers, msgspec and the SDK's included, keep the last).


def _top_member(key: str, s: str, i: int, found: dict[str, Any]) -> int:
    if key == "method":
        found["method"] = None
        if i < len(s) and s[i] == '"':
            found["method"], i = _string(s, i)
            return i
    elif key == "params":
        found["name"] = found["uri"] = found["meta"] = None
        if i < len(s) and s[i] == "{":
            return _object(s, i, _params_member, found)
    elif key == "id":
        found["id"] = None
        end = _skip(s, i)
        if s[i] in "{[":
            found["id"] = _NOT_AN_ID
        else:
            try:
                found["id"] = json.loads(s[i:end])  # a string or a scalar: no nesting to recurse into
            except ValueError:
                pass
        return end
    return _skip(s, i)


def _params_member(key: str, s: str, i: int, found: dict[str, Any]) -> int:
    if key in ("name", "uri"):
        found[key] = None
        if i < len(s) and s[i] == '"':
            found[key], i = _string(s, i)
            return i
    elif key == "_meta":
        found["meta"] = None
        if i < len(s) and s[i] == "{":
            meta: dict[str, Any] = {}
            found["meta"] = meta
            return _object(s, i, _meta_member, meta)
    return _skip(s, i)


def _meta_member(key: str, s: str, i: int, found: dict[str, Any]) -> int:
    if key == PROTOCOL_VERSION_META:
        found[key] = None
        if i < len(s) and s[i] == '"':
            found[key], i = _string(s, i)
            return i
    return _skip(s, i)


def _string(s: str, i: int) -> tuple[str, int]:
    try:
        return scanstring(s, i + 1)
    except ValueError:
        raise _End from None  # unterminated (cut by the peek limit) or a bad escape


def _skip(s: str, i: int) -> int:
    """The end of the JSON value starting at s[i], without decoding it."""
    if i >= len(s):
        raise _End
    c = s[i]
    if c == '"':
        return _string(s, i)[1]
    if c in "{[":
        depth = 0
        while True:
            m = _NESTED.search(s, i)
            if m is None:
                raise _End
            i = m.start()
            ch = s[i]
            if ch == '"':
                i = _string(s, i)[1]
                continue
            depth += 1 if ch in "{[" else -1
            i += 1
            if depth == 0:
                return i
    m = _SCALAR_END.search(s, i)
    if m is None:
        raise _End
    if m.start() == i:
        raise ValueError("expected a value")
    return m.start()


# --- the header check -------------------------------------------------------------------------------------------

_B64_SENTINEL = re.compile(rb"^=\?base64\?(.*)\?=$")


def decode_header_value(value: bytes) -> str | None:
    """An Mcp-Name value as text: verbatim, or decoded from the `=?base64?...?=` sentinel (None if malformed)."""
    m = _B64_SENTINEL.match(value)
    if m is None:
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    payload = m.group(1)
    try:
        raw = base64.b64decode(payload, validate=True)
        if base64.b64encode(raw) != payload:
            return None
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def header_mismatch(info: RpcInfo, method: bytes | None, name: bytes | None, version: bytes | None,
                    routed: bool = True) -> str | None:
    """Why the Mcp-Method / Mcp-Name / MCP-Protocol-Version headers disagree with the body, or None if they agree.

    `method`/`name` are the header values (None: absent); a present header must be confirmed by the body. An
    Mcp-Name on a method that names nothing has nothing to disagree with: a server ignores it (the spec compares it
    on name-bearing methods only; python-sdk's classify_inbound_request), and so does the gateway unless `routed`,
    where a route on MCP method or tool could take the request and a name the body does not confirm is refused.
    """
    if info.batch:
        return "Mcp-Method header on a JSON-RPC batch (the 2026-07-28 revision has no batches)"
    if info is BAD_ID:
        return "the body is not a JSON-RPC request: its id is not a string, number or null"
    if info.method is None:
        return "the body has no JSON-RPC method to confirm the Mcp-Method header (within the bytes the gateway reads)"
    if method is not None and method.decode("latin-1") != info.method:
        return f"Mcp-Method header does not match the body's method {info.method!r}"
    key = NAME_BEARING.get(info.method)
    if (name is not None and (key is not None or routed)) or (key is not None and info.name is not None
                                                              and method is not None):
        if key is None:
            return f"Mcp-Name header on a request whose method {info.method!r} names nothing"
        if name is None:
            return f"Mcp-Name header missing, the body's {key!r} is {info.name!r}"
        if info.name is None or decode_header_value(name) != info.name:
            return f"Mcp-Name header does not match the body's {key!r} parameter"
    if version is not None and info.version is not None and version.decode("latin-1") != info.version:
        return "MCP-Protocol-Version header does not match the protocol version in the body's params._meta"
    return None


# Every released revision (python-sdk v2 mcp_types/version.py KNOWN_PROTOCOL_VERSIONS): a server of any of them may
# be behind the gateway, so where the gateway answers in a server's place it takes these and refuses any other.
PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28")
_VERSIONS = frozenset(v.encode() for v in PROTOCOL_VERSIONS)


def unsupported_version(value: bytes) -> bytes | None:
    """The 400 body for an MCP-Protocol-Version header naming no released revision (2025-06-18 transports: the
    server "MUST respond with 400 Bad Request"), as python-sdk's streamable_http.py writes it; None if it names one."""
    if value in _VERSIONS:
        return None
    return msgspec.json.encode({"jsonrpc": "2.0", "id": "server-error", "error": {
        "code": INVALID_REQUEST, "message": f"Bad Request: Unsupported protocol version: {value.decode('latin-1')}. "
                                           f"Supported versions: {', '.join(PROTOCOL_VERSIONS)}"}})


def error_body(code: int, message: str, rpc_id: Any = None) -> bytes:
    """A JSON-RPC error response body (id null when the request's id is unknown)."""
    return msgspec.json.encode({"jsonrpc": "2.0", "id": rpc_id, "error": {"code": code, "message": message}})


# --- whole bodies, message by message (ai-mcp-proxy's judgement) -------------------------------------------------


class Message:
    """One JSON-RPC message of a body the gateway governs. `raw` is its exact bytes; `method` is None for a
    response (or a message without a string method); `has_id` tells a request from a notification, `id` is the id
    as sent (any JSON value); `name` is a tools/call's params.name when it is a string."""

    __slots__ = ("raw", "method", "id", "has_id", "name")

    def __init__(self, raw: bytes, method: str | None, rpc_id: Any, has_id: bool, name: str | None) -> None:
        self.raw = raw
        self.method = method
        self.id = rpc_id
        self.has_id = has_id
        self.name = name

    @property
    def answer_id(self) -> Any:
        """The id to answer with: the request's, when it is one JSON-RPC allows (string, number or null)."""
        rpc_id = self.id
        return rpc_id if rpc_id is None or isinstance(rpc_id, (str, int, float)) and not isinstance(rpc_id, bool) \
            else None


class _Envelope(msgspec.Struct):
    method: Any = None
    id: Any = msgspec.UNSET
    params: msgspec.Raw = msgspec.Raw(b"null")


class _Call(msgspec.Struct):
    """The common case in one decode: a message whose params (if any) is an object."""

    method: Any = None
    id: Any = msgspec.UNSET
    params: _Params | None = None


_call = msgspec.json.Decoder(_Call)
_envelope = msgspec.json.Decoder(_Envelope)
_elements = msgspec.json.Decoder(list[msgspec.Raw])
_params = msgspec.json.Decoder(_Params)
MAX_BATCH = 1000  # longer batches are refused whole (-32600)


def decode_messages(body: bytes) -> tuple[list[Message], bool] | None:
    """(the messages of a whole body, whether it is a batch); None when it is not JSON, not an object or array of
    objects, or a batch longer than MAX_BATCH."""
    start = body[:1]
    if start in _WHITESPACE:
        start = body.lstrip()[:1]
    try:
        if start == b"[":
            elements = _elements.decode(body)
            if not elements or len(elements) > MAX_BATCH:
                return None
            out = []
            for raw in elements:
                message = _message(bytes(raw))
                if message is None:
                    return None
                out.append(message)
            return out, True
        message = _message(body)
    except (msgspec.DecodeError, RecursionError):  # not JSON, or nested deeper than msgspec decodes
        return None
    return ([message], False) if message is not None else None


_WHITESPACE = (b" ", b"\t", b"\r", b"\n")


def _message(raw: bytes) -> Message | None:
    try:
        call = _call.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        pass  # params is not an object, or it is not a message at all: the envelope decides
    else:
        method = call.method if isinstance(call.method, str) else None
        has_id = call.id is not msgspec.UNSET
        params = call.params
        name = params.name if method == "tools/call" and params is not None and isinstance(params.name, str) \
            else None
        return Message(raw, method, call.id if has_id else None, has_id, name)
    try:
        env = _envelope.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None  # not an object (or not JSON, or nested too deep)
    method = env.method if isinstance(env.method, str) else None
    has_id = env.id is not msgspec.UNSET
    rpc_id = env.id if has_id else None
    name = None
    if method == "tools/call":
        try:
            params = _params.decode(env.params)
        except (msgspec.DecodeError, RecursionError):
            params = None
        if params is not None and isinstance(params.name, str):
            name = params.name
    return Message(raw, method, rpc_id, has_id, name)


def read_leniently(body: bytes) -> tuple[list[Message], bool] | None:
    """The messages of a whole body that decode_messages refuses, as a server may still read it (for counting calls,
    never for forwarding): what Python's JSON parser reads, a superset of the `mcp` SDK's (NaN, Infinity, numbers out
    of range), the last of repeated members kept; a batch's elements that are not objects are left out (a server
    answers those with errors and runs the rest). `raw` is empty. None when it is not JSON, or a batch longer than
    MAX_BATCH."""
    try:
        doc: Any = _elements.decode(body)  # the common reason to be here: a batch msgspec reads, too long or mixed
    except (msgspec.DecodeError, RecursionError):
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
            return None
    else:
        if len(doc) > MAX_BATCH:
            return None
        return [m for m in map(_message, map(bytes, doc)) if m is not None], True
    if isinstance(doc, list):
        if len(doc) > MAX_BATCH:
            return None
        return [m for m in map(_from_object, doc) if m is not None], True
    message = _from_object(doc)
    return ([message] if message is not None else []), False


def _from_object(doc: Any) -> Message | None:
    if not isinstance(doc, dict):
        return None
    method = doc.get("method")
    method = _encodable(method) if isinstance(method, str) else None
    params = doc.get("params")
    name = params.get("name") if method == "tools/call" and isinstance(params, dict) else None
    return Message(b"", method, _encodable(doc.get("id")), "id" in doc, _encodable(name) if isinstance(name, str)
                   else None)


def _encodable(value: Any) -> Any:
    """A string with a lone surrogate escape (\\ud800: Python's parser reads it, msgspec does not) spelt out, so that
    it can be a counter's key and be answered; other values as they are."""
    if isinstance(value, str) and not value.isascii():
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "backslashreplace")
    return value


_JSON_START = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*[{\[]")  # (a byte order mark: Python's parser skips it)


def looks_like_json(body: bytes) -> bool:
    """Whether a body begins as a JSON object or array does, or is in UTF-16 or UTF-32 (which Python's parser also
    reads): what a server might read as JSON-RPC, however broken the rest of it is."""
    head = body[:4]
    return _JSON_START.match(body) is not None or b"\x00" in head or head[:2] in (b"\xff\xfe", b"\xfe\xff")


def is_json(body: bytes) -> bool:
    """Whether `body` is JSON at all (of any shape), as msgspec reads it."""
    try:
        msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True
