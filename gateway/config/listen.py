"""A gateway.listen or status_listen entry's words, as Kong's listeners.lua passes them and nginx's `listen` reads
them: the address, `ssl` and `proxy_protocol` (the listener's), and nginx's socket options (`backlog=N`, `deferred`,
`ipv6only=`, `so_keepalive=`; `reuseport` and `bind` are what the gateway does anyway) as a ListenOptions, built at
config load and set on the listening sockets (gateway.http.net.bind_listener, gateway.node.slots).
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# kong/conf_loader/listeners.lua:17-23, the http subsystem's flags in its order (which is nginx's listen line's)
_KONG_FLAGS = ("ssl", "http2", "proxy_protocol", "deferred", "bind", "reuseport", "backlog=[0-9]+", "ipv6only=on",
               "ipv6only=off", "so_keepalive=on", "so_keepalive=off", "so_keepalive=[A-Za-z0-9]*:[A-Za-z0-9]*:[0-9]*")
_FLAG_WORD = re.compile("|".join(_KONG_FLAGS))
# listeners.lua:52: `%s(flag)%s`, Lua's %s being C's isspace
_PADDED_FLAGS = tuple(re.compile(f"[ \t\n\v\f\r]({flag})[ \t\n\v\f\r]") for flag in _KONG_FLAGS)
_HOST_PORT = re.compile(r".+:[0-9]+")  # listeners.lua:115's `(.+):([%d]+)$`


def listen_flags(entry: str) -> tuple[str, tuple[str, ...]]:
    """(address, flags) of a listen entry ("0.0.0.0:8443 ssl", "backlog=77 127.0.0.1:8000"), as Kong's
    listeners.lua:44-78 parse_option_flags reads it: each flag taken out wherever it stands, the first value of
    backlog=N and so_keepalive=times, the flags in Kong's order (nginx's listen line), then the words no flag is,
    which callers refuse by name. A flag written twice in a row is taken once and the other stays in the address,
    as Kong's gsub leaves it (the pattern's spaces overlap), which makes the address one no socket can bind."""
    value, flags = f" {entry} ", []
    for pattern in _PADDED_FLAGS:
        found = pattern.search(value)
        value, count = pattern.subn(" ", value)
        if count and found is not None:
            flags.append(found.group(1))
    words = value.split()
    unknown = [i for i, word in enumerate(words) if not _FLAG_WORD.fullmatch(word)]
    at = next((i for i in unknown if _HOST_PORT.fullmatch(words[i])), unknown[0] if unknown else -1)
    address = " ".join(word for i, word in enumerate(words) if i == at or i not in unknown)
    return address, (*flags, *(words[i] for i in unknown if i != at))


def repeated_flags(address: str) -> list[str]:
    """The flags listen_flags left in an entry's address: each written twice (or more) in a row in the entry."""
    return [word for word in address.split() if _FLAG_WORD.fullmatch(word)]


NGX_LISTEN_BACKLOG = 511  # nginx's listen without backlog=N on Linux (src/os/unix/ngx_linux_config.h)
DATA_BACKLOG = 4096  # the gateway's listen() backlog of a gateway.listen entry without backlog=N
_NGX_MAX_INT_T = 2**63 - 1  # ngx_atoi's limit (NGX_MAX_INT_T_VALUE, 64-bit)
_INT_MAX = 2**31 - 1
_DIGITS = re.compile(r"[0-9]+")
# kong/conf_loader/listeners.lua's http flag `so_keepalive=%w*:%w*:%d*` (a value of another form is Kong's usage error)
_KEEPALIVE_FORM = re.compile(r"([A-Za-z0-9]*):([A-Za-z0-9]*):([0-9]*)")
# TCP_KEEPIDLE/KEEPINTVL/KEEPCNT of a socket that never set them: net.ipv4's sysctl and Linux's default of it
_KERNEL_KEEPALIVE = {"TCP_KEEPIDLE": ("tcp_keepalive_time", 7200), "TCP_KEEPINTVL": ("tcp_keepalive_intvl", 75),
                     "TCP_KEEPCNT": ("tcp_keepalive_probes", 9)}
# ngx_parse_time's units in seconds (src/core/ngx_parse.c), each with its place: a unit after a smaller one is invalid
_TIME_UNITS = {"y": (1, 365 * 86400), "M": (2, 30 * 86400), "w": (3, 7 * 86400), "d": (4, 86400), "h": (5, 3600),
               "m": (6, 60), "s": (7, 1)}

log = logging.getLogger("gateway.listen")


