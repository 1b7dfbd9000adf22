"""Listening sockets held by the root for the whole run, one SO_REUSEPORT socket per worker slot and address.

Why the root holds them: on Linux, closing a SO_REUSEPORT listener resets the connections waiting in its accept
queue. If each worker bound its own, every reload (old workers closing) and every crash would drop connections.
Instead the root binds slot i and hands it to worker i; a replacement worker (after a crash) or the next
generation (after a reload) inherits the very same socket, so its queue is never closed while the gateway runs.
The kernel still shards connections across the N sockets, each worker accepting from its own.
"""

from __future__ import annotations

import socket

from gateway.http.net import bind_listener


class ListenerSlots:
    """Per listen address, a growing list of bound sockets; worker i of n serves slots i, i+n, i+2n, ..."""

    def __init__(self) -> None:
        self._sockets: dict[tuple[str, int], list[socket.socket]] = {}

    def ensure(self, addresses: list[tuple[str, int]], count: int) -> None:
        """Bind what is missing so every address has at least `count` slots; all-or-nothing on failure."""
        added: list[tuple[tuple[str, int], socket.socket]] = []
        try:
            for addr in addresses:
                have = len(self._sockets.get(addr, ()))
                for _ in range(count - have):
                    try:
                        sock = bind_listener(*addr)
                    except OSError as e:
                        raise OSError(e.errno, f"cannot listen on {addr[0]}:{addr[1]}: {e.strerror}") from None
                    added.append((addr, sock))
        except BaseException:
            for _, sock in added:
                sock.close()
            raise
        for addr, sock in added:
            self._sockets.setdefault(addr, []).append(sock)

    def fds_for(self, addresses: list[tuple[str, int]], index: int, workers: int) -> list[int]:
        """File descriptors worker `index` of `workers` inherits."""
        return [s.fileno() for addr in addresses for i, s in enumerate(self._sockets[addr]) if i % workers == index]

    def retain_only(self, addresses: list[tuple[str, int]]) -> None:
        """Close the sockets of addresses no longer configured (after the workers using them have stopped)."""
        for addr in list(self._sockets):
            if addr not in addresses:
                for sock in self._sockets.pop(addr):
                    sock.close()

    def close(self) -> None:
        self.retain_only([])
