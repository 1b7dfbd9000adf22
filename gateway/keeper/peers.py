"""The keeper's workers, known by their bus connection (the routing id the keeper's ROUTER gives each): what each
is called, which targets' traffic each reported last, and the half-open probe permits each holds.

A replaced worker (killed and restarted, or retired by a reload) never comes back under its id: its successor
connects with a new one. The keeper forgets an id when the bus finds it gone (process.py), and takes back the permits
it held, so that they go to a live worker at once instead of each lapsing after probe_ttl_s (as long as a probe of the
upstream's services may run: minutes with Kong's default timeouts) to go to the same dead id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.breaker.machine import NOT_HELD

Permit = tuple[str, float]  # (target, when the keeper's breaker granted it)


@dataclass
class Peer:
    name: str  # as log lines name it
    permits: list[Permit] = field(default_factory=list)  # held, oldest first


class Peers:
    """The live workers and their permits; `waiting`: permits granted while no live worker could take one."""

    def __init__(self) -> None:
        self._peers: dict[bytes, Peer] = {}
        self._reporters: dict[str, dict[bytes, None]] = {}  # target -> workers that sent its outcomes, latest last
        self._turns: dict[str, int] = {}  # target -> the candidate its next permit goes to
        self.waiting: list[Permit] = []

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, sender: bytes) -> bool:
        return sender in self._peers

    def ids(self) -> list[bytes]:
        return list(self._peers)

    def seen(self, sender: bytes, worker: str = "", pid: int = 0) -> bool:
        """A worker's message came from `sender` (a Hello names the worker): True if it was not known."""
        peer = self._peers.get(sender)
        if peer is None:
            self._peers[sender] = Peer(_name(sender, worker, pid))
            return True
        if worker:
            peer.name = _name(sender, worker, pid)
        return False

    def name(self, sender: bytes) -> str:
        """`sender` as a log line names it."""
        peer = self._peers.get(sender)
        return peer.name if peer is not None else f"bus peer {sender.hex()}"  # (the root, a satellite, a stranger)

    def reported(self, sender: bytes, targets: Iterable[str]) -> None:
        """`sender` (a known worker) sent outcomes of traffic to `targets`."""
        for target in targets:
            reporters = self._reporters.setdefault(target, {})
            reporters.pop(sender, None)
            reporters[sender] = None

    def place(self, target: str, granted_at: float) -> bytes | None:
        """The live worker a new permit for `target` goes to: those that sent it traffic, the latest first (an idle
        worker would sit on it until it lapses), each permit of a half-open spell to the next of them; without
        any, every live worker in turn. None: no worker is known (the permit waits in `waiting`)."""
        workers = list(reversed(self._reporters.get(target, {}))) or sorted(self._peers)
        if not workers:
            self.waiting.append((target, granted_at))
            return None
        turn = self._turns.get(target, 0)
        self._turns[target] = turn + 1
        sender = workers[turn % len(workers)]
        self.hold(sender, target, granted_at)
        return sender

    def hold(self, sender: bytes, target: str, granted_at: float) -> None:
        """`sender` (a known worker) was sent a permit for `target`."""
        self._peers[sender].permits.append((target, granted_at))

    def spent(self, sender: bytes, target: str) -> float:
        """A probe's outcome came from `sender`: when the permit it spent was granted (its oldest for `target`);
        NOT_HELD if it holds none the keeper knows of (it lapsed, or the breaker left half-open since)."""
        peer = self._peers.get(sender)
        if peer is None:
            return NOT_HELD
        for index, (held, granted_at) in enumerate(peer.permits):
            if held == target:
                del peer.permits[index]
                return granted_at
        return NOT_HELD

    def keep_only(self, target: str, in_flight: Iterable[float]) -> None:
        """Drop the permits for `target` its breaker no longer counts (they lapsed, or it left half-open)."""
        live = set(in_flight)
        for peer in self._peers.values():
            peer.permits = [(t, at) for t, at in peer.permits if t != target or at in live]
        self.waiting = [(t, at) for t, at in self.waiting if t != target or at in live]

    def half_open(self, target: str) -> None:
        """`target`'s breaker just went half-open: its permits go to the latest reporter first again."""
        self._turns[target] = 0

    def forget(self, sender: bytes) -> list[Permit]:
        """`sender` is gone: forget it; the permits it held."""
        peer = self._peers.pop(sender, None)
        for target in [t for t, reporters in self._reporters.items() if sender in reporters]:
            del self._reporters[target][sender]
            if not self._reporters[target]:
                del self._reporters[target]
        return peer.permits if peer is not None else []


def _name(sender: bytes, worker: str, pid: int) -> str:
    if not worker:
        return f"the worker with bus id {sender.hex()}"
    return f"worker {worker}" + (f" (pid {pid})" if pid else "")
