"""The gateway's DNS client, with the semantics of Kong's default one (kong/resty/dns/client.lua, new_dns_client =
off) and lua-resty-dns's wire behaviour.

`Resolver.resolve(name, qtype=None)` answers: an IP literal itself; a name of the hosts file from it; otherwise,
for each record type of `order` ("LAST" is the type that last answered for the name) and each search-list expansion
of the name (tried before the bare name when it has fewer than `ndots` dots), the cache or a query. The first
non-empty answer wins; a CNAME is followed (its target resolved through the whole order again); a server's rcode
or an empty answer falls through to the next try; a failure to get any reply (timeout, refused) ends the search at
once, so that a name whose SRV query timed out is never answered with its A records.

Cache (one LRU of `cache_size` keys: records by "type:name", search results by "short:type:name", the last
successful type by "name"): records live for their smallest TTL (or `valid_ttl`), name errors and empty answers for
`not_found_ttl`, other rcodes for `error_ttl`. After that an entry is stale: it is still answered, for `stale_ttl`
more, while a refresh query runs in the background; only a name error or new records replace a stale record (a
server failure or an empty answer leaves it). A record with TTL 0 is thus stale from the next second on and
refreshed on each use. Concurrent queries for the same name and type are merged into one unless `no_sync`.

Background refreshes run in the nursery given to the Resolver (`open_resolver` makes one for the resolver's life):
they end with it. Without a nursery a stale entry is refreshed in the foreground.

Wire: UDP from one socket per nameserver, connected to it (the kernel drops datagrams from any other address) and
kept for the whole query, one random query id for all its tries, replies with another id or question ignored, so a
reply that comes after its try's timeout is taken by the next try on that socket (as lua-resty-dns's resolver, whose
sockets live as long as the query); TCP when the reply is truncated, each connect, send and read of it bounded by
`timeout` (as a cosocket's timers, re-armed whenever bytes arrive); `attempts` tries in all, each of `timeout`
seconds, taking the nameservers in turn from the first (from a random one with resolv.conf's `rotate`).
"""

from __future__ import annotations

import math
import os
import random
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import trio

from gateway.dns.message import (
    RCODE_TEXT,
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    TYPE_SRV,
    DnsFormatError,
    DnsMismatchError,
    Record,
    Reply,
    build_query,
    parse_response,
)
from gateway.dns.sources import (
    HostsEntry,
    Nameserver,
    apply_env,
    ip_family,
    parse_hosts,
    parse_nameserver,
    parse_resolv_conf,
    resolv_conf_nameservers,
)
from gateway.lua_socket import socket_error

__all__ = ["TYPE_A", "TYPE_AAAA", "TYPE_CNAME", "TYPE_LAST", "TYPE_SRV", "DnsError", "Record", "Resolver",
           "open_resolver"]

_T = TypeVar("_T")

TYPE_LAST = -1
ORDER_TYPES = {"LAST": TYPE_LAST, "SRV": TYPE_SRV, "A": TYPE_A, "AAAA": TYPE_AAAA, "CNAME": TYPE_CNAME}
DEFAULT_ORDER = ("LAST", "SRV", "A", "CNAME")  # kong.conf's dns_order
DEFAULT_TIMEOUT_S = 2.0  # lua-resty-dns's 2000 ms
DEFAULT_ATTEMPTS = 5
HOSTS_TTL = 10 * 365 * 24 * 60 * 60  # hosts file entries and IP literals: 10 years
MAX_CHAIN = 16  # CNAME and SRV records followed from one name (a reply can hold a chain of thousands)

CLIENT_ERRORS = {100: "cache only lookup failed", 101: "empty record received", 102: "invalid name, bad IPv4",
                 103: "invalid name, bad IPv6"}
EMPTY = 101


class DnsError(Exception):
    """A name that could not be resolved: `message` is Kong's text ("dns server error: 3 name error", "dns client
    error: 101 empty record received", "failed to receive reply from UDP server 10.0.0.1:53: timeout", ...), `code`
    the rcode or client error code behind it (None when no reply came)."""

    def __init__(self, name: str, message: str, code: int | None = None) -> None:
        # a name from a reply (a CNAME or SRV target) may hold any byte: shown escaped, the text stays one line
        super().__init__(f"{name if name.isprintable() else ascii(name)[1:-1]}: {message}")
        self.name = name
        self.message = message
        self.code = code

    @property
    def name_error(self) -> bool:
        """The name does not exist (NXDOMAIN), as opposed to a failure to find out."""
        return self.code == 3

    @property
    def not_found(self) -> bool:
        """The name does not exist or has no record of the types asked (Kong treats both alike)."""
        return self.code in (3, EMPTY)


