"""ALPN on a TLS listener, as nginx's `listen ... ssl` (without http2) does it (ngx_http_ssl_module.c's
ngx_http_ssl_alpn_select): the protocol is picked from NGX_HTTP_ALPN_PROTOS, "http/1.1", "http/1.0", "http/0.9"
(line 24), and a client that offers ALPN but none of those is refused with the no_application_protocol alert
(lines 528-533, SSL_TLSEXT_ERR_ALERT_FATAL; nginx 1.21.4's CHANGES). Python's ssl carries on without ALPN there, so
the gateway reads the ClientHello's ALPN list itself (gateway.http.tls.client_hello_alpn, sans-I/O) and refuses it
before OpenSSL sees it."""

from __future__ import annotations

import socket
import ssl

import pytest
import trio
from backends import EchoBackend, free_port, raw_exchange, service
from hypothesis import given, settings
from hypothesis import strategies as st
from tls_helpers import Pki

from gateway.http.tls import NO_APPLICATION_PROTOCOL_ALERT, Hello, client_hello_alpn

TIMEOUT = 10
MOST_READ_AHEAD = 4 * (5 + 16384)  # four records of TLS's largest plaintext


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def real_client_hello(alpn: list[str] | None) -> bytes:
    """The first flight of Python's OpenSSL client offering `alpn` (None: no ALPN extension)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    outgoing = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="a.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def extension(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def alpn_extension(*names: bytes) -> bytes:
    names_list = b"".join(bytes([len(n)]) + n for n in names)
    return extension(16, len(names_list).to_bytes(2, "big") + names_list)


def hello_body(extensions: bytes, session_id: bytes = b"") -> bytes:
    """A ClientHello's body: TLS 1.2, a zero random, one cipher suite, null compression, `extensions`."""
    return (b"\x03\x03" + bytes(32) + bytes([len(session_id)]) + session_id + b"\x00\x02\x13\x01" + b"\x01\x00"
            + len(extensions).to_bytes(2, "big") + extensions)


def records(body: bytes, split: int | None = None, msg_type: int = 1) -> bytes:
    """The handshake message of `body` in one record, or in two split `split` bytes into it."""
    message = bytes([msg_type]) + len(body).to_bytes(3, "big") + body
    parts = [message] if split is None else [message[:split], message[split:]]
    return b"".join(b"\x16\x03\x01" + len(p).to_bytes(2, "big") + p for p in parts)


# --- the ClientHello's ALPN list, sans-I/O -----------------------------------------------------------------------


@pytest.mark.parametrize("alpn", [["h2"], ["h2", "http/1.1"], ["http/1.0"], ["acme-tls/1"]])
def test_the_alpn_list_of_a_real_client_hello_is_read(alpn):
    """RFC 7301 section 3.1: the ProtocolNameList, in the client's order."""
    assert client_hello_alpn(real_client_hello(alpn)) == tuple(p.encode() for p in alpn)


def test_a_client_hello_without_alpn_has_none():
    """A client that sends no ALPN extension is never refused for it (nginx's callback is not even called)."""
    assert client_hello_alpn(real_client_hello(None)) is Hello.NO_ALPN


def test_a_client_hello_cut_short_asks_for_more_bytes_up_to_its_end():
    """Read on a TCP stream, a ClientHello may come in pieces: each prefix asks for a length beyond itself and no
    longer than the hello, so the reader never waits for bytes the client is not sending."""
    hello = real_client_hello(["h2"])
    for cut in range(len(hello)):
        needed = client_hello_alpn(hello[:cut])
        assert isinstance(needed, int) and cut < needed <= len(hello)
    assert client_hello_alpn(hello) == (b"h2",)


@pytest.mark.parametrize("split", [1, 4, 40, 60])
def test_a_client_hello_split_across_records_is_put_back_together(split):
    """RFC 8446 section 5.1: a handshake message may be fragmented over several records (even its header)."""
    data = records(hello_body(alpn_extension(b"h2", b"spdy/3")), split)
    assert client_hello_alpn(data) == (b"h2", b"spdy/3")


