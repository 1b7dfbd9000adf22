"""The worker's watch over relayed streams (gateway.pipeline.streamwatch), on real socket pairs: clients that hang up,
upstreams that speak to a parked stream."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from gateway.http.net import Conn
from gateway.pipeline.keepalive import Stream
from gateway.pipeline.streamwatch import StreamWatch


def test_a_client_that_closes_marks_its_stream_gone_and_is_no_longer_watched(conn_pair):
    conn, client = conn_pair
    watch, stream = StreamWatch(), Stream(None, 0.0, 15.0)
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
    watch, stream = StreamWatch(), Stream(None, 0.0, 15.0)
    watch.watch(conn, stream)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()  # linger 0: RST
    try:
        assert watch.check() == 1
        assert stream.gone
    finally:
        ours.close()
        listener.close()


def test_a_quiet_client_is_left_alone(conn_pair):
    conn, _ = conn_pair
    watch, stream = StreamWatch(), Stream(None, 0.0, 15.0)
    watch.watch(conn, stream)
    assert watch.check() == 0
    assert not stream.gone
    assert len(watch) == 1


class PeekCounting(Conn):
    """A Conn that counts the watch's looks at its bytes."""

    __slots__ = ("looks",)

    def peer_closed(self) -> bool | None:
        self.looks = getattr(self, "looks", 0) + 1
        return super().peer_closed()


def test_bytes_from_the_client_leave_it_watched_for_its_hang_up_only_and_stay_unread(conn_pair):
    """A pipelined request is looked at once: then the client is watched for EPOLLRDHUP alone (its bytes do not
    report it again and again), as nginx's epoll goes on watching it for the end (ngx_epoll_module.c:884-888)."""
    sock, client = conn_pair[0].sock, conn_pair[1]
    conn = PeekCounting(sock)
    watch, stream = StreamWatch(), Stream(None, 0.0, 15.0)
    watch.watch(conn, stream)
    client.sendall(b"GET /next HTTP/1.1\r\n\r\n")
    assert watch.check() == 0
    assert watch.check() == 0
    assert not stream.gone
    assert len(watch) == 1 and conn.looks == 1
    assert conn.sock.recv(100) == b"GET /next HTTP/1.1\r\n\r\n"


def test_unwatch_forgets_the_stream_and_a_later_close_is_not_reported(conn_pair):
    conn, client = conn_pair
    watch, stream = StreamWatch(), Stream(None, 0.0, 15.0)
    watch.watch(conn, stream)
    watch.unwatch(stream)
    client.close()
    assert watch.check() == 0
    assert not stream.gone


def test_unwatch_of_a_closed_stream_spares_a_later_stream_on_the_same_descriptor_number():
    first, first_peer = socket.socketpair()
    watch, old = StreamWatch(), Stream(None, 0.0, 15.0)
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


class Relayed:
    """A stream watched by a running StreamWatch: its client (the `pair` fixture) and an upstream socket pair."""

    def __init__(self, watch: StreamWatch, stream: Stream, up: Conn, upstream_peer: socket.socket,
                 nursery: trio.Nursery) -> None:
        self.watch, self.stream, self.up, self.upstream_peer, self.nursery = watch, stream, up, upstream_peer, nursery


@asynccontextmanager
async def relayed(conn: Conn) -> AsyncIterator[Relayed]:
    watch, stream = StreamWatch(), Stream(None, 0.0, 15.0)
    upstream, upstream_peer = socket.socketpair()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.run_forever)
            watch.watch(conn, stream)
            yield Relayed(watch, stream, Conn(upstream), upstream_peer, nursery)
            nursery.cancel_scope.cancel()
    finally:
        upstream.close()
        upstream_peer.close()


async def test_a_hang_up_resumes_the_parked_stream_at_once(conn_pair):
    conn, client = conn_pair
    async with relayed(conn) as r:  # the upstream is never readable: the stream waits for it
        r.nursery.start_soon(_close_soon, client)
        with trio.fail_after(5):
            await r.watch.wait_upstream(r.stream, r.up)
        assert r.stream.gone


async def test_an_upstream_that_speaks_resumes_the_parked_stream_each_time(conn_pair):
    async with relayed(conn_pair[0]) as r:
        for n in range(3):  # one-shot: re-armed by every wait
            r.nursery.start_soon(_send_soon, r.upstream_peer, b"data: %d\n\n" % n)
            with trio.fail_after(5):
                await r.watch.wait_upstream(r.stream, r.up)
            assert r.up.recv_ready() == b"data: %d\n\n" % n
            assert not r.stream.gone and r.stream.task is None


async def test_an_upstream_shut_down_by_the_gateway_resumes_the_parked_stream_with_eof(conn_pair):
    async with relayed(conn_pair[0]) as r:

        async def sweep() -> None:
            await trio.sleep(0.05)
            r.up.shutdown()  # what a circuit's sweep does to a busy connection (gateway.http.pool.close_target)

        r.nursery.start_soon(sweep)
        with trio.fail_after(5):
            await r.watch.wait_upstream(r.stream, r.up)
        assert r.up.recv_ready() == b""


async def test_a_parked_stream_can_be_cancelled_and_its_later_news_is_ignored(conn_pair):
    async with relayed(conn_pair[0]) as r:
        with trio.move_on_after(0.05) as scope:
            await r.watch.wait_upstream(r.stream, r.up)
        assert scope.cancelled_caught and r.stream.task is None
        r.upstream_peer.sendall(b"late")
        await trio.sleep(0.05)  # the watch reports it to nobody
        r.watch.unwatch(r.stream)
        assert len(r.watch) == 0


async def _close_soon(sock: socket.socket) -> None:
    await trio.sleep(0.05)
    sock.close()


async def _send_soon(sock: socket.socket, data: bytes) -> None:
    await trio.sleep(0.02)
    sock.sendall(data)
