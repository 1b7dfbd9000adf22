"""Kong 3.9.3's PDK tests (Test::Nginx files t/01-pdk/08-response, 04-request, 06-service-request) case by case,
through the plugins that call those functions: request-termination (kong.response.exit, its gRPC output, the echo's
get_path / get_query), key-auth (kong.response.error's Accept), request-transformer (kong.service.request.set_query).
An in-process gateway where only the plugin shows it; the gRPC status table at unit level."""

from __future__ import annotations

import json

import pytest
from backends import raw_exchange
from plugin_helpers import http_codec, plugin, start  # noqa: F401 - http_codec: the fixture

from gateway.http.server import _accept
from gateway.policies.request_termination.handler import grpc_headers


async def _exchange(port: int, request: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """(status line, lower-cased header pairs, body) of one raw request on a connection of its own."""
    data, _ = await raw_exchange(port, request)
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    pairs = [(name.strip().lower(), value.strip()) for name, _, value in (line.partition(b":") for line in lines)]
    return status, pairs, body


def _values(pairs: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for k, v in pairs if k == name]


def _get(path: str, method: str = "GET", extra: bytes = b"") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nhost: a\r\n".encode() + extra + b"connection: close\r\n\r\n"


# --- 08-response/11-exit.t: kong.response.exit through request-termination ---------------------------------------


@pytest.mark.parametrize(("status", "content_type", "grpc_status", "grpc_message"), [
    (200, "application/grpc", b"0", b"OK"),
    (403, "application/grpc+proto", b"7", b"PermissionDenied"),
    (418, "application/grpc", b"3", b"InvalidArgument"),  # a 4xx without its own code: 400's
    (502, "application/grpc", b"13", b"Internal"),  # a 5xx without its own code: 500's
    (302, "application/grpc", b"2", b"Unknown"),  # GRPC_STATUS_UNKNOWN
])
async def test_a_body_with_a_grpc_content_type_gets_grpc_status_and_message(nursery, gateway, status, content_type,
                                                                            grpc_status, grpc_message):
    """11-exit.t TEST 23 "response.exit() sends body with gRPC when asked (explicit)" (and 26, 31): a
    Content-Type beginning with application/grpc makes kong.response.exit add `grpc-status` (HTTP_TO_GRPC_STATUS,
    else 500's / 400's / 200's code, else 2) and, with a string body, `grpc-message` (GRPC_MESSAGES) while the body
    is sent as is (kong/pdk/response.lua send(): lines 684-711, 769-776). request-termination with `body` and
    `content_type` calls exactly exit(status, body, {Content-Type = content_type})."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=status, body="hello",
                                                            content_type=content_type)])
    line, pairs, body = await _exchange(port, _get("/x"))
    assert line.startswith(b"HTTP/1.1 %d" % status)
    assert _values(pairs, b"content-type") == [content_type.encode()]
    assert _values(pairs, b"content-length") == [b"5"] and body == b"hello"
    assert _values(pairs, b"grpc-status") == [grpc_status]
    assert _values(pairs, b"grpc-message") == [grpc_message]


@pytest.mark.parametrize(("status", "grpc_status", "grpc_message"), [
    (401, b"16", b"Unauthenticated"), (404, b"5", b"NotFound"), (409, b"6", b"AlreadyExists"),
    (429, b"8", b"ResourceExhausted"), (499, b"1", b"Canceled"), (501, b"12", b"Unimplemented"),
    (503, b"14", b"Unavailable"), (504, b"4", b"DeadlineExceeded"), (599, b"13", b"Internal"),
    (299, b"0", b"OK"), (101, b"2", b"Unknown"), (304, b"2", b"Unknown"),
])
def test_the_grpc_status_of_an_exit_status_is_kongs_table(status, grpc_status, grpc_message):
    """kong/pdk/response.lua:87-120 (HTTP_TO_GRPC_STATUS, GRPC_MESSAGES) and 696-710 (a status without its own code
    takes 500's, 400's or 200's by its class, else GRPC_STATUS_UNKNOWN, 2)."""
    assert grpc_headers(status, "application/grpc") == [(b"grpc-status", grpc_status),
                                                         (b"grpc-message", grpc_message)]


@pytest.mark.parametrize("content_type", [None, "text/plain", "Application/grpc", "text/plain; application/grpc",
                                          " application/grpc"])
def test_a_content_type_not_starting_with_application_grpc_is_no_grpc_output(content_type):
    """kong/pdk/response.lua:689: `find(res_ctype, "application/grpc", 1, true) == 1`, a plain, case-sensitive find
    at position 1; without a Content-Type, is_grpc_request() (:647-651) wants HTTP/2, which the gateway does not
    serve to clients."""
    assert grpc_headers(200, content_type) == []


@pytest.mark.parametrize("config", [{"message": "hi"}, {"body": "hi"}, {"body": "hi", "content_type": "text/grpc"},
                                    {"echo": True}, {}])
async def test_an_exit_without_a_grpc_content_type_has_no_grpc_headers(nursery, gateway, config):
    """request-termination's other exits (handler.lua:37-73): the message's JSON table and the echo go without
    headers, a body with a Content-Type of another kind, no body at all: none is gRPC output over HTTP/1.1
    (kong/pdk/response.lua:684-692), so no grpc-status nor grpc-message."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=403, **config)])
    line, pairs, _ = await _exchange(port, _get("/x"))
    assert line.startswith(b"HTTP/1.1 403")
    assert _values(pairs, b"grpc-status") == [] and _values(pairs, b"grpc-message") == []


async def test_a_204_with_a_grpc_content_type_keeps_the_grpc_headers_alone(nursery, gateway):
    """kong/pdk/response.lua:696-711, 769-776 set grpc-status and grpc-message with the body's Content-Length; nginx's
    header filter drops a 204's Content-Type and Content-Length (ngx_http_header_filter_module.c:226-233), no
    other header."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=204, body="hello",
                                                            content_type="application/grpc")])
    line, pairs, body = await _exchange(port, _get("/x"))
    assert line.startswith(b"HTTP/1.1 204") and body == b""
    assert _values(pairs, b"content-type") == [] and _values(pairs, b"content-length") == []
    assert _values(pairs, b"grpc-status") == [b"0"] and _values(pairs, b"grpc-message") == [b"OK"]


