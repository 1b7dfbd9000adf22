"""response-transformer and correlation-id compiled at config load (gateway/policies/response_transformer/handler.py,
gateway/policies/correlation_id/handler.py). The references below are the plugins as they were before: Kong's
header_transformer call by call on the live header list, and correlation-id's get_header / set_header on every
request. The compiled plugins must leave the same headers (order included), the same request headers and the same
id, for every config and head; and they have only the phases their config needs."""

from __future__ import annotations

import re
import uuid
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plugin_helpers import run_without_waiting

from gateway.http.codec import first_of_single
from gateway.pipeline.phases import ResponsePhases
from gateway.policies import correlation_id, response_transformer
from gateway.policies.correlation_id.handler import (
    STATE_KEY,
    CorrelationId,
    _uuid4,
    _WorkerIds,
    spellings,
)
from gateway.policies.correlation_id.schema import CorrelationIdConfig
from gateway.policies.header_list import clear_header, escape_value, request_header, set_header
from gateway.policies.response_transformer.handler import ResponseTransformer, is_json
from gateway.policies.response_transformer.schema import ResponseTransformerConfig, split_pair

# --- response-transformer: the reference --------------------------------------------------------------------------


def _pairs(entries: list[str]) -> list[tuple[bytes, bytes | None]]:
    out = []
    for entry in entries:
        name, value = split_pair(entry)
        out.append((name.lower().replace("_", "-").encode(), value.encode() if value is not None else None))
    return out


# lua-nginx-module's built-in single response headers (src/ngx_http_lua_headers_out.c ngx_http_lua_set_handlers:
# ngx_http_set_builtin_header and its Location, Last-Modified, Content-Length, Content-Type variants), each with its
# headers_out slot (E-Tag's is ETag's in nginx: the plugin gives it its own)
SINGLE = {b"server", b"date", b"content-encoding", b"location", b"refresh", b"last-modified", b"content-range",
          b"accept-ranges", b"expires", b"e-tag", b"etag", b"content-length", b"content-type"}


def reference_headers(config: ResponseTransformerConfig, headers: list) -> list:
    """kong/plugins/response-transformer/header_transformer.lua's transform_headers, one call at a time on `headers`
    (the plugin's header_filter before it was compiled), with nginx's headers_out slots: a built-in single header's
    holds the upstream's line (not a relative Location's, ngx_http_upstream_rewrite_location; not an E-Tag) or the
    last one set; add_header onto a held slot replaces its line (the new value at the end, where set_header puts its
    own); a set_header value that is empty sets no line (ngx.header's "" clears)."""
    came = list(headers)  # kong.response.get_headers(), taken before any change
    held: dict[bytes, Any] = {hv[0]: hv for hv in headers if hv[0] in SINGLE and hv[0] != b"e-tag"
                              and not (hv[0] == b"location" and hv[1][:1] == b"/")}

    def hold(line: tuple[bytes, bytes]) -> None:
        if line[0] in SINGLE and not (line[0] == b"location" and line[1][:1] == b"/"):
            held[line[0]] = line
        else:  # ngx_http_set_location_header: a relative one leaves the slot
            held.pop(line[0], None)

    def clear(name: bytes) -> None:
        clear_header(headers, name)
        held.pop(name, None)

    def set_values(name: bytes, values: list[bytes]) -> None:
        if name == b"transfer-encoding":  # kong.response.set_header ignores it
            return
        clear(name)
        for value in values[-1:] if name in SINGLE else values:  # (set_builtin_header overwrites: the last stays)
            if value:
                headers.append((name, value))
                hold(headers[-1])

    def add(name: bytes, value: bytes) -> None:
        line = held.get(name)
        if line is not None:
            headers[:] = [hv for hv in headers if hv is not line]
        headers.append((name, escape_value(value)))
        if name in SINGLE:
            hold(headers[-1])

    for name, _ in _pairs(config.remove.headers):
        clear(name)
    for old, new in _pairs(config.rename.headers):
        if new is None:
            continue
        new = new.lower().replace(b"_", b"-")
        values = [v for n, v in came if n == old]
        if values:
            set_values(new, values)
            clear(old)
    for name, value in _pairs(config.replace.headers):
        if value is not None and any(n == name for n, _ in came):
            set_values(name, [escape_value(value)])
    for name, value in _pairs(config.add.headers):
        if value is not None and not any(n == name for n, _ in came):
            set_values(name, [escape_value(value)])
    for name, value in _pairs(config.append.headers):
        if value is not None:
            add(name, value)
    return headers


