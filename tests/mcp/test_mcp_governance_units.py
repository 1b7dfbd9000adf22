"""ai-mcp-proxy's pieces without I/O: the ACL rules, judging bodies message by message, editing answers (JSON and
event streams), and the event splitter that holds events arriving in pieces."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mcp import jsonrpc
from gateway.mcp.governance import ANY_ID, Denial, ResponseEdit, judge
from gateway.mcp.sse import _END, EventSplitter, data_of, with_data
from gateway.mcp.toolacl import Rule, ToolAcl, claim_path, claim_subjects


def test_deny_wins_and_no_allow_list_admits_everyone_not_denied():
    assert not Rule(["a"], ["a"]).permits(frozenset({"a"}))
    assert Rule(None, ["x"]).permits(frozenset({"a"}))
    assert Rule(None, None).permits(frozenset())
    assert not Rule([], None).permits(frozenset({"a"}))  # an empty allow list admits no one
    assert not Rule(["a"], None).permits(frozenset())


def test_a_tools_own_rule_replaces_the_default():
    acl = ToolAcl({"t": Rule(["bob"], None)}, Rule(["alice"], None))
    assert acl.allowed("t", frozenset({"bob"})) and not acl.allowed("t", frozenset({"alice"}))
    assert acl.allowed("other", frozenset({"alice"})) and not acl.allowed("other", frozenset({"bob"}))
    assert ToolAcl({}, None).allowed("any", frozenset()) and ToolAcl({}, None).open


@pytest.mark.parametrize(("field", "value", "subjects"), [
    ("scope", "a b  c", {"a", "b", "c"}), (".user.email", "x@y", {"x@y"}), ("roles", ["r1", 2, "r2"], {"r1", "r2"}),
    ("sub", 5, set()), ("name", "a b", {"a b"})])
def test_claim_subjects(field, value, subjects):
    assert claim_subjects(value, claim_path(field)) == subjects
    assert claim_path(".user.email") == ("user", "email")


def decide(tool: str) -> Denial | None:
    return Denial(f"no {tool}") if tool.startswith("x") else None


def judged(body: bytes, filter_lists: bool = True):  # noqa: ANN201
    messages, batch = jsonrpc.decode_messages(body)
    return judge(messages, batch, decide, body, filter_lists)


def test_an_allowed_body_is_forwarded_as_the_same_bytes():
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ok"}}'
    verdict = judged(body)
    assert verdict.forward is body and not verdict.errors and verdict.calls == [("ok", None, 1)]


def test_a_batch_keeps_the_exact_bytes_of_what_remains():
    body = b'[ {"id":1, "method":"tools/call","params":{"name":"ok"}} ,{"id":2,"method":"tools/call",' \
           b'"params":{"name":"xbad"}}, {"id":"L","method":"tools/list"}]'
    verdict = judged(body)
    assert verdict.forward == (b'[{"id":1, "method":"tools/call","params":{"name":"ok"}},'
                               b'{"id":"L","method":"tools/list"}]')
    assert [json.loads(e)["id"] for e in verdict.errors] == [2] and verdict.list_ids == {"L"}


def test_lists_are_not_tracked_when_nothing_is_filtered():
    assert judged(b'{"id":1,"method":"tools/list"}', filter_lists=False).list_ids is None


def test_an_id_that_cannot_be_a_key_filters_every_answer():
    assert judged(b'{"id":{"a":1},"method":"tools/list"}').list_ids == {ANY_ID}


def edit(ids, errors=(), batch=False) -> ResponseEdit:  # noqa: ANN001
    return ResponseEdit(ids, lambda t: not t.startswith("x"), list(errors), batch)


LISTING = {"jsonrpc": "2.0", "id": 7, "result": {"tools": [{"name": "a"}, {"name": "xb"}, {"name": 3}, "junk"]}}


def test_json_answers_to_a_body_with_a_tools_list_are_filtered():
    body = json.dumps(LISTING).encode()
    assert json.loads(edit({7}).json_body(body))["result"]["tools"] == [{"name": "a"}]
    assert edit(None).json_body(body) is body  # no tools/list asked for (or an open ACL): nothing to filter


@pytest.mark.parametrize(("sent", "echoed"), [("7", 7), (2**53 + 1, 2**53), (7, "other")])
def test_a_tools_list_answer_is_filtered_whatever_id_the_server_echoes(sent, echoed):
    """Servers echo an id as they read it: python-sdk v1.9.4..v1.12.0 (src/mcp/types.py `RequestId = Annotated[int |
    str, Field(union_mode="left_to_right")]`) answers "7" with 7, and its clients take 7 for their "7" (the SDK's
    dispatcher `coerce_request_id`, "matches the TS SDK"); the TypeScript SDK's JSON.parse rounds an integer past
    2**53 to a double. Matching answers to the request's ids would pass such a list on unfiltered (denied tools
    leaked): every result carrying tools in the answer to a tools/list is filtered."""
    verdict = judged(json.dumps({"jsonrpc": "2.0", "id": sent, "method": "tools/list"}).encode())
    answer = json.dumps({**LISTING, "id": echoed}).encode()
    out = json.loads(ResponseEdit(verdict.list_ids, lambda t: not t.startswith("x"), [], False).json_body(answer))
    assert out["result"]["tools"] == [{"name": "a"}] and out["id"] == echoed


PUBLIC_LISTING = {"jsonrpc": "2.0", "id": 7, "result": {"ttlMs": 60000, "cacheScope": "public",
                                                      "tools": [{"name": "a"}, {"name": "xb"}]}}


def test_a_filtered_tools_list_result_goes_out_cache_scope_private_with_its_ttl():
    """SEP-2549 (2026-07-28; the SDK's mcp_types/_v2026_07_28 CacheableResult.cache_scope): "public" lets "any client
    or intermediary (e.g., shared gateway, caching proxy)" serve a result "across authorization contexts"; the
    gateway's answer is one caller's view, so "private" (the same caller may still reuse it for ttlMs)."""
    result = json.loads(edit({7}).json_body(json.dumps(PUBLIC_LISTING).encode()))["result"]
    assert result == {"ttlMs": 60000, "cacheScope": "private", "tools": [{"name": "a"}]}


def test_a_tools_list_result_is_made_private_also_when_no_tool_is_dropped():
    """The view is per caller whether or not this caller lost a tool: another caller's may differ."""
    listing = {**PUBLIC_LISTING, "result": {**PUBLIC_LISTING["result"], "tools": [{"name": "a"}]}}
    assert json.loads(edit({7}).json_body(json.dumps(listing).encode()))["result"]["cacheScope"] == "private"
    event = b"event: message\ndata: " + json.dumps(listing).encode() + b"\n\n"
    assert json.loads(data_of(edit({ANY_ID}).event(event)))["result"]["cacheScope"] == "private"


def test_a_result_already_private_or_without_a_scope_passes_byte_for_byte():
    """No cacheScope is private already (the SDK's CacheableResult default; earlier revisions have none)."""
    for result in ({"tools": [{"name": "a"}]}, {"cacheScope": "private", "tools": [{"name": "a"}]}):
        body = json.dumps({"jsonrpc": "2.0", "id": 7, "result": result}).encode()
        assert edit({7}).json_body(body) is body


def test_only_a_tools_lists_scope_is_changed():
    """Other results (resources/list, prompts/list) are not filtered per caller: left as they came."""
    resources = json.dumps({"jsonrpc": "2.0", "id": 7, "result": {"cacheScope": "public", "resources": []}})
    assert edit({7}).json_body(resources.encode()) == resources.encode()


def test_the_gateways_errors_join_a_batch_answer():
    error = b'{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"no"}}'
    out = json.loads(edit(None, [error], True).json_body(b'[{"jsonrpc":"2.0","id":1,"result":{}}]'))
    assert [m["id"] for m in out] == [1, 2]
    assert json.loads(edit(None, [error], True).accepted_body()) == [json.loads(error)]


def test_events_are_filtered_and_keep_their_other_fields():
    event = b"id: 4\r\nevent: message\r\ndata: " + json.dumps(LISTING).encode() + b"\r\n\r\n"
    out = edit({ANY_ID}).event(event)
    assert out.startswith(b"id: 4\nevent: message\ndata: ") and out.endswith(b"\n\n")
    assert json.loads(data_of(out))["result"]["tools"] == [{"name": "a"}]
    other = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"x\"}\n\n"
    assert edit({ANY_ID}).event(other) is other


@pytest.mark.parametrize("sep", [b"\n", b"\r\n"])
def test_the_splitter_holds_an_event_until_it_ends(sep):
    stream = b"data: a" + sep + sep + b": comment" + sep + b"data: b" + sep + b"data: c" + sep + sep
    for size in (1, 2, 3, 5, len(stream)):
        splitter = EventSplitter()
        events = []
        for i in range(0, len(stream), size):
            events += splitter.feed(stream[i:i + size])
        assert [data_of(e) for e in events] == [b"a", b"b\nc"], size
        assert splitter.pending == b""


def _split_whole(stream: bytes) -> tuple[list[bytes], bytes]:
    """The events of a stream read at once, and what follows the last one: what the splitter must give however the
    stream is cut."""
    events, start = [], 0
    while (m := _END.search(stream, start)) is not None:
        events.append(stream[start:m.end()])
        start = m.end()
    return events, stream[start:]


@given(st.binary(max_size=200).map(lambda b: bytes(b"a\r\n"[x % 3] for x in b)), st.lists(st.integers(1, 9)))
@settings(max_examples=500, deadline=None, database=None)
def test_the_splitter_gives_the_same_events_however_the_stream_is_cut(stream, cuts):
    splitter, events, at = EventSplitter(), [], 0
    for cut in cuts:
        events += splitter.feed(stream[at:at + cut])
        at += cut
    events += splitter.feed(stream[at:])
    assert (events, splitter.pending) == _split_whole(stream)


def test_the_splitter_holds_a_long_event_as_pieces_until_it_ends():
    splitter = EventSplitter()
    piece = b"x" * 16384
    for _ in range(512):  # 8 MiB of one event
        assert splitter.feed(piece) == []
    (event,) = splitter.feed(b"\n\n")
    assert len(event) == 512 * 16384 + 2 and splitter.pending == b""


def test_data_fields_as_the_html_spec_reads_them():
    assert data_of(b"data:x\ndata\ndata:  y\n\n") == b"x\n\n y"
    assert data_of(b"event: e\n\n") is None
    assert data_of(b"database: 1\ndata: z\n\n") == b"z"
    assert with_data(b": c\ndata: 1\ndata: 2\nid: 9\n\n", b"{}") == b": c\ndata: {}\nid: 9\n\n"


def test_decoding_refuses_what_is_not_json_rpc():
    for body in (b"", b"nope", b"[]", b"[1]", b'"s"', b"[" + b",".join([b'{"id":1}'] * 1001) + b"]"):
        assert jsonrpc.decode_messages(body) is None, body
    [m], batch = jsonrpc.decode_messages(b'{"id":null,"method":"tools/call","params":{"name":7}}')
    assert m.has_id and m.id is None and m.name is None and not batch


def proxy_errors(config: dict) -> str:
    import yaml

    from gateway.config import ConfigError, parse_config
    from gateway.runtime import compile_config

    doc = {"_format_version": "3.0", "services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [
        {"name": "r", "paths": ["/mcp"]}]}], "plugins": [{"name": "ai-mcp-proxy", "config": config}]}
    try:
        compile_config(parse_config(yaml.safe_dump(doc), "t.yml"), "t.yml")
    except ConfigError as e:
        return str(e)
    return ""


