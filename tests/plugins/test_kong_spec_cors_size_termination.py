"""Kong's cors, request-size-limiting and request-termination, as Kong's own sources and spec tests state them
(spec/03-plugins/13-cors, 12-request-size-limiting, 14-request-termination), over the real gateway."""

from __future__ import annotations

import json
import os
import socket

import h11
import pytest
import trio
from backends import Client, Reply
from plugin_helpers import (
    call,
    headers_of,
    http_codec,  # noqa: F401 - the fixture: one codec
    plugin,
    refused,
    start,
)

KB, MB = 1024, 1024 * 1024
DEFAULT_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"


def cors(**config: object) -> dict:
    return plugin("cors", **config)


def preflight(origin: str) -> list[tuple[str, str]]:
    return [("origin", origin), ("access-control-request-method", "GET")]


# --- cors -----------------------------------------------------------------------------------------------------------

# spec/03-plugins/13-cors/01-access_spec.lua's regex_testcases: the origins configured, and for each request Origin
# whether the preflight accepts it (True: echoed as sent; a string: that ACAO; False: no ACAO).
REGEX_TESTCASES: list[tuple[list[str], dict[str, bool | str]]] = [
    (["foo.test"], {o: "foo.test" for o in (
        "http://evil.test", "http://foo.test", "http://foo.test.evil.test", "http://something.foo.test",
        "http://evilfoo.test", "http://foo.test:80", "http://foo.test:8000", "https://foo.test:8000",
        "http://foo.test:90", "http://foobtest", "https://bar.test:1234")}),
    (["https://bar.test:1234"], {o: "https://bar.test:1234" for o in (
        "http://evil.test", "http://foo.test", "http://foo.test:80", "http://foobtest", "https://bar.test:1234")}),
    (["foo\\.test"], {
        "http://evil.test": False, "http://foo.test": True, "http://foo.test.evil.test": False,
        "http://something.foo.test": False, "http://evilfoo.test": False, "http://foo.test:80": "http://foo.test",
        "http://foo.test:8000": True, "https://foo.test:8000": True, "http://foo.test:90": True,
        "http://foobtest": False, "https://bar.test:1234": False}),
    (["(.*[./])?foo\\.test"], {
        "http://evil.test": False, "http://foo.test": True, "http://foo.test.evil.test": False,
        "http://something.foo.test": True, "http://evilfoo.test": False, "http://foo.test:80": "http://foo.test",
        "http://foo.test:8000": True, "https://foo.test:8000": True, "http://foo.test:90": True,
        "http://foobtest": False, "https://bar.test:1234": False}),
    (["(.*[./])?foo\\.test:8000"], {
        "http://evil.test": False, "http://foo.test": False, "http://foo.test.evil.test": False,
        "http://something.foo.test": False, "http://evilfoo.test": False, "http://foo.test:80": False,
        "http://foo.test:8000": True, "https://foo.test:8000": True, "http://foo.test:90": False,
        "http://foobtest": False, "https://bar.test:1234": False}),
    (["https://(.*[.])?foo\\.test:8000"], {
        "http://evil.test": False, "http://foo.test": False, "http://foo.test.evil.test": False,
        "http://something.foo.test": False, "http://foo.test:80": False, "http://foo.test:8000": False,
        "https://foo.test:8000": True, "http://foo.test:90": False, "http://foobtest": False,
        "https://bar.test:1234": False}),
    (["^http://(.*[.])?foo\\.test(:(80|90))?$"], {
        "http://evil.test": False, "http://foo.test": True, "http://foo.test.evil.test": False,
        "http://something.foo.test": True, "http://foo.test:80": "http://foo.test", "http://foo.test:8000": False,
        "https://foo.test:8000": False, "http://foo.test:90": True, "http://foobtest": False,
        "https://bar.test:1234": False}),
    (["foo.test", "bar.test"], {o: False for o in (
        "http://evil.test", "http://foo.test", "http://foo.test.evil.test", "http://foo.test:80",
        "http://foo.test:8000", "http://foo.test:90", "http://foobtest", "https://bar.test:1234")}),
    (["http://foo.test", "https://bar.test:1234"], {
        "http://evil.test": False, "http://foo.test": True, "http://foo.test.evil.test": False,
        "http://foo.test:80": "http://foo.test", "http://foo.test:8000": False, "http://foo.test:90": False,
        "http://foobtest": False, "https://bar.test:1234": True}),
    (["bar.test", "foo\\.test"], {
        "http://evil.test": False, "http://foo.test": True, "http://foo.test.evil.test": False,
        "http://something.foo.test": False, "http://foo.test:80": "http://foo.test", "http://foo.test:8000": True,
        "http://foo.test:90": True, "http://foobtest": False, "https://bar.test:1234": False}),
    (["bar.test", "(.*\\.)?foo\\.test"], {
        "http://evil.test": False, "http://foo.test": True, "http://foo.test.evil.test": False,
        "http://something.foo.test": True, "http://foo.test:80": "http://foo.test", "http://foo.test:8000": True,
        "http://foo.test:90": True, "http://foobtest": False, "https://bar.test:1234": False}),
    (["bar.test", "(.*[./])?foo\\.test:8000"], {
        "http://evil.test": False, "http://foo.test": False, "http://something.foo.test": False,
        "http://foo.test:80": False, "http://foo.test:8000": True, "https://foo.test:8000": True,
        "http://foo.test:90": False, "http://foobtest": False, "https://bar.test:1234": False}),
    (["bar.test", "https://(.*\\.)?foo\\.test:8000"], {
        "http://evil.test": False, "http://foo.test": False, "http://something.foo.test": False,
        "http://foo.test:80": False, "http://foo.test:8000": False, "https://foo.test:8000": True,
        "http://foo.test:90": False, "http://foobtest": False, "https://bar.test:1234": False}),
]


