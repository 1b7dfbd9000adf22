"""Bounded fuzzing of what ai-mcp-proxy reads and edits: any body is judged or refused without an exception, and
what is forwarded never calls a refused tool; any answer is edited without an exception and never lists a refused
tool; an event stream cut anywhere edits the same as whole; deep nesting and hostile bodies through the gateway get a
JSON-RPC error, never a 500."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
import trio
from backends import service
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oauth_helpers import ToolServer, call

from gateway.mcp import jsonrpc
from gateway.mcp.governance import ANY_ID, Denial, ResponseEdit, judge
from gateway.mcp.sse import EventSplitter, data_of

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = st.sampled_from(["ok", "xbad", "x", "", "é", "ok\u0000", 3, None, ["ok"], {"n": "ok"}])
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=8))
JSON = st.recursive(SCALARS,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=20)


def refused(tool: str) -> bool:
    return tool.startswith("x")


def decide(tool: str) -> Denial | None:
    return Denial("no") if refused(tool) else None


MESSAGE = st.fixed_dictionaries({"jsonrpc": st.just("2.0")}, optional={
    "id": st.one_of(st.integers(), st.text(max_size=4), st.none(), JSON),
    "method": st.sampled_from(["tools/call", "tools/list", "initialize", "x"]) | JSON,
    "params": st.fixed_dictionaries({}, optional={"name": NAMES, "arguments": JSON}) | JSON})


@FUZZ
@given(st.one_of(MESSAGE, st.lists(MESSAGE, max_size=6), JSON))
def test_a_forwarded_body_never_calls_a_refused_tool(doc):
    body = json.dumps(doc).encode()
    decoded = jsonrpc.decode_messages(body)
    if decoded is None:
        return
    verdict = judge(*decoded, decide, body, True)
    if verdict.forward is None:
        return
    forwarded = json.loads(verdict.forward)
    for message in forwarded if isinstance(forwarded, list) else [forwarded]:
        if isinstance(message, dict) and message.get("method") == "tools/call":
            params = message.get("params")
            assert isinstance(params, dict) and isinstance(params.get("name"), str) and not refused(params["name"])


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_are_judged_or_refused(body):
    decoded = jsonrpc.decode_messages(body)
    if decoded is not None:
        judge(*decoded, decide, body, True)
    jsonrpc.peek(body, True)
    jsonrpc.peek(body, False)


def listed(doc: Any) -> list[str]:
    names = []
    for message in doc if isinstance(doc, list) else [doc]:
        if isinstance(message, dict) and isinstance(message.get("result"), dict):
            tools = message["result"].get("tools")
            if isinstance(tools, list):
                names += [t.get("name") for t in tools if isinstance(t, dict)]
    return names


TOOLS = st.lists(st.fixed_dictionaries({"name": NAMES}, optional={"x": JSON}) | JSON, max_size=5)
ANSWER = st.fixed_dictionaries({"jsonrpc": st.just("2.0"), "id": st.sampled_from([1, "a", None, 2]),
                                "result": st.fixed_dictionaries({"tools": TOOLS}) | JSON})


@FUZZ
@given(st.one_of(ANSWER, st.lists(ANSWER, max_size=3)))
def test_an_edited_answer_never_lists_a_refused_tool(doc):
    edit = ResponseEdit({1, "a", None}, lambda t: not refused(t), [], False)
    out = json.loads(edit.json_body(json.dumps(doc).encode()))
    for message in out if isinstance(out, list) else [out]:  # whatever its id (a server may echo 1 as "1")
        assert not any(isinstance(n, str) and refused(n) for n in listed(message))


@FUZZ
@given(st.lists(ANSWER, min_size=1, max_size=4), st.lists(st.integers(1, 40), max_size=30),
       st.sampled_from([b"\n", b"\r\n"]))
def test_an_event_stream_cut_anywhere_edits_as_whole(answers, cuts, eol):
    stream = b"".join(b"id: %d%sdata: %s%s%s" % (i, eol, json.dumps(a).encode(), eol, eol)
                      for i, a in enumerate(answers))
    edit = ResponseEdit({ANY_ID}, lambda t: not refused(t), [], False)
    whole = [edit.event(e) for e in EventSplitter().feed(stream)]
    splitter, pieces, at = EventSplitter(), [], 0
    for cut in cuts:
        pieces += [edit.event(e) for e in splitter.feed(stream[at:at + cut])]
        at += cut
    pieces += [edit.event(e) for e in splitter.feed(stream[at:])]
    assert pieces == whole and len(whole) == len(answers)
    for event in whole:
        names = listed(msgspec.json.decode(data_of(event)))
        assert not any(isinstance(n, str) and refused(n) for n in names)


# ---- hostile bodies through the gateway -----------------------------------------------------------------------


@pytest.fixture
def http_codec() -> str:
    return "llhttp"


CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":'
HOSTILE = [b"[" * 200000, b'{"a":' * 100000, CALL + b"[" * 100000, b"\xff\xfe" * 1000, CALL + b'"\\ud800"}}',
           json.dumps([{"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "ok"}}
                       for i in range(5000)]).encode()]


async def test_hostile_bodies_get_json_rpc_errors_never_a_500(nursery, gateway):
    server = ToolServer(["ok"])
    await nursery.start(server.serve)
    port = await gateway({"services": [service("mcp", f"http://127.0.0.1:{server.port}", [
        {"name": "mcp", "paths": ["/mcp"], "strip_path": False, "mcp": True}])],
        "plugins": [{"name": "ai-mcp-proxy", "config": {
            "mode": "passthrough-listener", "tools": [{"name": "xbad", "acl": {"allow": []}}]}},
            {"name": "rate-limiting", "config": {"day": 1000, "limit_by": "mcp-tool"}}]})
    for body in HOSTILE:
        with trio.fail_after(10):
            reply = await call(port, "/mcp", [("content-type", "application/json")], "POST", "127.0.0.1", body)
        assert reply.status in (200, 400, 413), (reply.status, reply.body[:200])
        if reply.status != 200:
            assert "error" in json.loads(reply.body)
    assert server.called == ["\ud800"] or server.called == []
