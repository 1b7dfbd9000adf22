"""What ai-mcp-proxy does to an MCP exchange, sans-I/O: judge a request body message by message, and edit the
answer (drop tools the caller may not see from tools/list results, add the gateway's own errors to a batch's).

`judge` looks at every message of a body (a batch element by element): a `tools/call` of a tool the caller may not
use, or of no (string) tool at all, never reaches the server: a request gets a JSON-RPC error from the gateway with
its own id, a notification is dropped. What remains is forwarded unchanged (a batch is rebuilt from the exact bytes
of its remaining elements). A body with nothing left to forward is answered by the gateway alone.

`ResponseEdit` applies to the server's answer: a JSON body whole, or a `text/event-stream` event by event. It filters
the `tools` of every result carrying them in the answer to a body with a tools/list call (or on a GET stream, which
may replay answers), whatever the result's id: servers echo an id as they read it (python-sdk v1.10 answers "7" with
7, the TypeScript SDK rounds integers past 2**53), so matching ids would pass a list on unfiltered. It makes such a
result's `cacheScope` "private", and puts the gateway's errors beside the server's answers to a batch. An answer it
does not need to change is passed on byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from gateway.mcp.jsonrpc import Message
from gateway.mcp.sse import data_of, message_event, with_data

INVALID_PARAMS = -32602
TOOL_DENIED = INVALID_PARAMS  # the code MCP servers give a tool call they will not run (an unknown tool)
ANY_ID = object()  # an answer's tools/list id the gateway does not know (GET streams, an id that cannot be a key)
# A filtered tools/list result is this caller's view: 2026-07-28 (SEP-2549) lets a client or intermediary serve a
# `cacheScope: "public"` result across authorization contexts, so it goes out "private" (reused only by the same
# caller). An absent cacheScope already means private (the SDK's default); ttlMs is left as the server gave it.
PRIVATE = "private"

_encode = msgspec.json.encode
_decode = msgspec.json.decode


class Denial:
    """Why a call is refused: the message for the caller, and for scope-based ACLs the scope that would allow it."""

    __slots__ = ("message", "scope")

    def __init__(self, message: str, scope: str | None = None) -> None:
        self.message = message
        self.scope = scope


class Verdict:
    """The outcome of judging one body.

    forward   the body to send upstream (None: nothing goes upstream, the gateway answers alone)
    errors    the gateway's JSON-RPC error responses (bytes each), for denied requests
    calls     (tool name, Denial or None, JSON-RPC id) per tools/call judged, for the audit log
    list_ids  ids of the tools/list requests forwarded (None: none; else every result carrying tools is filtered)
    batch     the body was a batch
    denial    the Denial of a single refused request (its HTTP answer may depend on it)
    """

    __slots__ = ("forward", "errors", "calls", "list_ids", "batch", "denial")

    def __init__(self) -> None:
        self.forward: bytes | None = None
        self.errors: list[bytes] = []
        self.calls: list[tuple[str | None, Denial | None, Any]] = []
        self.list_ids: set[Any] | None = None
        self.batch = False
        self.denial: Denial | None = None


def error_response(rpc_id: Any, code: int, message: str, data: dict[str, Any] | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return _encode({"jsonrpc": "2.0", "id": rpc_id, "error": error})


def judge(messages: list[Message], batch: bool, decide: Callable[[str], Denial | None], body: bytes,
          filter_lists: bool) -> Verdict:
    """Judge each message; `decide(tool)` is None when the caller may use the tool. `body` is the whole body (sent
    unchanged when every message passes); `filter_lists`: tools/list answers need filtering for this caller."""
    verdict = Verdict()
    verdict.batch = batch
    kept: list[bytes] = []
    for m in messages:
        method = m.method
        if method == "tools/call":
            denial = decide(m.name) if m.name is not None else Denial("tools/call needs params.name, a string")
            verdict.calls.append((m.name, denial, m.answer_id))
            if denial is not None:
                if m.has_id:
                    data = {"tool": m.name} if m.name is not None else None
                    verdict.errors.append(error_response(m.answer_id, TOOL_DENIED, denial.message, data))
                    verdict.denial = denial
                continue
        elif method == "tools/list" and filter_lists and m.has_id:
            ids = verdict.list_ids if verdict.list_ids is not None else set()
            rpc_id = m.id
            try:
                ids.add(rpc_id)
            except TypeError:  # an id that cannot be a key (an object): not_filtered answers with id null
                ids.add(ANY_ID)
            verdict.list_ids = ids
        kept.append(m.raw)
    if len(kept) == len(messages):
        verdict.forward = body
    elif kept:
        verdict.forward = b"[" + b",".join(kept) + b"]"
    return verdict


class ResponseEdit:
    """The edits one answer needs: `allowed(tool)` for tools/list results, `errors` to add beside a batch's."""

    __slots__ = ("list_ids", "allowed", "errors", "batch")

    def __init__(self, list_ids: set[Any] | None, allowed: Callable[[str], bool], errors: list[bytes],
                 batch: bool) -> None:
        self.list_ids = list_ids
        self.allowed = allowed
        self.errors = errors
        self.batch = batch

    # --- application/json ---------------------------------------------------------------------------------------

    def json_body(self, body: bytes) -> bytes:
        """The whole JSON answer, edited; unchanged bytes when nothing had to change (or it is not JSON)."""
        try:
            doc = _decode(body)
        except (msgspec.DecodeError, RecursionError):
            return self._unfilterable(body)
        changed = self._filter_all(doc)
        if self.errors:
            extra = [_decode(e) for e in self.errors]
            doc = [*doc, *extra] if isinstance(doc, list) else [doc, *extra]
            changed = True
        return _encode(doc) if changed else body

    def accepted_body(self) -> bytes:
        """The answer when the server accepted what was forwarded without a body (202): the gateway's errors."""
        return b"[" + b",".join(self.errors) + b"]"

    # --- text/event-stream ----------------------------------------------------------------------------------------

    def first_events(self) -> bytes:
        """Events put before the server's own: the gateway's errors, one message each."""
        return b"".join(message_event(e) for e in self.errors)

    def event(self, event: bytes) -> bytes:
        """One whole event, edited when its data is a result to filter."""
        if self.list_ids is None:
            return event
        data = data_of(event)
        if data is None or (b'"tools"' not in data and b"\\u" not in data):  # (an escaped key is still "tools")
            return event
        try:
            doc = _decode(data)
        except (msgspec.DecodeError, RecursionError):
            unfilterable = self._unfilterable(data)
            return event if unfilterable is data else with_data(event, unfilterable)
        return with_data(event, _encode(doc)) if self._filter_all(doc) else event

    def _unfilterable(self, data: bytes) -> bytes:
        """What replaces an answer the gateway cannot decode: itself when it cannot be a tools list (no "tools" in
        it), else an error, never the tools unfiltered (JSON nested deeper than the decoder goes, say)."""
        if self.list_ids is None or (b"tools" not in data and b"\\u" not in data):
            return data
        return self.not_filtered()

    def not_filtered(self) -> bytes:
        """The error that stands for a tools list the gateway could not filter (never passed on unfiltered)."""
        ids = [i for i in self.list_ids or () if i is not ANY_ID]
        return error_response(ids[0] if len(ids) == 1 else None, -32603,
                              "the server's answer could not be filtered for this caller")

    # --- the filter -----------------------------------------------------------------------------------------------

    def _filter_all(self, doc: Any) -> bool:
        """`_filter` on a message, or on each message of a batch; True if any was changed."""
        if not isinstance(doc, list):
            return self._filter(doc)
        changed = False
        for item in doc:
            changed = self._filter(item) or changed
        return changed

    def _filter(self, message: Any) -> bool:
        """Drop the tools the caller may not use from a result carrying tools in place, whatever its id (see the
        module's docstring), and make the result `cacheScope: "private"` (see PRIVATE); True if it changed."""
        if self.list_ids is None or not isinstance(message, dict):
            return False
        result = message.get("result")
        if not isinstance(result, dict):
            return False
        tools = result.get("tools")
        if not isinstance(tools, list):
            return False
        changed = "cacheScope" in result and result["cacheScope"] != PRIVATE
        if changed:
            result["cacheScope"] = PRIVATE
        allowed = self.allowed
        kept = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str) and allowed(t["name"])]
        if len(kept) == len(tools):
            return changed
        result["tools"] = kept
        return True