class _QueryFailed(Exception):
    """No usable reply from any nameserver (Kong's individualQuery returning nil + err): not cached."""


class _PeerClosed(Exception):
    """The nameserver closed the TCP connection before the whole reply came: the cosocket's "closed"."""


@dataclass(eq=False)
class _Entry:
    """A cached answer: records, or an error (rcode or client code) with its text; the round-robin state of toip."""

    records: list[Record]
    errcode: int | None = None
    errstr: str = ""
    ttl: float = 0.0
    expire: float | None = None
    expired: bool = False
    rr_cursor: int = -1
    prio_list: list[int] | None = None
    weight_list: list[int] = field(default_factory=list)
    rrw_left: list[int] | None = None  # per record of prio_list, the turns left in this round


@dataclass(eq=False)
class _Query:
    """A query in flight, that other lookups of the same name and type wait for."""

    deadline: float
    done: trio.Event = field(default_factory=trio.Event)
    entry: _Entry | None = None
    error: str | None = None


class _Lru:
    """Kong's resty.lrucache: at most `size` keys, the least recently used dropped first, each with its own TTL."""

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self.size = size
        self.clock = clock
        self.items: OrderedDict[str, tuple[Any, float]] = OrderedDict()

    def get(self, key: str) -> Any:
        item = self.items.get(key)
        if item is None:
            return None
        if item[1] < self.clock():
            del self.items[key]
            return None
        self.items.move_to_end(key)
        return item[0]

    def set(self, key: str, value: Any, ttl: float = math.inf) -> None:
        self.items[key] = (value, self.clock() + ttl)
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def delete(self, key: str) -> None:
        self.items.pop(key, None)


def _is_ip_name(name: str) -> str | None:
    """Kong's hostnameType: "ipv6" for more than one colon, "ipv4" for digits and dots, else None (a name)."""
    if name.count(":") > 1:
        return "ipv6"
    if name and all(c.isdigit() or c == "." for c in name):
        return "ipv4"
    return None


