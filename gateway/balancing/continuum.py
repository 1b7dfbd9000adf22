"""Kong's consistent-hashing balancer (kong/runloop/balancer/consistent_hashing.lua): a Ketama continuum.

Every address gets `floor(weight / total weight * targets * 160)` points (at least one when its weight is not 0) on a
continuum of `slots` points (1,000 when `slots` is below that, Kong's minimum), each at `xxhash32("<ip>::<port> <n>")
mod slots` (the hash signed, as luaxxhash returns it); a point already taken moves the address on to its next name.
Targets are placed sorted by name and port, their addresses by "ip:port", so the continuum depends on the targets and
weights only, never on their order; `targets` above is the number of configured targets (Kong's #balancer.targets),
an SRV name's records being one target's addresses. A key goes to the owner of its own point `xxhash32(key) mod
slots`, or of the first taken point below it (wrapping round); a skipped (unhealthy, drained, already tried) owner
passes the key on further down, as Kong's getPeer walks past an unavailable address. Built this way, a key goes to
the target Kong's balancer sends it to.
"""

from __future__ import annotations

import ipaddress
import logging
from bisect import bisect_right
from collections.abc import Container, Sequence
from math import floor
from struct import unpack_from

from .base import IgnoresLoad, check_weight, check_weights
from .round_robin import RoundRobin

log = logging.getLogger("gateway.balancing")

SERVER_POINTS = 160  # Kong's points per target when every target has the same weight
MIN_POINTS = 1000  # Kong's MIN_CONTINUUM_SIZE and DEFAULT_CONTINUUM_SIZE: smaller `slots` get this many points
MIN_SLOTS = 10  # the upstream schema's range of `slots`
MAX_SLOTS = 65536
_CACHED_KEYS = 4096  # keys whose point is remembered (a client's cookie, address, header come again)
_CACHED_KEY_BYTES = 512  # longer keys are hashed every time

_P1, _P2, _P3, _P4, _P5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
_MASK = 0xFFFFFFFF


def xxhash32(data: bytes) -> int:
    """XXH32 of `data` with seed 0, as an unsigned 32-bit number (luaxxhash, which Kong's balancer uses)."""
    size = len(data)
    at = 0
    if size >= 16:
        v1, v2, v3, v4 = (_P1 + _P2) & _MASK, _P2, 0, (-_P1) & _MASK
        stripes = size // 16
        words = unpack_from(f"<{stripes * 4}I", data)
        for i in range(0, stripes * 4, 4):
            v1 = (v1 + words[i] * _P2) & _MASK
            v1 = ((v1 << 13 | v1 >> 19) & _MASK) * _P1 & _MASK
            v2 = (v2 + words[i + 1] * _P2) & _MASK
            v2 = ((v2 << 13 | v2 >> 19) & _MASK) * _P1 & _MASK
            v3 = (v3 + words[i + 2] * _P2) & _MASK
            v3 = ((v3 << 13 | v3 >> 19) & _MASK) * _P1 & _MASK
            v4 = (v4 + words[i + 3] * _P2) & _MASK
            v4 = ((v4 << 13 | v4 >> 19) & _MASK) * _P1 & _MASK
        h = ((v1 << 1 | v1 >> 31) + (v2 << 7 | v2 >> 25) + (v3 << 12 | v3 >> 20) + (v4 << 18 | v4 >> 14)) & _MASK
        at = stripes * 16
    else:
        h = _P5
    h = (h + size) & _MASK
    count = (size - at) // 4
    if count:
        for word in unpack_from(f"<{count}I", data, at):
            h = (h + word * _P3) & _MASK
            h = ((h << 17 | h >> 15) & _MASK) * _P4 & _MASK
        at += count * 4
    for byte in data[at:]:
        h = (h + byte * _P5) & _MASK
        h = ((h << 11 | h >> 21) & _MASK) * _P1 & _MASK
    h = (h ^ h >> 15) * _P2 & _MASK
    h = (h ^ h >> 13) * _P3 & _MASK
    return h ^ h >> 16


def continuum_index(value: bytes, points: int) -> int:
    """Kong's get_continuum_index, 0-based (Kong's is this plus one): luaxxhash's hash is LuaJIT's signed int32 (its
    last step is bit.bxor), and Lua's modulo of a negative number is a floor modulo, as Python's."""
    h = xxhash32(value)
    return (h - 0x100000000 if h & 0x80000000 else h) % points


def target_of(target: str, port: int) -> tuple[str, int]:
    """The (name, port) of the upstream target an address belongs to: `target` is Kong's `name:port` (`[v6]:port`),
    or a bare name or address, whose port is then the address's `port`."""
    host, colon, digits = target.rpartition(":")
    if colon and digits.isdigit() and (host.count(":") == 0 or (host.startswith("[") and host.endswith("]"))):
        return host[1:-1] if host.startswith("[") else host, int(digits)
    return target, port


def kong_address(target: str, address: str) -> str:
    """An address as Kong's balancer writes it: a literal IPv6 target in Kong's normal form (bracketed and expanded,
    as its targets DAO stores it), a resolved IPv6 address bracketed (its DNS client's), anything else as it is."""
    bare = address[1:-1] if address.startswith("[") and address.endswith("]") else address
    if ":" not in bare:
        return address
    if target in (bare, f"[{bare}]"):
        try:
            return f"[{ipaddress.IPv6Address(bare).exploded}]"
        except ValueError:
            pass
    return f"[{bare}]"


