"""What Kong's prompt plugins (ai-prompt-guard, ai-prompt-decorator, ai-prompt-template) share: the request body as
they read it, the table of it the AI plugins of a request hand on, their 400 answers and lua-cjson's JSON.

Kong's sources: kong/llm/plugin/shared-filters/parse-request.lua and kong/llm/plugin/ctx.lua (the parsed body,
"the request body table in use"), kong.request.get_raw_body / get_body and kong.service.request.set_body /
set_raw_body (kong/pdk). Without ai-proxy on the route (this gateway has none) the request is an OpenAI one:
{"messages": [{"role": ..., "content": ...}, ...]} (llm/v1/chat) or {"prompt": "..."} (llm/v1/completions).

- parse-request runs once per request, for the first of guard and decorator (Kong's ai_executed_filters): the body
  by its Content-Type (none: application/json; an empty one is a type, and none get_body reads), as
  kong.request.get_body reads it (JSON object or array, a form's arguments, multipart parts). What does not parse
  leaves no table, which the plugins read as an empty one (Kong's EMPTY_REQUEST_T); a multipart/form-data request
  whose body cannot be read fails (Kong's set_ctx raises: 500).
- A body is read whole while nginx keeps it in memory (in_memory); one nginx writes to a file only up to the
  plugin's max_request_body_size (get_raw_body), and a form's never (get_post_args). A body a plugin has set is in
  memory: the next plugin reads it whatever its size.
- The decorator's table is the one the guard after it checks (set_request_body_table_inuse).
"""

from __future__ import annotations

from typing import Any

from gateway.http.codec import FIRST_BUFFER_BYTES, estimated_line_lengths
from gateway.http.server import BODY_SET, Exchange
from gateway.policies import cjson
from gateway.policies.base import LuaError
from gateway.policies.consumers import JSON_UTF8
from gateway.policies.header_list import get_header, set_header
from gateway.policies.request_body import FORM, JSON, get_body, media_type

CLIENT_BODY_BUFFER = 8192  # nginx's client_body_buffer_size, Kong's default (8k): the most raw bytes of a chunked
# body, past those read with the head, that stay in memory
# ... and of a Content-Length body: what is left to read after the head is under the buffer and a quarter (10 KiB:
# ngx_http_read_client_request_body sizes its one buffer to what is left then)
LENGTH_BODY_BUFFER = CLIENT_BODY_BUFFER + (CLIENT_BODY_BUFFER >> 2) - 1
MISSING: Any = object()  # a key the table does not have (Lua's nil; JSON's null is cjson.null, a true value)
_PARSED = "ai.parse-request"  # ex.state: parse-request ran for this request
_IN_USE = "ai.request-body-table"  # ex.state: the request body table in use
_PREREAD = "ai.preread-end"  # ex.state: preread_end's answer, taken before any of the body is read


def header_buffer_reach(lines: list[int], large: int) -> int:
    """How far into a request (its head's lines `lines` bytes long) nginx's last header buffer reaches: the first
    buffer's FIRST_BUFFER_BYTES for a head that fits it; else a line that does not end in the buffer it began in is
    moved whole into a new large buffer of `large` bytes (ngx_http_alloc_large_header_buffer), which the body bytes
    read with the head follow."""
    start, cap, pos = 0, FIRST_BUFFER_BYTES, 0
    for length in lines:
        if pos + length > cap:
            start, cap, pos = start + pos, large, 0
        pos += length
    return start + cap


def in_memory(chunked: bool, request_bytes: int, preread_end: int) -> bool:
    """Whether nginx keeps a request body in memory (ngx_http_read_client_request_body), the request `request_bytes`
    long as sent (head, body, a chunked body's framing) and read up to `preread_end` with its head (the preread, in
    the header buffer). A Content-Length body gets one buffer the size of what is left when that is under
    LENGTH_BODY_BUFFER + 1; a chunked one a CLIENT_BODY_BUFFER buffer for its raw bytes, written to a file once it
    fills with more to come (ngx_http_request_body_save_filter)."""
    left = request_bytes - preread_end
    return left <= (CLIENT_BODY_BUFFER if chunked else LENGTH_BODY_BUFFER)


def preread_end(ex: Exchange) -> int:
    """How far into the request (from its request line) nginx would have read with its head: the bytes that came with
    it, up to the end of the header buffer the head ended in (FIRST_BUFFER_BYTES, Kong's client_header_buffer_size
    1k, or a large one: the head's lines as parsed stand for those sent). Noted on the first call, before the body
    is read; a body another plugin began reading is taken as sent with its head, as clients send a small request."""
    state = ex.state
    if state is None:
        ex.state = state = {}
    end: int | None = state.get(_PREREAD)
    if end is None:
        request = ex.request
        reach = FIRST_BUFFER_BYTES
        if request.size > FIRST_BUFFER_BYTES:
            lines = estimated_line_lengths(ex.request_line_method(), ex.request_uri(), request.headers)
            reach = header_buffer_reach(lines, ex.settings.max_line_bytes)
        if ex.body_received:
            came = reach
        else:
            first, _ = ex.take_buffered_body()
            ex.hold_body(first)  # (read_body gives it back first)
            came = request.size + len(first)
        end = state[_PREREAD] = max(min(came, reach), request.size)  # (the head at least, however estimated)
    return end


