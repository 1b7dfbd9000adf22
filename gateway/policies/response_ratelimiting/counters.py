"""Where response-ratelimiting's counters live, behind Kong's two calls: `usage` (read in access) and `increment`
(after the response, not awaited).

- local: the host's counters, held by the state keeper (Kong: the nginx shared dict all workers of the host share),
  read with one call per request and added to without waiting (SharedState.counters_usage / counters_add). Kong's
  shared dict cannot fail to be read (policies/init.lua:150-160), so neither can these: with the keeper away, each
  worker answers from what it knows of them, and a keeper restarted hears what each worker added
  (gateway/stores/counters.py rules 5-7).
- redis: Redis, from the worker, as Kong's policy: the counts with a GET per key, as Kong's (an ACL user allowed
  Kong's commands may not run MGET), pipelined in one round trip; the increments with INCRBY and EXPIRE per key in
  a pipeline. Increments are queued and sent by a task of the worker (the policy's `background`); what queued up
  while one pipeline was out goes in the next, summed per key.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import trio

from gateway.ratelimit.redis_client import RedisSettings, RedisStore, StoreError

log = logging.getLogger("gateway.policies.response_ratelimiting")

PENDING_LIMIT = 10_000  # increments (one per response) waiting for Redis; beyond, new ones are dropped and logged
BATCH_LIMIT = 1_000  # responses' increments in one pipeline


class UsageError(Exception):
    """The counts could not be read (Kong's "failed to get usage")."""


class LocalCounters:
    """policy local: the state keeper's host-wide counters (`shared` is the worker's SharedState; None when the
    config is only checked)."""

    def __init__(self, shared: Any) -> None:
        self.shared = shared

    async def usage(self, keys: list[str], ends: list[float]) -> list[float]:
        """The counters' values; `ends`: when each key's period ends (wall). Never fails (Kong's shm:get)."""
        if self.shared is None:
            raise UsageError("no state keeper: the configuration is only being checked")
        return await self.shared.counters_usage(keys, ends)

    def increment(self, items: list[tuple[str, int, float]]) -> None:
        if self.shared is not None:
            self.shared.counters_add(items)


class RedisCounters:
    """policy redis: the counters in Redis; `run` (in the worker's nursery) owns the client and sends increments."""

    def __init__(self, settings: RedisSettings) -> None:
        self.redis = RedisStore(settings)
        self._queue, self._pending = trio.open_memory_channel[list[tuple[str, int, float]]](PENDING_LIMIT)
        self._dropped = 0

    async def usage(self, keys: list[str], ends: list[float]) -> list[float]:
        """The counters' values from Redis (`ends` is the local policy's); UsageError when Redis fails."""
        async def gets(client: Any) -> tuple[Any, ...]:
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
            return pipe.results or ()

        try:
            replies = await self.redis.run(gets)
        except StoreError as e:
            raise UsageError(str(e)) from None
        return [_count(reply) for reply in replies]

    def increment(self, items: list[tuple[str, int, float]]) -> None:
        try:
            self._queue.send_nowait(items)
        except trio.WouldBlock:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % PENDING_LIMIT == 0:
                log.error("response-ratelimiting: %d increments dropped: Redis at %s does not keep up",
                          self._dropped, self.redis.settings.address)

    async def run(self) -> None:
        """Keep the Redis client, and send the queued increments, forever."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.redis.serve)
            while True:
                batch = [await self._pending.receive()]
                while len(batch) < BATCH_LIMIT:
                    try:
                        batch.append(self._pending.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self._send(batch)

    async def _send(self, batch: list[list[tuple[str, int, float]]]) -> None:
        summed: dict[str, list[float]] = {}  # key -> [increment, ttl]
        for items in batch:
            for key, n, ttl in items:
                found = summed.get(key)
                if found is None:
                    summed[key] = [n, ttl]
                else:
                    found[0] += n
                    found[1] = max(found[1], ttl)

        async def pipeline(client: Any) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for key, (n, ttl) in summed.items():
                    pipe.incrby(key, int(n))
                    pipe.expire(key, math.ceil(ttl))

        try:
            await self.redis.run(pipeline)
        except StoreError as e:
            log.error("response-ratelimiting: could not increment %d counters: %s", len(summed), e)


def _count(reply: bytes | None) -> float:
    """A counter's value as Redis answers it: absent is 0."""
    if reply is None:
        return 0
    try:
        return int(reply)
    except ValueError:
        raise UsageError(f"counter value {reply[:40]!r} is not a number") from None
