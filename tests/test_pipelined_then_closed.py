"""A client that pipelines its next request while its answer is relayed, and then closes, is gone at once: its upstream
request or stream is ended, as nginx ends it.

nginx (Kong's proxy_ignore_client_abort off) keeps ngx_http_upstream_rd_check_broken_connection as the client's read
handler for the whole upstream exchange (release-1.27.1 src/http/ngx_http_upstream.c:618-627); its epoll sets
pending_eof on EPOLLRDHUP whatever bytes are unread (src/event/modules/ngx_epoll_module.c:884-888), and the check
then finalizes the request with 499 (ngx_http_upstream.c:1400-1445, "client prematurely closed connection, so
upstream connection is closed too"). Bytes alone are not "gone"; bytes and then a FIN are. A 1-byte recv(MSG_PEEK)
sees the bytes, not the FIN behind them: the gateway's sweeper (gateway.http.timers.Timers.check_clients) and its
stream watch (gateway.pipeline.streamwatch) must look past them.

Real socket pairs; the TLS cases run a TlsConn against an in-memory ssl.SSLObject client.
"""

from __future__ import annotations

import math
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from tls_helpers import gw_test_contexts

from gateway.http.net import Conn
from gateway.http.timers import ConnTimer, Phase, Timers
from gateway.http.tls import TlsConn
from gateway.pipeline.keepalive import Stream
from gateway.pipeline.streamwatch import StreamWatch

NEXT = b"GET /next HTTP/1.1\r\nHost: gw\r\n\r\n"


def _waiting(timers: Timers, conn: Conn, phase: Phase) -> ConnTimer:
    """A connection's timer as the connection loop leaves it while its request waits on the upstream."""
    timer = ConnTimer(math.inf, Phase.BUSY)
    timers.add(timer)
    timer.set(60, phase)
    timer.client = conn
    return timer


def test_the_sweep_ends_a_request_whose_client_pipelined_a_request_then_closed(conn_pair):
    """A download or a slow answer (UPSTREAM_BODY, UPSTREAM_READ): the client's pipelined bytes, then its FIN, end
    the request at the next sweep (nginx: pending_eof whatever is unread, ngx_epoll_module.c:884-888, then 499 at
    ngx_http_upstream.c:1400-1445); the bytes stay unread."""
    conn, client = conn_pair
    client.sendall(NEXT)
    client.shutdown(socket.SHUT_WR)

    async def main() -> None:
        timers = Timers()
        body, head = _waiting(timers, conn, Phase.UPSTREAM_BODY), _waiting(timers, conn, Phase.UPSTREAM_READ)
        assert timers.check_clients() == 2
        assert all(timer.gone and timer.scope.cancel_called for timer in (body, head))

    trio.run(main)
    assert conn.sock.recv(100, socket.MSG_PEEK) == NEXT


def test_the_sweep_leaves_a_client_whose_unread_bytes_and_fin_may_be_the_rest_of_its_body(conn_pair):
    """While the request is connecting or being written (request_buffering: false), the unread bytes may be its
    body, which nginx reads, and sends, before it looks for the FIN behind them: not gone yet."""
    conn, client = conn_pair
    client.sendall(b"the rest of the body")
    client.shutdown(socket.SHUT_WR)

    async def main() -> None:
        timers = Timers()
        timers_ = [_waiting(timers, conn, phase) for phase in (Phase.UPSTREAM_CONNECT, Phase.UPSTREAM_WRITE)]
        assert timers.check_clients() == 0
        assert not any(timer.gone for timer in timers_)

    trio.run(main)


def test_the_sweep_leaves_a_client_that_pipelined_a_request_and_stays(conn_pair):
    """Bytes alone are not a client gone (nginx's check looks for the EOF only, ngx_http_upstream.c:1415-1420), with
    the hang-up poll as without it."""
    conn, client = conn_pair
    client.sendall(NEXT)

    async def main() -> None:
        timers = Timers()
        timer = _waiting(timers, conn, Phase.UPSTREAM_BODY)
        assert timers.check_clients() == 0
        assert not timer.gone and not timer.scope.cancel_called

    trio.run(main)


def test_the_stream_watch_sees_a_client_that_pipelined_a_request_then_closed_at_once(conn_pair):
    """Bytes and the FIN in one report: the stream is gone in the same check (EPOLLRDHUP, as nginx's pending_eof,
    ngx_epoll_module.c:884-888), the bytes unread."""
    conn, client = conn_pair
    watch, stream = StreamWatch(), Stream(None, 0.0, 15.0)
    watch.watch(conn, stream)
    client.sendall(NEXT)
    client.shutdown(socket.SHUT_WR)
    assert watch.check() == 1
    assert stream.gone and len(watch) == 0
    assert conn.sock.recv(100, socket.MSG_PEEK) == NEXT


