"""The Redis side of policy redis: one Lua script, run atomically by Redis, that hands a host a block of a limit.

One call per key does everything a host has to tell and ask: it registers the host as active, states its claim on
each window (the tokens it holds for it: what it took, less what it gives back, plus what it admitted on its own
while Redis was away), then takes a block. A window is a hash of claims, one field per *claimant*, and its count is
their sum: a claim is idempotent, so a lost reply or a Redis restart that lost its data is repaired by the next call
of every host (the resynchronisation). Blocks shrink
as the limit nears: block = min(want, max(1, room // (2 * hosts active on the key))), the keeper's lease rule one
level up, so the total over all hosts never exceeds the limit and little is stranded at the end of a window.

A claimant is one incarnation of a host's state keeper, `<host>#<incarnation>` (`.<generation>` added for a key
whose state there started afresh: a reset, a changed spec; `/<spec tag>` for each spec counting on the key's
windows, ledger.py rule 11). A restarted keeper starts empty, so under the host's
name alone its first claim (0 plus a block) would overwrite what its earlier incarnation admitted, and Redis would
hand that part of the limit out again (Kong's INCRBY counts are never lowered by a restart). A dead incarnation's
claim stays counted until the window's hash expires: its unspent tokens are lost to the window (under-admission,
never over-admission). Host activity (`hosts`, `<key>|hosts`) is per host name, so a restart adds no host to the
fallback shares or the block sizing.

Keys (all under the plugin's prefix): `hosts` (sorted set: every host that called, by Redis time), `<key>|hosts`
(hosts active on this key), `<key>|bucket` (hash: level, stamp, per-claimant outstanding `o:<claimant>` and last
call `t:<claimant>`), `<key>|<period>|<window start>` (a window's claims, expiring GRACE_S after the window). The
keeper names the windows and hosts by the key's counter, the bucket by the whole key (remote.py rule 6).
The bucket counts tokens leased and not yet reported spent (outstanding) as taken, as the keeper's Ledger does
(rule 4 of ledger.py): it refills only up to capacity - outstanding; a silent claimant's outstanding (a dead
incarnation's too) is written off.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

GRACE_S = 60  # a window's counter outlives the window by this much (clocks of hosts differ a little)

# Redis time is used for host activity and the bucket, so hosts' clocks never mix there.
TAKE_BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local host, want = ARGV[1], tonumber(ARGV[2])
local active_ms, seen_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local rate, cap = tonumber(ARGV[5]), tonumber(ARGV[6])
local spent, back, force, stale_ms = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local claimant = ARGV[11]
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], now, host)
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - seen_ms)
  redis.call('PEXPIRE', KEYS[i], seen_ms)
end
local hosts = redis.call('ZCARD', KEYS[1])
local active = math.max(1, redis.call('ZCOUNT', KEYS[2], now - active_ms, '+inf'))
local nwin = #KEYS - 3
local room = math.huge
local totals = {}
for i = 1, nwin do
  local a = 11 + (i - 1) * 3
  local claims = redis.call('HGETALL', KEYS[3 + i])
  local total = tonumber(ARGV[a + 3])
  for j = 1, #claims, 2 do
    if claims[j] ~= claimant then total = total + tonumber(claims[j + 1]) end
  end
  totals[i] = total
  room = math.min(room, tonumber(ARGV[a + 1]) - total)
end
local level = -1
if cap > 0 then
  local b = KEYS[3]
  local fields = redis.call('HGETALL', b)
  local stored, stamp, outstanding, seen = nil, now, {}, {}
  for i = 1, #fields, 2 do
    local f, v = fields[i], fields[i + 1]
    if f == 'level' then stored = tonumber(v)
    elseif f == 'stamp' then stamp = tonumber(v)
    elseif string.sub(f, 1, 2) == 'o:' then outstanding[string.sub(f, 3)] = tonumber(v)
    elseif string.sub(f, 1, 2) == 't:' then seen[string.sub(f, 3)] = tonumber(v) end
  end
  level = stored or cap
  outstanding[claimant] = math.max(0, (outstanding[claimant] or 0) - spent - back)
  seen[claimant] = now
  level = level + back
  local total = 0
  for h, o in pairs(outstanding) do
    if now - (seen[h] or 0) >= stale_ms then
      redis.call('HDEL', b, 'o:' .. h, 't:' .. h)
      outstanding[h] = nil
    else
      total = total + o
    end
  end
  local ceiling = cap - total
  if level < ceiling and now > stamp then
    level = math.min(ceiling, level + (now - stamp) * rate / 1000)
  end
  level = math.max(-cap, level - force)
  room = math.min(room, math.floor(level))
  local block = 0
  if want > 0 and room >= 1 then
    block = math.min(want, math.max(1, math.floor(room / (2 * active))))
  end
  level = level - block
  outstanding[claimant] = outstanding[claimant] + block
  redis.call('HSET', b, 'level', tostring(level), 'stamp', now, 'o:' .. claimant, outstanding[claimant],
             't:' .. claimant, now)
  redis.call('PEXPIRE', b, math.max(stale_ms, math.ceil((cap - level) / rate * 1000)) + 1000)
  totals.block = block
else
  local block = 0
  if want > 0 and room >= 1 then
    block = math.min(want, math.max(1, math.floor(room / (2 * active))))
  end
  totals.block = block
end
local reply = {totals.block, hosts, active, level == -1 and -1 or math.floor(level * 1000)}
for i = 1, nwin do
  local a = 11 + (i - 1) * 3
  redis.call('HSET', KEYS[3 + i], claimant, tonumber(ARGV[a + 3]) + totals.block)
  redis.call('EXPIREAT', KEYS[3 + i], tonumber(ARGV[a + 2]))
  reply[4 + i] = tonumber(ARGV[a + 1]) - totals[i] - totals.block
end
return reply
"""


