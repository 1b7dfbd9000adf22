"""File-descriptor limits and load shedding: what a worker does when it cannot take one more connection.

- At start a worker's RLIMIT_NOFILE is set to `worker_rlimit_nofile` (as nginx's directive: soft and hard), or, not
  set, the soft limit is raised to the hard one; and, unless configured,
  `max_connections` is derived from it: each proxied connection needs two descriptors (client and upstream), and
  RESERVED_FDS stay free for listeners, the bus, logs and the health of the process.
- A worker at max_connections still accepts, answers a fast 503 and closes (counted): a client is refused at once
  instead of waiting in an accept queue the worker is not reading (the other workers may well be idle).
- Out of descriptors anyway (EMFILE/ENFILE), the worker gives back a spare descriptor it kept for the purpose, accepts,
  answers the same 503, closes and takes the spare again (nginx's and libuv's trick), so the queue drains instead of
  the accept loop spinning on EMFILE while clients hang.
"""

from __future__ import annotations

import logging
import os
import resource
import socket

from gateway.http.dates import NOW

log = logging.getLogger("gateway.limits")

RESERVED_FDS = 256  # descriptors never used for client connections
SHED_BODY = b'{"message":"The gateway is at its connection limit, try again later"}'
SHED_HEAD = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
             b"retry-after: 1\r\nconnection: close\r\n" % len(SHED_BODY))


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


def shed(sock: socket.socket) -> None:
    """Refuse an accepted connection at once: the canned 503 if the kernel takes it without waiting, then close."""
    try:
        sock.setblocking(False)
        sock.send(SHED_HEAD + NOW.line + b"\r\n" + SHED_BODY)
    except OSError:
        pass
    finally:
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
