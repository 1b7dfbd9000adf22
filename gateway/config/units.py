"""The number types settings share, with the bounds that make every value usable where it goes."""

from __future__ import annotations

from typing import Annotated

import msgspec

MAX_TIMEOUT_MS = 2**31 - 2  # Kong's largest timeout: nginx counts its timers in a 32-bit number of ms
TimeoutMs = Annotated[int, msgspec.Meta(ge=1, le=MAX_TIMEOUT_MS)]
# A duration in seconds, from one ms (what a timer resolves) to Kong's largest timeout: so every setting converts to
# whole ms, and a wheel of timers ticks at a fraction of it, without overflowing or dividing by zero
Seconds = Annotated[float, msgspec.Meta(ge=0.001, le=MAX_TIMEOUT_MS / 1000)]
# The same, or 0 where 0 means "never" (kong.conf's upstream_keepalive_idle_timeout)
SecondsOrNever = Annotated[float, msgspec.Meta(ge=0, le=MAX_TIMEOUT_MS / 1000)]
# The same from 0 (a cache lifetime: 0 keeps nothing past its time)
SecondsFromZero = Annotated[float, msgspec.Meta(ge=0, le=MAX_TIMEOUT_MS / 1000)]