def test_the_stream_watch_keeps_watching_a_client_that_pipelined_and_sees_its_later_close(conn_pair):
    """An SSE client pipelines its next request, and closes later: the watch, which left the bytes unread, still
    watches for the hang-up and ends the stream when it comes (nginx's read handler stays
    ngx_http_upstream_rd_check_broken_connection for the whole exchange: ngx_http_upstream.c:618-627)."""
    conn, client = conn_pair
    watch, stream = StreamWatch(), Stream(None, 0.0, 15.0)
    watch.watch(conn, stream)
    client.sendall(NEXT)
    assert watch.check() == 0
    assert not stream.gone
    client.shutdown(socket.SHUT_WR)
    assert watch.check() == 1
    assert stream.gone and len(watch) == 0
    assert conn.sock.recv(100, socket.MSG_PEEK) == NEXT


def test_the_stream_watch_sees_a_reset_after_pipelined_bytes():
    """A reset behind the bytes is gone as a FIN is (EPOLLHUP, EPOLLERR)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    try:
        watch, stream = StreamWatch(), Stream(None, 0.0, 15.0)
        watch.watch(Conn(ours), stream)
        client.sendall(NEXT)
        trio.run(trio.sleep, 0.02)
        assert watch.check() == 0
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # linger 0: RST
        trio.run(trio.sleep, 0.02)
        assert watch.check() == 1
        assert stream.gone
    finally:
        client.close()
        ours.close()
        listener.close()


# --- TLS ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context for gw.test, client context trusting it)."""
    return gw_test_contexts(Path(tmp_path_factory.mktemp("tls")))


class TlsClient:
    """The far end of a TLS client connection: an in-memory SSLObject writing its records into a socket."""

    def __init__(self, tls: ssl.SSLObject, out: ssl.MemoryBIO, sock: socket.socket) -> None:
        self.tls, self.out, self.sock = tls, out, sock

    def write(self, data: bytes) -> None:
        self.tls.write(data)
        self.sock.sendall(self.out.read())

    def close_notify(self) -> None:
        with pytest.raises(ssl.SSLWantReadError):  # (it would wait for the gateway's own close_notify)
            self.tls.unwrap()
        self.sock.sendall(self.out.read())


@pytest.fixture
def tls_conn(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> Iterator[tuple[TlsConn, TlsClient]]:
    """The gateway's end of a handshaken TLS client connection over a socket pair, and the client."""
    ours, theirs = socket.socketpair()
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = contexts[0].wrap_bio(s_in, s_out, server_side=True)
    client = contexts[1].wrap_bio(c_in, c_out, server_hostname="gw.test")
    done = [False, False]
    while not all(done):
        for i, (side, out, other) in enumerate(((client, c_out, s_in), (server, s_out, c_in))):
            try:
                side.do_handshake()
                done[i] = True
            except ssl.SSLWantReadError:
                pass
            other.write(out.read())
    yield TlsConn(ours, None, server, s_in, s_out), TlsClient(client, c_out, theirs)
    ours.close()
    theirs.close()


def test_a_tls_client_that_pipelined_then_sent_close_notify_and_fin_is_closed_at_the_first_look(tls_conn):
    """Its request, close_notify and FIN in hand at once: closed, though the socket read yields plaintext first
    (the FIN is the socket's, as nginx's check looks at the socket: ngx_http_upstream.c:1400-1445); the pipelined
    request is kept for the next read."""
    conn, client = tls_conn
    client.write(NEXT)
    client.close_notify()
    client.sock.shutdown(socket.SHUT_WR)
    assert conn.peer_closed() is True
    assert conn.recv_ready() == NEXT


def test_a_tls_client_whose_pipelined_request_was_held_is_closed_by_its_later_close_notify_and_fin(tls_conn):
    """A sweep decrypted and held the pipelined request; the client's close_notify and FIN come later, and the
    next look, which reads nothing more (the close_notify stays in the socket), sees the FIN behind it."""
    conn, client = tls_conn
    client.write(NEXT)
    assert conn.peer_closed() is False
    client.close_notify()
    client.sock.shutdown(socket.SHUT_WR)
    assert conn.peer_closed() is True
    assert conn.recv_ready() == NEXT
