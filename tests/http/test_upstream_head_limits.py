"""An upstream's response head as nginx 1.27.1's proxy module (Kong 3.9.3's) bounds and reads it: proxy_buffer_size
(kong.conf's nginx_proxy_proxy_buffer_size), spaces before the status code, a Content-Length past nginx's off_t. By
both client codecs alike (sans-I/O, fed whole, byte by byte and in two reads), then through a gateway where the path
matters. nginx source: `git -C /work/.mirror/nginx+nginx/repo show release-1.27.1:src/<file>`; Kong: `git -C
/work/.mirror/Kong+kong/repo show 3.9.3:<file>`."""

from __future__ import annotations

import logging

import pytest
import trio
from backends import ScriptedBackend, raw_exchange, request, service

from gateway.config.errors import ConfigError
from gateway.config.loader import parse_config
from gateway.http.codec import CLOSED, END, NEED_DATA, PROXY_BUFFER_SIZE, TOO_BIG_HEADER, ProtocolError, Response
from gateway.http.codecs import codec_classes

CODECS = ["h11", "llhttp"]
TIMEOUT = 4


def answered(codec: str, chunks: list[bytes], limit: int = PROXY_BUFFER_SIZE) -> list[object]:
    """The events a client codec made as the pool makes it (with `limit` as its proxy_buffer_size) gives of an
    upstream's `chunks`, each fed as it is: a Response as (status, reason), body bytes joined, ("error", status,
    message)."""
    client = codec_classes(codec)[1](proxy_buffer_size=limit)
    client.request_head(b"GET", b"/", [(b"host", b"up")])
    client.end()
    events: list[object] = []
    for chunk in chunks:
        client.receive_data(chunk)
        while True:
            try:
                ev = client.next_event()
            except ProtocolError as e:
                return [*events, ("error", e.status, str(e))]
            if ev is NEED_DATA or ev is CLOSED:
                break
            if type(ev) is Response:
                ev = (ev.status, ev.reason)
            elif type(ev) is bytes and events and type(events[-1]) is bytes:
                events[-1] += ev
                continue
            events.append(ev)
    return events


def feedings(data: bytes) -> list[list[bytes]]:
    """`data` whole, byte by byte, and in two reads (the second from its 2001st byte, or its last)."""
    cut = min(2000, len(data) - 1)
    return [[data], [data[i:i + 1] for i in range(len(data))], [data[:cut], data[cut:]]]


def head_of(size: int, separator: bytes = b": ") -> bytes:
    """A 200's head of `size` bytes as sent (status line to blank line), its last field `X-Pad<separator>aaa...`."""
    start = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad" + separator
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


TOO_BIG = ("error", 502, TOO_BIG_HEADER)


# --- proxy_buffer_size ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("separator", [b": ", b":", b":      "])
def test_a_response_head_of_proxy_buffer_size_bytes_as_sent_is_read(codec: str, separator: bytes) -> None:
    """ngx_http_upstream.c:2436-2484 (ngx_http_upstream_process_header): the head is read into one buffer of
    proxy_buffer_size bytes (4096: ngx_http_proxy_module.c:3514-3516, one page, which Kong's nginx_kong.lua leaves
    as it is), and a head that ends in it is read, its bytes counted as they came (the spaces after a colon too)."""
    raw = head_of(PROXY_BUFFER_SIZE, separator) + b"ok"
    for chunks in feedings(raw):
        assert answered(codec, chunks) == [(200, b"OK"), b"ok", END]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("separator", [b": ", b":", b":      "])
def test_a_response_head_one_byte_past_proxy_buffer_size_is_too_big_header(codec: str, separator: bytes) -> None:
    """ngx_http_upstream.c:2476-2484: a head that has not ended when the buffer is full is "upstream sent too big
    header" (logged while reading response header from upstream), NGX_HTTP_UPSTREAM_FT_INVALID_HEADER: a 502."""
    raw = head_of(PROXY_BUFFER_SIZE + 1, separator) + b"ok"
    for chunks in feedings(raw):
        assert answered(codec, chunks) == [TOO_BIG]