@dataclass(frozen=True, slots=True)
class ListenOptions:
    """nginx's socket options of one gateway.listen entry (ngx_listening_t's backlog, deferred_accept, ipv6only,
    keepalive/keepidle/keepintvl/keepcnt), built at config load; a reload changing them on a kept socket changes
    them in place (`apply` with `was`), but for ipv6only, which a bound socket keeps (gateway.node.slots)."""

    backlog: int = DATA_BACKLOG
    deferred: bool = False  # TCP_DEFER_ACCEPT
    ipv6only: bool = True  # IPV6_V6ONLY of an IPv6 address (an IPv4 one's is always the default)
    keepalive: int = 0  # SO_KEEPALIVE: 0 left alone, 1 on, 2 off (nginx's so_keepalive values)
    keepidle: int = 0  # TCP_KEEPIDLE, TCP_KEEPINTVL (seconds) and TCP_KEEPCNT; 0: the kernel's
    keepintvl: int = 0
    keepcnt: int = 0

    def apply(self, sock: socket.socket, was: ListenOptions | None = None) -> None:
        """Set the options nginx sets on a bound listening socket (ngx_configure_listening_sockets,
        src/core/ngx_connection.c:753-952): a failure is logged and ignored, as nginx's "setsockopt(...) failed,
        ignored". Linux copies SO_KEEPALIVE and the TCP_KEEP* values to each accepted connection. `was`: the options
        of a socket a reload keeps (else a new one's, listening with this backlog): what differs is set in place, as
        nginx's reload does (ngx_cycle.c:536-574: listen() again, TCP_DEFER_ACCEPT set or 0), and what `was` set and
        these do not goes back to a new socket's value (nginx leaves an old so_keepalive on)."""
        before = PLAIN_LISTEN if was is None else was
        if was is not None and self.backlog != was.backlog:
            _listen(sock, self.backlog)
        if self.keepalive != before.keepalive:
            _set(sock, socket.SOL_SOCKET, socket.SO_KEEPALIVE, "SO_KEEPALIVE", int(self.keepalive == 1))
        for option, name, value, old in ((socket.TCP_KEEPIDLE, "TCP_KEEPIDLE", self.keepidle, before.keepidle),
                                         (socket.TCP_KEEPINTVL, "TCP_KEEPINTVL", self.keepintvl, before.keepintvl),
                                         (socket.TCP_KEEPCNT, "TCP_KEEPCNT", self.keepcnt, before.keepcnt)):
            if value != old:  # (0: the kernel's, which setsockopt cannot ask for: its sysctl's value)
                _set(sock, socket.IPPROTO_TCP, option, name, value or _kernel_keepalive(name))
        if self.deferred != before.deferred:  # nginx's 1 s (ngx_connection.c:924-931)
            _set(sock, socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, "TCP_DEFER_ACCEPT", int(self.deferred))


def _kernel_keepalive(name: str) -> int:
    """The value a socket that never set TCP_KEEPIDLE/KEEPINTVL/KEEPCNT uses: net.ipv4's sysctl (Linux's default if
    it cannot be read)."""
    sysctl, default = _KERNEL_KEEPALIVE[name]
    try:
        return int(Path(f"/proc/sys/net/ipv4/{sysctl}").read_text())
    except (OSError, ValueError):
        return default


def _listen(sock: socket.socket, backlog: int) -> None:
    """listen() again with a new backlog, which Linux applies to a listening socket, its queue kept (nginx's reload:
    ngx_connection.c:856-865, "listen() to %V, backlog %d failed, ignored")."""
    try:
        sock.listen(backlog)
    except OSError as e:
        log.warning("listen() to %s, backlog %d failed (%s), ignored, as nginx does: the listener keeps its backlog",
                    _where(sock), backlog, e.strerror)


def _set(sock: socket.socket, level: int, option: int, name: str, value: int) -> None:
    try:
        sock.setsockopt(level, option, value)
    except OSError as e:
        log.warning("setsockopt(%s, %d) for %s failed (%s), ignored, as nginx does: the listener keeps the kernel's "
                    "value; change the listen entry's option to one Linux takes", name, value, _where(sock), e.strerror)