class WindowArgs(msgspec.Struct, frozen=True, array_like=True):
    """One window of a call: its hash of claims, its limit and end (wall), and this claimant's claim on it."""

    key: str
    limit: int
    end: float
    claim: int = 0


class Call(msgspec.Struct, frozen=True):
    """Everything one TAKE_BLOCK call sends; `keys` and `args` are what EVALSHA gets."""

    keys: list[str]
    args: list[str]


class Reply(msgspec.Struct, frozen=True):
    """What TAKE_BLOCK answered: the block, hosts seen (store-wide) and active (on the key), the bucket's level
    (None without a bucket) and each window's remaining count after the block."""

    block: int
    hosts: int
    active: int
    level: float | None
    remaining: tuple[int, ...]


def build_call(prefix: str, key: str, host: str, want: int, windows: Sequence[WindowArgs], *, active_s: float,
               seen_s: float, stale_s: float, rate: float = 0.0, capacity: float = 0.0, spent: int = 0,
               back: int = 0, force: int = 0, claimant: str = "", bucket: str = "") -> Call:
    """The KEYS and ARGV of one call (capacity 0: no bucket); the claims are `claimant`'s (`host` when empty); the
    bucket is `<bucket>|bucket` (`key`'s when empty)."""
    keys = [prefix + "hosts", f"{prefix}{key}|hosts", f"{prefix}{bucket or key}|bucket",
            *(prefix + w.key for w in windows)]
    args = [host, str(want), str(int(active_s * 1000)), str(int(seen_s * 1000)), repr(float(rate)),
            repr(float(capacity)), str(spent), str(back), str(force), str(int(stale_s * 1000)), claimant or host]
    for w in windows:
        args += [str(w.limit), str(int(w.end) + GRACE_S), str(w.claim)]
    return Call(keys, args)


class BadReply(ValueError):
    """TAKE_BLOCK's answer is not what the script returns (another script under that name, or a broken reply)."""


def parse_reply(value: object, windows: int) -> Reply:
    """Check and decode the script's answer; anything unexpected raises BadReply, never something else."""
    if not isinstance(value, list | tuple) or len(value) != 4 + windows or \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise BadReply(f"unexpected reply to the rate-limit script: {str(value)[:200]}")
    block, hosts, active, level = value[:4]
    if block < 0 or hosts < 0 or active < 0:
        raise BadReply(f"unexpected reply to the rate-limit script: {str(value)[:200]}")
    return Reply(block, max(1, hosts), max(1, active), None if level == -1 else level / 1000.0,
                 tuple(max(0, v) for v in value[4:]))
