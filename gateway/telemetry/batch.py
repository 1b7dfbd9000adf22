"""Kong's queue (kong/tools/queue.lua, kong/tools/queue_schema.lua): batches of log entries or spans handed to a
sender off the request path, bounded, retried with exponential backoff, and never waited for by a request.

- `put` appends and returns: beyond `max_entries` (or `max_bytes` of formatted entries) the oldest entries are
  dropped and counted (gateway_log_queue_dropped_total{reason="full"}), as Kong drops them.
- A batch goes out when `max_batch_size` entries wait, or `max_coalescing_delay` seconds after its first entry came.
- A failed batch is retried after `initial_retry_delay`, doubling up to `max_retry_delay`, until `max_retry_time`
  seconds have passed since its first try; then it is dropped (reason="retries"). `concurrency_limit` 1 sends one
  batch at a time, in order; -1 is Kong's "do not enqueue": each entry is sent at once as a batch of its own, all
  of them concurrently (max_batch_size and max_coalescing_delay then play no part).
- Entries are formatted (JSON, protobuf) by the queue's task as they come, so the queue holds bytes, not requests.

Queues are per process and named: plugin instances that send to the same place share one (Kong's queue names).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import msgspec
import trio
from prometheus_client import Counter

from gateway.metrics import RECORDER

log = logging.getLogger("gateway.telemetry")

DROPPED = Counter("gateway_log_queue_dropped_total", "Entries a log or trace queue dropped: full (the oldest went "
                  "to make room) or retries (the batch failed for max_retry_time)", ["queue", "reason"])
WARN_EVERY_S = 10.0  # a full queue is logged at most this often (every drop is counted)
SENT = Counter("gateway_log_queue_sent_total", "Entries a log or trace queue delivered", ["queue"])


class QueueConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Kong's typedefs.queue, with its defaults and bounds."""

    max_batch_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    max_coalescing_delay: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0
    max_entries: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10000
    max_bytes: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_retry_time: float = 60.0  # -1 (any negative): no retry
    initial_retry_delay: Annotated[float, msgspec.Meta(ge=0.001, le=1_000_000)] = 0.01
    max_retry_delay: Annotated[float, msgspec.Meta(ge=0.001, le=1_000_000)] = 60.0
    concurrency_limit: Literal[-1, 1] = 1


def apply_legacy_queue(queue: QueueConfig, queue_size: int | None, flush_timeout: float | None) -> None:
    """Kong's Queue.get_plugin_params for the deprecated log-plugin fields: a queue_size other than its old default
    (1) is the queue's max_batch_size, a flush_timeout other than 2 its max_coalescing_delay."""
    if queue_size is not None and queue_size != 1:
        queue.max_batch_size = queue_size
    if flush_timeout is not None and flush_timeout != 2:
        queue.max_coalescing_delay = flush_timeout


Handler = Callable[[list[Any]], Awaitable[None]]  # sends a batch; raises (any Exception) when it failed
Formatter = Callable[[Any], Any]


def _size(entry: Any) -> int:
    """An entry's bytes for max_bytes: a string's length; other entries (the opentelemetry plugin's spans) are not
    counted, as Kong's queue counts only string entries."""
    return len(entry) if type(entry) is bytes or type(entry) is str else 0