class KongConsistentHashing(IgnoresLoad):
    """Kong's continuum over targets given as (target name, address, port) per index (see the module's text).

    `target name` is what the upstream's target says: `name:port`, or a host name or the address itself (its port
    then the address's); the addresses of one target share its (name, port) as Kong's target. Without a key, picks
    fall back to round-robin (Kong always has one: "" when hash_on finds nothing).
    """

    retry_skips_tried = False  # Kong's getPeer: a retry starts again from handle.hashValue, the key's own point

    def __init__(self, weights: Sequence[int], addresses: Sequence[tuple[str, str, int]], *,
                 slots: int = 10000) -> None:
        if not MIN_SLOTS <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be between {MIN_SLOTS} and {MAX_SLOTS}, got {slots}")
        self._weights = check_weights(weights)
        if len(addresses) != len(self._weights):
            raise ValueError(f"{len(addresses)} addresses for {len(self._weights)} weights")
        self._points = max(slots, MIN_POINTS)
        # Kong's placing order: targets by name then port, the addresses of a target by "ip:port"
        owners = [target_of(target, port) for target, _, port in addresses]
        named = [(name, kong_address(name, address), port)
                 for (name, _), (_, address, port) in zip(owners, addresses, strict=True)]
        targets: dict[tuple[str, int], list[int]] = {}
        for index, (name, port) in enumerate(owners):
            targets.setdefault((kong_address(name, name), port), []).append(index)
        self._order = [index for key in sorted(targets)
                       for index in sorted(targets[key], key=lambda i: f"{named[i][1]}:{named[i][2]}")]
        self._prefixes = {index: f"{named[index][1]}::{named[index][2]} " for index in self._order}
        self._target_count = len(targets)
        self._round_robin = RoundRobin(self._weights)
        self._cache: dict[bytes, int] = {}
        self._rebuild()

    def _rebuild(self) -> None:
        """Place every address's points (Kong's afterHostUpdate), then the lookup table: for each point of the
        continuum, the owner of the first taken point at or below it."""
        points = self._points
        total = sum(self._weights)
        continuum: dict[int, int] = {}
        collisions = 0
        full = False
        for index in self._order:
            weight = self._weights[index]
            if not weight:
                continue
            entries = max(floor(weight / total * self._target_count * SERVER_POINTS), 1)
            prefix = self._prefixes[index]
            n = 1
            while n <= entries:
                point = continuum_index(f"{prefix}{n}".encode(), points)
                if point in continuum:
                    entries += 1  # Kong's "move the problem forward"
                    collisions += 1
                else:
                    continuum[point] = index
                n += 1
                if n > points:
                    full = True
                    break
            if full:
                # Kong logs this as critical and keeps its previous continuum (none, for a new balancer: no request
                # gets a target); the points placed so far are kept instead.
                log.error("consistent hashing needs more than %d points for its targets (%d collisions): raise the "
                          "upstream's slots", points, collisions)
                break
        taken = sorted(continuum)
        self._taken = taken
        self._owners = [continuum[point] for point in taken]
        table: list[int] = []
        if taken:
            owner = self._owners[-1]  # below the lowest taken point: round to the highest
            following = 0
            for point in range(points):
                if following < len(taken) and taken[following] == point:
                    owner = self._owners[following]
                    following += 1
                table.append(owner)
        self._table = table

    def points(self) -> dict[int, int]:
        """The taken points of the continuum (0-based) and the index of the target owning each."""
        return dict(zip(self._taken, self._owners, strict=True))

    def pick(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """Owner of the key's point, or, past skipped owners, of the next taken point down the continuum."""
        if hash_key is None:
            return self._round_robin.pick(None, skip)
        table = self._table
        if not table:
            return None
        cache = self._cache
        point = cache.get(hash_key)
        if point is None:
            point = continuum_index(hash_key, self._points)
            if len(hash_key) <= _CACHED_KEY_BYTES:
                if len(cache) >= _CACHED_KEYS:
                    cache.clear()
                cache[hash_key] = point
        index = table[point]
        if index in skip:
            return self._walk(point, skip)
        return index

    def _walk(self, point: int, skip: Container[int]) -> int | None:
        """Kong's getPeer loop from `point` down (wrapping round); like Kong's, it ends just before the point above
        the key's own, which it never looks at."""
        taken, owners = self._taken, self._owners
        count = len(taken)
        start = bisect_right(taken, point) - 1
        end = point + 1
        for step in range(count):
            position = (start - step) % count
            if taken[position] == end:
                break
            owner = owners[position]
            if owner not in skip:
                return owner
        return None

    def start_over(self, hash_key: bytes | None = None, skip: Container[int] = ()) -> int | None:
        """Not reached (a retry starts again from the key's point, whatever was tried:
        consistent_hashing.lua); the key's target."""
        return self.pick(hash_key, skip)

    def set_weight(self, index: int, weight: int) -> None:
        """Re-weight one target: as in Kong, every address's share of points is computed again."""
        self._weights[index] = check_weight(weight)
        self._round_robin.set_weight(index, weight)
        self._rebuild()