@pytest.mark.parametrize("codec", CODECS)
def test_a_head_that_fills_proxy_buffer_size_unended_is_refused_without_waiting(codec: str) -> None:
    """nginx refuses once the buffer is full (u->buffer.last == u->buffer.end after a read the head did not end
    in), whether or not more comes: the 502 does not wait for the rest of the head (nor for read_timeout)."""
    assert answered(codec, [head_of(5000)[:PROXY_BUFFER_SIZE]]) == [TOO_BIG]
    assert answered(codec, [head_of(5000)[:PROXY_BUFFER_SIZE - 1]]) == []


@pytest.mark.parametrize("codec", CODECS)
def test_an_interim_heads_bytes_are_not_the_final_heads(codec: str) -> None:
    """The gateway reads past an interim 1xx head (nginx 1.27.1 sends no Expect and reads none: its buffer would hold
    the one head it reads, ngx_http_proxy_module.c:2067-2068): the final head is bounded on its own bytes, in the
    read the interim head came in or after it."""
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    raw = interim + head_of(PROXY_BUFFER_SIZE) + b"ok"
    for chunks in [[raw], [raw[:PROXY_BUFFER_SIZE], raw[PROXY_BUFFER_SIZE:]]]:
        assert answered(codec, chunks) == [(200, b"OK"), b"ok", END]
    assert answered(codec, [interim + head_of(PROXY_BUFFER_SIZE + 1) + b"ok"]) == [TOO_BIG]


@pytest.mark.parametrize("codec", CODECS)
def test_proxy_buffer_size_is_the_codecs_bound(codec: str) -> None:
    """nginx's proxy_buffer_size of 8k (kong.conf's nginx_proxy_proxy_buffer_size = 8k) takes an 8192-byte head."""
    assert answered(codec, [head_of(8192) + b"ok"], limit=8192) == [(200, b"OK"), b"ok", END]
    assert answered(codec, [head_of(8193) + b"ok"], limit=8192) == [TOO_BIG]


async def test_an_upstream_head_past_4k_is_502_and_no_retry(nursery, gateway) -> None:
    """Kong's default proxy_next_upstream (error timeout) does not retry FT_INVALID_HEADER: one try, the client gets
    Kong's 502 (ngx_http_upstream.c:2476-2484)."""
    backend = ScriptedBackend([head_of(6000) + b"ok"], hold=TIMEOUT)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("big", f"http://127.0.0.1:{backend.port}")]})
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/")
    assert reply.status == 502
    assert backend.connections == 1


@pytest.mark.parametrize("http_codec", ["llhttp"])  # (the log, not the codec)
async def test_a_too_big_upstream_head_is_logged_as_nginx_logs_it(nursery, gateway, caplog) -> None:
    """ngx_http_upstream.c:2479-2480 `ngx_log_error(NGX_LOG_ERR, ..., "upstream sent too big header")`, with the
    action `while reading response header from upstream` (:2382) and the request's context."""
    caplog.set_level(logging.INFO)
    backend = ScriptedBackend([head_of(6000) + b"ok"], hold=TIMEOUT)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("big", f"http://127.0.0.1:{backend.port}")]})
    with trio.fail_after(TIMEOUT):
        await request(port, "GET", "/x")
    await trio.sleep(0.05)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records
             if r.name.startswith("gateway") and r.name != "gateway.worker"]
    assert len(lines) == 1 and lines[0][0] == "ERROR", lines
    assert f"{TOO_BIG_HEADER}: 502, client: 127.0.0.1, server: kong, request: \"GET /x HTTP/1.1\"" in lines[0][1]


async def test_nginx_proxy_proxy_buffer_size_lets_a_larger_head_through(nursery, gateway) -> None:
    """kong.conf's `nginx_proxy_proxy_buffer_size = 8k` writes `proxy_buffer_size 8k;` in Kong's proxy server block
    (kong/templates/nginx_kong.lua:134-137, the injected nginx_proxy_* directives): a 6 KB head is relayed."""
    backend = ScriptedBackend([head_of(6000) + b"ok"], hold=TIMEOUT)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("big", f"http://127.0.0.1:{backend.port}")]},
                         nginx_proxy_proxy_buffer_size="8k")
    with trio.fail_after(TIMEOUT):
        reply = await request(port, "GET", "/")
    assert (reply.status, reply.body) == (200, b"ok")