@pytest.mark.parametrize(("origins", "cases"), REGEX_TESTCASES, ids=[str(o) for o, _ in REGEX_TESTCASES])
async def test_a_preflight_allows_origins_as_kongs_regex_table_says(nursery, gateway, origins, cases):
    """spec/03-plugins/13-cors/01-access_spec.lua: "given <origin>, <origins> will accept/reject"."""
    _, port = await start(nursery, gateway, plugins=[cors(origins=origins)])
    for origin, accept in cases.items():
        reply = await call(port, "/", preflight(origin), method="OPTIONS")
        assert reply.status == 200
        expected = (origin if accept is True else accept) or None
        assert reply.header("access-control-allow-origin") == expected, origin
        if accept:
            assert reply.header("access-control-allow-methods") == DEFAULT_METHODS
            assert reply.header("access-control-allow-credentials") is None


@pytest.mark.parametrize("origin", ["HTTP://foo.test", "http://foo.test:080", "http://foo.test:"])
async def test_a_request_origin_is_normalised_as_luasockets_url_parse_reads_it(nursery, gateway, origin):
    """kong/plugins/cors/handler.lua normalize_origin (socket.url.parse): the scheme is kept as sent and only a port
    written exactly "80" (http) or "443" (https) is dropped, so these do not equal the listed "http://foo.test"."""
    _, port = await start(nursery, gateway, plugins=[cors(origins=["http://foo.test", "http://bar.test"])])
    reply = await call(port, "/", [("origin", origin)])
    assert reply.status == 200 and reply.header("access-control-allow-origin") is None


async def test_methods_null_answers_a_preflight_with_all_methods(nursery, gateway):
    """spec/03-plugins/13-cors/01-access_spec.lua configures `methods = ngx.null` (cors12.test): Kong accepts it and
    the handler then sends its default list of methods."""
    _, port = await start(nursery, gateway, plugins=[cors(methods=None)])
    reply = await call(port, "/", preflight("http://a.test"), method="OPTIONS")
    assert reply.header("access-control-allow-methods") == DEFAULT_METHODS


@pytest.mark.parametrize(("max_age", "sent"), [(-5, "-5"), (1.5, "1.5"), (1e20, "1e+20"), (1728000, "1728000")])
async def test_max_age_takes_any_number_and_sends_it_as_lua_writes_it(nursery, gateway, max_age, sent):
    """kong/plugins/cors/schema.lua: max_age is a plain number (no bounds); the handler sends tostring(max_age)."""
    _, port = await start(nursery, gateway, plugins=[cors(max_age=max_age)])
    reply = await call(port, "/", preflight("http://a.test"), method="OPTIONS")
    assert reply.header("access-control-max-age") == sent


async def test_an_unmatched_origin_removes_the_upstreams_allow_origin(nursery, gateway):
    """spec/03-plugins/13-cors/01-access_spec.lua "removes upstream ACAO header when no match is found"."""
    backend, port = await start(nursery, gateway, plugins=[cors(origins=["a.xxx.test", "allowed-domain.test"],
                                                               credentials=True)])
    backend.extra_headers = [(b"access-control-allow-origin", b"*"), (b"vary", b"Accept-Encoding")]
    allowed = await call(port, "/", [("origin", "allowed-domain.test")])
    assert allowed.header("access-control-allow-origin") == "allowed-domain.test"
    assert headers_of(allowed, "vary") == ["Accept-Encoding", "Origin"]
    other = await call(port, "/", [("origin", "disallowed-domain.test")])
    assert other.header("access-control-allow-origin") is None
    assert other.header("access-control-allow-credentials") == "true"


