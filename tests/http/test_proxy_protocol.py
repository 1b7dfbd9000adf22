"""The PROXY protocol header of a `proxy_protocol` listener, without a gateway: the sans-I/O parser against nginx
1.27.1's reader (src/core/ngx_proxy_protocol.c: ngx_proxy_protocol_read, _read_addr, _read_port, _v2_read), the
reader that takes it off a socket without reading past it, the time the connection loop gives it (on a loopback
listener), the client address realip makes of it
(src/http/modules/ngx_http_realip_module.c, NGX_HTTP_REALIP_PROXY), and the config that turns it on (Kong's
kong/conf_loader/listeners.lua http flags; nginx's `real_ip_header proxy_protocol`)."""

from __future__ import annotations

import json
import socket
import struct

import pytest
import trio

from gateway.config import ConfigError, parse_config
from gateway.http.codecs import codec_classes
from gateway.http.net import Conn
from gateway.http.proxy_protocol import SIGNATURE, BrokenHeader, Header, parse, read_header
from gateway.http.realip import ClientAddress, proxied_client
from gateway.http.server import Exchange, ServerSettings, serve_listener
from gateway.runtime import compile_config

V1_TCP4 = b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 8000\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 8000\r\n"
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def v2(command: int = 1, family: int = 1, transport: int = 1, block: bytes = b"", version: int = 2) -> bytes:
    """A v2 header: the signature, version and command, family and transport, the length, then `block`."""
    return SIGNATURE + bytes([version << 4 | command, family << 4 | transport]) + struct.pack("!H", len(block)) + block


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!HH", sport, dport))


V2_INET = v2(block=inet("198.51.100.7", "10.0.0.1", 40000, 8000))
V2_INET6 = v2(family=2, block=inet6("2001:db8::7", "2001:db8::1", 40000, 8000))
VALID = [V1_TCP4, V1_TCP6, V1_UNKNOWN, V2_INET, V2_INET6, v2(command=0)]


# --- v1 ------------------------------------------------------------------------------------------------------------


def test_a_v1_tcp4_header_gives_both_addresses_and_ports_and_ends_at_its_crlf():
    """ngx_proxy_protocol_read: src, dst, src port, dst port; what follows the LF is the client's."""
    assert parse(V1_TCP4 + REQUEST) == Header(len(V1_TCP4), "198.51.100.7", 40000, "10.0.0.1", 8000)


def test_a_v1_tcp6_header_keeps_its_addresses_as_written():
    """_read_addr copies the text (hex digits, `:` and `.`); realip parses it later."""
    assert parse(V1_TCP6) == Header(len(V1_TCP6), "2001:db8::7", 40000, "2001:db8::1", 8000)


@pytest.mark.parametrize("line", [V1_UNKNOWN, b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n", b"PROXY UNKNOWN\rx\r\n"])
def test_a_v1_unknown_header_is_skipped_to_its_first_crlf_without_an_address(line):
    """"PROXY protocol unknown protocol": `goto skip`, to the first CR LF pair, whatever comes before it."""
    assert parse(line + REQUEST) == Header(len(line))


def test_a_v1_address_nginx_reads_but_realip_cannot_parse_is_still_a_header():
    """_read_addr takes any run of hex digits, `:` and `.` (even none): the header is whole; realip then declines
    the address (see proxied_client), leaving the peer's."""
    line = b"PROXY TCP4  10.0.0.1 1 2\r\n"
    assert parse(line) == Header(len(line), "", 1, "10.0.0.1", 2)
    assert parse(b"PROXY TCP4 1.2.3 ::1 1 2\r\n") == Header(26, "1.2.3", 1, "::1", 2)  # (TCP4, IPv6: not checked)


def test_v1_ports_take_leading_zeros_and_the_whole_range():
    """_read_port: ngx_atoi of the digits before the separator, 0 to 65535."""
    header = parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 065535\r\n")
    assert header is not None and (header.source_port, header.destination_port) == (0, 65535)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n",  # no header at all
    b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",  # ngx_strncmp: case matters
    b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4\r\n",
    b"PROXY TCP4 1.2.3.4\r\n",  # a CR in an address
    b"PROXY TCP4 1.2.3.4/8 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 host.test 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8  2\r\n",  # an empty port
    b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",  # anything between the port and the CR
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF without CR
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",  # CR without LF
])
def test_a_malformed_v1_header_is_broken(data):
    """Each `goto invalid` of ngx_proxy_protocol_read and its helpers: "broken header", the connection closed."""
    with pytest.raises(BrokenHeader, match="^broken header: "):
        parse(data)