def rt_config(**config: Any) -> ResponseTransformerConfig:
    return msgspec.convert(config, ResponseTransformerConfig)


# config names: cases and "_" for "-", Transfer-Encoding, built-in single headers; response names as the codec gives
# them (lower case, a single header once: first_of_single)
CONFIG_NAMES = ["x-a", "X-A", "x_a", "x-b", "X_B", "date", "Server", "x-new", "Transfer-Encoding", "transfer_encoding",
                "Location", "content_type", "E-Tag", "etag"]
RESPONSE_NAMES = ["x-a", "x-b", "date", "server", "x-new", "transfer-encoding", "content-length", "x_a", "location",
                  "content-type", "e-tag", "etag"]
VALUES = ["1", "v", "", "a b", "v\x0bx", "/p"]

config_name = st.sampled_from(CONFIG_NAMES)
entry = st.builds(lambda n, v: f"{n}:{v}", config_name, st.sampled_from(VALUES))
rename = st.builds(lambda o, n: f"{o}:{n}", config_name, config_name)
entries = st.lists(entry, max_size=4)
# "name:" appends nothing in Kong but fails its header filter (add_header(name, nil)), and an append to
# Transfer-Encoding breaks the gateway's framing: the schema refuses both
appends = st.lists(entry.filter(lambda e: not e.endswith(":") and e.split(":")[0].lower() not in
                                ("transfer-encoding", "transfer_encoding")), max_size=4)
response = st.lists(st.tuples(st.sampled_from(RESPONSE_NAMES), st.sampled_from([b"1", b"2", b"x y", b"/r", b""])),
                    max_size=7).map(first_of_single)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(remove=st.lists(config_name, max_size=3), renames=st.lists(rename, max_size=3), replace=entries, add=entries,
       append=appends, responses=st.lists(response, min_size=1, max_size=4))
def test_compiled_header_changes_leave_the_headers_kongs_calls_leave(remove, renames, replace, add, append,
                                                                     responses):
    config = rt_config(remove={"headers": remove}, rename={"headers": renames}, replace={"headers": replace},
                       add={"headers": add}, append={"headers": append})
    rt = ResponseTransformer(config)
    for headers in responses:  # one transformer, several responses: its plans are kept from one to the next
        expected = reference_headers(config, list(headers))
        if not hasattr(rt, "header_filter"):
            assert expected == headers
            continue
        given_list = list(headers)
        assert rt.header_filter(None, 200, given_list) is given_list  # changed in place, as Kong's setters do
        assert given_list == expected


def test_the_bench_config_renames_removes_and_adds():
    """scripts/bench's gw-response-transformer: add X-Bench:1, remove Server, rename Date:X-Date."""
    rt = ResponseTransformer(rt_config(add={"headers": ["X-Bench:1"]}, remove={"headers": ["Server"]},
                                       rename={"headers": ["Date:X-Date"]}))
    head = [(b"server", b"nginx"), (b"date", b"Fri"), (b"content-type", b"application/json"),
            (b"content-length", b"2"), (b"x-request-id", b"r")]
    for _ in range(2):  # the second from the kept plan
        assert rt.header_filter(None, 200, list(head)) == [
            (b"content-type", b"application/json"), (b"content-length", b"2"), (b"x-request-id", b"r"),
            (b"x-date", b"Fri"), (b"x-bench", b"1")]
    assert len(rt.plans) == 1


def test_a_renamed_header_sent_twice_keeps_both_values_in_order():
    rt = ResponseTransformer(rt_config(rename={"headers": ["x-a:x-b"]}))
    head = [(b"x-a", b"1"), (b"x-c", b"c"), (b"x-a", b"2")]
    assert rt.header_filter(None, 200, head) == [(b"x-c", b"c"), (b"x-b", b"1"), (b"x-b", b"2")]


