"""Client bytes that are not UTF-8 in the log entry (gateway/telemetry/entry.py): Kong's serializer copies the
request's bytes into its table (kong/pdk/log.lua 3.9.3:860-899: uri = var.request_uri, querystring =
kong.request.get_query(), headers = kong.request.get_headers()) and its log plugins encode it with OpenResty's
lua-cjson (file-log handler.lua:40, http-log handler.lua:197, syslog handler.lua:65), whose json_append_string copies
every byte whose char2escape entry is NULL, 0x80-0xFF among them: such a byte is written as it came, never as U+FFFD
(EF BF BD)."""

from __future__ import annotations

import re
from functools import partial
from types import SimpleNamespace
from typing import Any

import msgspec
import trio
from backends import parse_raw_response, raw_exchange, service

from gateway.http.codec import Request
from gateway.http.server import Exchange
from gateway.policies.http_log.handler import HttpLog
from gateway.policies.http_log.schema import HttpLogConfig
from gateway.policies.syslog.handler import message
from gateway.telemetry.batch import Queues
from gateway.telemetry.entry import Entry

REPLACEMENT = b"\xef\xbf\xbd"  # U+FFFD in UTF-8


def _entry(target: bytes = b"/", headers: tuple[tuple[bytes, bytes], ...] = (), proxied: bool = False,
           upstream_uri: bytes = b"/", response: bytes = b"v") -> Entry:
    """The Entry of a GET of `target` with a Host and `headers`; `proxied`: through a route and service, with one try
    to `upstream_uri` whose head came with an X-Up: `response`."""
    conn = SimpleNamespace(peer=("127.0.0.1", 50000), scheme=b"http", listen_port=b"8000")
    req = Request(b"GET", target, [(b"host", b"gw"), *headers], b"1.1", True)
    ex = Exchange(req, conn, None, None, None)  # type: ignore[arg-type]
    ex.request_id, ex.sent = b"6f1d2b0c4a9e4e7f8c3b2a1d0e9f8a7b", 120
    if proxied:
        ex.route = SimpleNamespace(facts=SimpleNamespace(route_json=msgspec.Raw(b'{"id":"r","paths":["/"]}'),
                                                         service_json=msgspec.Raw(b'{"id":"s","retries":5}')),
                                   service=SimpleNamespace(retries=5))
        ex.tries = [SimpleNamespace(target=SimpleNamespace(key=("127.0.0.1", 9000)), started=10.01, head_at=10.05,
                                    ended=10.1, code=200, uri=upstream_uri)]
        ex.response_headers = [(b"content-type", b"text/plain"), (b"x-up", response)]
    return Entry(ex, 10.0, 10.1, 200, wall=1_700_000_000.0)


def test_a_header_byte_that_is_not_utf8_is_written_as_it_came() -> None:
    """lua-cjson's json_append_string writes 0xFF as it is (char2escape[0xFF] is NULL): Kong's line for
    `User-Agent: a\\xffb` holds "a\\xffb" (kong.request.get_headers(), kong/pdk/log.lua 3.9.3:876)."""
    line = _entry(headers=((b"user-agent", b"a\xffb"),)).json_line()
    assert b'"user-agent":"a\xffb"' in line and REPLACEMENT not in line, line


def test_two_clients_sending_different_bytes_are_logged_differently() -> None:
    """Each byte is its own in the line (lua_cjson.c json_append_string copies it): 0xFE and 0xFF are not both
    U+FFFD."""
    fe = _entry(headers=((b"user-agent", b"a\xfeb"),)).json()
    ff = _entry(headers=((b"user-agent", b"a\xffb"),)).json()
    assert fe != ff and fe.replace(b"a\xfeb", b"a\xffb") == ff


def test_a_query_arguments_byte_that_is_not_utf8_is_written_as_it_came() -> None:
    """kong.request.get_query() (ngx.req.get_uri_args) unescapes `%FF` to the byte 0xFF, in names and values alike,
    and lua-cjson writes it as it is (kong/pdk/log.lua 3.9.3:899)."""
    line = _entry(b"/?q=%FF&%FE=1").json()
    assert b'"querystring":{"q":"\xff","\xfe":"1"}' in line and REPLACEMENT not in line, line


