"""File-descriptor limits and load shedding: what a worker does when it cannot take one more connection.

- At start a worker's RLIMIT_NOFILE is set to `worker_rlimit_nofile` (as nginx's directive: soft and hard), or, not
  set, the soft limit is raised to the hard one; and, unless configured,
  `max_connections` is derived from it: each proxied connection needs two descriptors (client and upstream), and
  RESERVED_FDS stay free for listeners, the bus, logs and the health of the process. A configured max_connections
  the limit cannot hold is warned about (nginx's "worker_connections exceed open file resource limit").
- A worker at max_connections first closes its oldest reusable connections for the new one (gateway.http.server's
  ConnectionSet.reuse, nginx's ngx_drain_connections). With none, it still accepts, answers a fast 503 (counted)
  and closes with a short lingering close (`Shedder`): a client is refused at once instead of waiting in an accept
  queue the worker is not reading (the other workers may well be idle), and one that is uploading reads its 503
  instead of a reset.
- Out of descriptors anyway (EMFILE/ENFILE), the worker gives back a spare descriptor it kept for the purpose, accepts,
  answers the same 503, closes and takes the spare again (nginx's and libuv's trick), so the queue drains instead of
  the accept loop spinning on EMFILE while clients hang.
"""
from __future__ import annotations

import logging
import os
import resource
import socket

import trio

from gateway.http.dates import NOW

log = logging.getLogger("gateway.limits")

RESERVED_FDS = 256  # descriptors never used for client connections
SHED_BODY = b'{"message":"The gateway is at its connection limit, try again later"}'
SHED_HEAD = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
             b"retry-after: 1\r\nconnection: close\r\n" % len(SHED_BODY))
# A shed connection's lingering close is bounded so that a flood of them stays cheap: at most SHED_LINGERS at once (a
# few of the RESERVED_FDS; beyond, a shed connection closes at once), each for at most SHED_LINGER_TIME_S while its
# client keeps sending (at least every SHED_LINGER_TIMEOUT_S), and SHED_LINGER_BYTES read and dropped.
SHED_LINGERS = 32
SHED_LINGER_TIME_S = 2.0
SHED_LINGER_TIMEOUT_S = 1.0
SHED_LINGER_BYTES = 16 << 20  # an MCP call is kilobytes; an upload larger (or slower) than this is reset
_DROPPED = bytearray(65536)  # where lingering reads land, for every connection: nothing read is kept


def raise_nofile_limit(wanted: int | None = None) -> int:
    """Set RLIMIT_NOFILE to `wanted` (soft and hard, as nginx's worker_rlimit_nofile), or without it raise the soft
    limit to the hard one; returns the soft limit now in force. A limit the process may not set is logged (as nginx
    does) and the hard one used instead."""
    if wanted is not None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError) as e:
            log.error("gateway.worker_rlimit_nofile: cannot set this worker's descriptor limit to %d (%s): above the "
                      "hard limit (%d) it needs root, and at most fs.nr_open (%s); using the hard limit", wanted, e,
                      resource.getrlimit(resource.RLIMIT_NOFILE)[1], _nr_open())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def _nr_open() -> str:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def derived_max_connections(nofile: int) -> int:
    """Client connections a worker can serve with `nofile` descriptors: two each, RESERVED_FDS kept back."""
    return max(16, (nofile - RESERVED_FDS) // 2)


def warn_beyond_nofile(max_connections: int, nofile: int) -> None:
    """Warn when a configured max_connections needs more descriptors than the worker has (nginx's
    ngx_event_module_init): EMFILE then comes first, and with it 503s and failed upstream connects below the limit."""
    needed = 2 * max_connections + RESERVED_FDS
    if needed > nofile:
        log.warning("gateway.max_connections %d needs %d descriptors (two per proxied connection, %d kept back) but "
                    "this worker's open file limit is %d: out of descriptors, clients get the 503 and upstream "
                    "connects fail below the limit. Raise gateway.worker_rlimit_nofile (or the hard RLIMIT_NOFILE) "
                    "to %d, or lower max_connections (unset, it is derived from the limit: %d here)",
                    max_connections, needed, RESERVED_FDS, nofile, needed, derived_max_connections(nofile))


def _send_503(sock: socket.socket) -> bool:
    """Send the canned 503 if the kernel takes it whole without waiting (a new socket's buffer does)."""
    data = SHED_HEAD + NOW.line + b"\r\n" + SHED_BODY
    try:
        sock.setblocking(False)
        return sock.send(data) == len(data)
    except OSError:
        return False


def shed(sock: socket.socket) -> None:
    """Refuse an accepted connection at once: the canned 503, then close (the spare descriptor's refusal, which
    must give its descriptor back at once: a client still sending may see a reset)."""
    _send_503(sock)
    sock.close()


class Shedder:
    """Refuses connections beyond max_connections: the canned 503, then a bounded lingering close (see SHED_LINGERS),
    as gateway.http.server's: closed with its request unread, the socket would send a reset, which ends a client's
    upload with an error (urllib3 and curl report that, not the 503) and can destroy the 503 before it is read."""

    __slots__ = ("lingering",)

    def __init__(self) -> None:
        self.lingering = 0  # shed connections lingering now

    def shed(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        if not _send_503(sock) or self.lingering >= SHED_LINGERS:
            sock.close()
            return
        self.lingering += 1
        nursery.start_soon(self._linger, sock)

    async def _linger(self, sock: socket.socket) -> None:
        """End the 503 with a FIN, then read and drop what the client still sends, within the bounds; close."""
        try:
            sock.shutdown(socket.SHUT_WR)
            left = SHED_LINGER_BYTES
            with trio.move_on_after(SHED_LINGER_TIME_S):
                while left > 0:
                    with trio.move_on_after(SHED_LINGER_TIMEOUT_S) as quiet:
                        await trio.lowlevel.wait_readable(sock)
                    if quiet.cancelled_caught:
                        return
                    try:
                        read = sock.recv_into(_DROPPED)
                    except BlockingIOError:
                        continue
                    if not read:
                        return
                    left -= read
        except OSError:  # a reset: the client is gone
            pass
        finally:
            self.lingering -= 1
            sock.close()


class SpareFd:
    """A descriptor held back so that, out of descriptors, one connection at a time can still be refused cleanly."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.take()

    def take(self) -> None:
        if self._fd is None:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._fd = None

    def release(self) -> bool:
        """Give the spare back to the kernel; False if there was none to give."""
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True

    def close(self) -> None:
        self.release()
