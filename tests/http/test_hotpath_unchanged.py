"""What the request path's cheaper forms must keep exactly: the response head's bytes and framing, whether the headers'
framing comes from the caller or is read from them; an untrusted client's X-Forwarded-Host per Host though the rest
of its forwarded headers are built once; a Connection value's options and an event stream's Content-Type as memos."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gateway.http.codec import LENGTH, Request
from gateway.http.codec_llhttp import LlhttpServer
from gateway.pipeline.forward import _EVENT_STREAM
from gateway.pipeline.headers import CONNECTION_OPTIONS, connection_options, upstream_request_headers

HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"2")]


def _server(method: bytes = b"GET", version: bytes = b"1.1") -> LlhttpServer:
    codec = LlhttpServer()
    codec.receive_data(b"%b / HTTP/%b\r\nhost: a\r\n\r\n" % (method, version))
    assert type(codec.next_event()) is Request
    return codec


@pytest.mark.parametrize("framing", [None, LENGTH])
def test_a_head_with_its_length_is_the_same_whoever_reads_its_framing(framing: int | None):
    codec = _server()
    head = codec.response_head(200, HEADERS, b"OK", lines=b"x-kong: 1\r\n", framing=framing)
    assert head == (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nx-kong: 1\r\n\r\n")
    assert not codec.open_ended and not codec.closing
    assert codec.body(b"{}") == b"{}"


def test_a_head_without_a_length_is_chunked_after_the_lines_then_closed_when_asked():
    codec = _server()
    head = codec.response_head(200, [(b"server", b"up")], close=True, lines=b"x-kong: 1\r\n")
    assert head == (b"HTTP/1.1 200 OK\r\nserver: up\r\nx-kong: 1\r\ntransfer-encoding: chunked\r\n"
                    b"connection: close\r\n\r\n")
    assert codec.open_ended and codec.closing
    assert codec.body(b"ab") == b"2\r\nab\r\n"


def test_an_http_1_0_client_gets_close_delimited_or_kept_alive_as_before():
    codec = LlhttpServer()
    codec.receive_data(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
    codec.next_event()
    assert codec.response_head(200, HEADERS, framing=LENGTH) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n")
    codec = _server(version=b"1.0")
    assert codec.response_head(200, [], framing=None) == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"
    assert codec.open_ended


def test_the_answer_to_head_and_a_204_have_no_body_and_no_chunked_framing():
    codec = _server(b"HEAD")
    assert codec.response_head(200, [(b"server", b"up")]) == b"HTTP/1.1 200 OK\r\nserver: up\r\n\r\n"
    assert not codec.open_ended and codec.body(b"x") == b""
    codec = _server()
    assert codec.response_head(204, []) == b"HTTP/1.1 204 No Content\r\n\r\n"
    assert codec.body(b"x") == b""


def _exchange(host: bytes, version: bytes = b"1.1") -> Any:
    return SimpleNamespace(request=SimpleNamespace(headers=[(b"host", host)], target=b"/p?q=1", http_version=version),
                           client_ip="198.51.100.9", peer_trusted=False, peer_ip="198.51.100.9", consumer=None,
                           conn=SimpleNamespace(scheme=b"http", listen_port=b"8000"),
                           settings=SimpleNamespace(request_id_upstream=False))


def test_an_untrusted_client_gets_each_host_its_own_x_forwarded_host_in_the_same_place():
    for host, seen in ((b"A.example:8000", b"a.example"), (b"b.example", b"b.example"), (b"A.example:8000",
                                                                                          b"a.example")):
        for version in (b"1.1", b"1.0"):
            out = upstream_request_headers(_exchange(host, version))[0]
            names = [name for name, _ in out]
            assert names == [b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-port", b"x-real-ip",
                             b"connection", b"via", b"x-forwarded-host", b"x-forwarded-path", b"x-request-id"]
            assert dict(out)[b"x-forwarded-host"] == seen
            assert dict(out)[b"via"].startswith(b"1.1 " if version == b"1.1" else b"1 ")


def test_connection_options_and_event_streams_are_remembered_per_value():
    assert connection_options(b"keep-alive") == frozenset() == CONNECTION_OPTIONS[b"close"]
    assert CONNECTION_OPTIONS[b"keep-alive, X-Trace"] == frozenset({b"x-trace"})
    assert connection_options(b"keep-alive, X-Trace") is CONNECTION_OPTIONS[b"keep-alive, X-Trace"]
    assert _EVENT_STREAM[b"Text/Event-Stream; charset=utf-8"] is True
    assert _EVENT_STREAM[b"application/json"] is False
