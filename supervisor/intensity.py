"""OTP's maximum restart intensity: more than `intensity` restarts within `period` seconds is too many.

Time decision: like OTP (`erlang:monotonic_time(second)`), restart times are whole seconds, the clock
value rounded down. A restart at time `now` keeps the earlier restarts at or after `now - period`
(both in whole seconds), adds itself, and is one too many when more than `intensity` remain. So with
period 5, restarts at 0.1 s and 5.9 s (seconds 0 and 5) fall in one window, while restarts at 0.9 s
and 6.0 s (seconds 0 and 6) do not.
"""

import math


class RestartWindow:
    """The restarts that happened recently enough to count toward the intensity."""

    def __init__(self, intensity: int, period: int) -> None:
        self._intensity = intensity
        self._period = period
        self._times: list[int] = []

    def add(self, now: float) -> bool:
        """Record a restart at clock time `now`; False when that makes more than `intensity` in the window."""
        second = math.floor(now)
        threshold = second - self._period
        self._times = [time for time in self._times if time >= threshold]
        self._times.append(second)
        return len(self._times) <= self._intensity