async def raw_body(ex: Exchange, max_size: int, form: bool = False) -> bytes | None:
    """kong.request.get_raw_body(max_size): the whole body, or None when it is too large to read: a body nginx keeps
    in memory (in_memory) is read whatever max_size (as is one a plugin set), one in a file up to max_size bytes
    (0: none, get_raw_body() without a size; for a form body, get_post_args: in memory only)."""
    if ex.state is not None and ex.state.get(BODY_SET):
        raw, _ = await ex.read_body(-1)  # (the body set, as it is: nothing more is read)
        return raw
    request = ex.request
    chunked = any(name == b"transfer-encoding" for name, _ in request.headers)
    if not chunked and get_header(request.headers, b"content-length") is None:  # no body: nginx reads none
        raw, whole = await ex.read_body(0)
        return raw if whole else None
    end = preread_end(ex)
    # (data bytes are no more than the raw ones: past this many the body is in a file)
    limit = end + (CLIENT_BODY_BUFFER if chunked else LENGTH_BODY_BUFFER) - request.size
    raw, whole = await ex.read_body(limit if form or max_size <= 0 else max(limit, max_size))
    if not whole:
        return None
    if in_memory(chunked, request.size + ex.body_received, end):
        return raw
    return raw if not form and len(raw) <= max_size else None


def decode_json(raw: bytes) -> Any:
    """cjson.decode_with_array_mt as get_body uses it (lua-cjson's reading): an object or an array, else None."""
    try:
        doc = cjson.decode(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, (dict, list)) else None


async def request_body(ex: Exchange, content_type: bytes, max_size: int) -> Any:
    """kong.request.get_body(content_type, nil, max_size): the JSON document, form or multipart arguments; None when
    the type is none of those or the body does not parse."""
    kind = media_type(content_type)
    if kind is None:
        return None
    raw = await raw_body(ex, max_size, form=kind == FORM)
    if raw is None:
        return None
    if kind == JSON:
        return decode_json(raw)
    found = get_body(content_type, raw)
    return found[1] if found is not None else None


async def parse_request(ex: Exchange, max_size: int) -> Any:
    """The request body table in use for this request: parse-request's (run once, by the first AI plugin), or what a
    plugin before set. None when there is none (the body is not one of get_body's types, or did not parse)."""
    state = ex.state
    if state is None:
        ex.state = state = {}
    elif _PARSED in state:
        return state.get(_IN_USE)
    state[_PARSED] = True
    content_type = get_header(ex.request.headers, b"content-type")
    if content_type is None:  # (Kong's `or "application/json"`: an empty header is "", a true value in Lua)
        content_type = b"application/json"
    doc = await request_body(ex, content_type, max_size)
    if doc is None:
        if b"multipart/form-data" in content_type:  # Kong goes on with no table, and set_ctx refuses that
            raise LuaError("parse-request: a multipart/form-data body that could not be read (Kong fails the "
                           "same way: 500)")
        return None
    state[_IN_USE] = doc
    return doc


def set_in_use(ex: Exchange, doc: Any) -> None:
    """ai_plugin_ctx.set_request_body_table_inuse: what the AI plugins after this one read."""
    if ex.state is None:
        ex.state = {}
    ex.state[_IN_USE] = doc


def set_body(ex: Exchange, body: bytes, content_type: bytes | None = None) -> None:
    """kong.service.request.set_raw_body (and set_body's Content-Type): the upstream gets `body`, with its length."""
    ex.replace_body(body)
    headers = [hv for hv in ex.request.headers if hv[0] != b"transfer-encoding"]
    set_header(headers, b"content-length", b"%d" % len(body))
    if content_type is not None:
        set_header(headers, b"content-type", content_type)
    ex.request.headers = headers


async def bad_request(ex: Exchange, message: str) -> bool:
    """The plugins' kong.response.exit(400, { error = { message = message } })."""
    await ex.respond(400, encode({"error": {"message": message}}), JSON_UTF8)
    return True


def lua_truthy(value: Any) -> bool:
    """A table's value as Lua's `if` reads it: absent (MISSING) and false are false; JSON null is cjson.null, true."""
    return value is not MISSING and value is not False


def lua_type(value: Any) -> str:
    """Lua's type() of a decoded JSON value (null is cjson.null, a light userdata)."""
    if value is MISSING:
        return "nil"
    if value is None:
        return "userdata"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "table"


def field(doc: Any, key: str) -> Any:
    """`doc.key` in Lua: a table's value (MISSING when absent; an array has no string keys), nil for a string (no
    string function has these names), an error for what cannot be indexed (a number, a boolean, null)."""
    if isinstance(doc, dict):
        return doc.get(key, MISSING)
    if isinstance(doc, (list, str)):
        return MISSING
    raise LuaError(f"attempt to index a {lua_type(doc)} value (field '{key}')")


def length(value: Any) -> int:
    """Lua's `#value`: a string's bytes, an array's items; 0 for a JSON object (no integer keys); an error else."""
    if isinstance(value, str):
        return len(utf8(value))
    if isinstance(value, list):
        return len(value)
    if isinstance(value, dict):
        return 0
    raise LuaError(f"attempt to get length of a {lua_type(value)} value")


def utf8(text: str) -> bytes:
    """The bytes of a decoded string (a Lua string's bytes, also those that were not UTF-8)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from a JSON \\u escape: cjson writes its 3 bytes (CESU-8)
        return text.encode("utf-8", "surrogatepass")


def encode_string(text: str) -> str:
    """A string as lua-cjson writes it, quotes included: `"`, `\\`, `/`, control characters and DEL escaped."""
    return cjson.encode(text).decode("utf-8", "surrogateescape")


def encode(doc: Any) -> bytes:
    """kong.service.request.set_body's cjson.safe (Kong's precision 16); NaN and infinities are its error."""
    try:
        return cjson.encode(doc, cjson.PDK_PRECISION)
    except ValueError as e:
        raise LuaError(str(e)) from None
