"""A bounded memo of answers: what a worker remembers per key (a verified token, a route, a Host verdict) so that
repeated requests skip the work, at most `size` of them so that a client's distinct keys cannot grow it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(dict[K, V]):
    """Look up with the dict's own `get` (the hot path, no Python call); `keep` stores an answer, the oldest
    leaving first once `size` are kept."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def keep(self, key: K, value: V) -> V:
        if len(self) >= self.size:
            del self[next(iter(self))]
        self[key] = value
        return value


class Derived(dict[K, V]):
    """`memo[key]` is `make(key)`, made on the first look-up (the dict's `__missing__`: a hit costs no Python call)
    and remembered, the oldest leaving first once `size` are kept: for what the same few values give on every
    request (a header name's key, a listener and its Host)."""

    __slots__ = ("make", "size")

    def __init__(self, make: Callable[[K], V], size: int) -> None:
        super().__init__()
        self.make = make
        self.size = size

    def __missing__(self, key: K) -> V:
        value = self.make(key)
        if len(self) >= self.size:
            del self[next(iter(self))]
        self[key] = value
        return value
