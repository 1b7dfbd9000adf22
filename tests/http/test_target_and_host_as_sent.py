"""Client bytes kept as nginx 1.27.1 keeps them: a request target's bytes 0x80-0xFF in $request_uri (the access log's
uri and url, the error log's request line, a trace's http.url) while routing reads them %-escaped, and a Host header
as ngx_http_validate_host takes it (only `..`, `/`, bytes <= 0x20 and 0x7F, and an empty name refused)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from backends import EchoBackend, log_lines, parse_raw_response, raw_exchange, service

from gateway.http.codec import NEED_DATA, ProtocolError, Request, check_request_head, nginx_host
from gateway.http.codecs import codec_classes
from gateway.http.errlog import error_context
from gateway.http.server import Exchange

CODECS = ["h11", "llhttp"]
RAW_TARGET = b"/caf\xc3\xa9?x=\xc3\xa9"


def _doc() -> dict:
    return {"services": [service("svc", "http://127.0.0.1:9", [{"paths": ["/"]}])],
            "plugins": [{"name": "request-termination", "config": {"status_code": 200}}]}


def _first_request(codec: str, reads: list[bytes]) -> Request:
    """The first Request a server codec reads from `reads`; raises its ProtocolError."""
    server = codec_classes(codec)[0]()
    for data in reads:
        server.receive_data(data)
        while (ev := server.next_event()) is not NEED_DATA:
            if type(ev) is Request:
                return ev
    raise AssertionError(f"no request in {reads!r}")


# --- the target as sent ---------------------------------------------------------------------------------------------


async def test_access_log_uri_is_the_target_as_sent_not_its_percent_escapes(nursery, gateway, tmp_path):
    """Kong's serializer: kong/pdk/log.lua (3.9.3) :860 `request_uri = ctx.request_uri or var.request_uri`, :889/:897
    `uri = request_uri, url = var.scheme .. "://" .. var.host .. ":" .. host_port .. request_uri`; nginx's
    $request_uri is the request line's target as the client sent it (r->unparsed_uri; ngx_http_parse_request_line
    takes bytes >= 0x80 in a target); lua-cjson writes bytes >= 0x80 as they are. A client that types `/café` is
    logged `/café`, never `/caf%C3%A9` (README: "uri and url (the target as the client sent it ...")."""
    access = tmp_path / "access.log"
    port = await gateway(_doc(), access_log=str(access))
    got, _ = await raw_exchange(port, b"GET " + RAW_TARGET + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert parse_raw_response(got)[0] == 200
    (line,) = await log_lines(access, 1)
    assert line["request"]["uri"] == "/café?x=é", line["request"]["uri"]
    assert line["request"]["url"].endswith("/café?x=é"), line["request"]["url"]


@pytest.mark.parametrize("codec", CODECS)
def test_request_uri_keeps_raw_bytes_the_router_reads_escaped_however_the_head_is_cut(codec: str) -> None:
    """nginx's $request_uri (ngx_http_variables.c: r->unparsed_uri) is the target's bytes as they came, whichever
    read they came in, where the router reads `/caf%C3%A9` (README: raw bytes 0x80-0xFF are %-escaped before
    routing). A `%C3` the client itself sent stays `%C3`."""
    head = b"GET /%C3" + RAW_TARGET + b" HTTP/1.1\r\nHost: gw\r\n\r\n"
    for cut in range(1, len(head)):
        request = _first_request(codec, [head[:cut], head[cut:]])
        assert request.target == b"/%C3/caf%C3%A9?x=%C3%A9", cut
        assert request.request_uri == b"/%C3" + RAW_TARGET, cut


@pytest.mark.parametrize("codec", CODECS)
def test_an_absolute_form_target_keeps_its_raw_bytes_in_the_request_line(codec: str) -> None:
    """nginx's $request (the error log's `request: "..."`, ngx_http_log_error_handler) is the request line as sent,
    an absolute-form target and its bytes 0x80-0xFF as they came; its $request_uri is that target's path and query."""
    request = _first_request(codec, [b"GET http://gw" + RAW_TARGET + b" HTTP/1.1\r\nHost: gw\r\n\r\n"])
    assert request.target == b"/caf%C3%A9?x=%C3%A9"
    assert request.absolute == b"http://gw" + RAW_TARGET
    assert request.request_uri == RAW_TARGET


@pytest.mark.parametrize("codec", CODECS)
def test_the_error_log_request_line_shows_the_bytes_sent(codec: str) -> None:
    """nginx 1.27.1 ngx_http_log_error_handler (ngx_http_request.c:3893-3950) writes `request: "%V"` from
    r->request_line, the bytes sent (the gateway's error log writes a byte >= 0x80 as \\xNN), not their %-escapes."""
    request = _first_request(codec, [b"GET " + RAW_TARGET + b" HTTP/1.1\r\nHost: gw\r\n\r\n"])
    conn: Any = SimpleNamespace(peer=("10.0.0.7", 40000))
    ex = Exchange(request, conn, None, None, None)  # type: ignore[arg-type]
    ex.tries = None
    assert 'request: "GET /caf\\xc3\\xa9?x=\\xc3\\xa9 HTTP/1.1"' in error_context(ex)