def test_the_bytes_after_the_client_hello_are_not_read():
    """What follows the ClientHello (a second record) is no part of it."""
    assert client_hello_alpn(records(hello_body(alpn_extension(b"h2"))) + b"\x17\x03\x03\x00\x01x") == (b"h2",)


@pytest.mark.parametrize("extensions", [
    extension(16, b""),  # no list at all
    extension(16, b"\x00\x00"),  # an empty list (OpenSSL's tls_parse_ctos_alpn: decode_error)
    extension(16, b"\x00\x01\x00"),  # an empty name
    extension(16, b"\x00\x05\x02h2"),  # the list longer than the extension
    extension(16, b"\x00\x03\x02h2\x00"),  # bytes after the list
    extension(16, b"\x00\x03\x05h2"),  # a name running past the list
    alpn_extension(b"h2") + alpn_extension(b"h2"),  # sent twice (OpenSSL refuses a repeated extension)
    extension(0, b"") + extension(0, b""),  # another extension twice
    alpn_extension(b"h2")[:-1],  # the extension running past the extensions
    alpn_extension(b"h2") + b"\x00",  # a truncated extension header after it
], ids=["no-list", "empty-list", "empty-name", "list-too-long", "after-list", "name-too-long", "alpn-twice",
        "other-twice", "past-extensions", "stray-byte"])
def test_a_malformed_client_hello_is_left_to_openssl(extensions):
    """Whatever OpenSSL refuses on its own (with its decode_error or illegal_parameter alert) is not refused for its
    ALPN: only a well-formed list holding none of nginx's protocols is."""
    assert client_hello_alpn(records(hello_body(extensions))) is Hello.NO_ALPN


@pytest.mark.parametrize("data", [
    records(hello_body(alpn_extension(b"h2")), msg_type=2),  # a ServerHello
    b"\x17\x03\x03\x00\x05hello",  # application data
    b"\x16\x02\x00\x00\x05hello",  # not TLS's major version 3
    b"\x16\x03\x01\x00\x00",  # an empty record
    b"\x16\x03\x01\x40\x01",  # a record over 2^14 bytes
    records(hello_body(alpn_extension(b"h2"), session_id=bytes(33))),  # a session id over 32 bytes
    records(b"\x03\x03" + bytes(32)),  # a body that stops after the random
], ids=["server-hello", "not-handshake", "major-version", "empty-record", "record-too-large", "session-id",
        "body-cut-short"])
def test_what_is_not_a_client_hello_has_no_alpn(data):
    assert client_hello_alpn(data) is Hello.NO_ALPN


def test_a_client_hello_longer_than_the_read_ahead_is_not_waited_for():
    """The read-ahead is bounded: a handshake message announced over 64 KiB is handed to OpenSSL as it is."""
    assert client_hello_alpn(b"\x16\x03\x01\x00\x04\x01\x01\x00\x01") is Hello.NO_ALPN


def test_a_client_hello_in_more_than_four_records_is_not_waited_for():
    """Nor is one split in records of a byte each (a real ClientHello comes in one record of 16 KiB at most)."""
    message = b"\x01" + (200).to_bytes(3, "big") + bytes(200)
    data = b"".join(b"\x16\x03\x01\x00\x01" + message[i:i + 1] for i in range(len(message)))
    assert client_hello_alpn(data) is Hello.NO_ALPN


@given(st.one_of(st.binary(max_size=600),
                 st.tuples(st.integers(0, 300), st.binary(min_size=1, max_size=4)).map(
                     lambda cut: (lambda h: h[:cut[0]] + cut[1] + h[cut[0] + len(cut[1]):])(
                         real_client_hello(["h2", "http/1.1"])))))
@settings(deadline=None)  # (as every property test here: a second test process may hold the CPU for a moment)
def test_no_input_makes_the_reader_fail_or_ask_for_unbounded_bytes(data):
    """Any bytes (random, or a real ClientHello with some overwritten): a list, NO_ALPN, or a bounded number of bytes
    beyond what was given."""
    result = client_hello_alpn(data)
    if isinstance(result, int):
        assert len(data) < result <= MOST_READ_AHEAD
    else:
        assert result is Hello.NO_ALPN or all(isinstance(p, bytes) and p for p in result)


# --- the listener -------------------------------------------------------------------------------------------------


