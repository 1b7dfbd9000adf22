"""The reference guide's circuit-breaker config (Kong-style names) and its Erlang module's thresholds."""

from typing import Annotated

import msgspec

Count = Annotated[int, msgspec.Meta(ge=1)]
Ms = Annotated[int, msgspec.Meta(ge=1)]


class CircuitBreakerConfig(msgspec.Struct, forbid_unknown_fields=True):
    error_threshold: Count = 5  # failures (in the volume window) that open the circuit
    volume_threshold: Count = 10  # requests seen before the error threshold is considered
    half_open_timeout: Ms = 30000  # ms open before a probe is allowed
    sweep_force_shutdown: bool = False
    failure_threshold: Count | None = None  # the guide's Erlang names; aliases of the above
    success_threshold: Count = 2
    timeout: Ms | None = None
    half_open_max_calls: Count = 1