def test_the_broken_header_message_quotes_the_line_as_nginx_logs_it():
    """ngx_log_error(NGX_LOG_ERR, ..., "broken header: \\"%*s\\"", ...): the bytes up to the first CR or LF."""
    with pytest.raises(BrokenHeader) as e:
        parse(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert str(e.value) == 'broken header: "GET /x HTTP/1.1"'


# --- v2 ------------------------------------------------------------------------------------------------------------


def test_a_v2_inet_header_gives_both_addresses_and_ports():
    """ngx_proxy_protocol_v2_read, NGX_PROXY_PROTOCOL_AF_INET: 4-byte addresses, 2-byte ports."""
    assert parse(V2_INET + REQUEST) == Header(len(V2_INET), "198.51.100.7", 40000, "10.0.0.1", 8000)


def test_a_v2_inet6_header_writes_its_addresses_as_nginx_does():
    """ngx_sock_ntop of the 16 bytes: `::` for the longest run of zeros, an IPv4-mapped one as ::ffff:a.b.c.d."""
    assert parse(V2_INET6) == Header(len(V2_INET6), "2001:db8::7", 40000, "2001:db8::1", 8000)
    mapped = v2(family=2, block=inet6("::ffff:198.51.100.7", "::", 1, 2))
    header = parse(mapped)
    assert header is not None and (header.source, header.destination) == ("::ffff:198.51.100.7", "::")


def test_v2_tlvs_after_the_addresses_are_skipped():
    """The length covers the TLVs (kept by nginx for $proxy_protocol_tlv_*, which Kong does not use)."""
    header = v2(block=inet("198.51.100.7", "10.0.0.1", 1, 2) + b"\x01\x00\x02h2" + b"\x04\x00\x00")
    assert parse(header + REQUEST) == Header(len(header), "198.51.100.7", 1, "10.0.0.1", 2)


@pytest.mark.parametrize("header", [
    v2(command=0, family=0, transport=0),  # LOCAL: the balancer's own connection (a health check)
    v2(command=0, block=inet("198.51.100.7", "10.0.0.1", 1, 2)),  # LOCAL with addresses: ignored
    v2(command=2, block=inet("198.51.100.7", "10.0.0.1", 1, 2)),  # a command other than PROXY
    v2(transport=2, block=inet("198.51.100.7", "10.0.0.1", 1, 2)),  # DGRAM
    v2(family=0),  # UNSPEC
    v2(family=3, block=bytes(216)),  # UNIX
])
def test_a_v2_header_without_an_inet_stream_proxy_is_skipped_without_an_address(header):
    """"only PROXY is supported", "only STREAM is supported", "unsupported address family": `return end`."""
    assert parse(header + REQUEST) == Header(len(header))


def test_a_v2_header_of_another_version_is_broken():
    """"unknown PROXY protocol version: %ui"."""
    with pytest.raises(BrokenHeader, match="^unknown PROXY protocol version: 1$"):
        parse(v2(version=1, block=inet("1.2.3.4", "5.6.7.8", 1, 2)))


def test_a_v2_address_block_shorter_than_its_family_is_broken():
    """`(end - buf) < sizeof(ngx_proxy_protocol_inet_addrs_t)`: return NULL, the connection closed."""
    with pytest.raises(BrokenHeader):
        parse(v2(block=bytes(11)))
    with pytest.raises(BrokenHeader):
        parse(v2(family=2, block=bytes(35)))


# --- in pieces -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", VALID, ids=["v1-tcp4", "v1-tcp6", "v1-unknown", "v2-inet", "v2-inet6",
                                               "v2-local"])
def test_every_beginning_of_a_header_asks_for_more(header):
    """TCP may cut a header anywhere: each of its beginnings, the empty one too, is None (all header bytes; read
    more), never broken, and the whole header is the same whatever follows it."""
    for end in range(len(header)):
        assert parse(header[:end]) is None, header[:end]
    assert parse(header) == parse(header + REQUEST)


@pytest.mark.parametrize("data", [b"G", b"PROXY X", b"PROXY TCP4 1.2.3.4 5.6.7.8 1x", b"\r\n\r\n\x00\r\nQUIT\n\x11"
                                  + bytes(3)])