async def tls_port_of(gateway, nursery, pki: Pki, tmp_path) -> int:  # noqa: ANN001
    echo = EchoBackend()
    await nursery.start(echo.serve)
    tls_port = free_port()
    cert, key = pki.files(tmp_path, "default", "default.test")
    await gateway({"services": [service("s", f"http://127.0.0.1:{echo.port}")]},
                  listen=[f"127.0.0.1:{tls_port} ssl"], ssl_cert=cert, ssl_cert_key=key)
    return tls_port


def handshake_alpn(port: int, pki: Pki, offered: list[str] | None) -> str | None:
    """The ALPN protocol the listener selects for a client offering `offered` (raises if the handshake fails)."""
    ctx = pki.client_context(alpn=False)
    if offered is not None:
        ctx.set_alpn_protocols(offered)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="default.test") as tls:
            return tls.selected_alpn_protocol()


async def test_a_client_offering_only_h2_is_refused_with_no_application_protocol(gateway, nursery, pki, tmp_path):
    """ngx_http_ssl_module.c:528-533: SSL_select_next_proto finds none of NGX_HTTP_ALPN_PROTOS among the client's
    -> SSL_TLSEXT_ERR_ALERT_FATAL: the handshake fails with the no_application_protocol alert (an h2-only client
    would otherwise send its preface to an HTTP/1.1 server). (Python 3.11's ssl has no mnemonic for that alert's
    reason: its message is OpenSSL's text.)"""
    port = await tls_port_of(gateway, nursery, pki, tmp_path)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(ssl.SSLError, match="(?i)no.application.protocol"):
            await trio.to_thread.run_sync(lambda: handshake_alpn(port, pki, ["h2"]))


async def test_the_refusal_is_the_fatal_alert_in_the_clear_then_the_close(gateway, nursery, pki, tmp_path):
    """RFC 7301 section 3.2: "the server SHALL respond with a fatal no_application_protocol alert" (level 2,
    description 120), sent before any ServerHello; then the connection is closed. The ClientHello comes in pieces:
    the gateway reads on to its end before deciding."""
    port = await tls_port_of(gateway, nursery, pki, tmp_path)
    hello = real_client_hello(["h2", "spdy/3.1"])
    data, _ = await raw_exchange(port, [hello[:3], hello[3:100], hello[100:]], pause=0.05)
    assert data == NO_APPLICATION_PROTOCOL_ALERT


@pytest.mark.parametrize(("offered", "selected"), [
    (["http/1.0"], "http/1.0"),
    (["http/0.9"], "http/0.9"),
    (["h2", "http/1.0", "http/1.1"], "http/1.1"),  # the server's order decides (SSL_select_next_proto)
    (None, None),  # no ALPN offered: none selected, the handshake goes on
])
async def test_the_protocol_is_picked_from_nginxs_list(gateway, nursery, pki, tmp_path, offered, selected):
    """ngx_http_ssl_module.c:24: NGX_HTTP_ALPN_PROTOS is "http/1.1", "http/1.0", "http/0.9", picked in that order
    (line 528)."""
    port = await tls_port_of(gateway, nursery, pki, tmp_path)
    with trio.fail_after(TIMEOUT):
        assert await trio.to_thread.run_sync(lambda: handshake_alpn(port, pki, offered)) == selected


async def test_a_client_hello_arriving_in_pieces_still_completes_its_handshake(gateway, nursery, pki, tmp_path):
    """The read-ahead for the ALPN list hands every byte on to OpenSSL: a ClientHello sent in three TCP segments
    gets its handshake, with http/1.1 selected."""
    port = await tls_port_of(gateway, nursery, pki, tmp_path)
    ctx = pki.client_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="default.test")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    first = True
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                out = outgoing.read()
                pieces = [out[:3], out[3:100], out[100:]] if first else [out]
                first = False
                for piece in pieces:
                    await stream.send_all(piece)
                    await trio.sleep(0.05)
                data = await stream.receive_some(65536)
                assert data, "the gateway closed the connection during the handshake"
                incoming.write(data)
        await stream.send_all(outgoing.read())
    await stream.aclose()
    assert tls.selected_alpn_protocol() == "http/1.1"
