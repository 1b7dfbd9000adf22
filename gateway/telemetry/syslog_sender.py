"""Writing to the host's syslog daemon as glibc's syslog(3) does, for the syslog plugin: a datagram per message to a
Unix socket (/dev/log; on a stream socket, each message ended by a NUL byte), `<PRI>Mmm dd HH:MM:SS ident[pid]:
message` (local time, the day padded with a space; the daemon adds the host name). Kong's syslog plugin calls
syslog(3) through lsyslog, which opens the log with LOG_PID.

Like glibc, a send that fails is tried once more on a fresh connection (a daemon that restarted has a new socket at
the same path), then the message is dropped. Unlike glibc, a daemon that does not keep up never blocks the worker:
the plugin's queue sends off the request path, and waits at most `timeout` for room.
"""

from __future__ import annotations

import errno
import logging
import socket
import time

import trio

from gateway.telemetry.sender import SendError

# syslog(3)'s facility codes and severities (<syslog.h>): PRI = facility * 8 + severity
FACILITIES = {"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7, "uucp": 8,
              "cron": 9, "authpriv": 10, "ftp": 11, "local0": 16, "local1": 17, "local2": 18, "local3": 19,
              "local4": 20, "local5": 21, "local6": 22, "local7": 23}
SEVERITIES = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
log = logging.getLogger("gateway.telemetry")


class Priorities:
    """Kong's syslog and loggly rule: the PRI of a request's message by its response's class (below 400, 4xx, 5xx),
    each class with its configured severity; None when that severity is less severe than `log_level`."""

    __slots__ = ("by_class",)

    def __init__(self, facility: str, log_level: str, successful: str, client_errors: str,
                 server_errors: str) -> None:
        least = SEVERITIES[log_level]
        base = FACILITIES[facility] * 8
        self.by_class = tuple(base + SEVERITIES[s] if SEVERITIES[s] <= least else None
                              for s in (successful, client_errors, server_errors))

    def of(self, status: int) -> int | None:
        return self.by_class[0 if status < 400 else 1 if status < 500 else 2]


def header(pri: int, ident: bytes, pid: int, when: float) -> bytes:
    """What syslog(3) puts before the message: `<PRI>`, strftime's "%h %e %T " in the C locale, `ident[pid]: `."""
    t = time.localtime(when)
    return b"<%d>%s %2d %02d:%02d:%02d %s[%d]: " % (pri, _MONTHS[t.tm_mon - 1], t.tm_mday, t.tm_hour, t.tm_min,
                                                      t.tm_sec, ident, pid)


class SyslogSender:
    """Sends messages to the Unix socket at `path`; not safe for concurrent use (one queue sends)."""

    def __init__(self, path: str, *, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._socket: trio.socket.SocketType | None = None

    async def send(self, datagram: bytes) -> None:
        """Send `datagram` (one too large for the socket is dropped, logged); raise SendError when it could not."""
        try:
            with trio.fail_after(self.timeout):
                try:
                    await self._send(datagram)
                except OSError as e:
                    if e.errno == errno.EMSGSIZE:
                        raise
                    self.close()  # glibc's rule: once more, on a new connection
                    await self._send(datagram)
        except trio.TooSlowError:
            self.close()
            raise SendError(f"syslog {self.path}: the daemon took no message within {self.timeout:g}s") from None
        except OSError as e:
            self.close()
            if e.errno == errno.EMSGSIZE:
                log.warning("syslog %s: a log entry of %d bytes is larger than the socket takes: dropped", self.path,
                            len(datagram))
                return
            raise SendError(f"syslog {self.path}: could not send: {e.strerror or e}") from None

    async def _send(self, datagram: bytes) -> None:
        if self._socket is None:
            self._socket = await self._connect(socket.SOCK_DGRAM)
        if self._socket.type == socket.SOCK_DGRAM:
            await self._socket.send(datagram)
            return
        message = memoryview(datagram + b"\0")  # glibc's framing on a stream: each message ends with a NUL byte
        while message:
            message = message[await self._socket.send(message):]

    async def _connect(self, kind: int) -> trio.socket.SocketType:
        """A socket connected to the daemon: a datagram one, or as glibc's openlog falls back when the daemon listens
        on a stream socket (syslog-ng's `unix-stream("/dev/log")`: EPROTOTYPE), a stream one."""
        sock = trio.socket.socket(socket.AF_UNIX, kind)
        try:
            await sock.connect(self.path)
        except OSError as e:
            sock.close()
            if e.errno == errno.EPROTOTYPE and kind == socket.SOCK_DGRAM:
                return await self._connect(socket.SOCK_STREAM)
            raise
        return sock

    def close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()
