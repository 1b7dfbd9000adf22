"""The hang-up watch over relayed streams' clients (gateway.pipeline.hangups), on real socket pairs."""

from __future__ import annotations

import socket

import pytest
import trio

from gateway.http.net import Conn
from gateway.pipeline.hangups import Hangups
from gateway.pipeline.keepalive import Stream


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    yield Conn(ours), theirs
    ours.close()
    theirs.close()


def test_a_client_that_closes_marks_its_stream_gone_and_is_no_longer_watched(pair):
    conn, client = pair
    watch, stream = Hangups(), Stream(None, 0.0, 15.0)
    watch.watch(conn, stream)
    client.close()
    assert watch.check() == 1
    assert stream.gone
    assert len(watch) == 0


def test_a_client_that_resets_is_gone_too():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    conn = Conn(ours)
    watch, stream = Hangups(), Stream(None, 0.0, 15.0)
    watch.watch(conn, stream)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()  # linger 0: RST
    try:
        assert watch.check() == 1
        assert stream.gone
    finally:
        ours.close()
        listener.close()


def test_a_quiet_client_is_left_alone(pair):
    conn, _ = pair
    watch, stream = Hangups(), Stream(None, 0.0, 15.0)
    watch.watch(conn, stream)
    assert watch.check() == 0
    assert not stream.gone
    assert len(watch) == 1


def test_bytes_from_the_client_stop_the_watch_and_stay_unread(pair):
    conn, client = pair
    watch, stream = Hangups(), Stream(None, 0.0, 15.0)
    watch.watch(conn, stream)
    client.sendall(b"GET /next HTTP/1.1\r\n\r\n")
    assert watch.check() == 0
    assert not stream.gone
    assert len(watch) == 0
    assert conn.sock.recv(100) == b"GET /next HTTP/1.1\r\n\r\n"


def test_unwatch_forgets_the_stream_and_a_later_close_is_not_reported(pair):
    conn, client = pair
    watch, stream = Hangups(), Stream(None, 0.0, 15.0)
    watch.watch(conn, stream)
    watch.unwatch(stream)
    client.close()
    assert watch.check() == 0
    assert not stream.gone


def test_unwatch_of_a_closed_stream_spares_a_later_stream_on_the_same_descriptor_number():
    first, first_peer = socket.socketpair()
    watch, old = Hangups(), Stream(None, 0.0, 15.0)
    watch.watch(Conn(first), old)
    fd = first.fileno()
    first.close()  # the kernel drops it from the set; the number is free for the next socket
    second, second_peer = socket.socketpair()
    try:
        if second.fileno() != fd and second_peer.fileno() == fd:
            second, second_peer = second_peer, second
        assert second.fileno() == fd
        new = Stream(None, 0.0, 15.0)
        watch.watch(Conn(second), new)
        watch.unwatch(old)  # the closed stream's cleanup comes late
        second_peer.close()
        assert watch.check() == 1
        assert new.gone
    finally:
        first_peer.close()
        second.close()
        second_peer.close()


async def test_a_hang_up_interrupts_the_streams_wait_at_once(pair):
    conn, client = pair
    watch, stream = Hangups(), Stream(None, 0.0, 15.0)
    upstream, _upstream_peer = socket.socketpair()  # never readable: the stream waits for it
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run_forever)
        watch.watch(conn, stream)
        with trio.fail_after(5):
            with trio.CancelScope() as scope:
                stream.scope = scope
                nursery.start_soon(_close_soon, client)
                await trio.lowlevel.wait_readable(upstream)
        assert scope.cancelled_caught
        assert stream.gone
        nursery.cancel_scope.cancel()
    upstream.close()
    _upstream_peer.close()


async def _close_soon(sock: socket.socket) -> None:
    await trio.sleep(0.05)
    sock.close()