async def test_a_star_among_other_origins_allows_every_origin(nursery, gateway):
    """spec/03-plugins/13-cors/01-access_spec.lua "gives * wildcard when origin has multiple entries and have *
    included" (cors14.test)."""
    _, port = await start(nursery, gateway, plugins=[cors(origins=["foo.bar", "*"])])
    reply = await call(port, "/", preflight("http://www.example.net"), method="OPTIONS")
    assert (reply.status, reply.header("content-length")) == (200, "0")
    assert reply.header("access-control-allow-origin") == "*"
    assert reply.header("access-control-allow-methods") == DEFAULT_METHODS


async def test_cors_with_origins_leaves_the_log_plugins_after_it_working(nursery, gateway, tmp_path):
    """Kong runs every log plugin of the request; cors (priority 2000) came first and, taken for a logger, broke the
    log phase of the plugins after it."""
    log = tmp_path / "file.log"
    _, port = await start(nursery, gateway, plugins=[cors(origins=["http://a.test", "http://b.test"]),
                                                     plugin("file-log", path=str(log))])
    assert (await call(port, "/", [("origin", "http://a.test")])).status == 200
    with trio.fail_after(5):
        while not log.exists() or not log.read_text():
            await trio.sleep(0.02)
    assert json.loads(log.read_text().splitlines()[0])["response"]["status"] == 200


# --- request-size-limiting ------------------------------------------------------------------------------------------


def size_limit(**config: object) -> dict:
    return plugin("request-size-limiting", **config)


async def head_only(port: int, headers: list[tuple[str, str]]) -> Reply:
    """A POST whose head announces a body that is never sent: the answer the gateway gives before reading it."""
    with trio.fail_after(10):
        async with await Client.connect(port) as client:
            await client.stream.send_all(client.conn.send(h11.Request(
                method="POST", target="/", headers=[("host", client.host), *headers])))
            return await client.read_response()


@pytest.mark.parametrize(("unit", "factor"), [("bytes", 1), ("kilobytes", KB), ("megabytes", MB)])
async def test_a_body_over_the_limit_in_each_unit_gets_413(nursery, gateway, unit, factor):
    """spec/03-plugins/12-request-size-limiting/01-access_spec.lua "blocks if size is greater than limit when unit
    in <unit>" (with Content-Length, then chunked) and "works if size is less than limit"."""
    _, port = await start(nursery, gateway, plugins=[size_limit(allowed_payload_size=2, size_unit=unit)])
    over = await head_only(port, [("content-length", str(2 * factor + 1))])
    assert (over.status, over.json()["message"]) == (413, "Request size limit exceeded")
    chunked = await call(port, "/", method="GET", body=[b"a" * (2 * factor + 1)])
    assert (chunked.status, chunked.json()["message"]) == (413, "Request size limit exceeded")
    assert (await call(port, "/", method="POST", body=b"a" * (2 * factor))).status == 200


async def test_a_body_over_the_limit_with_expect_100_continue_gets_417(nursery, gateway):
    """spec/03-plugins/12-request-size-limiting/01-access_spec.lua "blocks if size is greater than limit and Expect
    header" (Content-Length)."""
    _, port = await start(nursery, gateway, plugins=[size_limit(allowed_payload_size=2, size_unit="kilobytes")])
    reply = await call(port, "/", [("expect", "100-continue")], method="POST", body=b"a" * (2 * KB + 1))
    assert (reply.status, reply.json()["message"]) == (417, "Request size limit exceeded")


async def test_a_chunked_body_over_the_limit_with_expect_100_continue_gets_417(nursery, gateway):
    """spec/03-plugins/12-request-size-limiting/01-access_spec.lua "blocks if size is greater than limit and Expect
    header" (chunked, [request body size < nginx_http_client_body_buffer_size])."""
    _, port = await start(nursery, gateway, plugins=[size_limit(allowed_payload_size=2, size_unit="kilobytes")])
    reply = await call(port, "/", [("expect", "100-continue")], method="GET", body=[b"a" * (2 * KB + 1)])
    assert (reply.status, reply.json()["message"]) == (417, "Request size limit exceeded")


