"""A breaker's thresholds, resolved from the circuit-breaker plugin config (the guide's Erlang names are aliases)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type-only: importing gateway.policies at run time would pull the HTTP layer into the keeper
    from gateway.policies.circuit_breaker.schema import CircuitBreakerConfig

WINDOW_S = 10.0  # the rolling window the volume and error thresholds are counted over
PROBE_TTL_S = 10.0  # a probe permit with no outcome after this long is taken back (its worker may have died)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """How a breaker trips and recovers.

    Closed -> open on a failure after which, within the last window_s seconds, requests >= volume_threshold AND
    failures >= error_threshold; or, if consecutive_threshold is set, after that many failures in a row (the
    guide's Erlang module, where a success resets the count). Open -> half-open after open_s. Half-open: at most
    half_open_max_calls probes in flight across the gateway; success_threshold successful probes close it, one
    failed probe opens it again.
    """

    error_threshold: int = 5
    volume_threshold: int = 10
    open_s: float = 30.0
    consecutive_threshold: int | None = None
    success_threshold: int = 2
    half_open_max_calls: int = 1
    window_s: float = WINDOW_S
    probe_ttl_s: float = PROBE_TTL_S

    @classmethod
    def from_plugin(cls, cfg: CircuitBreakerConfig) -> BreakerConfig:
        """failure_threshold, when set, replaces error_threshold and also opens on that many failures in a row;
        timeout, when set, replaces half_open_timeout (both in ms)."""
        threshold = cfg.failure_threshold if cfg.failure_threshold is not None else cfg.error_threshold
        open_ms = cfg.timeout if cfg.timeout is not None else cfg.half_open_timeout
        return cls(error_threshold=threshold, volume_threshold=cfg.volume_threshold, open_s=open_ms / 1000,
                   consecutive_threshold=cfg.failure_threshold, success_threshold=cfg.success_threshold,
                   half_open_max_calls=cfg.half_open_max_calls)
