"""A breaker's thresholds, resolved from the circuit-breaker plugin config, and how long a probe may take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type-only: importing gateway.policies at run time would pull the HTTP layer into the keeper
    from gateway.policies.circuit_breaker.schema import CircuitBreakerConfig

WINDOW_S = 10.0  # the rolling window the volume and error thresholds are counted over
HALF_OPEN_TIMEOUT_MS = 30000  # the plugin's half_open_timeout (or timeout) when neither is given
PROBE_MARGIN_S = 5.0  # added to a probe's longest run: the bus hops and the timers' lateness (TIMER_RESOLUTION_S)


def probe_ttl(connect_timeout: float, write_timeout: float, read_timeout: float, tries: int) -> float:
    """How long a probe permit stays in flight without an outcome (seconds): as long as a probe on a service with
    these timeouts can wait on the target (a connect for each try, the request's write, the response's read), plus
    PROBE_MARGIN_S. Past it the permit is taken back: its worker is wedged or its outcome lost, and half-open must not
    wait for it for ever."""
    return connect_timeout * tries + write_timeout + read_timeout + PROBE_MARGIN_S


# Kong's service defaults: connect, write and read timeouts of 60 s, 5 retries (6 tries).
DEFAULT_PROBE_TTL_S = probe_ttl(60.0, 60.0, 60.0, 6)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """How a breaker trips and recovers.

    Closed -> open once, within the last window_s seconds, requests >= volume_threshold AND failures >=
    error_threshold (checked after every batch of outcomes, successes too); or, if consecutive_threshold is set,
    after that many failures in a row (the guide's Erlang module, where a success resets the count). Open ->
    half-open after open_s. Half-open: at most half_open_max_calls probes in flight across the gateway, each permit
    taken back after probe_ttl_s without an outcome; success_threshold successful probes close it, one failed probe
    opens it again.
    """

    error_threshold: int = 5
    volume_threshold: int = 10
    open_s: float = HALF_OPEN_TIMEOUT_MS / 1000
    consecutive_threshold: int | None = None
    success_threshold: int = 2
    half_open_max_calls: int = 1
    window_s: float = WINDOW_S
    probe_ttl_s: float = DEFAULT_PROBE_TTL_S

    @classmethod
    def from_plugin(cls, cfg: CircuitBreakerConfig, probe_ttl_s: float = DEFAULT_PROBE_TTL_S) -> BreakerConfig:
        """failure_threshold, when set, is the consecutive-failure condition beside error_threshold's; timeout is
        half_open_timeout's alias (the schema refuses both set and disagreeing), in ms. `probe_ttl_s`: `probe_ttl`
        of the services whose requests the instance covers (the longest)."""
        open_ms = cfg.timeout or cfg.half_open_timeout or HALF_OPEN_TIMEOUT_MS
        return cls(error_threshold=cfg.error_threshold, volume_threshold=cfg.volume_threshold, open_s=open_ms / 1000,
                   consecutive_threshold=cfg.failure_threshold, success_threshold=cfg.success_threshold,
                   half_open_max_calls=cfg.half_open_max_calls, probe_ttl_s=probe_ttl_s)