def test_a_beginning_no_header_can_continue_is_broken_at_once(data):
    """The connection is closed on the first bytes that cannot begin a header, not after a timeout."""
    with pytest.raises(BrokenHeader):
        parse(data)


async def test_the_reader_takes_a_header_sent_in_pieces_and_nothing_after_it():
    """The header is peeked and taken to its end only: the request (or a TLS ClientHello) that follows is left for
    whoever reads next, as nginx's ngx_http_ssl_handshake recv()s exactly the header's size."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        conn = Conn(ours)

        async def send() -> None:
            for piece in (V1_TCP4[:7], V1_TCP4[7:30], V1_TCP4[30:] + REQUEST):
                await trio.sleep(0.01)
                theirs.send(piece)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            with trio.fail_after(5):
                header = await read_header(conn)
        assert header == parse(V1_TCP4)
        assert ours.recv(100) == REQUEST


async def test_the_reader_raises_eof_for_a_peer_that_leaves_mid_header():
    ours, theirs = socket.socketpair()
    with ours:
        theirs.send(V2_INET[:20])
        theirs.close()
        with pytest.raises(EOFError), trio.fail_after(5):
            await read_header(Conn(ours))


async def test_the_reader_raises_broken_header_for_a_plain_request():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.send(REQUEST)
        with pytest.raises(BrokenHeader), trio.fail_after(5):
            await read_header(Conn(ours))


# --- the time it may take: header_timeout_s and keepalive_time_s from the accept -------------------------------------


async def _ok(ex: Exchange) -> None:
    await ex.respond(200, b"ok", b"text/plain")


async def _proxy_listener(nursery: trio.Nursery, **settings: float) -> int:
    """The connection loop (serve_listener) on a loopback `proxy_protocol` listener with `settings`, answering 200 to
    every request; its port."""
    server = ServerSettings(codec_classes("llhttp")[0], **settings)  # type: ignore[arg-type]
    nursery.start_soon(server.connections.timers.expire_forever)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    await nursery.start(serve_listener, listener, _ok, server, None, True)
    return listener.getsockname()[1]


async def _answer(stream: trio.SocketStream) -> bytes:
    """The first bytes the loop sends (an answer's head comes in one write); b"": closed unanswered."""
    try:
        return await stream.receive_some(65536)
    except trio.BrokenResourceError:
        return b""


async def test_the_proxy_header_and_the_request_head_share_one_header_timeout_from_the_accept(nursery):
    """nginx arms client_header_timeout once, at the accept (release-1.27.1 src/http/ngx_http_request.c:355,
    ngx_http_init_connection: `ngx_add_timer(rev, cscf->client_header_timeout)`), and re-arms it neither after the
    PROXY header (ngx_http_wait_request_handler, :429 `if (!rev->timer_set)`, the header read at :468-487 with the
    timer left running) nor while the request head comes (ngx_http_read_request_header, :1581): both must come
    within one client_header_timeout of the accept. The gateway gave the header a header_timeout of its own, then
    the request head a new one. Here the header comes at 0.4 s and the request at 0.85 s, header_timeout 0.6 s."""
    port = await _proxy_listener(nursery, header_timeout=0.6)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await trio.sleep(0.4)
            await stream.send_all(V1_TCP4)
            await trio.sleep(0.45)
            try:
                await stream.send_all(REQUEST)
            except trio.BrokenResourceError:
                pass
            assert await _answer(stream) == b""


async def test_keepalive_time_counts_from_the_accept_not_from_the_proxy_header(nursery):
    """nginx's keepalive_time is counted from the connection's start_time, set at the accept
    (src/event/ngx_event_accept.c:262 `c->start_time = ngx_current_msec`; src/http/ngx_http_core_module.c:1347-1350
    `ngx_current_msec - r->connection->start_time > clcf->keepalive_time` ends keep-alive): a request after that
    long since the accept, its PROXY header's wait included, is its connection's last."""
    port = await _proxy_listener(nursery, header_timeout=5.0, keepalive_time=0.3)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await trio.sleep(0.4)
            await stream.send_all(V1_TCP4 + REQUEST)
            answer = await _answer(stream)
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"\r\nconnection: close\r\n" in answer.lower()


# --- the client address (realip) -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "port", "client"), [
    ("198.51.100.7", 40000, ("198.51.100.7", 40000)),
    ("2001:DB8:0:0::7", 1, ("2001:db8::7", 1)),  # written as nginx writes $remote_addr
    ("::ffff:198.51.100.7", 1, ("::ffff:198.51.100.7", 1)),  # (nginx keeps it IPv6)
    ("198.51.100.7:99", 1, ("198.51.100.7", 1)),  # ngx_parse_addr_port; then the header's port
    ("1.2.3", 1, None),
    ("", 1, None),
    (None, 0, None),  # UNKNOWN, LOCAL, ...
])
def test_the_client_a_header_names_is_its_source_as_realip_parses_it(source, port, client):
    """ngx_http_realip_handler, NGX_HTTP_REALIP_PROXY: value = src_addr through ngx_http_get_forwarded_addr
    (DECLINED when it does not parse: the peer stays), then ngx_inet_set_port(src_port)."""
    assert proxied_client(source, port) == client


