"""A worker's copy of the keeper's breaker states (the balancer's skip set), its probe permits and its outcomes."""

from __future__ import annotations

from collections.abc import Callable

from gateway.breaker.messages import BreakerUpdate, Outcome, single
from gateway.breaker.state import State


class _Tally:
    """Results to one target since the last batch, with the failure runs the keeper needs."""

    __slots__ = ("successes", "failures", "lead", "run", "tail")

    def __init__(self) -> None:
        self.successes = self.failures = self.lead = self.run = self.tail = 0

    def add(self, ok: bool) -> None:
        if ok:
            self.successes += 1
            self.tail = 0
        else:
            self.failures += 1
            self.tail += 1
            if not self.successes:
                self.lead += 1
            if self.tail > self.run:
                self.run = self.tail


class BreakerView:
    """Last published state per target; a target is skipped unless closed, or half-open with a permit held here."""

    def __init__(self, on_pending: Callable[[], None] = lambda: None) -> None:
        self._on_pending = on_pending  # outcomes are waiting again (once per target between two drains)
        self._states: dict[str, State] = {}
        self._skip: set[str] = set()
        self.permits: dict[str, int] = {}  # half-open probe permits held here (read-only outside this class)
        self._tallies: dict[str, _Tally] = {}

    def is_open(self, target: str) -> bool:
        """Should the balancer skip `target`? O(1)."""
        return target in self._skip

    def state(self, target: str) -> State:
        """Last published state (closed for a target never heard of)."""
        return self._states.get(target, State.CLOSED)

    def apply(self, update: BreakerUpdate) -> None:
        """A state published by the keeper; permits survive only into half-open (they may arrive before it)."""
        target, state = update.target, update.state
        self._states[target] = state
        if state is not State.HALF_OPEN:
            self.permits.pop(target, None)
        self._resort(target)

    def permit(self, target: str) -> None:
        """The keeper granted this worker one half-open probe to `target`."""
        self.permits[target] = self.permits.get(target, 0) + 1
        self._resort(target)

    def started(self, target: str) -> bool:
        """A request is being sent to `target`: True if it is a probe, which spends a permit."""
        held = self.permits.get(target)
        if not held or self._states.get(target) is State.CLOSED:
            return False
        if held == 1:
            del self.permits[target]
            self._resort(target)
        else:
            self.permits[target] = held - 1
        return True

    def withdraw(self, target: str) -> None:
        """The keeper did not count a permit this worker kept (`_probed`): it is not this worker's to spend."""
        held = self.permits.get(target, 0)
        if held > 1:
            self.permits[target] = held - 1
        elif held:
            del self.permits[target]
            self._resort(target)

    def record(self, target: str, ok: bool, probe: bool = False) -> Outcome | None:
        """Count a request's result: a probe's comes back at once to be sent; the others wait for the batch."""
        if probe:
            return self._probed(target, ok)
        tally = self._tallies.get(target)
        if tally is None:
            tally = self._tallies[target] = _Tally()
            self._on_pending()
        if ok:  # the common case, inline
            tally.successes += 1
            tally.tail = 0
        else:
            tally.add(ok)
        return None

    def _probed(self, target: str, ok: bool) -> Outcome:
        """A probe's result. One that succeeded while the circuit is half-open keeps its permit for this worker's
        next request, the keeper told so (Outcome.kept): a client sending one request after another does not find
        the target skipped while a new permit would cross the bus."""
        if not ok or self._states.get(target) is not State.HALF_OPEN:
            return single(target, ok, probe=True)
        self.permits[target] = self.permits.get(target, 0) + 1
        self._resort(target)
        return Outcome(target, 1, probe=True, kept=True)

    @property
    def pending(self) -> bool:
        """Are outcomes waiting for drain_outcomes?"""
        return bool(self._tallies)

    def drain_outcomes(self, successes: bool = True) -> list[Outcome]:
        """The batched results since the last call, one Outcome per target; with `successes` off, only the targets
        that had a failure (the keeper needs those soon; successes alone can wait for a later batch)."""
        if successes:
            drained, self._tallies = self._tallies, {}
        else:
            drained = {target: t for target, t in self._tallies.items() if t.failures}
            for target in drained:
                del self._tallies[target]
        return [Outcome(target, t.successes, t.failures, t.lead, t.run, t.tail) for target, t in drained.items()]

    def _resort(self, target: str) -> None:
        """Recompute whether `target` is in the skip set."""
        if self._states.get(target, State.CLOSED) is State.CLOSED or self.permits.get(target):
            self._skip.discard(target)
        else:
            self._skip.add(target)