async def test_a_304_exit_keeps_its_content_type_and_length_and_sends_no_body(nursery, gateway):
    """11-exit.t TEST 15 / 21 (a table body: JSON Content-Type and its Content-Length) with nginx's header filter
    (ngx_http_header_filter_module.c: a 304 is header_only, its Content-Length and Content-Type kept)."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=304, message="x")])
    line, pairs, body = await _exchange(port, _get("/x"))
    assert line.startswith(b"HTTP/1.1 304")
    assert _values(pairs, b"content-type") == [b"application/json; charset=utf-8"]
    assert _values(pairs, b"content-length") == [b"15"] and body == b""


@pytest.mark.parametrize(("config", "content_type", "length"), [
    ({"message": "hi"}, [b"application/json; charset=utf-8"], b"16"),
    ({"body": "hi"}, [], b"2"),  # 11-exit.t TEST 14: no Content-Type of its own (Kong's default_type '')
])
async def test_a_head_request_gets_the_exit_head_with_the_body_length(nursery, gateway, config, content_type, length):
    """11-exit.t TEST 17 / 20 (Content-Length of the body) on a HEAD: nginx sends the head only (r->header_only),
    Content-Length that of the body it does not send."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=200, **config)])
    line, pairs, body = await _exchange(port, _get("/x", "HEAD"))
    assert line.startswith(b"HTTP/1.1 200")
    assert _values(pairs, b"content-type") == content_type
    assert _values(pairs, b"content-length") == [length] and body == b""


async def test_an_exit_without_body_has_content_length_0_and_no_content_type(nursery, gateway):
    """11-exit.t TEST 7 "response.exit() has no default content" and TEST 18 "sets content-length header even when
    no body": request-termination's 200 without message (DEFAULT_RESPONSE has no 200) is exit(200, nil)."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=200)])
    line, pairs, body = await _exchange(port, _get("/x"))
    assert line.startswith(b"HTTP/1.1 200")
    assert _values(pairs, b"content-type") == [] and _values(pairs, b"content-length") == [b"0"] and body == b""


# --- 08-response/13-error.t: kong.response.error through key-auth ------------------------------------------------


async def test_response_error_reads_accept_in_the_first_100_header_lines_only(nursery, gateway):
    """13-error.t TEST 1 / 5 / 15 (the format from Accept) with what kong.response.error reads it from:
    `ngx.req.get_headers()[ACCEPT_NAME]` (kong/pdk/response.lua:1149), whose default count is lua_max_req_headers
    = 100 (kong/templates/kong_defaults.lua:198): an Accept after the 100th line is not there, and key-auth's 401 is
    JSON, Kong's default."""
    _, port = await start(nursery, gateway, plugins=[plugin("key-auth")])
    filler = b"".join(b"x-h-%d: 1\r\n" % i for i in range(99))  # with Host, 100 lines
    line, pairs, body = await _exchange(port, _get("/x", extra=filler + b"accept: text/html\r\n"))
    assert line.startswith(b"HTTP/1.1 401")
    assert _values(pairs, b"content-type") == [b"application/json; charset=utf-8"]
    assert json.loads(body)["message"] == "No API key found in request"
    # within the 100 lines it is read (the control)
    line, pairs, body = await _exchange(port, _get("/x", extra=b"accept: text/html\r\n" + filler))
    assert _values(pairs, b"content-type") == [b"text/html; charset=utf-8"]