async def test_require_content_length_refuses_a_request_without_one_with_411(nursery, gateway):
    """spec/03-plugins/12-request-size-limiting/01-access_spec.lua "Content-Length header required"; a chunked body is
    let through (handler.lua)."""
    _, port = await start(nursery, gateway, plugins=[size_limit(allowed_payload_size=2,
                                                                  require_content_length=True)])
    reply = await call(port, "/")
    assert (reply.status, reply.json()["message"]) == (411, "A valid Content-Length header is required")
    assert (await call(port, "/", method="GET", body=[b"abc"])).status == 200


async def _head_of_answer(port: int, request: bytes) -> bytes:
    """The answer's head to a request sent as these bytes."""
    data = b""
    with trio.fail_after(5):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(request)
            while b"\r\n\r\n" not in data and (chunk := await stream.receive_some(65536)):
                data += chunk
    return data


@pytest.mark.parametrize(("coding", "status"), [(b"chunked", 200), (b"  chunked  ", 200), (b"Chunked", 411),
                                                (b"CHUNKED", 411)])
async def test_require_content_length_lets_through_only_a_coding_written_chunked(nursery, gateway, coding, status):
    """handler.lua: `headers["Transfer-Encoding"] ~= "chunked"` is a plain string comparison, of the value as nginx
    trimmed it; nginx takes any case of "chunked" as chunked (so the request gets that far), Kong answers 411."""
    backend, port = await start(nursery, gateway, plugins=[size_limit(allowed_payload_size=2,
                                                                      require_content_length=True)])
    head = await _head_of_answer(port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:%b\r\n\r\n"
                                       b"1\r\na\r\n0\r\n\r\n" % coding)
    assert head.startswith(b"HTTP/1.1 %d " % status), head[:200]
    assert len(backend.requests) == (status == 200)


async def test_a_negative_limit_is_accepted_and_refuses_even_an_empty_body(nursery, gateway):
    """kong/plugins/request-size-limiting/schema.lua: allowed_payload_size is any integer; handler.lua compares the
    size of the body (0 when there is none) with it, so a negative limit refuses every request."""
    backend, port = await start(nursery, gateway, plugins=[size_limit(allowed_payload_size=-1)])
    reply = await call(port, "/")
    assert (reply.status, reply.json()["message"]) == (413, "Request size limit exceeded")
    assert backend.requests == []


# --- request-termination --------------------------------------------------------------------------------------------


def termination(**config: object) -> dict:
    return plugin("request-termination", **config)


async def test_a_message_is_sent_as_cjson_writes_it(nursery, gateway):
    """kong/plugins/request-termination/handler.lua: kong.response.exit(status, {message = ...}) — cjson's compact
    form, "/" escaped (spec/03-plugins/14-request-termination/02-access_spec.lua "status code with custom message")."""
    _, port = await start(nursery, gateway, plugins=[termination(status_code=406, message="Invalid/é")])
    reply = await call(port, "/")
    assert reply.status == 406
    assert reply.body == '{"message":"Invalid\\/é"}'.encode()
    assert reply.header("content-type") == "application/json; charset=utf-8"


async def test_a_204_has_no_content_length(nursery, gateway):
    """spec/03-plugins/14-request-termination/02-access_spec.lua "returns 204 without content length header"."""
    _, port = await start(nursery, gateway, plugins=[termination(status_code=204)])
    reply = await call(port, "/")
    assert (reply.status, reply.body, reply.header("content-length")) == (204, b"", None)


async def test_a_trigger_in_the_query_is_the_argument_of_that_exact_name(nursery, gateway):
    """handler.lua: the trigger is looked up in kong.request.get_headers() (any case) and in get_query() (as
    named)."""
    _, port = await start(nursery, gateway, plugins=[termination(status_code=403, trigger="Gimme-An-Echo")])
    assert (await call(port, "/?Gimme-An-Echo=1")).status == 403
    assert (await call(port, "/", [("gimme-an-echo", "x")])).status == 403
    assert (await call(port, "/?gimme-an-echo=1")).status == 200