class Resolver:
    """Kong's DNS client (see the module docstring); settings are kong.conf's dns_* (defaults Kong's), `timeout`
    in seconds, `hosts` as parsed from a hosts file, `clock` the time source of the cache (seconds), `rng` the
    randomness of SRV weighted round-robin and `rotate`."""

    def __init__(self, *, nameservers: Sequence[Nameserver] = (), hosts: Mapping[str, HostsEntry] | None = None,
                 order: Sequence[str] = DEFAULT_ORDER, valid_ttl: float | None = None, stale_ttl: float = 3600.0,
                 not_found_ttl: float = 30.0, error_ttl: float = 1.0, no_sync: bool = False,
                 cache_size: int = 10000, timeout: float = DEFAULT_TIMEOUT_S, attempts: int = DEFAULT_ATTEMPTS,
                 search: Sequence[str] = (), ndots: int = 1, rotate: bool = False,
                 nursery: trio.Nursery | None = None,
                 clock: Callable[[], float] = trio.current_time, rng: random.Random | None = None) -> None:
        if not order:
            raise ValueError("Invalid order list; cannot be empty")
        self.order: list[int] = []
        for kind in order:
            if kind.upper() not in ORDER_TYPES:
                raise ValueError(f"Invalid dns record type in order array; {kind}")
            self.order.append(ORDER_TYPES[kind.upper()])
        self.nameservers = list(nameservers)
        self.valid_ttl = valid_ttl
        self.stale_ttl = stale_ttl
        self.not_found_ttl = not_found_ttl
        self.error_ttl = error_ttl
        self.no_sync = no_sync
        self.timeout = timeout if timeout > 0 else DEFAULT_TIMEOUT_S
        self.attempts = max(1, attempts)
        self.search = [domain.lower() for domain in search if domain != "."]
        self.ndots = ndots
        self.rotate = rotate
        self.nursery = nursery
        self.clock = clock
        self.rng = rng or random.Random()
        self._ids = random.SystemRandom()
        self._cache = _Lru(cache_size, clock)
        self._inflight: dict[str, _Query] = {}
        self._max_wait = self.timeout * self.attempts + 1
        self._hosts: dict[str, _Entry] = {}
        self._hosts_success: dict[str, int] = {}
        hosts = dict(hosts or {})
        hosts.setdefault("localhost", HostsEntry(ipv4="127.0.0.1", ipv6="::1"))  # RFC 6761 6.3
        prefer = next((t for t in self.order if t in (TYPE_A, TYPE_AAAA)), None)
        for name, entry in hosts.items():
            name = name.lower()
            for address, qtype in ((entry.ipv4, TYPE_A), (entry.ipv6, TYPE_AAAA)):
                if address is None:
                    continue
                self._hosts[f"{qtype}:{name}"] = _Entry([Record(name, qtype, HOSTS_TTL, address=address)],
                                                        ttl=HOSTS_TTL, expire=math.inf)
                if (qtype == TYPE_A or prefer == TYPE_AAAA or name not in self._hosts_success) \
                        and qtype in self.order:
                    self._hosts_success[name] = qtype

    @classmethod
    def from_system(cls, *, dns_resolver: Sequence[str] = (), hostsfile: str = "/etc/hosts",
                    resolv_conf: str = "/etc/resolv.conf", env: Mapping[str, str] | None = None,
                    **settings: Any) -> Resolver:
        """A Resolver set up as Kong's kong/tools/dns.lua does: nameservers from dns_resolver or else resolv.conf,
        whose timeout, attempts, ndots and search (or domain) also apply (LOCALDOMAIN and RES_OPTIONS from `env`,
        by default this process's environment, override it); a missing hosts file or resolv.conf counts as empty
        (and without resolv.conf, as in Kong, the environment is not read). `settings` are the other arguments."""
        try:
            with open(hostsfile, encoding="utf-8", errors="replace") as f:
                hosts = parse_hosts(f.read())
        except FileNotFoundError:
            hosts = {}
        try:
            with open(resolv_conf, encoding="utf-8", errors="replace") as f:
                conf = apply_env(parse_resolv_conf(f.read()), os.environ if env is None else env)
        except FileNotFoundError:
            conf = parse_resolv_conf("")  # the environment is not read either (client.lua:588-595)
        nameservers = [parse_nameserver(s) for s in dns_resolver] or resolv_conf_nameservers(conf)
        options = conf.options
        if "timeout" in options:
            settings.setdefault("timeout", float(options["timeout"]))
        if "attempts" in options:
            settings.setdefault("attempts", int(options["attempts"]))
        settings.setdefault("ndots", int(options.get("ndots", 1)))
        settings.setdefault("rotate", bool(options.get("rotate", False)))
        settings.setdefault("search", conf.search if conf.search is not None else [d for d in [conf.domain] if d])
        return cls(nameservers=nameservers, hosts=hosts, **settings)

    # -- public --------------------------------------------------------------------------------------------------

    async def resolve(self, name: str, qtype: int | None = None) -> list[Record]:
        """The records of `name` (of type `qtype`, or by the order of types; CNAMEs followed unless CNAME is
        asked); DnsError when there are none."""
        entry = await self._resolve(name, qtype, set())
        return list(entry.records)

    async def toip(self, name: str, port: int | None = None) -> tuple[str, int | None]:
        """(address, port) to connect to for `name`: an SRV record picked by weighted round-robin among those of
        the lowest priority (weight 0 counts as 1), its port unless 0, its target resolved in turn; A/AAAA
        records taken in turn."""
        return await self._toip(name, port, set())

    def expiry(self, name: str, qtype: int | None = None) -> float | None:
        """When (by `clock`) the cached records `resolve(name, qtype)` answers expire, in the past while they are
        answered stale; None when none are cached. Kong's balancer asks a name again just after (lastQuery.expire)."""
        for _ in range(MAX_CHAIN + 1):
            item = self._cache.items.get(f"short:{qtype if qtype is not None else 'none'}:{name.lower()}")
            entry = item[0] if item is not None else None
            if not isinstance(entry, _Entry) or not entry.records:
                return None
            if entry.records[0].type != TYPE_CNAME or qtype == TYPE_CNAME:
                return entry.expire
            name, qtype = entry.records[0].cname, None
        return None

    # -- cache ---------------------------------------------------------------------------------------------------

    def _lookup_cache(self, key: str) -> _Entry | None:
        entry = self._hosts.get(key)
        if entry is None:
            entry = self._cache.get(key)
            if not isinstance(entry, _Entry):
                return None
        if entry.expire is not None and entry.expire < self.clock():
            entry.expired = True
        return entry

    def _insert(self, entry: _Entry, key: str) -> None:
        """Kong's cacheinsert: a new entry gets its TTL (and is kept `stale_ttl` beyond it), an entry already cached
        elsewhere keeps its expiry; an error or empty answer does not replace records still held."""
        now = self.clock()
        if entry.expire is None:
            if entry.records:
                if self.valid_ttl is not None:
                    entry.records = [replace(r, ttl=self.valid_ttl) for r in entry.records]
                    ttl = self.valid_ttl
                else:
                    ttl = min(r.ttl for r in entry.records)
            else:
                if entry.errcode != 3:  # a server failure or an empty answer: keep records we still have
                    cached = self._lookup_cache(key)
                    if cached is not None and cached.records:
                        return
                ttl = self.error_ttl if entry.errcode not in (None, 3) else self.not_found_ttl
            entry.ttl = ttl
            entry.expire = now + ttl
            entry.expired = False
            lru_ttl = ttl + self.stale_ttl
        else:
            lru_ttl = entry.expire - now + self.stale_ttl
        if lru_ttl <= 0:
            self._cache.delete(key)
            return
        self._cache.set(key, entry, lru_ttl)

    def _success(self, name: str) -> int | None:
        qtype = self._cache.get(name)
        return qtype if isinstance(qtype, int) else self._hosts_success.get(name)

    def _set_success(self, name: str, qtype: int) -> None:
        if qtype in self.order:
            self._cache.set(name, qtype)

    # -- queries -------------------------------------------------------------------------------------------------

    def _store_answer(self, name: str, qtype: int, reply: Reply) -> _Entry:
        """Kong's parseAnswer: records of other names or types (CNAMEs on the way, the additional section) are
        cached under their own name and type; the entry for `name`/`qtype` is returned and cached."""
        check = name[:-1] if name.endswith(".") else name
        wanted: list[Record] = []
        others: dict[str, list[Record]] = {}
        for record in reply.answers + reply.additional:
            if record.type == qtype and record.name == check:
                wanted.append(record)
            elif _is_ip_name(record.name) is None:  # an IP literal answers for itself, never from a reply
                others.setdefault(f"{record.type}:{record.name}", []).append(record)
        for key, records in others.items():
            self._insert(_Entry(records), key)
            if self._success(records[0].name) is None:
                self._set_success(records[0].name, records[0].type)
        entry = _Entry(wanted)
        if reply.rcode:
            entry.errcode = reply.rcode
            entry.errstr = RCODE_TEXT.get(reply.rcode, "unknown")
        self._insert(entry, f"{qtype}:{name}")
        return entry

    async def _individual_query(self, name: str, qtype: int) -> _Entry:
        reply = await self._query(name, qtype)
        return self._store_answer(name, qtype, reply)

    async def _sync_query(self, name: str, qtype: int) -> _Entry:
        """One query for name/qtype at a time: a lookup finding one in flight waits for its result."""
        key = f"{name}:{qtype}"
        while True:
            query = self._inflight.get(key)
            if query is None or query.deadline < self.clock():
                query = _Query(deadline=self.clock() + self._max_wait)
                self._inflight[key] = query
                await self._run_query(key, name, qtype, query)
            else:
                with trio.move_on_after(self._max_wait):
                    await query.done.wait()
                if not query.done.is_set():
                    if self._inflight.get(key) is query:
                        del self._inflight[key]
                    raise _QueryFailed("timeout")
            if query.entry is not None:
                return query.entry
            if query.error is not None:
                raise _QueryFailed(query.error)
            # the query was cancelled before it ended (its caller went away): ask again

    async def _run_query(self, key: str, name: str, qtype: int, query: _Query) -> None:
        try:
            query.entry = await self._individual_query(name, qtype)
        except _QueryFailed as e:
            query.error = str(e)
        finally:
            if self._inflight.get(key) is query:
                del self._inflight[key]
            query.done.set()

    def _refresh(self, name: str, qtype: int) -> None:
        """Start a background query for a stale entry, unless one for it is already in flight."""
        assert self.nursery is not None
        key = f"{name}:{qtype}"
        query = self._inflight.get(key)
        if query is not None and query.deadline >= self.clock():
            return
        query = _Query(deadline=self.clock() + self._max_wait)
        self._inflight[key] = query
        self.nursery.start_soon(self._run_query, key, name, qtype, query)

    async def _lookup(self, name: str, qtype: int) -> _Entry:
        """Kong's lookup: the cached entry (a stale one is answered while it is refreshed), or a query."""
        entry = self._lookup_cache(f"{qtype}:{name}")
        if entry is not None and not (entry.expired and self.nursery is None):
            if entry.expired:
                self._refresh(name, qtype)
            return entry
        if self.no_sync:
            return await self._individual_query(name, qtype)
        return await self._sync_query(name, qtype)

    # -- resolving -----------------------------------------------------------------------------------------------

    def _search_names(self, name: str, qtype: int | None) -> Iterator[tuple[str, int]]:
        """Kong's search_iter: for each type, the search-list expansions of `name` and the bare name (the bare
        name first when it has `ndots` dots or more, or is in the hosts file); an FQDN is not expanded."""
        search = [] if name.endswith(".") else self.search
        dots = name.count(".")
        done: set[int] = set()
        for kind in ([qtype] if qtype is not None else self.order):
            current = self._success(name) if kind == TYPE_LAST else kind
            if current is None or current in done:
                continue
            done.add(current)
            expanded = [f"{name}.{domain}" for domain in search]
            if dots < self.ndots and f"{current}:{name}" not in self._hosts:
                names = [*expanded, name]
            else:
                names = [name, *expanded]
            for try_name in names:
                yield try_name, current

    def _ip_literal(self, name: str, qtype: int, family: str) -> _Entry:
        key = f"{qtype}:{name}"
        entry = self._lookup_cache(key)
        if entry is not None:
            return entry
        address = name[1:-1] if name.startswith("[") and name.endswith("]") else name
        want, code = (TYPE_A, 102) if family == "ipv4" else (TYPE_AAAA, 103)
        if qtype == want and ip_family(address) == family:
            entry = _Entry([Record(name, qtype, HOSTS_TTL, address=address)])
            self._set_success(name, qtype)
        else:
            entry = _Entry([], errcode=code, errstr=CLIENT_ERRORS[code])
        self._insert(entry, key)
        return entry

    async def _resolve(self, name: str, qtype: int | None, tried: set[str], depth: int = 0) -> _Entry:
        name = name.lower()
        if depth > MAX_CHAIN:
            raise DnsError(name, f"more than {MAX_CHAIN} CNAME or SRV records followed")
        # not "type:short:name": that is the records key of the name "short:name" (a reply's names may hold colons)
        short_key = f"short:{qtype if qtype is not None else 'none'}:{name}"
        marker = f"(short){name}:{qtype}"
        short = self._lookup_cache(short_key)
        if short is not None and marker in tried:
            raise DnsError(name, "recursion detected")
        tried.add(marker)
        if short is not None and not short.expired:
            if short.records and short.records[0].type == TYPE_CNAME and qtype != TYPE_CNAME:
                return await self._resolve(short.records[0].cname, None, tried, depth + 1)
            return short

        family = _is_ip_name(name)
        if family is not None:
            asked = qtype if qtype is not None else (TYPE_A if family == "ipv4" else TYPE_AAAA)
            tried.add(f"{name}:{asked}")
            entry = self._ip_literal(name, asked, family)
            if entry.errcode is not None:
                raise DnsError(name, f"dns client error: {entry.errcode} {entry.errstr}", entry.errcode)
            return entry

        message, code = "", None
        for try_name, try_type in self._search_names(name, qtype):
            key = f"{try_name}:{try_type}"
            if key in tried:
                message, code = "recursion detected", None
                break
            tried.add(key)
            try:
                entry = await self._lookup(try_name, try_type)
            except _QueryFailed as e:
                # no reply at all: stop here rather than answer with records of another type
                raise DnsError(name, str(e)) from None
            if entry.errcode is not None:
                message, code = f"dns server error: {entry.errcode} {entry.errstr}", entry.errcode
                continue
            if not entry.records:
                message, code = f"dns client error: {EMPTY} {CLIENT_ERRORS[EMPTY]}", EMPTY
                continue
            if qtype is None:
                self._set_success(try_name, try_type)
            if qtype != TYPE_SRV and try_type == TYPE_SRV \
                    and all(r.target == try_name for r in entry.records):
                # an SRV record pointing at itself (Kubernetes makes those): try the other types
                message, code = "recursion detected", None
                continue
            self._insert(entry, short_key)
            if entry.records[0].type == TYPE_CNAME and qtype != TYPE_CNAME:
                return await self._resolve(entry.records[0].cname, None, tried, depth + 1)
            return entry
        raise DnsError(name, message or "no record types to query", code)

    async def _toip(self, name: str, port: int | None, tried: set[str], depth: int = 0) -> tuple[str, int | None]:
        entry = await self._resolve(name, None, tried, depth)
        if entry.records[0].type == TYPE_SRV:
            record = entry.records[self._pick_weighted(entry)]
            return await self._toip(record.target, record.port or port, tried, depth + 1)
        entry.rr_cursor = (entry.rr_cursor + 1) % len(entry.records)
        return entry.records[entry.rr_cursor].address, port

    def _pick_weighted(self, entry: _Entry) -> int:
        """Kong's roundRobinW: the first time the server's first record of the lowest priority, then a weighted
        random permutation of those records (each weight / their gcd times), served to its end before a new one
        starts. The permutation is drawn as it goes, from the turns each record has left."""
        if entry.prio_list is None:
            top = min(r.priority for r in entry.records)
            entry.prio_list = [i for i, r in enumerate(entry.records) if r.priority == top]
            divisor = math.gcd(*(entry.records[i].weight or 1 for i in entry.prio_list))
            entry.weight_list = [(entry.records[i].weight or 1) // divisor for i in entry.prio_list]
            entry.rrw_left = list(entry.weight_list)
            entry.rrw_left[0] -= 1  # the first record was served: its turn of the first round is used
            return entry.prio_list[0]
        left = entry.rrw_left
        assert left is not None
        if not any(left):
            left[:] = entry.weight_list
        pick = self.rng.randrange(sum(left))
        at = 0
        while pick >= left[at]:
            pick -= left[at]
            at += 1
        left[at] -= 1
        return entry.prio_list[at]

    # -- wire ----------------------------------------------------------------------------------------------------

    async def _query(self, name: str, qtype: int) -> Reply:
        """lua-resty-dns's query: `attempts` tries over the nameservers in turn, all with one id, each nameserver's
        on one socket kept until the query ends; _QueryFailed with the last try's error when none gave a reply."""
        if not self.nameservers:
            raise _QueryFailed("failed to create a resolver: no nameservers specified")
        qid = self._ids.randrange(0x10000)
        try:
            query = build_query(qid, name, qtype)
        except DnsFormatError as e:
            raise _QueryFailed(str(e)) from None
        error = ""
        first = self.rng.randrange(len(self.nameservers)) if self.rotate else 0
        with ExitStack() as sockets:
            opened: dict[int, _UdpPeer] = {}
            for attempt in range(first, first + self.attempts):
                index = attempt % len(self.nameservers)
                try:
                    if index not in opened:
                        opened[index] = sockets.enter_context(await _UdpPeer.open(self.nameservers[index]))
                    reply = await self._udp_try(opened[index], query, qid, name, qtype)
                except _QueryFailed as e:
                    error = str(e)
                    continue
                if reply.truncated:
                    try:
                        return await self._tcp_query(self.nameservers[index], query, qid, name, qtype)
                    except _QueryFailed as e:
                        error = str(e)
                        continue
                return reply
        raise _QueryFailed(error)

    async def _udp_try(self, peer: _UdpPeer, query: bytes, qid: int, name: str, qtype: int) -> Reply:
        """One try: the query sent on the nameserver's socket, then the first reply to it read there within
        `timeout`, a late reply to an earlier try (same id, same question) included."""
        where = peer.where
        try:
            await peer.sock.send(query)
        except OSError as e:
            raise _QueryFailed(f"failed to send request to {where}: {socket_error(e)}") from None
        with trio.move_on_after(self.timeout):
            while True:
                try:
                    data, source = await peer.sock.recvfrom(65535)
                except OSError as e:
                    raise _QueryFailed(f"failed to receive reply from {where}: {socket_error(e)}") from None
                if source[:2] != peer.address:
                    continue
                try:
                    return parse_response(data, qid, name, qtype)
                except DnsMismatchError:
                    continue
                except DnsFormatError as e:
                    raise _QueryFailed(f"bad reply from {where}: {e}") from None
        raise _QueryFailed(f"failed to receive reply from {where}: timeout")

    async def _tcp_query(self, server: Nameserver, query: bytes, qid: int, name: str, qtype: int) -> Reply:
        """The query over TCP (a truncated UDP reply): the connect, the send and each read bounded by `timeout` on
        its own, as lua-resty-dns's tcp socket (one settimeout for all three); its errors in lua-resty-dns v0.23's
        words (resolver.lua:802-839)."""
        ip, port = server
        where = f"TCP server {ip}:{port}"
        timeout = self.timeout
        connect = f"failed to connect to {where}"  # ngx_lua makes the socket in connect: its failure is connect's
        with _socket(ip, socket.SOCK_STREAM, connect) as sock:
            await _step(connect, timeout, sock.connect((ip, port)))
            await _step(f"failed to send query to {where}", timeout, sock.send(len(query).to_bytes(2, "big") + query))
            # each read bounded on its own (_recv_exactly)
            head = await _step(f"failed to receive the reply length field from {where}", math.inf,
                               _recv_exactly(sock, 2, timeout))
            data = await _step(f"failed to receive the reply message body from {where}", math.inf,
                               _recv_exactly(sock, int.from_bytes(head, "big"), timeout))
        unparsed = f"failed to parse the reply from the {where}"
        try:
            reply = parse_response(data, qid, name, qtype)
        except DnsFormatError as e:
            raise _QueryFailed(f"{unparsed}: {e}") from None
        if reply.truncated:
            raise _QueryFailed(f"{unparsed}: truncated")
        return reply


class _UdpPeer:
    """A UDP socket connected to one nameserver, for the tries of one query; `address` is its peer as the kernel
    reports it, to check each datagram's source against."""

    def __init__(self, sock: trio.socket.SocketType, address: tuple[str, int], where: str) -> None:
        self.sock = sock
        self.address = address
        self.where = where

    @classmethod
    async def open(cls, server: Nameserver) -> _UdpPeer:
        ip, port = server
        # ngx_lua makes and connects the socket in setpeername, which lua-resty-dns's new() calls (resolver.lua:160)
        failed = "failed to create a resolver: failed to set peer name"
        sock = _socket(ip, socket.SOCK_DGRAM, failed)
        try:
            await sock.connect((ip, port))
            address = sock.getpeername()[:2]
        except OSError as e:
            sock.close()
            raise _QueryFailed(f"{failed}: {socket_error(e)}") from None
        return cls(sock, address, f"UDP server {ip}:{port}")

    def __enter__(self) -> _UdpPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def _socket(ip: str, kind: socket.SocketKind, failed: str) -> trio.socket.SocketType:
    """A socket of `kind` for a nameserver at `ip`; _QueryFailed saying `failed`, and why, when none can be made."""
    try:
        return trio.socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, kind)
    except OSError as e:
        raise _QueryFailed(f"{failed}: {socket_error(e)}") from None


