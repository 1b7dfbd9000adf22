"""Listening sockets held by the root for the whole run, one SO_REUSEPORT socket per worker slot and address.

Why the root holds them: on Linux, closing a SO_REUSEPORT listener resets the connections waiting in its accept
queue. If each worker bound its own, every reload (old workers closing) and every crash would drop connections.
Instead the root binds slot i and hands it to worker i; a replacement worker (after a crash) or the next
generation (after a reload) inherits the very same socket, so its queue is never closed while the gateway runs.
The kernel still shards connections across the N sockets, each worker accepting from its own.

One gateway per address: SO_REUSEPORT would let a second gateway of the same user bind the same port and take half
of the connections. So before binding its slots the root claims each address with an abstract Unix socket named
after it (released by the kernel when the process dies, whatever kills it), and checks with a plain bind, without
SO_REUSEPORT, that nothing else listens there. A second gateway learns the first one's pid from its claim.

Claims and slots are kept by the address a socket binds (a name resolved as the bind resolves it, `[0::1]` as `::1`),
not by how the config spells it: nginx's reload keeps a listening socket whose new address is the same sockaddr
(release-1.27.1 src/core/ngx_cycle.c:527-534, ngx_cmp_sockaddr), so `localhost:P` reloaded as `127.0.0.1:P` goes on
serving from the same socket. A reload that changes an entry's socket options (gateway.config.listen.ListenOptions)
changes them on its kept sockets, as nginx does (ngx_cycle.c:536-574, ngx_configure_listening_sockets): their
accept queues go on, so the reload stays hitless; ipv6only, which a bound socket keeps, is refused.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Sequence

from gateway.config.listen import PLAIN_LISTEN, ListenOptions, options_of
from gateway.config.loader import bound_ip
from gateway.http.net import bind_listener

CLAIM_PREFIX = "mcp-gateway/listen/"
WILDCARDS = ("0.0.0.0", "::")
Address = tuple[str, int]  # (host, port)


class AddressInUse(OSError):
    """Another gateway (`pid`) or another program listens on an address this gateway is configured for."""

    def __init__(self, host: str, port: int, pid: int | None, held: tuple[str, int] | None = None) -> None:
        where = f"{_display(host)}:{port}"
        if held is not None:  # this gateway's own listener (a reload adding an address its old one covers)
            why = (f"this gateway listens on {_display(held[0])}:{port}, and a wildcard address takes every address "
                   f"of its port and family (nginx's reload fails the same way); keep {_display(held[0])}:{port} in "
                   "gateway.listen, or stop and start the gateway to change it")
        elif pid:
            why = f"address in use by gateway pid {pid}; stop that gateway, or change gateway.listen"
        else:
            why = "address in use (by another program); stop it (`ss -ltnp` names it), or change gateway.listen"
        super().__init__(errno.EADDRINUSE, f"cannot listen on {where}: {why}")
        self.pid = pid


class OptionKept(OSError):
    """A reload changes ipv6only of an address this gateway listens on: a bound socket keeps its IPV6_V6ONLY (nginx
    keeps the old socket's, silently), and a new one could not be bound beside it."""

    def __init__(self, addr: Address, running: ListenOptions) -> None:
        was, now = ("on", "off") if running.ipv6only else ("off", "on")
        super().__init__(errno.EINVAL, f"{_display(addr[0])}:{addr[1]} ipv6only={now}: its listening socket is bound "
                                       f"with ipv6only={was}, which a reload cannot change; the gateway goes on "
                                       f"serving on its previous config: stop and start the gateway to change it, or "
                                       f"keep ipv6only={was}")


class Opened:
    """What one `ensure` added (sockets, claims): closed again by `undo` when what needed them did not start."""

    def __init__(self, sockets: list[tuple[Address, socket.socket]], claims: list[Address],
                 bound: dict[Address, Address], options: dict[Address, ListenOptions]) -> None:
        self.sockets = sockets
        self.claims = claims
        self.bound = bound  # the slots' bound addresses of the listen addresses before this `ensure`
        self.options = options  # the options before this `ensure` of the kept addresses whose options it changed


class ListenerSlots:
    """Per bound address, a growing list of bound sockets; worker i of n serves slots i, i+n, i+2n, ..."""

    def __init__(self) -> None:
        self._sockets: dict[Address, list[socket.socket]] = {}  # by bound address, as are the claims and options
        self._options: dict[Address, ListenOptions] = {}  # the options its sockets have
        self._claims: dict[Address, socket.socket] = {}
        self._bound: dict[Address, Address] = {}  # each listen address (as configured) -> the address it binds
        self._parked: list[socket.socket] = []  # released sockets whose descriptor numbers stay taken (release)

    def ensure(self, addresses: Sequence[Address], count: int) -> Opened:
        """Claim and bind what is missing so every address has at least `count` slots; all-or-nothing on failure. A
        name is resolved again (as nginx's reload parses `listen` anew); an address whose bound one is held already
        keeps its sockets, however it is spelled, its new options set on them in place (OptionKept for ipv6only)."""
        bound = {addr: (bound_ip(addr[0]), addr[1]) for addr in addresses}
        spelled: dict[Address, Address] = {}  # each bound address, as first listed (messages name it so)
        for addr, at in bound.items():
            spelled.setdefault(at, addr)
        for at, addr in spelled.items():
            if at in self._options and options_of(addr).ipv6only != self._options[at].ipv6only:
                raise OptionKept(addr, self._options[at])
        claimed: list[Address] = []
        added: list[tuple[Address, socket.socket]] = []
        try:
            for at, addr in spelled.items():
                if at not in self._claims:
                    held = _overlapping_own(at, options_of(addr), {other: self._options.get(other, PLAIN_LISTEN)
                                                                   for other in self._claims})
                    if held is not None:
                        raise AddressInUse(*addr, os.getpid(), held)
                    self._claims[at] = _claim(at, options_of(addr), addr)
                    claimed.append(at)
                for _ in range(count - len(self._sockets.get(at, ()))):
                    try:
                        sock = bind_listener(*at, options=options_of(addr))
                    except OSError as e:
                        raise OSError(e.errno, f"cannot listen on {_display(addr[0])}:{addr[1]}: {e.strerror}") \
                            from None
                    added.append((at, sock))
        except BaseException:
            for _, sock in added:
                sock.close()
            for at in claimed:
                self._claims.pop(at).close()
            raise
        changed: dict[Address, ListenOptions] = {}
        for at, addr in spelled.items():
            if at in self._options and self._options[at] != options_of(addr):
                changed[at] = self._set_options(at, options_of(addr))
            self._options.setdefault(at, options_of(addr))  # (a new address's, bound with them)
        for at, sock in added:
            self._sockets.setdefault(at, []).append(sock)
        before = dict(self._bound)
        self._bound.update(bound)
        return Opened(added, claimed, before, changed)

    def _set_options(self, at: Address, options: ListenOptions) -> ListenOptions:
        """Give the sockets of `at` `options` in place (nginx's reload on the sockets it keeps); the ones they had."""
        was = self._options[at]
        for sock in self._sockets.get(at, ()):
            options.apply(sock, was)
        self._options[at] = options
        return was

    def undo(self, opened: Opened) -> None:
        """Close what `ensure` opened for a generation that did not start (nginx closes the sockets a failed new
        cycle opened): a socket no worker serves would queue connections for no one; the kept sockets get their
        options back, for the generation they serve."""
        for at, sock in opened.sockets:
            socks = self._sockets.get(at, [])
            if sock in socks:
                socks.remove(sock)
                if not socks:
                    del self._sockets[at]
            sock.close()
        for at in opened.claims:
            claim = self._claims.pop(at, None)
            if claim is not None:
                claim.close()
            self._options.pop(at, None)
        for at, was in opened.options.items():
            self._set_options(at, was)
        self._bound = opened.bound

    def release(self, addresses: Sequence[Address]) -> None:
        """Stop listening on the addresses not in `addresses` (a reload dropped them; the old generation was told to
        drain, closing its copies): new connections there are refused at once, and the address may be bound by
        another program, as nginx closes the listening sockets a new cycle no longer has. The descriptor numbers
        stay taken (parked on /dev/null) until `free_parked`, as the old generation's workers were given them."""
        self._bound = {addr: self._bound_of(addr) for addr in addresses}
        kept = set(self._bound.values())
        for at in list(self._sockets):
            if at not in kept:
                socks = self._sockets.pop(at)
                _park(socks)
                self._parked += socks
        for at in list(self._claims):
            if at not in kept:
                self._claims.pop(at).close()
                self._options.pop(at, None)

    def free_parked(self) -> None:
        """Close the parked descriptors: no generation that was given them runs any more."""
        for sock in self._parked:
            sock.close()
        self._parked = []

    def fds_for(self, addresses: Sequence[Address], index: int, workers: int) -> list[int]:
        """File descriptors worker `index` of `workers` inherits."""
        return [s.fileno() for addr in addresses for i, s in enumerate(self._sockets[self._bound_of(addr)])
                if i % workers == index]

    def _bound_of(self, addr: Address) -> Address:
        """The address `addr`'s slots bind, as the last `ensure` resolved it (the same sockets for every call)."""
        return self._bound.get(addr) or (bound_ip(addr[0]), addr[1])

    def stop_listening(self) -> None:
        """A graceful stop: close this process's copy of every listening socket now, so that once the draining
        workers have closed theirs new connections are refused instead of queued for no one (nginx's
        ngx_close_listening_sockets on SIGQUIT). Each descriptor number stays taken (by /dev/null) until close(),
        so a worker started meanwhile cannot inherit another file under it; the claims stay too (close())."""
        for socks in self._sockets.values():
            _park(socks)

    def close(self) -> None:
        for socks in self._sockets.values():
            for sock in socks:
                sock.close()
        self._sockets = {}
        for claim in self._claims.values():
            claim.close()
        self._claims = {}
        self._options = {}
        self._bound = {}
        self.free_parked()


def _park(socks: list[socket.socket]) -> None:
    """Close the sockets under their descriptor numbers, which stay taken by /dev/null until the socket objects'
    close(): a worker started meanwhile with those numbers cannot inherit another file under them."""
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for sock in socks:
            if sock.fileno() >= 0:
                os.dup2(null, sock.fileno(), inheritable=False)
    finally:
        os.close(null)


def _claim(at: Address, options: ListenOptions, addr: Address) -> socket.socket:
    """Hold the claim of the bound address `at` (of the listen address `addr`, which messages name), after checking
    nothing else listens there (on IPv4 too, for an IPv6 one with ipv6only=off); AddressInUse otherwise."""
    host, port = at
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(_claim_name(host, port))
        claim.listen(1)  # never accepted: a connection only serves to read our pid (SO_PEERCRED)
    except OSError as e:
        claim.close()
        if e.errno == errno.EADDRINUSE:
            raise AddressInUse(*addr, claimant(host, port)) from None
        raise
    try:
        probe = bind_listener(host, port, reuse_port=False, options=options)  # fails if anyone else listens there
    except OSError as e:
        claim.close()
        if e.errno == errno.EADDRINUSE:
            raise AddressInUse(*addr, _overlapping_claimant(host, port, options.ipv6only)) from None
        raise OSError(e.errno, f"cannot listen on {_display(addr[0])}:{port}: {e.strerror}") from None
    probe.close()
    return claim


def claimant(host: str, port: int) -> int | None:
    """The pid of the gateway holding the claim of this bound address, if one does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(_claim_name(host, port))
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
    pid, _, _ = struct.unpack("3i", creds)
    return pid or None


def _overlapping_claimant(host: str, port: int, ipv6only: bool = True) -> int | None:
    """A gateway on the wildcard address of the family holds every specific address of the port (and the other way
    round, only the wildcard's claimant can be named); `::` holds IPv4 ones only with ipv6only=off, and an IPv6 one
    of ours with ipv6only=off may have met any IPv4 one's."""
    v6 = ":" in host
    others = [host, WILDCARDS[v6]] + (["::"] if not v6 else [] if ipv6only else ["0.0.0.0"])
    for other in others:
        pid = claimant(other, port)
        if pid:
            return pid
    return None


def _overlapping_own(at: Address, options: ListenOptions, held: dict[Address, ListenOptions]) -> Address | None:
    """The address this gateway already holds that `at` (with `options`) cannot be bound beside: the other one of a
    wildcard and a specific address of one port and family (the kernel refuses the second bind; its claim is another
    name), or an IPv4 one and `::` with ipv6only=off, which takes IPv4 clients too."""
    host, port = at
    for (other, other_port), other_options in held.items():
        if other_port == port and other != host and (_covers(host, options, other) or
                                                     _covers(other, other_options, host)):
            return other, other_port
    return None


def _covers(wide: str, options: ListenOptions, host: str) -> bool:
    """Does a listener on `wide` (with `options`) take connections for `host`: the wildcard of its family does, and
    `::` with ipv6only=off takes IPv4 ones too."""
    v6 = ":" in host
    return wide == WILDCARDS[v6] or (wide == "::" and not options.ipv6only and not v6)


def _claim_name(host: str, port: int) -> str:
    return f"\0{CLAIM_PREFIX}{host}:{port}"


def _display(host: str) -> str:
    return f"[{host}]" if ":" in host else host