# --- the setting ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("{}", 4096),  # nginx's default, which Kong keeps
    ("{nginx_proxy_proxy_buffer_size: 8k}", 8192),
    ("{nginx_http_proxy_buffer_size: '6144'}", 6144),
    ("{nginx_proxy_proxy_buffer_size: 2K}", 2048),
    ("{nginx_proxy_proxy_buffer_size: ' 12k '}", 12288),  # (kong.conf's text, stripped)
    ("{nginx_proxy_proxy_buffer_size: NONE}", 4096),  # no directive: nginx's default
    ("{proxy_buffer_size: 14k}", 14336),
    ("{proxy_buffer_size: 1024}", 1024),
])
def test_the_setting_takes_nginx_sizes_under_kongs_names(text: str, expected: int) -> None:
    """nginx's size syntax (ngx_parse_size: bytes, or a number of KiB or MiB with k, K, m, M), given as kong.conf's
    nginx_proxy_proxy_buffer_size (Kong's proxy server block) or nginx_http_proxy_buffer_size (the http block, which
    that server inherits), or as the gateway's own proxy_buffer_size."""
    assert parse_config(f"gateway: {text}\n").gateway.proxy_buffer_size == expected


def test_the_setting_comes_from_a_kong_variable_too() -> None:
    """parse.lua's overrides: KONG_NGINX_PROXY_PROXY_BUFFER_SIZE sets kong.conf's key over the file."""
    config = parse_config("gateway: {proxy_buffer_size: 2k}\n", environ={"KONG_NGINX_PROXY_PROXY_BUFFER_SIZE": "8k"})
    assert config.gateway.proxy_buffer_size == 8192


def test_the_proxy_blocks_buffer_size_beats_the_http_blocks_as_in_kongs_template() -> None:
    """nginx_kong.lua: nginx_proxy_* goes in Kong's server block (:135), nginx_http_* in its http block (:42): the
    server block's proxy_buffer_size is the one its locations inherit."""
    config = parse_config("gateway: {nginx_proxy_proxy_buffer_size: 8k, nginx_http_proxy_buffer_size: 4k}\n")
    assert config.gateway.proxy_buffer_size == 8192


@pytest.mark.parametrize(("text", "message"), [
    ("{nginx_proxy_proxy_buffer_size: 8x}",
     'gateway.nginx_proxy_proxy_buffer_size: expected a size as nginx writes one: bytes, or with k or m (4096, 8k), '
     'got "8x"'),
    ("{nginx_http_proxy_buffer_size: 4g}", 'gateway.nginx_http_proxy_buffer_size: expected a size as nginx writes '
                                           'one'),
    ("{proxy_buffer_size: 1.5}", "gateway.proxy_buffer_size: expected a size as nginx writes one"),
    ("{nginx_proxy_proxy_buffer_size: 16k}",
     'gateway.nginx_proxy_proxy_buffer_size: expected at most 14k, got "16k": nginx does not start with a larger one '
     "beside Kong's proxy_buffers (8 4k)"),
    ("{proxy_buffer_size: 0}", "gateway.proxy_buffer_size: expected at least 1, got 0"),
    ("{proxy_buffer_size: 8k, nginx_http_proxy_buffer_size: 8k}",
     "gateway.nginx_http_proxy_buffer_size and gateway.proxy_buffer_size: set one of them"),
    ("{nginx_location_proxy_buffer_size: 8k}",
     "gateway.nginx_location_proxy_buffer_size: kong.conf's nginx_location_proxy_buffer_size (nginx's "
     "proxy_buffer_size in Kong's location block) is not supported by the gateway: nginx directives cannot be "
     "injected: the gateway is not nginx; nginx's proxy_buffer_size is `proxy_buffer_size`, every route's"),
])
def test_a_size_nginx_would_not_start_with_is_refused_naming_the_setting(text: str, message: str) -> None:
    """ngx_conf_set_size_slot's "invalid value" for text ngx_parse_size does not read; above 14k, nginx's merge of
    the proxy module's conf refuses it beside Kong's proxy_buffers (nginx's 8 4k: ngx_http_proxy_module.c:3521-3565,
    the default proxy_busy_buffers_size, twice it, at most 7 of those buffers). Kong's location block
    (nginx_location_*) is that of the routes buffered both ways only (nginx_kong.lua:185-188, not @unbuffered):
    refused, pointing at the setting."""
    with pytest.raises(ConfigError) as err:
        parse_config(f"gateway: {text}\n")
    assert message in str(err.value)