def test_real_ip_header_proxy_protocol_makes_a_trusted_peers_header_the_client():
    """The PROXY source is $remote_addr (and its port $remote_port) for a peer in set_real_ip_from only; no header is
    read, not even one called proxy_protocol; without a PROXY address (a listener without the flag, LOCAL,
    UNKNOWN) the peer is the client, still trusted (Kong's kong.ip.is_trusted(realip_remote_addr))."""
    address = ClientAddress(["10.0.0.0/8"], "proxy_protocol", False)
    spoof = [(b"proxy_protocol", b"192.0.2.1"), (b"x-real-ip", b"192.0.2.2")]
    assert address.resolve("10.0.0.5", spoof, ("198.51.100.7", 40000)) == ("198.51.100.7", True)
    assert address.resolve("10.0.0.5", spoof, None) == ("10.0.0.5", True)
    assert address.resolve("192.0.2.9", spoof, ("198.51.100.7", 40000)) == ("192.0.2.9", False)
    assert address.forwarded_port("10.0.0.5", 5555, spoof, ("198.51.100.7", 40000)) == 40000
    assert address.forwarded_port("10.0.0.5", 5555, spoof, None) == 5555
    assert address.forwarded_port("192.0.2.9", 5555, spoof, ("198.51.100.7", 40000)) == 5555


def test_without_real_ip_header_proxy_protocol_the_header_changes_no_address():
    """nginx reads the header on a proxy_protocol listener whatever realip says ($proxy_protocol_addr, which Kong's
    templates do not use): another real_ip_header reads its header, never the PROXY source."""
    address = ClientAddress(["10.0.0.0/8"], "X-Real-IP", False)
    assert address.resolve("10.0.0.5", [(b"x-real-ip", b"192.0.2.2")], ("198.51.100.7", 1)) == ("192.0.2.2", True)
    assert address.resolve("10.0.0.5", [], ("198.51.100.7", 1)) == ("10.0.0.5", True)


# --- the config ----------------------------------------------------------------------------------------------------


def _load(gateway: dict) -> None:
    doc = {"gateway": gateway, "services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}]}
    compile_config(parse_config(json.dumps(doc), "c.yml"), "c.yml")


def _errors(gateway: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        _load(gateway)
    return e.value.messages


def test_the_proxy_protocol_listen_flag_is_taken_with_or_without_ssl():
    """kong/conf_loader/listeners.lua: proxy_protocol is an http listener flag, beside ssl."""
    _load({"listen": ["127.0.0.1:8000 proxy_protocol", "127.0.0.1:8001"]})
    _load({"listen": "127.0.0.1:8000 proxy_protocol", "real_ip_header": "proxy_protocol",
           "trusted_ips": ["10.0.0.0/8"]})


def test_a_listen_flag_not_built_names_the_ones_that_are():
    assert _errors({"listen": "127.0.0.1:8000 fastopen=3"}) == [
        'c.yml: gateway.listen: the listen option "fastopen=3" is not supported (ssl, proxy_protocol, reuseport, '
        'backlog=N, deferred, bind, ipv6only=on|off and so_keepalive=on|off|[keepidle]:[keepintvl]:[keepcnt] are)']


def test_real_ip_header_proxy_protocol_in_another_case_is_refused():
    """ngx_http_realip: `ngx_strcmp(value[1].data, "proxy_protocol")`; any other spelling names a header."""
    assert _errors({"real_ip_header": "PROXY_PROTOCOL"}) == [
        "c.yml: gateway.real_ip_header: write proxy_protocol in lower case, as nginx's realip reads it, got "
        '"PROXY_PROTOCOL"']