async def test_echo_shows_the_request_as_kongs_pdk_reads_it(nursery, gateway):
    """spec/03-plugins/14-request-termination/02-access_spec.lua "echos a request if the trigger is specified as a
    header": no `body` without a JSON/form Content-Type, no `message` for a status without one, raw_body as sent,
    bare query arguments true, uri_captures {named, unnamed}, the matched route and service."""
    routes = [{"name": "r", "hosts": ["API10.request-termination.test"], "paths": ["/"]}]
    _, port = await start(nursery, gateway, routes, plugins=[termination(echo=True, trigger="gimme-an-echo",
                                                                         status_code=418)])
    async with await Client.connect(port, host="API10.request-termination.test:9") as client:
        reply = await client.request("GET", "/status/200?hello=there&flag", [("Gimme-An-Echo", "anything will do")],
                                     body=b"cool body")
    assert reply.status == 418
    doc = reply.json()
    assert "message" not in doc
    assert doc["kong"]["worker_pid"] == os.getpid() and doc["kong"]["hostname"] == socket.gethostname()
    assert doc["kong"]["node_id"]
    assert doc["request"] == {
        "headers": {"content-length": "9", "gimme-an-echo": "anything will do",
                    "host": "API10.request-termination.test:9"},
        "host": "api10.request-termination.test", "method": "GET", "path": "/status/200", "port": port,
        "query": {"hello": "there", "flag": True}, "raw_body": "cool body", "scheme": "http",
        "uri_captures": {"named": {}, "unnamed": []}}
    assert doc["matched_route"]["name"] == "r"
    assert doc["matched_route"]["hosts"] == ["API10.request-termination.test"]
    assert doc["matched_service"]["name"] == "svc"


async def test_echo_reads_the_query_as_nginx_unescapes_it(nursery, gateway):
    """kong.request.get_query is ngx.req.get_uri_args: "+" a space, and a broken escape kept as it is, as
    ngx_http_lua_unescape_uri keeps it since lua-nginx-module v0.10.20 (Kong 3.x's OpenResty 1.27)."""
    _, port = await start(nursery, gateway, plugins=[termination(echo=True, status_code=200)])
    doc = (await call(port, "/x?a=%zz1&b=one+two&%41=x")).json()
    assert doc["request"]["query"] == {"a": "%zz1", "b": "one two", "A": "x"}


async def test_echo_shows_the_regex_routes_captures_named_and_by_number(nursery, gateway):
    """kong.request.get_uri_captures(): {named = {...}, unnamed = [group 1, ...]}, a group that took no part false."""
    routes = [{"paths": ["~/u/(?<id>\\d+)(/(?<tab>x))?$"]}]
    _, port = await start(nursery, gateway, routes, plugins=[termination(echo=True, status_code=200)])
    doc = (await call(port, "/u/42")).json()
    assert doc["request"]["uri_captures"] == {"named": {"id": "42", "tab": False}, "unnamed": ["42", False, False]}


@pytest.mark.parametrize(("content_type", "body", "parsed"), [
    ("application/json", b'{"k": [1]}', {"k": [1]}),
    ("application/x-www-form-urlencoded", b"a=1&a=2&b", {"a": ["1", "2"], "b": True}),
])
async def test_echo_reads_the_body_by_its_content_type(nursery, gateway, content_type, body, parsed):
    """handler.lua: body = kong.request.get_body() — a JSON object or array, or form arguments."""
    _, port = await start(nursery, gateway, plugins=[termination(echo=True)])
    doc = (await call(port, "/", [("content-type", content_type)], method="POST", body=body)).json()
    assert doc["message"] == "Service unavailable"
    assert doc["request"]["body"] == parsed and doc["request"]["raw_body"] == body.decode()


async def test_echo_without_a_json_content_type_has_no_body_even_for_json_text(nursery, gateway):
    """kong/pdk/request.lua get_body: "missing content type" / "unsupported content type" give nil."""
    _, port = await start(nursery, gateway, plugins=[termination(echo=True)])
    doc = (await call(port, "/", [("content-type", "text/plain")], method="POST", body=b'{"k": 1}')).json()
    assert "body" not in doc["request"]


def test_status_code_null_is_refused():
    """spec/03-plugins/14-request-termination/01-schema_spec.lua "status_code can not be set as null"."""
    assert "config.status_code" in refused(termination(status_code=None))


async def test_a_raw_body_without_content_type_is_sent_as_is_without_one(nursery, gateway):
    """spec/03-plugins/14-request-termination/02-access_spec.lua "status code with custom message" (api6): the body
    as configured; Kong's proxy server has `default_type ''`, so no Content-Type."""
    raw = '{"code": 1, "message": "Service unavailable"}'
    _, port = await start(nursery, gateway, plugins=[termination(body=raw)])
    reply = await call(port, "/")
    assert (reply.status, reply.body, reply.header("content-type")) == (503, raw.encode(), None)