@pytest.mark.parametrize("codec", CODECS)
def test_a_refused_head_logs_its_target_as_sent(codec: str) -> None:
    """nginx logs a head it refuses (a second Host: ngx_http_process_host's 400) with its request line as sent."""
    with pytest.raises(ProtocolError) as refused:
        _first_request(codec, [b"GET " + RAW_TARGET + b" HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"])
    assert refused.value.target == RAW_TARGET


# --- the Host nginx takes -------------------------------------------------------------------------------------------


async def test_a_host_nginx_validates_is_served_not_refused(nursery, gateway, tmp_path):
    """nginx's ngx_http_validate_host (src/http/ngx_http_request.c:2145-2220, release-1.27.1) refuses only two dots
    in a row, a path separator `/`, bytes <= 0x20 and 0x7F, and an empty name: `"`, `@`, `<`, `\\`, `|` and bytes
    >= 0x80 (a UTF-8 name, `café.example`) are a valid Host, served by Kong's `server_name kong` default server and
    logged."""
    access = tmp_path / "access.log"
    port = await gateway(_doc(), access_log=str(access))
    statuses = {}
    for host in (b'gw"x', b"caf\xc3\xa9.example", b"user@gw", b"a|b<c>"):
        got, _ = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        statuses[host] = parse_raw_response(got)[0]
    assert set(statuses.values()) == {200}, statuses


@pytest.mark.parametrize("host", [b'gw"x', b"caf\xc3\xa9.example", b"user@gw", b"a|b<c>", b"a\\b", b"{x}:80",
                                  b"[::1", b"x:y:z"])
def test_check_request_head_takes_what_ngx_http_validate_host_takes(host: bytes) -> None:
    """ngx_http_validate_host's default case (ngx_http_request.c:2196-2208) refuses ngx_path_separator (`/` on
    Unix: ngx_linux_config.h) and ch <= 0x20 || ch == 0x7f only; `[` opens a literal at the start alone, `:` ends
    the name and nothing checks the port."""
    assert check_request_head(b"GET", b"/", [(b"host", host)], b"1.1")[1] == host


@pytest.mark.parametrize("host", [b"a..b", b"a/b", b"a b", b"a\tb", b"a\rb", b"a\x00b", b"a\x7fb", b"a\x01b", b"",
                                  b".", b":80", b".:80", b"a:8..0", b"a:/"])
def test_check_request_head_refuses_what_ngx_http_validate_host_refuses(host: bytes) -> None:
    """ngx_http_validate_host returns NGX_DECLINED (400 "client sent invalid host header") for `..` anywhere, a `/`,
    a byte <= 0x20 or 0x7F, and a name empty once its port and one final dot are gone (:2211-2219): the widened
    check still lets no byte through that could end a header line downstream (CR, LF, NUL)."""
    with pytest.raises(ProtocolError, match="invalid Host header"):
        check_request_head(b"GET", b"/", [(b"host", host)], b"1.1")


@pytest.mark.parametrize(("host", "name"), [(b"[::1", b"[::1"), (b"A.:8.0", b"a.")])
def test_host_is_the_name_ngx_http_validate_host_leaves(host: bytes, name: bytes) -> None:
    """nginx's $host: the name up to the first `:` (past the `]` of a literal that has one, else the whole value),
    less a final dot only when it is the value's last (dot_pos, :2211), lower-cased by ngx_strlow."""
    assert nginx_host(host) == name


async def test_an_odd_host_is_forwarded_as_nginx_s_host(nursery, gateway, http_codec):
    """Kong sets X-Forwarded-Host from $host (kong/runloop/handler.lua: `var.upstream_x_forwarded_host`), which
    ngx_http_validate_host leaves as sent but for case: `"`, `@`, `|`, `<`, `>` and UTF-8 bytes reach the upstream
    as they came, in one header line (no byte that could end it passes the check)."""
    echo = EchoBackend()
    await nursery.start(echo.serve)
    port = await gateway({"services": [service("echo", f"http://127.0.0.1:{echo.port}", [{"paths": ["/"]}])]})
    for host in (b'GW"x', b"caf\xc3\xa9.example", b"user@gw", b"a|b<c>:8000"):
        got, _ = await raw_exchange(port, b"GET /p HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        assert parse_raw_response(got)[0] == 200, (host, got)
        assert echo.requests[-1].header("x-forwarded-host") == nginx_host(host).decode("latin-1"), host