def test_a_header_entry_that_is_no_tuple_is_still_removed():
    """Headers are tuples; an entry that is a list is removed as the list filter removed it."""
    rt = ResponseTransformer(rt_config(remove={"headers": ["server", "date"]}))
    head: list = [(b"server", b"s"), [b"date", b"d"], (b"x", b"1")]
    assert rt.header_filter(None, 200, head) == [(b"x", b"1")]


def test_every_set_of_tested_names_gets_its_plan_and_only_so_many_are_kept():
    names = [f"x-{i}" for i in range(7)]  # 2**7 sets of present names, more than are kept
    config = rt_config(add={"headers": [f"{n}:v" for n in names]})
    rt = ResponseTransformer(config)
    for mask in range(2 ** len(names)):
        head = [(n.encode(), b"1") for i, n in enumerate(names) if mask >> i & 1]
        assert rt.header_filter(None, 200, list(head)) == reference_headers(config, list(head))
    assert len(rt.plans) == 64


@pytest.mark.parametrize(("config", "header", "body"), [
    ({"add": {"headers": ["x:1"]}}, True, False),
    ({"remove": {"json": ["a"]}}, True, True),  # header_filter: a JSON response's Content-Length is cleared
    ({"append": {"headers": ["x:1"], "json": ["a:1"]}}, True, True),
    ({"add": {"headers": ["x:"]}}, False, False),  # no value: nothing to add
    ({}, False, False),
])
def test_a_transformer_has_only_the_phases_its_config_needs(config, header, body):
    rt = ResponseTransformer(rt_config(**config))
    assert hasattr(rt, "header_filter") is header
    assert hasattr(rt, "wants_body") is body and hasattr(rt, "body_filter") is body
    phases = ResponsePhases.of([rt])
    assert (phases is not None and bool(phases.header_filters)) is header
    assert (phases is not None and bool(phases.body_filters)) is body


def test_a_json_entry_whose_value_is_dropped_still_has_the_body_written_again():
    """json_value() gives nothing for a number tonumber() cannot read, so nothing is added; but Kong still decodes
    and encodes the body (cjson's spacing and number format)."""
    rt = ResponseTransformer(rt_config(add={"json": ["n:abc"], "json_types": ["number"]}))
    json_head = [(b"content-type", b"application/json")]
    assert rt.wants_body(None, 200, json_head)
    assert rt.body_filter(None, 200, json_head, b'{"a": 1.50}') == b'{"a":1.5}'


@pytest.mark.parametrize("content_type", [b"application/json", b"application/json; charset=utf-8", b"text/html",
                                          b"application/problem+json", b"application/json;", b"", b"x/json, a/b+json"])
def test_wants_body_answers_as_is_json_also_from_its_memo(content_type):
    rt = ResponseTransformer(rt_config(add={"json": ["k:v"]}))
    head = [(b"x", b"1"), (b"content-type", content_type)]
    assert [rt.wants_body(None, 200, head) for _ in range(2)] == [is_json(content_type)] * 2
    assert rt.wants_body(None, 200, [(b"x", b"1")]) is False


def test_build_gives_the_compiled_transformer():
    plugin = response_transformer.build(rt_config(add={"headers": ["x:1"]}), "id", None)
    assert hasattr(plugin, "header_filter") and not hasattr(plugin, "body_filter")


# --- correlation-id: the reference ----------------------------------------------------------------------------------


def reference_access(config: CorrelationIdConfig, headers: list, generated: bytes) -> tuple[list, bytes]:
    """kong/plugins/correlation-id/handler.lua's access: (the request headers sent upstream, the id)."""
    value = request_header(headers, config.header_name.encode())
    if not value:
        value = generated
        headers = set_header(list(headers), config.header_name.lower().encode(), value)
    return headers, value


def reference_echo(config: CorrelationIdConfig, headers: list, state_value: bytes | None, request_headers: list,
                   generated: bytes) -> list:
    value = state_value
    if not value:
        value = request_header(request_headers, config.header_name.encode()) or generated
    return set_header(headers, config.header_name.lower().encode().replace(b"_", b"-"), value)


