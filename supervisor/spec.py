"""Child specifications and supervisor flags with OTP's defaults and validation."""

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Literal

BRUTAL_KILL: Final = "brutal_kill"
INFINITY: Final = "infinity"

Shutdown = int | Literal["brutal_kill", "infinity"]


class Strategy(StrEnum):
    """Which children are restarted along with the one that terminated."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"
    SIMPLE_ONE_FOR_ONE = "simple_one_for_one"


class Restart(StrEnum):
    """When a terminated child is restarted."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class ChildType(StrEnum):
    """Whether a child is a worker or a supervisor of its own."""

    WORKER = "worker"
    SUPERVISOR = "supervisor"


@dataclass(frozen=True)
class ChildSpec:
    """One child as OTP specifies it; `start` is what the runtime starts (async function or `Process`)."""

    id: Hashable
    start: object
    restart: Restart = Restart.PERMANENT
    shutdown: Shutdown | None = None
    type: ChildType = ChildType.WORKER

    def __post_init__(self) -> None:
        try:
            hash(self.id)
        except TypeError:
            raise TypeError(f"child id {self.id!r} is not hashable: use a string, a number or a tuple") from None
        object.__setattr__(self, "restart", Restart(self.restart))
        object.__setattr__(self, "type", ChildType(self.type))
        if self.shutdown is None:
            object.__setattr__(self, "shutdown", INFINITY if self.type is ChildType.SUPERVISOR else 5000)
        elif not _valid_shutdown(self.shutdown):
            raise ValueError(f"child {self.id!r}: invalid shutdown {self.shutdown!r}")


@dataclass(frozen=True)
class SupFlags:
    """Restart strategy and maximum restart intensity: more than `intensity` restarts in `period` seconds."""

    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: int = 1
    period: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", Strategy(self.strategy))
        if not _is_int(self.intensity) or self.intensity < 0:
            raise ValueError(f"invalid intensity {self.intensity!r}")
        if not _is_int(self.period) or self.period <= 0:
            raise ValueError(f"invalid period {self.period!r}")


@dataclass(frozen=True)
class SupervisorSpec:
    """Everything `serve` needs to run a supervisor: its flags, its children and a name for logs.

    `place` (not OTP's) gives each child id its place in the tree as drawn, for a supervisor whose start_child calls
    add children in the middle of it (a reload's new generation): its shutdown stops children from the highest place
    down, ties in reverse start order, rather than in reverse start order alone.
    """

    flags: SupFlags = field(default_factory=SupFlags)
    children: Sequence[ChildSpec] = field(default_factory=tuple)
    name: str = "supervisor"
    place: Callable[[Hashable], int] | None = None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_shutdown(value: object) -> bool:
    if isinstance(value, str):
        return value in (BRUTAL_KILL, INFINITY)
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
