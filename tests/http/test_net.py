"""The thin stream layer (gateway.http.net.Conn) on real socket pairs: what a read returns when the peer speaks,
closes, resets, or the gateway closes the socket under a waiting task."""

from __future__ import annotations

import math
import socket
import struct
import time
from collections.abc import Callable

import trio
import trio.testing

from gateway.http.net import Conn, open_tcp_stream
from gateway.http.timers import ConnTimer, Phase


async def read_parked(conn: Conn, then: Callable[[], object]) -> list[bytes]:
    """What recv_after_wait returns when `then` runs while it is parked (asserted parked: nothing read yet)."""
    got: list[bytes] = []

    async def read() -> None:
        got.append(await conn.recv_after_wait())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        then()
    return got


async def test_recv_after_wait_returns_what_the_peer_sends_once_it_sends_it(conn_pair):
    conn, peer = conn_pair
    assert await read_parked(conn, lambda: peer.send(b"HTTP/1.1 200 OK\r\n")) == [b"HTTP/1.1 200 OK\r\n"]


async def test_recv_after_wait_reads_data_already_there(conn_pair):
    conn, peer = conn_pair
    peer.send(b"ready")
    assert await conn.recv_after_wait() == b"ready"


async def test_recv_after_wait_gives_empty_bytes_at_eof(conn_pair):
    conn, peer = conn_pair
    peer.close()
    assert await conn.recv_after_wait() == b""


async def test_recv_after_wait_gives_empty_bytes_on_a_reset():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    conn = Conn(client)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ours.close()  # RST
    listener.close()
    try:
        assert await conn.recv_after_wait() == b""
    finally:
        conn.close()


async def test_recv_after_wait_gives_empty_bytes_when_the_gateway_closes_the_socket_under_it(conn_pair):
    conn, _ = conn_pair
    assert await read_parked(conn, conn.close) == [b""]  # closed as Pool.close_target does


async def test_recv_returns_at_once_when_data_is_there_and_waits_otherwise(conn_pair):
    conn, peer = conn_pair
    peer.send(b"one")
    assert await conn.recv() == b"one"
    with trio.move_on_after(0.05) as scope:
        await conn.recv()
    assert scope.cancelled_caught  # nothing more: it waited


async def test_a_long_write_re_arms_send_timeout_each_time_the_peer_reads_some(conn_pair):
    """nginx's send_timeout bounds the wait between two successive writes, not a whole response: a peer that keeps
    reading a big write moves the deadline on; the timer is back to what it was once the write is done."""
    conn, peer = conn_pair
    timer = ConnTimer(math.inf, Phase.BUSY)
    conn.send_timer, conn.send_timeout = timer, 30.0
    deadlines: list[float] = []

    def read_slowly() -> None:
        peer.settimeout(5)
        while True:
            if not peer.recv(65536):
                return
            if timer.at != math.inf and timer.at not in deadlines:
                deadlines.append(timer.at)
            time.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, read_slowly)
        await conn.sendall(b"x" * 8_000_000)
        conn.sock.shutdown(socket.SHUT_WR)
    assert len(deadlines) >= 3
    assert deadlines == sorted(deadlines)
    assert timer.at == math.inf and timer.phase is Phase.BUSY


async def test_open_tcp_stream_connects_to_a_bracketed_ipv6_literal():
    """Kong's typedefs.host takes `[::1]`, so a log sender or probe may be given it: the brackets are URL syntax,
    not part of the address trio connects to."""
    listener = (await trio.open_tcp_listeners(0, host="::1"))[0]
    port = listener.socket.getsockname()[1]
    async with listener:
        stream = await open_tcp_stream("[::1]", port)
        async with stream:
            assert stream.socket.getpeername()[:2] == ("::1", port)


class _Spoke(Exception):
    pass


async def test_a_write_that_waits_hears_the_peer_speak_first():
    """With `heard` set, a write the peer does not read ends when the peer speaks instead (an upstream's early answer:
    nginx reads the upstream while it writes, ngx_http_upstream_process_header); `heard` decides, here by raising."""
    ours, peer = socket.socketpair()
    conn = Conn(ours)
    calls: list[bytes | None] = []

    def heard() -> None:
        calls.append(conn.recv_ready())
        raise _Spoke

    conn.heard = heard

    async def speak() -> None:
        await trio.sleep(0.05)
        peer.send(b"HTTP/1.1 413 ")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(speak)
            try:
                await conn.sendall(b"x" * 8_000_000)
            except _Spoke:
                pass
    assert calls == [b"HTTP/1.1 413 "]
    conn.close()
    peer.close()


async def test_a_write_that_waits_with_heard_set_still_ends_when_the_peer_reads():
    """A peer that reads and says nothing gets the whole write, as without `heard`."""
    ours, peer = socket.socketpair()
    conn = Conn(ours)
    conn.heard = lambda: None
    received = 0

    def read_all() -> None:
        nonlocal received
        while chunk := peer.recv(1 << 20):
            received += len(chunk)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, read_all)
            await conn.sendall(b"x" * 8_000_000)
            conn.sock.shutdown(socket.SHUT_WR)
    assert received == 8_000_000
    conn.close()
    peer.close()
