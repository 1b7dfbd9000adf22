"""Whether a TLS peer closed, asked while no read is under way (gateway.http.tls.TlsConn.peer_closed, pending_input):
the sweeper asks it of a client whose request waits on its upstream (gateway/http/timers.py check_clients, every
CLIENT_CHECK_S), the stream watcher of a client whose response streams, the pool of an idle upstream connection.

nginx reads nothing from the client there: with epoll it looks at the EOF flag, otherwise at one byte with MSG_PEEK
(nginx release-1.27.1 src/http/ngx_http_upstream.c:1415-1420 and 1468, ngx_http_upstream_check_broken_connection:
`if (!ev->pending_eof) { return; }` ... `n = recv(c->fd, buf, 1, MSG_PEEK);`), so bytes a client pipelines behind
its request stay in the kernel's socket buffer, which then stops the client. Over TLS the gateway must decrypt
records to tell data from housekeeping (a session ticket), and reads at most one socket buffer of them to do so.

Each test runs a TlsConn on one end of a socket pair, and the peer's TLS (an ssl.SSLObject, handshaken in memory)
writing its records into the other end.
"""

from __future__ import annotations

import fcntl
import socket
import ssl
import struct
import termios
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tls_helpers import gw_test_contexts

from gateway.http.net import RECV_SIZE
from gateway.http.tls import TlsConn

REQUEST = b"GET /wait HTTP/1.1\r\nHost: gw.test\r\n\r\n"
UPLOAD_HEAD = b"POST /next HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1000000000\r\n\r\n"


@dataclass
class Peer:
    """The far end: its TLS object and its socket (the gateway's TlsConn holds the other end)."""

    tls: ssl.SSLObject
    out: ssl.MemoryBIO
    sock: socket.socket
    sent: int = 0  # ciphertext bytes the socket took
    unsent: bytes = b""  # the rest of a record the socket did not take whole

    def write(self, data: bytes) -> None:
        """Encrypt `data` and send all of it (it must fit the socket buffer)."""
        self.tls.write(data)
        record = self.out.read()
        self.sock.sendall(record)
        self.sent += len(record)

    def fill(self, piece: bytes) -> None:
        """Send records of `piece` until the socket buffer is full: an upload the gateway does not take."""
        while True:
            if not self.unsent:
                self.tls.write(piece)
                self.unsent = self.out.read()
            try:
                taken = self.sock.send(self.unsent)
            except BlockingIOError:
                return
            self.sent += taken
            self.unsent = self.unsent[taken:]


def _pump(a: ssl.SSLObject, a_out: ssl.MemoryBIO, b_in: ssl.MemoryBIO) -> bool:
    """One handshake step of `a`, its output handed to the other side; True once `a` is done."""
    try:
        a.do_handshake()
        done = True
    except ssl.SSLWantReadError:
        done = False
    b_in.write(a_out.read())
    return done


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context for gw.test, client context trusting it)."""
    return gw_test_contexts(Path(tmp_path_factory.mktemp("tls")))


def tls_pair(contexts: tuple[ssl.SSLContext, ssl.SSLContext], upstream: bool = False) -> tuple[TlsConn, Peer, bytes]:
    """A handshaken TLS connection over a socket pair: the gateway's TlsConn (the server side, a client's
    connection; the client side if `upstream`), the peer, and what the server sent once its handshake ended (TLS 1.3
    session tickets), not yet delivered to the client."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = contexts[0].wrap_bio(s_in, s_out, server_side=True)
    client = contexts[1].wrap_bio(c_in, c_out, server_hostname="gw.test")
    client_done = server_done = False
    while not (client_done and server_done):
        client_done = _pump(client, c_out, s_in)
        if not server_done:
            server_done = _pump(server, s_out, c_in)
    tickets = c_in.read()
    if upstream:  # (the test sends the tickets through the socket)
        return TlsConn(ours, None, client, c_in, c_out), Peer(server, s_out, theirs), tickets
    c_in.write(tickets)
    return TlsConn(ours, None, server, s_in, s_out), Peer(client, c_out, theirs), tickets


