"""Non-blocking stdlib sockets driven by Trio's I/O waits: the thinnest stream layer we can afford.

Trio's SocketStream costs several scheduler hops per operation; on the hot path we call the socket directly and
park on `wait_readable`/`wait_writable` only when the kernel says EAGAIN. A budget forces a checkpoint now and
then, so a peer that always has data ready cannot starve the other tasks: it counts reads and writes that did not
wait, and the body events parsed from what was read (`pace`), whose work a read of tiny chunks multiplies.
"""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from gateway.dns import process as dns
from gateway.dns.client import DnsError
from gateway.http.timers import ConnTimer, Phase

if TYPE_CHECKING:
    from gateway.config.listen import ListenOptions

RECV_SIZE = 65536
CHECKPOINT_EVERY = 32  # immediate successes (and body events: Conn.pace) allowed between forced checkpoints
# EBADF: the socket was closed by the gateway itself under a task that was about to read or write it
_CLOSED_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT, errno.ENOTCONN, errno.EBADF}


_READABLE = select.POLLIN | select.POLLRDHUP | select.POLLHUP | select.POLLERR
_HUNG_UP = select.POLLRDHUP | select.POLLHUP | select.POLLERR  # a FIN, both ends shut, a reset: not bytes
# One poll object for the process, holding one descriptor at a time (Conn.readable): one per connection cost 300
# bytes each, which 50,000 idle streams feel (issue 19). Registering is a dict store; only poll() is a system call.
_PROBE = select.poll()


def _probed(sock: socket.socket, events: int) -> bool:
    """Does the kernel report any of `events` on `sock` now (a closed one: yes)? One poll(2) that does not wait."""
    fd = sock.fileno()
    if fd < 0:
        return True
    _PROBE.register(fd, events)
    try:
        return bool(_PROBE.poll(0))
    finally:
        _PROBE.unregister(fd)