def test_a_path_byte_that_is_not_utf8_is_written_as_it_came_in_uri_url_and_upstream_uri() -> None:
    """uri and url are nginx's $request_uri, the target's bytes as sent (kong/pdk/log.lua 3.9.3:860, 889);
    upstream_uri is $upstream_uri (:861), the bytes sent to the upstream."""
    line = _entry(b"/a\xffb", proxied=True, upstream_uri=b"/up\xfe").json()
    assert b'"uri":"\\/a\xffb"' in line and b'"url":"http:\\/\\/gw:8000\\/a\xffb"' in line, line
    assert b'"upstream_uri":"\\/up\xfe"' in line and REPLACEMENT not in line, line


def test_an_entry_with_such_a_byte_is_the_same_json_as_one_without_but_for_the_byte() -> None:
    """Only the byte differs from the entry's JSON when the text is UTF-8: key order, numbers (balancer_start_ns
    past 2^53 included), the route and service entities, `/` written `\\/` (lua-cjson's encode_escape_forward_slash)
    and a response header's byte (ngx.resp.get_headers(), kong/pdk/log.lua 3.9.3:877) as it came."""
    odd = _entry(b"/p?q=%FF", headers=((b"user-agent", b"a\xffb"),), proxied=True, response=b"v\xfe").json()
    plain = _entry(b"/p?q=%7E", headers=((b"user-agent", b"a~b"),), proxied=True, response=b"v~").json()
    assert b'"x-up":"v\xfe"' in odd and b'"balancer_start_ns":' in odd and b'"route":{"id":"r"' in odd, odd
    assert odd.replace(b"\xff", b"~").replace(b"\xfe", b"~").replace(b"%FF", b"%7E") == plain, (odd, plain)


def test_syslog_sends_the_byte_as_it_came() -> None:
    """Kong's syslog plugin logs cjson.encode(message) (kong/plugins/syslog/handler.lua 3.9.3:65): the byte raw."""
    sent = message((14, _entry(headers=((b"user-agent", b"a\xffb"),))))
    assert b'"user-agent":"a\xffb"' in sent and REPLACEMENT not in sent, sent


async def test_http_log_posts_the_byte_as_it_came_with_the_content_length_of_the_bytes(nursery) -> None:  # noqa: ANN001
    """Kong's http-log posts cjson.encode(kong.log.serialize()) (handler.lua 3.9.3:197) with Content-Length #payload,
    its bytes (handler.lua:118)."""
    received: list[bytes] = []

    async def collector(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            data += await stream.receive_some(65536)
        received.append(data)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    (listener,) = await nursery.start(partial(trio.serve_tcp, collector, 0, host="127.0.0.1"))
    port = listener.socket.getsockname()[1]
    plugin = HttpLog(msgspec.convert({"http_endpoint": f"http://127.0.0.1:{port}/log"}, HttpLogConfig), Queues())
    entry = _entry(headers=((b"user-agent", b"a\xffb"),))
    with trio.fail_after(3):
        await plugin.send([entry.json()])
    body = received[0].partition(b"\r\n\r\n")[2]
    assert body == entry.json() and b'"user-agent":"a\xffb"' in body, body
    assert _length(received[0]) == len(body)


def _length(request: bytes) -> int:
    found = re.search(rb"\r\ncontent-length: *(\d+)", request, re.IGNORECASE)
    return int(found.group(1)) if found else 0


def _doc() -> dict[str, Any]:
    return {"services": [service("svc", "http://127.0.0.1:9", [{"paths": ["/"]}])],
            "plugins": [{"name": "request-termination", "config": {"status_code": 200}}]}


async def test_the_access_log_writes_a_header_and_a_query_byte_as_they_came(nursery, gateway, tmp_path):  # noqa: ANN001
    """End to end, the access log's line (Kong's file-log, handler.lua 3.9.3:40 `cjson.encode(message) .. "\\n"`)
    for `GET /?q=%FF` with `User-Agent: a\\xffb`: the bytes 0xFF, never U+FFFD."""
    access = tmp_path / "access.log"
    port = await gateway(_doc(), access_log=str(access))
    got, _ = await raw_exchange(port, b"GET /?q=%FF HTTP/1.1\r\nHost: gw\r\nUser-Agent: a\xffb\r\n"
                                      b"Connection: close\r\n\r\n")
    assert parse_raw_response(got)[0] == 200
    with trio.fail_after(3):
        while not (access.exists() and access.read_bytes().endswith(b"\n")):
            await trio.sleep(0.02)
    raw = access.read_bytes()
    assert b'"user-agent":"a\xffb"' in raw and b'"q":"\xff"' in raw and REPLACEMENT not in raw, raw