@pytest.fixture
def client_conn(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> Iterator[tuple[TlsConn, Peer]]:
    """The gateway's end of a TLS client's connection, and the client."""
    conn, peer, _ = tls_pair(contexts)
    yield conn, peer
    conn.sock.close()
    peer.sock.close()


def unread(sock: socket.socket) -> int:
    """Bytes waiting in the socket's receive buffer (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def test_a_tls_client_pipelining_an_upload_while_its_request_waits_is_read_at_most_one_buffer(client_conn):
    """Twenty sweeps (ten seconds of a request waiting on its upstream) while the client keeps its socket buffer
    full of a pipelined upload take one socket read off it in all, not one each (64 KiB a sweep, held without
    bound: 40 such clients grew a worker by 23 MiB in 4 s). nginx takes nothing (ngx_http_upstream.c:1468,
    `recv(c->fd, buf, 1, MSG_PEEK)`)."""
    conn, peer = client_conn
    peer.write(REQUEST + UPLOAD_HEAD)
    peer.fill(b"x" * 16384)
    seen = []
    for _ in range(20):
        seen.append(conn.peer_closed())
        peer.fill(b"x" * 16384)  # the client takes back every byte the gateway took off its socket
    taken = peer.sent - unread(conn.sock)
    assert seen == [False] * 20  # it sent bytes: not closed, and not "nothing" (a stream watcher stops watching)
    assert taken <= RECV_SIZE, f"{taken} bytes taken off the socket by 20 sweeps"


def test_the_plaintext_a_sweep_held_is_read_first_then_the_rest_of_the_stream(client_conn):
    """What peer_closed decrypted while the request waited reaches the next reads in order, ahead of the records it
    left in the socket: the pipelined request is read whole once its turn comes."""
    conn, peer = client_conn
    body = bytes(range(256)) * 256  # 64 KiB: more records than one sweep reads
    peer.write(REQUEST + UPLOAD_HEAD)
    peer.write(body)
    assert conn.peer_closed() is False
    assert conn.peer_closed() is False
    received = b""
    while (data := conn.recv_ready()) is not None and data:
        received += data
    assert received == REQUEST + UPLOAD_HEAD + body


def test_a_client_that_closes_after_pipelining_is_seen_closed_by_the_next_sweep(client_conn):
    """With plaintext held, the sweep only peeks at the socket: an EOF behind the held bytes is still the end, as
    nginx's check sees the peer's FIN (ngx_http_upstream_check_broken_connection, pending_eof)."""
    conn, peer = client_conn
    peer.write(REQUEST + UPLOAD_HEAD)
    assert conn.peer_closed() is False
    peer.sock.shutdown(socket.SHUT_WR)
    assert conn.peer_closed() is True


def test_a_close_notify_is_the_end(client_conn):
    """A client's close_notify, with nothing held, is its close (the TLS end of the stream)."""
    conn, peer = client_conn
    with pytest.raises(ssl.SSLWantReadError):  # (the close_notify is out; it would wait for the gateway's)
        peer.tls.unwrap()
    peer.sock.sendall(peer.out.read())
    assert conn.peer_closed() is True


def test_session_tickets_on_an_idle_upstream_connection_are_not_input_and_a_response_is(contexts):
    """An upstream's TLS 1.3 session tickets, arriving after its handshake, are housekeeping: the pooled connection
    stays reusable (pending_input False); application data after them is input."""
    conn, upstream, tickets = tls_pair(contexts, upstream=True)
    try:
        assert tickets, "the server sent no session ticket after its handshake"
        upstream.sock.sendall(tickets)
        assert conn.pending_input() is False
        upstream.write(b"HTTP/1.1 200 OK\r\n")
        assert conn.pending_input() is True
    finally:
        conn.sock.close()
        upstream.sock.close()


def test_part_of_a_record_on_an_idle_upstream_connection_is_input(contexts):
    """nginx closes an idle pooled connection on any byte (release-1.27.1 src/http/modules/
    ngx_http_upstream_keepalive_module.c:440, `recv(c->fd, buf, 1, MSG_PEEK)`): the first bytes of a record, whose
    rest may be a late answer that the next request would read as its response, are input, though OpenSSL has taken
    them off the BIO and has no plaintext yet."""
    conn, upstream, tickets = tls_pair(contexts, upstream=True)
    try:
        upstream.sock.sendall(tickets)
        assert conn.pending_input() is False
        upstream.tls.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTALE")
        upstream.sock.sendall(upstream.out.read()[:3])
        assert conn.pending_input() is True
    finally:
        conn.sock.close()
        upstream.sock.close()


def test_a_record_that_came_with_the_response_and_is_not_decrypted_yet_is_input(contexts):
    """A record that came in the same read as the response's last one stays in the TLS buffer, the socket empty: it
    is input all the same (the start of a late answer), where a poll of the socket sees nothing."""
    conn, upstream, tickets = tls_pair(contexts, upstream=True)
    try:
        upstream.tls.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        upstream.tls.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTALE")
        upstream.sock.sendall(tickets + upstream.out.read())
        assert conn.recv_ready() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"  # one record's plaintext
        assert unread(conn.sock) == 0 and not conn.readable()
        assert conn.pending_input() is True
    finally:
        conn.sock.close()
        upstream.sock.close()