def test_response_error_joins_the_accept_lines_of_the_first_100_only():
    """kong/pdk/response.lua:1149 reads Accept from ngx.req.get_headers(), the first lua_max_req_headers (100) lines
    (kong/templates/kong_defaults.lua:198): an Accept line past them is not joined to one within them."""
    filler = [(b"x-h-%d" % i, b"1") for i in range(98)]
    assert _accept([(b"host", b"a"), (b"accept", b"text/html")] + filler + [(b"accept", b"text/plain")]) \
        == b"text/html"
    assert _accept([(b"host", b"a"), (b"accept", b"text/html")] + filler[:97] + [(b"accept", b"text/plain")]) \
        == b"text/html,text/plain"


# --- 04-request: kong.request.get_path / get_query through request-termination's echo ----------------------------


@pytest.mark.parametrize(("target", "path", "query"), [
    ("/t/Abc%20123%C3%B8/parent/../test/.", "/t/Abc 123\u00f8/test/", {}),  # 09-get_path.t TEST 3
    ("http://kong", "/", {}),  # 09-get_path.t TEST 2
    ("/t/demo?param=value", "/t/demo", {"param": "value"}),  # 09-get_path.t TEST 4
    ("/t?Foo=Hello&Bar=World&Accept=application%2Fjson&Accept=text%2Fhtml", "/t",
     {"Foo": "Hello", "Bar": "World", "Accept": ["application/json", "text/html"]}),  # 12-get_query.t TEST 2
    ("/t?Foo=Hello&foo=World&fOO=Too", "/t", {"Foo": "Hello", "foo": "World", "fOO": "Too"}),  # TEST 3
    ("/t?Foo", "/t", {"Foo": True}),  # 11-get_query_arg.t TEST 4
    ("/t?Foo=", "/t", {"Foo": ""}),  # 11-get_query_arg.t TEST 5
    ("/t?a&b=", "/t", {"a": True, "b": ""}),
    ("/t?a=%2B+b", "/t", {"a": "+ b"}),  # ngx.decode_args: "+" a space, %2B a "+"
])
async def test_the_echo_reads_path_and_query_as_the_pdk_does(nursery, gateway, target, path, query):
    """request-termination's echo puts kong.request.get_path() and get_query() in its document: the PDK tests'
    cases (t/01-pdk/04-request/09-get_path.t, 11-get_query_arg.t, 12-get_query.t) read through it."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=200, echo=True)])
    line, _, body = await _exchange(port, _get(target))
    assert line.startswith(b"HTTP/1.1 200")
    request = json.loads(body)["request"]
    assert request["path"] == path and request["query"] == query


async def test_the_echo_reads_100_query_arguments(nursery, gateway):
    """12-get_query.t TEST 4 "fetches 100 query arguments by default" / 11-get_query_arg.t TEST 6: the 101st is
    not read."""
    _, port = await start(nursery, gateway, plugins=[plugin("request-termination", status_code=200, echo=True)])
    _, _, body = await _exchange(port, _get("/t?" + "&".join(f"arg-{i}=test" for i in range(1, 102))))
    query = json.loads(body)["request"]["query"]
    assert len(query) == 100 and "arg-101" not in query


# --- 06-service-request/08-set_query.t through request-transformer ------------------------------------------------


async def _upstream_path(nursery, gateway, target: str, **config: object) -> str:
    _, port = await start(nursery, gateway, plugins=[plugin("request-transformer", **config)])
    line, _, body = await _exchange(port, _get(target))
    assert line.startswith(b"HTTP/1.1 200"), (line, body[:200])
    return json.loads(body)["path"]


@pytest.mark.parametrize(("target", "config", "upstream"), [
    # TEST 8 "deterministic lexicographical order", TEST 9 "preserves the order of array arguments" (bare ones
    # written bare), TEST 10 "supports empty values"
    ("/x?b=2&a&c=&d=1&d&d=3", {"add": {"querystring": ["z:1"]}}, "/x?a&b=2&c=&d=1&d&d=3&z=1"),
    # TEST 5 "accepts an empty table": no query at all, not "/x?"
    ("/x?a=1", {"remove": {"querystring": ["a"]}}, "/x"),
    # TEST 6 / 7 "urlencodes table values": a space is %20 (ngx.encode_args), the "+" read as a space
    ("/x?a=hello+world", {"add": {"querystring": ["z:a b"]}}, "/x?a=hello%20world&z=a%20b"),
    # request-transformer's append_value on a bare argument (true): a new list of the value alone
    ("/x?a", {"append": {"querystring": ["a:3"]}}, "/x?a=3"),
    ("/x?a=1&a=2", {"append": {"querystring": ["a:3"]}}, "/x?a=1&a=2&a=3"),
    ("/x?a", {"rename": {"querystring": ["a:b"]}}, "/x?b"),
])
async def test_set_query_writes_the_table_as_ngx_encode_args_does(nursery, gateway, target, config, upstream):
    """t/01-pdk/06-service-request/08-set_query.t TEST 5-10 through request-transformer's transform_querystrings
    (kong/plugins/request-transformer/access.lua:234-271: the get_query table changed, then set_query)."""
    assert await _upstream_path(nursery, gateway, target, **config) == upstream