# --- the status line ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("spaces", [b"  ", b"     "])
def test_spaces_before_the_status_code_are_skipped_as_nginx_skips_them(codec: str, spaces: bytes) -> None:
    """ngx_http_parse.c:1757-1760 (ngx_http_parse_status_line, sw_status): `if (ch == ' ') break;` before the
    status code's first digit, so `HTTP/1.1  200 OK` is a 200 whose reason is `OK` (llhttp and h11 take one space
    only: the head is read again mended, LlhttpClient._reparse_mended)."""
    raw = b"HTTP/1.1" + spaces + b"200 OK\r\nContent-Length: 2\r\n\r\nok"
    for chunks in feedings(raw):
        assert answered(codec, chunks) == [(200, b"OK"), b"ok", END]


# --- Content-Length ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("length", [b"9223372036854775808", b"18446744073709551615"])
def test_an_upstream_content_length_past_nginxs_off_t_is_502(codec: str, length: bytes) -> None:
    """ngx_http_upstream.c:4747-4753 (ngx_http_upstream_process_content_length): ngx_atoof refuses a value past
    NGX_MAX_OFF_T_VALUE, 2**63 - 1 (ngx_string.c ngx_atoof's cutoff): "upstream sent invalid "Content-Length"
    header", NGX_HTTP_UPSTREAM_INVALID_HEADER, a 502 before any byte goes to the client (llhttp and h11 take up to
    2**64 - 1)."""
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %b\r\n\r\nok" % length
    expected = [("error", 502, f'upstream sent invalid "Content-Length" header: "Content-Length: {length.decode()}"')]
    for chunks in feedings(raw):
        assert answered(codec, chunks) == expected


@pytest.mark.parametrize("codec", CODECS)
def test_an_upstream_content_length_of_2_pow_63_minus_1_is_read(codec: str) -> None:
    """ngx_atoof takes NGX_MAX_OFF_T_VALUE itself: the head is read (its body is whatever comes)."""
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775807\r\n\r\nok"
    assert answered(codec, [raw]) == [(200, b"OK"), b"ok"]


@pytest.mark.parametrize("codec", CODECS)
def test_an_upstream_content_length_with_leading_zeros_is_read_as_nginx_reads_it(codec: str) -> None:
    """ngx_atoof (src/core/ngx_string.c:1079-1103) takes leading zeros as digits like any other: a 20-digit
    `00000000000000000005` is 5 (only a value past NGX_MAX_OFF_T_VALUE is refused)."""
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 00000000000000000005\r\n\r\nhello"
    assert answered(codec, [raw]) == [(200, b"OK"), b"hello", END]


async def test_an_upstream_content_length_of_2_pow_63_reaches_no_client(nursery, gateway) -> None:
    """The 502 goes before any byte of the upstream's head: the client never sees the length."""
    backend = ScriptedBackend([b"HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\nok"], hold=0.2)
    await nursery.start(backend.serve)
    port = await gateway({"services": [service("cl", f"http://127.0.0.1:{backend.port}")]})
    data, _ = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", timeout=TIMEOUT)
    assert data.startswith(b"HTTP/1.1 502 "), data[:200]
    assert b"9223372036854775808" not in data