class Conn:
    """A connected non-blocking socket with awaitable recv/sendall; recv returns b"" at EOF or reset (`reset` tells
    them apart).

    With a `send_timer`, a write that has to wait for the peer to read is bounded by `send_timeout` seconds (the
    timer's CLIENT_WRITE phase); a write the kernel takes at once costs nothing extra. A write that fails (or is
    cancelled) leaves in `unsent` how many of its bytes the kernel did not take: nginx counts only what writev()
    returned (c->sent), which a client that went away mid-response never got all of."""

    __slots__ = ("sock", "_budget", "peer", "closed", "reset", "send_timer", "send_timeout", "listen_port", "serial",
                 "requests", "heard", "unsent", "proxied")

    scheme = b"http"  # what X-Forwarded-Proto says of a client connection (TlsConn: https)
    server_name: bytes | None = None  # the TLS server name a client sent (TlsConn: as sent, b"" for none)

    def __init__(self, sock: socket.socket, peer: tuple[str, int] | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.peer = peer
        self._budget = CHECKPOINT_EVERY
        self.closed = False
        self.reset = False  # the b"" a read returned was a failure (a reset, a broken TLS record), not the peer's end
        self.send_timer: ConnTimer | None = None
        self.send_timeout = 60.0
        self.listen_port = b""  # a client connection: the port it came in on (X-Forwarded-Port)
        self.serial = 0  # a client connection: nginx's $connection, the worker's count of connections accepted
        self.requests = 0  # ... and $connection_requests, the number of the request being served on it
        # While set, a write that waits for the peer to read also watches for the peer speaking first (an upstream
        # answering before it read the whole request): this is called then, and may raise to end the write.
        self.heard: Callable[[], None] | None = None
        self.unsent = 0  # of the last write that raised: the bytes the kernel did not take (set only then)
        # a client connection on a proxy_protocol listener: the client its PROXY header names (realip.proxied_client)
        self.proxied: tuple[str, int] | None = None

    async def recv(self) -> bytes:
        """Bytes that are ready, waiting for some if none are; b"" when the peer closed or reset."""
        sock = self.sock
        self._budget -= 1
        if self._budget <= 0:
            self._budget = CHECKPOINT_EVERY
            await trio.lowlevel.checkpoint()
        while True:
            try:
                return sock.recv(RECV_SIZE)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(sock)
                except trio.ClosedResourceError:
                    self.reset = True
                    return b""  # closed under us (Pool.close_target)
            except OSError as e:
                if e.errno in _CLOSED_ERRNOS:
                    self.reset = True
                    return b""
                raise

    async def recv_or_hear(self, other: Conn, heard: Callable[[], None]) -> bytes:
        """Like recv, while `other` (the upstream a request body streams to) is watched as well: when it speaks
        first, `heard` is called, and may raise to end the read (an answer before the body is all in, which nginx
        reads as it comes: ngx_http_upstream_process_header is the upstream's read handler from the connect on)."""
        while (data := self.recv_ready()) is None:
            try:
                if await second_readable_first(self.sock, other.sock):
                    heard()
            except trio.ClosedResourceError:
                self.reset = True
                return b""  # closed under us
        return data

    async def pace(self) -> None:
        """Count one body event parsed from this connection's reads against the checkpoint budget: a read of 1-byte
        chunks is thousands of them (nginx parses those in C), which must not hold the worker's other clients. The
        checkpoint is shielded: it lets the others run, and cancels nothing (the event taken is not lost)."""
        self._budget -= 1
        if self._budget <= 0:
            self._budget = CHECKPOINT_EVERY
            await trio.lowlevel.cancel_shielded_checkpoint()

    def recv_ready(self) -> bytes | None:
        """Bytes already readable, b"" at EOF or reset, None if the read would have to wait (no await at all)."""
        try:
            return self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno in _CLOSED_ERRNOS:
                self.reset = True
                return b""
            raise

    async def wait_readable(self) -> None:
        """Park until the socket is readable (the only checkpoint: a cancel scope around it interrupts nothing else),
        or closed under us (then the next read says so)."""
        try:
            await trio.lowlevel.wait_readable(self.sock)
        except trio.ClosedResourceError:
            pass

    async def recv_after_wait(self) -> bytes:
        """Like recv, but waits first: for answers that cannot have arrived yet (saves a failing syscall). The wait
        was a checkpoint, so the budget starts again."""
        sock = self.sock
        self._budget = CHECKPOINT_EVERY
        while True:
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                self.reset = True
                return b""  # closed under us (Pool.close_target)
            data = self.recv_ready()
            if data is not None:
                return data
            # woken for nothing (it happens with epoll): wait again

    async def sendall(self, data: bytes) -> None:
        """Send every byte, waiting for buffer space as needed; raises BrokenPipeError if the peer is gone (`unsent`
        then says how many bytes did not go)."""
        sock = self.sock
        self._budget -= 1
        if self._budget <= 0:
            self._budget = CHECKPOINT_EVERY
            self.unsent = len(data)  # (should the checkpoint be cancelled)
            await trio.lowlevel.checkpoint()
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self.unsent = len(data)
            if e.errno in _CLOSED_ERRNOS:
                raise BrokenPipeError(e.errno, "peer closed the connection") from None
            raise
        if sent == len(data):
            return  # the common case: the kernel took it all
        timer = self.send_timer
        if timer is None:
            await self._send_rest(memoryview(data)[sent:], None)
            return
        saved = timer.save()
        began = trio.current_time()
        timer.set(self.send_timeout, Phase.CLIENT_WRITE)
        await self._send_rest(memoryview(data)[sent:], timer)
        timer.restore(saved, trio.current_time() - began)  # (not reached when the timer fired: the scope is cancelled)

    def send_now(self, data: bytes) -> int:
        """Send what the kernel takes at once; returns how many bytes (0 when it takes none or the peer is gone:
        the next sendall of the rest tells which)."""
        try:
            return self.sock.send(data)
        except OSError:
            return 0

    async def _send_rest(self, view: memoryview, timer: ConnTimer | None) -> None:
        """The rest of a write the kernel did not take at once; with a timer, send_timeout bounds each wait for
        the peer to read, not the whole write (nginx's send_timeout: between two successive writes)."""
        sock = self.sock
        try:
            while view:
                try:
                    if self.heard is None:
                        await trio.lowlevel.wait_writable(sock)
                    else:
                        while await readable_first(sock):
                            self.heard()
                except trio.ClosedResourceError:
                    raise BrokenPipeError(errno.EBADF, "connection closed by the gateway") from None
                try:
                    view = view[sock.send(view):]
                except BlockingIOError:
                    continue
                except OSError as e:
                    if e.errno in _CLOSED_ERRNOS:
                        raise BrokenPipeError(e.errno, "peer closed the connection") from None
                    raise
                if timer is not None and view:  # the peer read some: the wait for the rest starts again
                    timer.set(self.send_timeout, Phase.CLIENT_WRITE)
        except BaseException:  # (the send timer's cancellation too)
            self.unsent = len(view)
            raise

    def peer_closed(self, behind_bytes: bool = True) -> bool | None:
        """Once the socket polled readable, with no read under way: True if the peer closed (EOF or reset, also
        behind bytes it sent first when `behind_bytes`: `hung_up`), False if it sent bytes only (left unread, for
        whoever reads next), None if there was nothing to read after all. Not `behind_bytes` while those bytes may
        be the rest of the request's body, which nginx reads before it looks for the client's FIN."""
        try:
            peeked = self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return None
        except OSError:
            return True
        return not peeked or (behind_bytes and self.hung_up())

    def hung_up(self) -> bool:
        """Has the peer closed or reset its end, whatever bytes it sent before that (still unread)? A peek sees
        those bytes, not the FIN behind them; nginx sees the FIN at once (ngx_epoll_module.c:884-888, EPOLLRDHUP
        sets pending_eof whatever is unread). One poll(2) that neither waits nor reads."""
        return _probed(self.sock, _HUNG_UP)

    def shutdown(self) -> None:
        """End both directions, leaving the descriptor open: whoever waits on it sees EOF (or EPIPE) and closes it."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def readable(self) -> bool:
        """Has the kernel bytes (or an EOF, or an error) for us to read? One poll(2) that does not wait. A closed
        connection is readable: it is as unusable as one with a stray byte."""
        return _probed(self.sock, _READABLE)

    def close(self) -> None:
        """Close now; wakes any task waiting on this socket."""
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    def abort(self) -> None:
        """Close with a TCP reset, so the peer cannot mistake a cut-off body for a complete one."""
        if not self.closed:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            self.close()


async def readable_first(sock: socket.socket) -> bool:
    """Wait until `sock` has bytes (or an EOF) to read or room to write: True when it is readable (a peer that
    speaks while it does not read); raises trio.ClosedResourceError when it is closed under us."""
    return await _readable_first(trio.lowlevel.wait_writable, sock, sock)


async def second_readable_first(first: socket.socket, second: socket.socket) -> bool:
    """Wait until either socket has bytes (or an EOF) to read: True when `second` is readable first; raises
    trio.ClosedResourceError when `first` is closed under us (`second` closed under us is waited out)."""
    return await _readable_first(trio.lowlevel.wait_readable, first, second)


async def _readable_first(wait: Callable[[socket.socket], Awaitable[None]], sock: socket.socket,
                          other: socket.socket) -> bool:
    """Wait until `wait(sock)` is over or `other` is readable: True when `other` was; raises
    trio.ClosedResourceError when `sock` is closed under us (`other` closed under us is waited out)."""
    readable = closed = False
    async with trio.open_nursery() as nursery:

        async def listen() -> None:
            nonlocal readable
            try:
                await trio.lowlevel.wait_readable(other)
            except trio.ClosedResourceError:
                return  # (the other wait says so)
            readable = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(listen)
        try:
            await wait(sock)
        except trio.ClosedResourceError:
            closed = True
        nursery.cancel_scope.cancel()
    if closed:
        raise trio.ClosedResourceError
    return readable


class NameNotResolved(OSError):
    """A host name with no address to connect to: it does not exist or has no record of the types asked
    (`not_found`), or the DNS client failed. `reason` is Kong's DNS client's text for it."""

    def __init__(self, host: str, reason: str, not_found: bool = True) -> None:
        super().__init__(errno.EHOSTUNREACH, f"{host}: {reason}")
        self.reason = reason
        self.not_found = not_found

    @property
    def kong_error(self) -> str | None:
        """Kong's DNS client's error when it is neither a name error nor an empty answer (those are None: Kong's 503
        "name resolution failed"), e.g. "dns server error: 2 server failure"."""
        return None if self.not_found else self.reason


async def resolve(host: str, port: int) -> tuple[str, int]:
    """(address, port) to connect to for a host name, as Kong's balancer has them from its DNS client's toip: the
    name's records take turns, try by try, and an SRV record's port (unless 0) replaces `port`."""
    try:
        address, srv_port = await dns.resolver().toip(host, port)
    except DnsError as e:
        raise NameNotResolved(host, e.message, e.not_found) from None
    return address, srv_port or port


async def open_tcp_stream(host: str, port: int) -> trio.SocketStream:
    """trio.open_tcp_stream to a host name resolved by this process's DNS client (see `resolve`), as Kong's
    patched cosockets resolve theirs: for the gateway's own clients (log senders, health probes, LDAP, JWKS)."""
    if is_ip(bare := host.strip("[]")):
        host = bare  # trio connects to "::1", not "[::1]"
    else:
        host, port = await resolve(host, port)
    return await trio.open_tcp_stream(host, port)


class NoSocket(OSError):
    """socket() itself failed (EMFILE, ENFILE, ENOBUFS, ENOMEM): this process is out of descriptors or memory; no
    connect was tried, so it says nothing of the peer."""


async def open_connection(host: str, port: int) -> Conn:
    """Connect a non-blocking TCP socket (IPv4 or IPv6 literal or a name: see `resolve`) with TCP_NODELAY and
    keep-alive; NoSocket when no socket could be made for it."""
    if not is_ip(host):
        host, port = await resolve(host, port)
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        raise NoSocket(e.errno, e.strerror) from None
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        try:
            sock.connect((host, port))
            err = 0
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"connect to {host}:{port}: {errno.errorcode.get(err, err)}")
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise
    return Conn(sock, (host, port))