class BatchQueue:
    """One named queue: `put` from the log phase, `run` in the worker's telemetry nursery."""

    def __init__(self, name: str, config: QueueConfig, handler: Handler, formatter: Formatter | None = None) -> None:
        self.name = name
        self.config = config
        self.handler = handler
        self.formatter = formatter
        self._raw: list[Any] = []  # put here by requests; formatted by the task
        self._entries: deque[Any] = deque()
        self._bytes = 0
        self._first_at = 0.0  # when the oldest waiting entry came (Trio clock)
        self._wake: trio.Event | None = None
        self._busy = 0  # batches being sent (or retried)
        self._dropped = 0  # entries dropped since the last warning
        self._warned_at = -WARN_EVERY_S
        self._idle: trio.Event | None = None

    def put(self, entry: Any) -> None:
        """Queue an entry; never blocks. Formatting and the bounds are applied by the queue's task."""
        self._raw.append(entry)
        if len(self._raw) == 1 and self._wake is not None:
            self._wake.set()

    def __len__(self) -> int:
        return len(self._entries) + len(self._raw)

    def _take_raw(self, now: float) -> None:
        raw, self._raw = self._raw, []
        if not raw:
            return
        if not self._entries:
            self._first_at = now
        formatter = self.formatter
        config = self.config
        entries = self._entries
        for item in raw:
            if formatter is not None:
                try:
                    item = formatter(item)
                except Exception:
                    log.exception("queue %s: could not format an entry; dropped", self.name)
                    RECORDER.count(DROPPED, (self.name, "format"))
                    continue
            entries.append(item)
            if config.max_bytes is not None:
                self._bytes += _size(item)
        dropped = 0
        while len(entries) > config.max_entries or (config.max_bytes is not None and self._bytes > config.max_bytes
                                                    and len(entries) > 1):
            old = entries.popleft()
            dropped += 1
            if config.max_bytes is not None:
                self._bytes -= _size(old)
        if dropped:
            RECORDER.count(DROPPED, (self.name, "full"), dropped)
            self._dropped += dropped
            if now >= self._warned_at + WARN_EVERY_S:
                log.warning("queue %s: full (max_entries %d): dropped the %d oldest entries since the last warning",
                            self.name, config.max_entries, self._dropped)
                self._warned_at, self._dropped = now, 0

    def _batch(self) -> list[Any]:
        entries = self._entries
        n = 1 if self.config.concurrency_limit == -1 else min(self.config.max_batch_size, len(entries))
        batch = [entries.popleft() for _ in range(n)]
        if self.config.max_bytes is not None:
            self._bytes -= sum(_size(e) for e in batch)
        if entries:
            self._first_at = trio.current_time()  # the rest waits its own coalescing delay from now
        return batch

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Form and send batches until cancelled. Entries keep being formatted and bounded while a batch is sent
        (or retried), so a collector that is down costs at most the queue's bounds."""
        config = self.config
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    self._take_raw(trio.current_time())
                    if not self._entries or (config.concurrency_limit == 1 and self._busy):
                        await self._wait()
                        continue
                    if len(self._entries) < config.max_batch_size and config.concurrency_limit == 1:
                        deadline = self._first_at + config.max_coalescing_delay
                        if trio.current_time() < deadline:
                            with trio.move_on_at(deadline):
                                await self._wait()
                            continue
                    self._started()
                    nursery.start_soon(self._deliver, self._batch())
        finally:
            self._wake = None

    async def _wait(self) -> None:
        """Until an entry is put or a batch is delivered."""
        self._wake = trio.Event()
        if self._raw:
            return
        await self._wake.wait()

    def _started(self) -> None:
        self._busy += 1
        if self._idle is not None and self._idle.is_set():
            self._idle = trio.Event()

    async def _deliver(self, batch: list[Any]) -> None:
        """Send one batch, retrying as the config says (the caller counted it in `_busy`)."""
        try:
            await self._deliver_retrying(batch)
        finally:
            self._busy -= 1
            if not self._busy and self._idle is not None:
                self._idle.set()
            if self._wake is not None:
                self._wake.set()

    async def _deliver_retrying(self, batch: list[Any]) -> None:
        config = self.config
        started = trio.current_time()
        delay = config.initial_retry_delay
        while True:
            try:
                await self.handler(batch)
            except Exception as e:
                waited = trio.current_time() - started
                if config.max_retry_time < 0 or waited + delay > config.max_retry_time:
                    log.error("queue %s: could not send a batch of %d entries in %.1fs (%s); dropped", self.name,
                              len(batch), waited, e)
                    RECORDER.count(DROPPED, (self.name, "retries"), len(batch))
                    return
                log.info("queue %s: sending a batch of %d failed (%s); retrying in %gs", self.name, len(batch), e,
                         delay)
                await trio.sleep(delay)
                delay = min(delay * 2, config.max_retry_delay)
            else:
                RECORDER.count(SENT, (self.name,), len(batch))
                return

    async def drain(self) -> None:
        """Send everything queued now (whatever the coalescing delay), after the batches in flight."""
        if self._idle is not None:
            await self._idle.wait()
        self._take_raw(trio.current_time())
        while self._entries:
            self._started()
            await self._deliver(self._batch())


class Queues:
    """The process's queues by name, and the nursery their tasks run in (queues made later start there too)."""

    def __init__(self) -> None:
        self.queues: dict[str, BatchQueue] = {}
        self._nursery: trio.Nursery | None = None

    def queue_for(self, name: str, config: QueueConfig, handler: Handler, formatter: Formatter | None = None,
                  settings: object = None) -> BatchQueue:
        """The queue named `name` for these settings: plugin instances with the same name and settings (the queue's
        and the sender's, `settings`) share one, as Kong shares queues by name; other settings get their own. The
        newest instance's handler and formatter serve it: a reload's other changes (a datadog plugin's tag names,
        say) apply to what is queued from then on."""
        key = f"{name}\0{msgspec.json.encode(config).decode()}\0{msgspec.json.encode(settings).decode()}"
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = BatchQueue(name, config, handler, formatter)
            if self._nursery is not None:
                self._nursery.start_soon(queue.run)
        else:
            queue.handler, queue.formatter = handler, formatter
        return queue

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for queue in self.queues.values():
                await nursery.start(queue.run)
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def drain(self) -> None:
        for queue in list(self.queues.values()):
            await queue.drain()


QUEUES = Queues()
