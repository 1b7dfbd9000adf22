"""Kong's response-ratelimiting arithmetic, sans I/O: the counter keys, the usage read in access, the upstream's
increments header, and the headers and verdicts both make.

- A counter counts one limit name, for one identifier (limit_by), in one period window (periods.windows). Its key is
  Kong's `response-ratelimit:<route id>:<service id>:<identifier>:<period start in ms>:<name>:<period>`
  (policies/init.lua:59-63): the ids of the route and service the plugin is configured on, not the request's, each
  EMPTY_UUID when it names none (init.lua:42-56), so that a Kong node sharing the Redis counts the same counters.
- Access reads the counter of every (name, period) configured: remaining = limit - count. The upstream request gets
  X-RateLimit-Remaining-<name>, the least remaining of the name's periods (negative once the upstream's increments
  went past the limit). With block_on_first_violation, a name with a period whose remaining is exactly 0 (Kong's
  test) answers 429 "API rate limit exceeded for '<name>'".
- The upstream's answer carries `name=n, other=m` in header_name (Kong's parse_header, below). The client gets, per
  name and period, X-RateLimit-Limit-<name>-<period> and X-RateLimit-Remaining-<name>-<period> (remaining less this
  response's increment, never below 0), unless hide_client_headers; the response becomes a 429 without a body when
  a name with a positive increment has a period with nothing remaining (<= 0) already in access. A "_" of the name
  is a "-" in these client headers only: Kong sets them with ngx.header, and lua-nginx-module writes every "_" of a
  response header name as "-" (lua_transform_underscores_in_response_headers, on by default; the upstream
  request's header, set with ngx.req.set_header, keeps it).
- After the response, each non-zero increment is added to the name's counters of all six periods (Kong's
  get_timestamps: configured or not), unless the response became that 429.

Numbers are written as Lua writes them (%.14g).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from gateway.policies.response_ratelimiting.schema import PERIODS, PeriodLimits
from gateway.policies.standard_webhooks.handler import lua_number, lua_string

EMPTY_UUID = "00000000-0000-0000-0000-000000000000"  # Kong's id in a key for a plugin's missing route or service
MAX_INCREMENT = 2**53  # the largest count a double (Lua's number) holds exactly
_LUA_SPACE = b" \t\n\v\f\r"  # kong.tools.string.strip's white space


def parse_increments(value: bytes | None, names: dict[bytes, str]) -> dict[str, int]:
    """Kong's parse_header over the first `header_name` header (Kong's get_header returns only the first).

    The value is split at every ",", each part at "=": a part with exactly one "=" whose stripped left side is a
    configured name (`names`: its bytes -> the name) sets that name's increment to its right side read as Lua's
    tonumber reads it; a later part for the same name replaces it, even when its number does not read (then the
    name has no increment, as Lua's nil). Not a whole number, or beyond 2**53: no increment either (Kong counts
    fractions in its shared dict, a difference the README states: our counters and their bus messages are whole;
    Redis refuses them)."""
    increments: dict[str, int] = {}
    if value is None:
        return increments
    for part in value.split(b","):
        pair = part.split(b"=")
        if len(pair) != 2:
            continue
        name = names.get(pair[0].strip(_LUA_SPACE))
        if name is None:
            continue
        number = lua_number(pair[1])
        if number is not None and number.is_integer() and abs(number) <= MAX_INCREMENT:
            increments[name] = int(number)
        else:
            increments.pop(name, None)
    return increments


def kong_scope(route_id: str | None, service_id: str | None) -> str:
    """`<route id>:<service id>` of Kong's counter keys for a plugin configured on that route and service."""
    return f"{route_id or EMPTY_UUID}:{service_id or EMPTY_UUID}"


def counter_key(scope: str, identifier: str, start_ms: int, name: str, period: str) -> str:
    """Kong's key (`scope`: kong_scope's). Kong's period_date is a whole number of ms, which its %s writes as these
    digits (LuaJIT's %.14g: no exponent before the year 5138)."""
    return f"response-ratelimit:{scope}:{identifier}:{start_ms}:{name}:{period}"