async def _step(what: str, timeout: float, step: Awaitable[_T]) -> _T:
    """`step`'s result within `timeout`; _QueryFailed saying `what` failed, and why in the cosocket's word ("timeout",
    "closed", the errno's text), otherwise."""
    try:
        with trio.fail_after(timeout):
            return await step
    except trio.TooSlowError:
        raise _QueryFailed(f"{what}: timeout") from None
    except _PeerClosed:
        raise _QueryFailed(f"{what}: closed") from None
    except OSError as e:
        raise _QueryFailed(f"{what}: {socket_error(e)}") from None


async def _recv_exactly(sock: trio.socket.SocketType, size: int, timeout: float) -> bytes:
    """`size` bytes from a stream socket; trio.TooSlowError when `timeout` passes with no byte arriving (the wait
    starts again with each piece, as nginx re-arms a read timer when data comes), _PeerClosed when the peer closes
    first (the cosocket's receive(size) fails "closed" whatever part came)."""
    data = b""
    while len(data) < size:
        with trio.fail_after(timeout):
            chunk = await sock.recv(size - len(data))
        if not chunk:
            raise _PeerClosed
        data += chunk
    return data


@asynccontextmanager
async def open_resolver(**settings: Any) -> AsyncIterator[Resolver]:
    """A Resolver whose background refreshes run in a nursery of its own, cancelled when the block ends."""
    async with trio.open_nursery() as nursery:
        yield Resolver(nursery=nursery, **settings)
        nursery.cancel_scope.cancel()