def is_ip(host: str) -> bool:
    """An IPv4 or IPv6 address literal (not a name to resolve)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except (OSError, ValueError):  # (ValueError: a NUL in the text, as a name off the wire may hold)
            pass
    return False


def unbound_listener(host: str, reuse_port: bool, ipv6only: bool = True) -> socket.socket:
    """A TCP socket for listening on `host` (SO_REUSEADDR, SO_REUSEPORT if asked). An IPv6 one is IPv6-only, as
    nginx's `listen [::]:8000` (ipv6only=on): IPv4 clients are an IPv4 address's, and `0.0.0.0:8000` and
    `[::]:8000` are two listeners side by side; with `ipv6only` false (nginx's ipv6only=off) it takes both."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(ipv6only))
    except BaseException:
        sock.close()
        raise
    return sock


def bind_listener(host: str, port: int, reuse_port: bool = True, options: ListenOptions | None = None) -> socket.socket:
    """A non-blocking listening socket; SO_REUSEPORT lets every worker process bind its own on the same port.
    `options`: its listen entry's (backlog, deferred, ipv6only, so_keepalive), by default the gateway's."""
    if options is None:
        from gateway.config.listen import PLAIN_LISTEN  # imported here: gateway.config imports this module
        options = PLAIN_LISTEN
    sock = unbound_listener(host, reuse_port, options.ipv6only)
    try:
        sock.bind((host, port))
        sock.listen(options.backlog)
        options.apply(sock)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
