#!/usr/bin/env python3
"""The floor of the gateway's stack, for scripts/bench: the least a Trio + httptools HTTP/1.1 proxy can do.

Raw non-blocking sockets parked on Trio's I/O waits (as gateway/http/net.py), httptools (llhttp) on both sides,
one upstream keep-alive connection per client connection, head and body forwarded as they were parsed, nothing else:
no routing, no header rewriting, no timeouts, no error handling beyond closing. It is not part of the gateway; its
CPU per request is what the gateway's is divided by ("CPU vs floor").

    python scripts/floor_proxy.py --listen 127.0.0.1:8000 --upstream 127.0.0.1:9000 [--reuse-port]
"""

from __future__ import annotations

import argparse
import signal
import socket

import httptools
import trio


class _Message:
    """Collects one parsed message: whether it is complete, and whether the connection may carry another."""

    def __init__(self) -> None:
        self.done = False
        self.body = bytearray()

    def on_message_begin(self) -> None:
        self.done = False
        self.body.clear()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


async def _recv(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
        except OSError:
            return b""


async def _send(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)


async def _exchange(client: socket.socket, upstream: tuple[str, int]) -> None:
    req = _Message()
    req_parser = httptools.HttpRequestParser(req)
    resp = _Message()
    up: socket.socket | None = None
    try:
        while True:
            data = await _recv(client)
            if not data:
                return
            req_parser.feed_data(data)
            if not req.done:
                continue
            if up is None:
                up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                up.setblocking(False)
                try:
                    up.connect(upstream)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(up)
            await _send(up, data)  # the client's bytes as they came: one request, head and body
            resp_parser = httptools.HttpResponseParser(resp)
            out = bytearray()
            while not resp.done:
                await trio.lowlevel.wait_readable(up)
                chunk = await _recv(up)
                if not chunk:
                    return
                out += chunk
                resp_parser.feed_data(chunk)
            await _send(client, bytes(out))
            req.done = resp.done = False
    except (httptools.HttpParserError, OSError):
        return
    finally:
        if up is not None:
            trio.lowlevel.notify_closing(up)
            up.close()
        trio.lowlevel.notify_closing(client)
        client.close()


async def serve(listen: tuple[str, int], upstream: tuple[str, int], reuse_port: bool) -> None:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    lsock.bind(listen)
    lsock.listen(4096)
    lsock.setblocking(False)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            async def stop() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop)
            while True:
                await trio.lowlevel.wait_readable(lsock)
                while True:
                    try:
                        client, _ = lsock.accept()
                    except BlockingIOError:
                        break
                    client.setblocking(False)
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    nursery.start_soon(_exchange, client, upstream)


def address(text: str) -> tuple[str, int]:
    """HOST:PORT (an argparse type)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port of 1-65535, got {text!r}")
    return host, int(port)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True, type=address, metavar="HOST:PORT")
    p.add_argument("--upstream", required=True, type=address, metavar="HOST:PORT")
    p.add_argument("--reuse-port", action="store_true", help="several processes share the port (SO_REUSEPORT)")
    args = p.parse_args()
    try:
        trio.run(serve, args.listen, args.upstream, args.reuse_port)
    except OSError as e:  # the listen port in use (its bind comes first)
        host, port = args.listen
        raise SystemExit(f"floor_proxy.py: cannot listen on {host}:{port}: {e.strerror or e}") from None


if __name__ == "__main__":
    main()