def exchange(headers: list, state: dict | None = None) -> Any:
    return SimpleNamespace(request=SimpleNamespace(headers=headers), state=state)


HEADER_NAMES = ["Kong-Request-ID", "X_Correlation_Id", "x-a", "Host", "Cookie", "Transfer-Encoding",
                "transfer_encoding", "a-b-c-d-e-f-g-h-i-j"]
REQUEST_NAMES = ["kong-request-id", "kong_request-id", "kong_request_id", "kong-request_id", "x-correlation-id",
                 "x_correlation_id", "x-a", "x_a", "host", "cookie", "transfer-encoding", "transfer_encoding",
                 "a-b-c-d-e-f-g-h-i-j", "a_b-c-d-e-f-g-h-i_j", "other"]
request = st.lists(st.tuples(st.sampled_from(REQUEST_NAMES).map(str.encode),
                             st.sampled_from([b"abc", b"", b"a, b", b"x\x01"])), max_size=6)


@pytest.mark.parametrize("name", HEADER_NAMES + ["Via", "X-Forwarded-For", "a", "-x-", "user_agent"])
def test_spellings_are_the_names_get_header_reads(name):
    found = spellings(name.encode())
    candidates = set(REQUEST_NAMES) | {name, name.lower(), name.lower().replace("_", "-"),
                                       name.lower().replace("-", "_")}
    for candidate in candidates:
        reads = request_header([(candidate.encode(), b"v")], name.encode()) is not None
        if found is not None:
            assert (candidate.encode() in found) is reads, candidate
    if found is not None:
        assert all(request_header([(s, b"v")], name.encode()) == b"v" for s in found)


def test_a_name_with_too_many_dashes_is_looked_up_each_time():
    assert spellings(b"a-b-c-d-e-f-g-h-i-j") is None
    assert len(spellings(b"a-b-c-d-e-f-g-h-i") or ()) == 2 ** 8


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(HEADER_NAMES), headers=request, response=request, echo=st.booleans(),
       state_lost=st.booleans())
def test_compiled_correlation_id_sends_and_echoes_what_kongs_calls_do(name, headers, response, echo, state_lost):
    config = CorrelationIdConfig(header_name=name, echo_downstream=echo)
    plugin = correlation_id.build(config, "id", None)
    plugin.generate = lambda ex: b"gen\x01erated"
    ex = exchange(list(headers))
    assert run_without_waiting(plugin.access(ex)) is False
    expected_headers, expected_value = reference_access(config, list(headers), b"gen\x01erated")
    assert ex.request.headers == expected_headers
    assert ex.state == {STATE_KEY: expected_value}
    if state_lost:  # answered before access ran
        ex.state = None
    if not echo:  # Kong's header_filter returns at once: the plugin has none
        assert not hasattr(plugin, "header_filter")
        return
    expected = reference_echo(config, list(response), None if state_lost else expected_value, ex.request.headers,
                              b"gen\x01erated")
    assert plugin.header_filter(ex, 200, list(response)) == expected


def test_uuid4_is_a_random_version_4_uuid_as_str_writes_it():
    ids = [_uuid4() for _ in range(200)]
    assert len(set(ids)) == 200
    for text in ids:
        parsed = uuid.UUID(text.decode())
        assert str(parsed).encode() == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_uuid_counter_ids_are_the_workers_uuid_and_a_count_from_one():
    ids = _WorkerIds()
    first, second = ids(), ids()
    prefix = first.rpartition(b"#")[0]
    assert re.fullmatch(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", prefix)
    assert (first, second) == (prefix + b"#1", prefix + b"#2")
    ids.reset()  # as after a fork
    third = ids()
    assert third.endswith(b"#1") and not third.startswith(prefix)


def test_the_uuid_generator_writes_a_uuid():
    plugin = CorrelationId(CorrelationIdConfig(generator="uuid"))
    ex = exchange([])
    run_without_waiting(plugin.access(ex))
    value = ex.state[STATE_KEY]
    assert ex.request.headers == [(b"kong-request-id", value)] and uuid.UUID(value.decode()).version == 4
