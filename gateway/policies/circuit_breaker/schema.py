"""The reference guide's circuit-breaker config (Kong-style names) and its Erlang module's thresholds."""

from typing import Annotated

import msgspec

Count = Annotated[int, msgspec.Meta(ge=1)]
Ms = Annotated[int, msgspec.Meta(ge=1)]


class CircuitBreakerConfig(msgspec.Struct, forbid_unknown_fields=True):
    error_threshold: Count = 5  # failures (in the volume window) that open the circuit
    volume_threshold: Count = 10  # requests seen before the error threshold is considered
    half_open_timeout: Ms | None = None  # ms open before a probe is allowed (30000 when neither it nor timeout is set)
    sweep_force_shutdown: bool = False
    failure_threshold: Count | None = None  # the guide's Erlang module: failures in a row that open it, besides
    success_threshold: Count = 2
    timeout: Ms | None = None  # the guide's Erlang name for half_open_timeout
    half_open_max_calls: Count = 1

    def __post_init__(self) -> None:
        """An alias pair given twice must say one thing: neither value would be used silently."""
        if self.timeout is not None and self.half_open_timeout is not None and self.timeout != self.half_open_timeout:
            raise ValueError(f"timeout ({self.timeout}) and half_open_timeout ({self.half_open_timeout}) disagree: "
                             "they are one setting (timeout is the guide's Erlang name for it); set one of them")
