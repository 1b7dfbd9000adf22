"""What a check's result means, from Kong's `healthchecks` block (plus the nginx/HAProxy `check:` aliases).

- Active (probes): type http/https/tcp, http_path, timeout, concurrency, intervals per state, thresholds.
  A status in healthy.http_statuses is a success, one in unhealthy.http_statuses an HTTP failure, any other
  status is ignored (Kong's rule); with the `check.expect_status` alias every status not expected is a failure.
- Passive (proxied traffic): the same counters fed with the outcome of real requests. For `type: tcp` only
  connection failures and timeouts count, and any response is a success.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config.schema import Healthchecks
from gateway.health.machine import Event, Thresholds
from gateway.lua_socket import socket_timeout

TCP_FAILURE = "tcp_failure"
TIMEOUT = "timeout"
Outcome = int | str  # an HTTP status code, or TCP_FAILURE / TIMEOUT
NGINX_DEFAULTS = {"interval_s": 30.0, "rise": 2, "fall": 5}  # nginx_upstream_check_module's `check` defaults


@dataclass(frozen=True)
class ActivePolicy:
    type: str = "http"
    http_path: str = "/"
    timeout_s: float = 1.0
    concurrency: int = 10
    healthy_interval_s: float = 0.0  # 0: healthy targets are not probed
    unhealthy_interval_s: float = 0.0  # 0: unhealthy targets are not probed
    healthy_statuses: frozenset[int] = frozenset({200, 302})
    unhealthy_statuses: frozenset[int] | None = frozenset({429, 404, 500, 501, 502, 503, 504, 505})  # None: all others
    thresholds: Thresholds = field(default_factory=Thresholds)
    headers: tuple[tuple[str, str], ...] = ()
    https_verify_certificate: bool = True
    https_sni: str | None = None
    # the (certificate, key) PEM pair an https probe presents: the upstream's client_certificate, else kong.conf's
    # client_ssl (Kong's healthcheckers.lua); None: none
    client_cert: tuple[str, str] | None = None

    @property
    def enabled(self) -> bool:
        return self.healthy_interval_s > 0 or self.unhealthy_interval_s > 0

    def interval_for(self, healthy: bool) -> float:
        return self.healthy_interval_s if healthy else self.unhealthy_interval_s

    def classify_status(self, status: int) -> Event | None:
        """A probe's status: 0 stands for an answer that had none, an HTTP failure whatever the lists (Kong's
        report_http_status)."""
        if status == 0:
            return Event.HTTP_FAILURE
        if status in self.healthy_statuses:
            return Event.SUCCESS
        if self.unhealthy_statuses is None or status in self.unhealthy_statuses:
            return Event.HTTP_FAILURE
        return None

    @classmethod
    def from_config(cls, hc: Healthchecks) -> ActivePolicy:
        a = hc.active
        alias = hc.check
        healthy_statuses = frozenset(a.healthy.http_statuses)
        unhealthy_statuses: frozenset[int] | None = frozenset(a.unhealthy.http_statuses)
        healthy_interval, unhealthy_interval = float(a.healthy.interval), float(a.unhealthy.interval)
        successes, failures = a.healthy.successes, 0
        kind, path, timeout = a.type, a.http_path, float(a.timeout)
        if alias is not None:
            # nginx's check without type= is a TCP check (a connect is a success); HAProxy's httpchk has a path
            kind = alias.type or ("http" if alias.path or alias.expect_status is not None else "tcp")
            path = alias.path or path
            timeout = alias.timeout_s or timeout
            # Set fields override Kong's; unset ones take nginx's defaults where Kong's leave checks off.
            if alias.interval_s is not None:
                healthy_interval = unhealthy_interval = alias.interval_s
            elif not healthy_interval and not unhealthy_interval:
                healthy_interval = unhealthy_interval = NGINX_DEFAULTS["interval_s"]
            successes = int(alias.rise or successes or NGINX_DEFAULTS["rise"])
            kong_failures = a.unhealthy.http_failures or a.unhealthy.tcp_failures or a.unhealthy.timeouts
            failures = int(alias.fall or (0 if kong_failures else NGINX_DEFAULTS["fall"]))
            expected = alias.expected_statuses()
            if expected is not None:
                healthy_statuses, unhealthy_statuses = frozenset(expected), None
        headers = tuple((k, v) for k, values in (a.headers or {}).items() for v in values)
        return cls(type=kind, http_path=path, timeout_s=socket_timeout(timeout), concurrency=a.concurrency,
                   healthy_interval_s=healthy_interval, unhealthy_interval_s=unhealthy_interval,
                   healthy_statuses=healthy_statuses, unhealthy_statuses=unhealthy_statuses,
                   thresholds=Thresholds(successes=successes, http_failures=a.unhealthy.http_failures,
                                         tcp_failures=a.unhealthy.tcp_failures, timeouts=a.unhealthy.timeouts,
                                         failures=failures),
                   headers=headers, https_verify_certificate=a.https_verify_certificate, https_sni=a.https_sni)


@dataclass(frozen=True)
class PassivePolicy:
    type: str = "http"
    healthy_statuses: frozenset[int] = frozenset()
    unhealthy_statuses: frozenset[int] = frozenset({429, 500, 503})
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def enabled(self) -> bool:
        t = self.thresholds
        return bool(t.http_failures or t.tcp_failures or t.timeouts)

    def classify(self, outcome: Outcome) -> Event | None:
        """The event a proxied request's outcome stands for; None when it says nothing about health."""
        if outcome == TCP_FAILURE:
            return Event.TCP_FAILURE
        if outcome == TIMEOUT or outcome == 504:  # Kong's log phase: an upstream's 504 is reported as a timeout
            return Event.TIMEOUT
        if not isinstance(outcome, int) or isinstance(outcome, bool):
            raise ValueError(f"unknown outcome {outcome!r}")
        # (a passive `type: tcp` reads statuses too: Kong reports every proxied status with report_http_status,
        # which lua-resty-healthcheck counts whatever the type)
        if outcome in self.healthy_statuses:
            return Event.SUCCESS
        if outcome in self.unhealthy_statuses:
            return Event.HTTP_FAILURE
        return None

    @classmethod
    def from_config(cls, hc: Healthchecks) -> PassivePolicy:
        p = hc.passive
        return cls(type=p.type, healthy_statuses=frozenset(p.healthy.http_statuses),
                   unhealthy_statuses=frozenset(p.unhealthy.http_statuses),
                   thresholds=Thresholds(successes=p.healthy.successes, http_failures=p.unhealthy.http_failures,
                                         tcp_failures=p.unhealthy.tcp_failures, timeouts=p.unhealthy.timeouts))