@pytest.mark.parametrize(("config", "message"), [
    ({"mode": "conversion-listener"}, "config.mode: 'conversion-listener' is not supported"),
    ({"mode": "passthrough-listener", "max_request_body_size": 0}, "config.max_request_body_size: 0 (unlimited)"),
    ({"mode": "passthrough-listener", "tools": [{"name": "a", "path": "/x"}]},
     "tools[0].path is not supported: used only by modes"),
    ({"mode": "passthrough-listener", "server": {"timeout": 5}}, "config.server is not supported"),
    ({"mode": "passthrough-listener", "tools": [{"name": "a"}, {"name": "a"}]}, "'a' is listed twice"),
    ({"mode": "passthrough-listener", "acl_attribute_type": "oauth_access_token"},
     "config.access_token_claim_field: required"),
    ({"mode": "passthrough-listener", "default_acl": [{"scope": "prompts"}]}, "default_acl[0].scope"),
    ({"mode": "passthrough-listener", "logging": {"log_payloads": True}}, "logging.log_payloads: not supported"),
])
def test_proxy_config_errors_name_the_field(config, message):
    assert message in proxy_errors(config)


def test_kongs_passthrough_example_loads():
    assert proxy_errors({"mode": "passthrough-listener", "max_request_body_size": 1048576,
                         "default_acl": [{"scope": "tools", "allow": ["admin"], "deny": ["suspended"]}],
                         "include_consumer_groups": True,
                         "tools": [{"name": "list_users", "description": "List users", "acl": {"allow": ["dev"]}}]}) \
        == ""