def _where(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


PLAIN_LISTEN = ListenOptions()


class ListenAddress(tuple[str, int]):
    """(host, port) of a gateway.listen entry, as a pair (it unpacks and compares as one), with its `options`."""

    options: ListenOptions

    def __new__(cls, host: str, port: int, options: ListenOptions = PLAIN_LISTEN) -> ListenAddress:
        self = super().__new__(cls, (host, port))
        self.options = options
        return self


def options_of(addr: tuple[str, int]) -> ListenOptions:
    """The options of a listen address (a bare pair: the defaults)."""
    return getattr(addr, "options", PLAIN_LISTEN)


def listen_options(flags: Iterable[str], v6: bool) -> tuple[ListenOptions, list[str]]:
    """(the options, the flags refused) of a gateway.listen entry's flags in listen_flags' order (nginx's listen
    line: of two values of one option, the last wins), as nginx's listen reads them
    (src/http/ngx_http_core_module.c:3958-4381): `ssl` and `proxy_protocol` are the listener's, `reuseport` and
    `bind` what it does anyway, `ipv6only=` counts on an IPv6 address only (nginx sets IPV6_V6ONLY on AF_INET6
    sockets only); `http2`, unknown words and values nginx or Kong refuse are refused."""
    backlog, _, rest = status_options(flags, DATA_BACKLOG)  # reuseport: every data listener is SO_REUSEPORT
    deferred, ipv6only, keepalive, refused = False, True, (0, 0, 0, 0), []
    for flag in rest:
        if flag == "deferred":
            deferred = True
        elif flag in ("ipv6only=on", "ipv6only=off"):
            ipv6only = flag == "ipv6only=on" or not v6
        elif flag.startswith("so_keepalive=") and (value := _so_keepalive(flag[13:])) is not None:
            keepalive = value
        elif flag not in ("ssl", "bind"):
            refused.append(flag)
    return ListenOptions(backlog, deferred, ipv6only, *keepalive), refused


def _so_keepalive(text: str) -> tuple[int, int, int, int] | None:
    """(SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) of `so_keepalive=text`, or None where nginx says
    "invalid so_keepalive value" or Kong's pattern refuses it: on, off, or [keepidle]:[keepintvl]:[keepcnt] with
    ngx_parse_time's seconds and ngx_atoi's count, not all 0 (ngx_http_core_module.c:4211-4299); each stored in a
    C int (ngx_listening_t), as nginx passes it to setsockopt."""
    if text in ("on", "off"):
        return (1 if text == "on" else 2), 0, 0, 0
    form = _KEEPALIVE_FORM.fullmatch(text)
    if form is None:
        return None
    idle, intvl, cnt = form.groups()
    keepidle = _ngx_seconds(idle) if idle else 0
    keepintvl = _ngx_seconds(intvl) if intvl else 0
    keepcnt = _ngx_atoi(cnt) if cnt else 0
    if keepidle is None or keepintvl is None or keepcnt is None:
        return None
    times = _c_int(keepidle), _c_int(keepintvl), _c_int(keepcnt)  # nginx tests the ints (NGX_ERROR, all 0)
    if -1 in times or not any(times):
        return None
    return 1, *times


def _ngx_atoi(text: str) -> int | None:
    """ngx_atoi: ASCII digits, at most NGX_MAX_INT_T_VALUE (src/core/ngx_string.c), else None (NGX_ERROR)."""
    return int(text) if _DIGITS.fullmatch(text) and int(text) <= _NGX_MAX_INT_T else None


def _ngx_seconds(text: str) -> int | None:
    """ngx_parse_time(text, is_sec=1) (src/core/ngx_parse.c:112-283): digits with units y M w d h m s, largest
    first, each once (ms is not seconds), a trailing number in seconds; None where nginx returns NGX_ERROR."""
    total, value, step, valid = 0, 0, 0, False
    for i, char in enumerate(text):
        if char.isascii() and char.isdigit():
            value, valid = value * 10 + int(char), True
            if value > _NGX_MAX_INT_T:
                return None
            continue
        unit = _TIME_UNITS.get(char)
        if unit is None or step >= unit[0] or (char == "m" and text[i + 1:i + 2] == "s"):
            return None
        step, scale = unit
        if value > _NGX_MAX_INT_T // scale or total > _NGX_MAX_INT_T - value * scale:
            return None
        total, value = total + value * scale, 0
    if not valid or total > _NGX_MAX_INT_T - value:
        return None
    return total + value


def _c_int(value: int) -> int:
    """`value` stored in a C int, as nginx's ngx_listening_t fields hold it (the low 32 bits, signed)."""
    low = value & 0xFFFFFFFF
    return low - 2**32 if low > _INT_MAX else low


def status_options(flags: Iterable[str], backlog: int = NGX_LISTEN_BACKLOG) -> tuple[int, bool, list[str]]:
    """(backlog, reuseport, the options refused) of status_listen's nginx listen options: `reuseport` and
    `backlog=N` are taken (Kong's default line has both), and `proxy_protocol` (a PROXY protocol header read first:
    gateway.status.server), any other is refused, as is a backlog nginx refuses. `backlog`: the one without
    backlog=N (nginx's)."""
    reuseport, refused = False, []
    for flag in flags:  # (listen_flags gives one backlog=N: Kong's first)
        if flag == "reuseport":
            reuseport = True
        elif flag.startswith("backlog=") and (value := _listen_backlog(flag[8:])) is not None:
            backlog = value
        elif flag != "proxy_protocol":
            refused.append(flag)
    return backlog, reuseport, refused


def _listen_backlog(text: str) -> int | None:
    """The backlog nginx's `backlog=N` gives listen(), as a value Python's listen() takes, or None where nginx says
    "invalid backlog": ngx_atoi (ASCII digits, at most NGX_MAX_INT_T_VALUE) stored in a C int (the low 32 bits), 0
    and -1 refused (src/http/ngx_http_core_module.c:4053-4060). A negative int is read unsigned by Linux's listen()
    and capped at net.core.somaxconn: INT_MAX is capped the same way (Python's listen() makes a negative one 0)."""
    value = _ngx_atoi(text)
    if value is None or (as_int := _c_int(value)) in (0, -1):
        return None
    return as_int if as_int > 0 else _INT_MAX