class PeriodLimit(NamedTuple):
    slot: int  # in PERIODS, and in periods.windows' answer
    period: str
    limit: float
    limit_header: tuple[bytes, bytes]  # x-ratelimit-limit-<name, "_" as "-">-<period>: <limit>
    remaining_header: bytes  # x-ratelimit-remaining-<name, "_" as "-">-<period>


class NamedLimit(NamedTuple):
    name: str
    upstream_header: bytes  # x-ratelimit-remaining-<name>
    periods: tuple[PeriodLimit, ...]


class Plan:
    """A plugin's limits, in config order, as each request uses them. `remaining` lists (below) hold one number per
    (name, period) configured, in the order of `pairs`."""

    __slots__ = ("limits", "names", "pairs")

    def __init__(self, limits: dict[str, PeriodLimits]) -> None:
        self.limits = []
        for name, by_period in limits.items():
            lname = name.lower().encode()
            client = lname.replace(b"_", b"-")  # (see the module's docstring)
            periods = tuple(PeriodLimit(PERIODS.index(period), period, limit,
                                        (b"x-ratelimit-limit-%b-%b" % (client, period.encode()), lua_string(limit)),
                                        b"x-ratelimit-remaining-%b-%b" % (client, period.encode()))
                            for period, limit in by_period.periods())
            self.limits.append(NamedLimit(name, b"x-ratelimit-remaining-" + lname, periods))
        self.names = {name.encode(): name for name in limits}
        self.pairs = [(named.name, p) for named in self.limits for p in named.periods]

    def usage_keys(self, scope: str, identifier: str, windows: Sequence[tuple[int, int]]) -> list[str]:
        """The counter of every (name, period) configured, in `pairs` order."""
        return [counter_key(scope, identifier, windows[p.slot][0], name, p.period) for name, p in self.pairs]

    def usage_ends(self, windows: Sequence[tuple[int, int]]) -> list[float]:
        """When each counter of `usage_keys` ends (wall seconds): its period's end."""
        return [windows[p.slot][1] for _, p in self.pairs]

    def remaining(self, counts: Sequence[float]) -> list[float]:
        """limit - count, for the counts of `usage_keys`."""
        return [p.limit - count for (_, p), count in zip(self.pairs, counts, strict=True)]

    def violation(self, remaining: Sequence[float]) -> str | None:
        """block_on_first_violation: the first name with a period that has exactly nothing remaining."""
        for (name, _), left in zip(self.pairs, remaining, strict=True):
            if left == 0:
                return name
        return None

    def upstream_headers(self, remaining: Sequence[float]) -> list[tuple[bytes, bytes]]:
        """X-RateLimit-Remaining-<name>: the least remaining of the name's periods."""
        out = []
        i = 0
        for named in self.limits:
            n = len(named.periods)
            out.append((named.upstream_header, lua_string(min(remaining[i:i + n]))))
            i += n
        return out

    def client_headers(self, remaining: Sequence[float], increments: dict[str, int]) -> list[tuple[bytes, bytes]]:
        """X-RateLimit-Limit-<name>-<period> and X-RateLimit-Remaining-<name>-<period> (less this response's
        increment, at least 0)."""
        out = []
        for (name, p), left in zip(self.pairs, remaining, strict=True):
            out.append(p.limit_header)
            out.append((p.remaining_header, lua_string(max(0, left - increments.get(name, 0)))))
        return out

    def exceeded(self, remaining: Sequence[float], increments: dict[str, int]) -> bool:
        """Whether the response becomes a 429: a positive increment for a name with a period already used up."""
        for (name, _), left in zip(self.pairs, remaining, strict=True):
            if left <= 0 and increments.get(name, 0) > 0:
                return True
        return False

    def increments(self, scope: str, identifier: str, windows: Sequence[tuple[int, int]], increments: dict[str, int],
                   now: float) -> list[tuple[str, int, float]]:
        """(key, increment, seconds until its period ends, at least 1) for every period of every name with a
        non-zero increment. `now`: the time of the increment (the windows are those of the request's access)."""
        out = []
        for named in self.limits:
            n = increments.get(named.name, 0)
            if n:
                for index, period in enumerate(PERIODS):
                    start_ms, end = windows[index]
                    out.append((counter_key(scope, identifier, start_ms, named.name, period), n, max(1.0, end - now)))
        return out
