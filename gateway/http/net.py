"""Non-blocking stdlib sockets driven by Trio's I/O waits: the thinnest stream layer we can afford.

Trio's SocketStream costs several scheduler hops per operation; on the hot path we call the socket directly and
park on `wait_readable`/`wait_writable` only when the kernel says EAGAIN. A budget forces a checkpoint now and
then, so a peer that always has data ready cannot starve the other tasks.
"""

from __future__ import annotations

import errno
import select
import socket

import trio

from gateway.http.timers import ConnTimer, Phase

RECV_SIZE = 65536
CHECKPOINT_EVERY = 32  # immediate successes allowed between forced checkpoints
# EBADF: the socket was closed by the gateway itself under a task that was about to read or write it
_CLOSED_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT, errno.ENOTCONN, errno.EBADF}


_READABLE = select.POLLIN | select.POLLRDHUP | select.POLLHUP | select.POLLERR
# One poll object for the process, holding one descriptor at a time (Conn.readable): one per connection cost 300
# bytes each, which 50,000 idle streams feel (issue 19). Registering is a dict store; only poll() is a system call.
_PROBE = select.poll()


class Conn:
    """A connected non-blocking socket with awaitable recv/sendall; recv returns b"" at EOF or reset.

    With a `send_timer`, a write that has to wait for the peer to read is bounded by `send_timeout` seconds (the
    timer's CLIENT_WRITE phase); a write the kernel takes at once costs nothing extra."""

    __slots__ = ("sock", "_budget", "peer", "closed", "send_timer", "send_timeout", "listen_port", "serial", "requests")

    scheme = b"http"  # what X-Forwarded-Proto says of a client connection (TlsConn: https)
    server_name: bytes | None = None  # the TLS server name a client sent (TlsConn: lower case, b"" for none)

    def __init__(self, sock: socket.socket, peer: tuple[str, int] | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.peer = peer
        self._budget = CHECKPOINT_EVERY
        self.closed = False
        self.send_timer: ConnTimer | None = None
        self.send_timeout = 60.0
        self.listen_port = b""  # a client connection: the port it came in on (X-Forwarded-Port)
        self.serial = 0  # a client connection: nginx's $connection, the worker's count of connections accepted
        self.requests = 0  # ... and $connection_requests, the number of the request being served on it

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
                    return b""  # closed under us (Pool.close_target)
            except OSError as e:
                if e.errno in _CLOSED_ERRNOS:
                    return b""
                raise

    def recv_ready(self) -> bytes | None:
        """Bytes already readable, b"" at EOF or reset, None if the read would have to wait (no await at all)."""
        try:
            return self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno in _CLOSED_ERRNOS:
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
                return b""  # closed under us (Pool.close_target)
            data = self.recv_ready()
            if data is not None:
                return data
            # woken for nothing (it happens with epoll): wait again

    async def sendall(self, data: bytes) -> None:
        """Send every byte, waiting for buffer space as needed; raises BrokenPipeError if the peer is gone."""
        sock = self.sock
        self._budget -= 1
        if self._budget <= 0:
            self._budget = CHECKPOINT_EVERY
            await trio.lowlevel.checkpoint()
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            if e.errno in _CLOSED_ERRNOS:
                raise BrokenPipeError(e.errno, "peer closed the connection") from None
            raise
        if sent == len(data):
            return  # the common case: the kernel took it all
        timer = self.send_timer
        if timer is None:
            await self._send_rest(memoryview(data)[sent:])
            return
        saved = timer.save()
        timer.set(self.send_timeout, Phase.CLIENT_WRITE)
        await self._send_rest(memoryview(data)[sent:])
        timer.restore(saved)  # not reached when the timer fired: the scope is cancelled

    def send_now(self, data: bytes) -> int:
        """Send what the kernel takes at once; returns how many bytes (0 when it takes none or the peer is gone:
        the next sendall of the rest tells which)."""
        try:
            return self.sock.send(data)
        except OSError:
            return 0

    async def _send_rest(self, view: memoryview) -> None:
        sock = self.sock
        while view:
            try:
                await trio.lowlevel.wait_writable(sock)
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

    def peer_closed(self) -> bool | None:
        """Once the socket polled readable, with no read under way: True if the peer closed (EOF or reset), False
        if it sent bytes (left unread, for whoever reads next), None if there was nothing to read after all."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return None
        except OSError:
            return True

    def shutdown(self) -> None:
        """End both directions, leaving the descriptor open: whoever waits on it sees EOF (or EPIPE) and closes it."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def readable(self) -> bool:
        """Has the kernel bytes (or an EOF, or an error) for us to read? One poll(2) that does not wait. A closed
        connection is readable: it is as unusable as one with a stray byte."""
        fd = self.sock.fileno()
        if fd < 0:
            return True
        _PROBE.register(fd, _READABLE)
        try:
            return bool(_PROBE.poll(0))
        finally:
            _PROBE.unregister(fd)

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


class NameNotResolved(OSError):
    """A host name with no address: it does not exist, or the resolver failed. `gai`: getaddrinfo's error code
    (socket.EAI_NONAME: no such name, DNS's NXDOMAIN; EAI_NODATA, or 0 when it gave no address of a usable kind:
    an empty answer; EAI_AGAIN: the server failed or did not answer in time)."""

    def __init__(self, host: str, reason: str, gai: int = 0) -> None:
        super().__init__(errno.EHOSTUNREACH, f"{host}: {reason}")
        self.reason = reason
        self.gai = gai

    @property
    def kong_error(self) -> str | None:
        """Kong's DNS client's error for the failure when it is not a name error or an empty answer (those are
        None: Kong's 503 "name resolution failed"): a server failure (EAI_AGAIN: SERVFAIL, or no answer) is its
        "dns server error: 2 server failure"; any other, the resolver's own words."""
        gai = self.gai
        if gai in _NO_SUCH_NAME:
            return None
        if gai == socket.EAI_AGAIN:
            return "dns server error: 2 server failure"
        return self.reason


_NO_SUCH_NAME = frozenset({0, socket.EAI_NONAME, socket.EAI_NODATA})


_turns: dict[str, int] = {}  # per host name: how many connections it has had (its addresses take turns)
_MAX_TURNS = 4096  # names remembered; past it they start again (discovery may bring new names for ever)


async def addresses_of(host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
    """The (family, address) pairs of a host name, IPv4 ones when it has any (Kong asks for A records before AAAA),
    in the resolver's order; NameNotResolved when it has none."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise NameNotResolved(host, e.strerror or str(e), e.errno or 0) from None
    addresses = [(socket.AddressFamily(info[0]), str(info[4][0])) for info in infos]
    v4 = [a for a in addresses if a[0] == socket.AF_INET]
    if v4:
        addresses = v4
    if not addresses:
        raise NameNotResolved(host, "no address")
    return addresses


async def resolve(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """(family, address) for a connection to `host`: a name's addresses take turns, connection by connection, as
    Kong's DNS client rotates a name's records (see addresses_of)."""
    addresses = await addresses_of(host, port)
    turn = _turns.get(host, 0)
    if not turn and len(_turns) >= _MAX_TURNS:
        _turns.clear()
    _turns[host] = turn + 1
    return addresses[turn % len(addresses)]


async def open_connection(host: str, port: int) -> Conn:
    """Connect a non-blocking TCP socket (IPv4 or IPv6 literal or a name: see `resolve`) with TCP_NODELAY and
    keep-alive."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if not is_ip(host):
        family, host = await resolve(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
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
        except OSError:
            pass
    return False


def bind_listener(host: str, port: int, reuse_port: bool = True, backlog: int = 4096) -> socket.socket:
    """A non-blocking listening socket; SO_REUSEPORT lets every worker process bind its own on the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
