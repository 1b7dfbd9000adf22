"""Kong's queue (kong/tools/queue.lua, kong/tools/queue_schema.lua): batches of log entries or spans handed to a
sender off the request path, bounded, retried with exponential backoff, and never waited for by a request.

- `put` appends and returns: beyond `max_entries` (or `max_bytes` of formatted entries) the oldest entries are
  dropped and counted (gateway_log_queue_dropped_total{reason="full"}), as Kong drops them; an entry longer than
  `max_bytes` is not queued (reason="too_large"). At 80% of max_entries the queue warns, once until it is below.
- A batch goes out when `max_batch_size` entries wait, or `max_coalescing_delay` seconds after its first entry came
  (or, with concurrency_limit 1, after the previous batch was done, if it came while that one was being sent).
- A failed batch is retried after `initial_retry_delay`, doubling, each delay capped at `max_retry_delay`, until a
  try fails more than `max_retry_time` seconds after the first; then it is dropped (reason="retries").
  `concurrency_limit` 1 sends one batch at a time, in order; -1 is Kong's "do not enqueue": each entry is sent at
  once as a batch of its own, concurrently, at most MAX_CONCURRENT_SENDS at once as Kong's timers (max_batch_size,
  max_coalescing_delay and max_bytes then play no part); the entries beyond wait their turn, the oldest dropped
  (reason="full") when more than max_entries wait.
- Kong's log messages (queue.lua's wording and levels); the ones Kong writes for every entry (a full queue, an
  entry too large, an entry that is not a string with max_bytes) at most every WARN_EVERY_S seconds, with a count.
- Entries are formatted (JSON, protobuf) by the queue's task as they come, so the queue holds bytes, not requests.
- At a worker's exit, what a queue still holds once its drain is over (or cut) is lost: logged with the count, as
  Kong logs lost entries, and counted (reason="exit").

Queues are per process and named: plugin instances that send to the same place share one (Kong's queue names). A
queue's metric label and log lines show its `label`: a collector URL in it without its userinfo and query (a
password, a token), which Kong's schema keeps secret (http-log's http_endpoint is `encrypted`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import trio
from prometheus_client import Counter

from gateway.metrics import RECORDER

log = logging.getLogger("gateway.telemetry")

DROPPED = Counter("gateway_log_queue_dropped_total", "Entries a log or trace queue dropped: full (the oldest went "
                  "to make room), too_large (longer than max_bytes), retries (the batch failed for max_retry_time), "
                  "format, or exit (still queued when the worker exited)", ["queue", "reason"])
WARN_EVERY_S = 10.0  # what Kong logs per entry (a full queue...) is logged at most this often (every drop is counted)
CAPACITY_WARNING_THRESHOLD = 0.8  # Kong's: "queue at 80% capacity"
COALESCE_MIN_TIME = 0.05  # Kong's: a shorter max_coalescing_delay collects nothing more (one entry a batch)
LEGACY_WARN_EVERY_S = 60.0  # Kong's MIN_WARNING_INTERVAL_SECONDS for the deprecated queue parameters
WAKE_EVERY = 64  # entries that wake the queue's task while a batch coalesces (each held until then, unformatted)
# sends at once with concurrency_limit -1: Kong's timers run on resty.timerng with at most 1024 threads per worker
# (kong/globalpatches.lua), so at most that many of a queue's sends (and sockets) are open at once
MAX_CONCURRENT_SENDS = 1024
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


_legacy_warned: dict[str, float] = {}


def _legacy_warning(message: str) -> None:
    """Kong's maybe_warn: the same deprecation warning at most once a minute."""
    now = time.monotonic()
    last = _legacy_warned.get(message)
    if last is None or now - last >= LEGACY_WARN_EVERY_S:
        _legacy_warned[message] = now
        log.warning("%s", message)


def apply_legacy_queue(queue: QueueConfig, queue_size: int | None, flush_timeout: float | None,
                       batch_span_count: int | None = None, batch_flush_delay: float | None = None) -> None:
    """Kong's Queue.get_plugin_params for the deprecated plugin fields: a queue_size other than its old default
    (1) is the queue's max_batch_size, a flush_timeout other than 2 its max_coalescing_delay (and opentelemetry's
    batch_span_count other than 200, batch_flush_delay other than 3), each with Kong's deprecation warning."""
    if queue_size is not None and queue_size != 1:
        queue.max_batch_size = queue_size
        _legacy_warning("the queue_size parameter is deprecated, please update your configuration to use "
                        "queue.max_batch_size instead")
    if flush_timeout is not None and flush_timeout != 2:
        queue.max_coalescing_delay = flush_timeout
        _legacy_warning("the flush_timeout parameter is deprecated, please update your configuration to use "
                        "queue.max_coalescing_delay instead")
    if batch_span_count is not None and batch_span_count != 200:
        queue.max_batch_size = batch_span_count
        _legacy_warning("the batch_span_count parameter is deprecated, please update your configuration to use "
                        "queue.max_batch_size instead")
    if batch_flush_delay is not None and batch_flush_delay != 3:
        queue.max_coalescing_delay = float(batch_flush_delay)
        _legacy_warning("the batch_flush_delay parameter is deprecated, please update your configuration to use "
                        "queue.max_coalescing_delay instead")


def public_url(url: str) -> str:
    """`url` as a queue's label shows it: scheme://host:port/path, without the userinfo (the collector's Basic
    credentials), ;params, ?query or #fragment, which may carry a secret (Kong's http_endpoint is `encrypted`)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # (the schemas validated the URL: not expected)
        return "(url)"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path.split(';', 1)[0]}"


_FAILED = object()  # a formatter's failure
Handler = Callable[[list[Any]], Awaitable[None]]  # sends a batch; raises (any Exception) when it failed
Formatter = Callable[[Any], Any]


def _size(entry: Any) -> int:
    """An entry's bytes for max_bytes: a string's length; other entries (the opentelemetry plugin's spans) are not
    counted, as Kong's queue counts only string entries."""
    return len(entry) if type(entry) is bytes or type(entry) is str else 0


def _unsized(entry: Any) -> int:
    return 0


def _is_text(entry: Any) -> bool:
    return type(entry) is bytes or type(entry) is str


class BatchQueue:
    """One named queue: `put` from the log phase, `run` in the worker's telemetry nursery."""

    def __init__(self, name: str, config: QueueConfig, handler: Handler, formatter: Formatter | None = None,
                 sized: bool = True, coalesce: bool = True) -> None:
        """`sized`: the entries are what Kong queues as strings (http-log's JSON), counted against max_bytes;
        False: Kong queues a table (statsd's, zipkin's), which max_bytes does not count. `coalesce` False: a
        max_coalescing_delay under COALESCE_MIN_TIME still takes what waits (tcp-log's queue of its own, delay 0,
        writes everything waiting at once); True is Kong's process_once, one entry a batch then."""
        self.name = name
        self.config = config
        self.handler = handler
        self.formatter = formatter
        self.sized = sized
        self._max_batch = 1 if config.concurrency_limit == -1 or (
            coalesce and config.max_coalescing_delay < COALESCE_MIN_TIME) else config.max_batch_size
        self._size = _size if sized else _unsized
        # put wakes the task while a batch coalesces once this many entries wait: at once with max_bytes (an entry's
        # size is known only formatted, and Kong says what it refuses as it is queued), and in time for the batch
        # to go when full and for Kong's 80% warning as the entries reach it
        self._wake_every = 1 if config.max_bytes is not None else WAKE_EVERY
        self._wake_at = min(self._max_batch, math.ceil(config.max_entries * CAPACITY_WARNING_THRESHOLD))
        self._raw: list[Any] = []  # put here by requests; formatted by the task
        self._entries: deque[Any] = deque()
        self._bytes = 0
        self._first_at = 0.0  # when the oldest waiting entry came (Trio clock)
        self._wake: trio.Event | None = None
        self._coalescing = False  # the task waits out max_coalescing_delay for the batch it has begun
        self._busy = 0  # batches being sent (or retried)
        self._unsent = 0  # entries of the batches given to _deliver that were neither sent nor dropped (cancelled)
        self._capacity_warned = False  # Kong's self.warned: "queue at 80% capacity" logged, not yet below it
        self._dropping = False  # Kong's already_dropped_entries: "queue resumed processing" when a batch is taken
        self._reported: dict[str, tuple[float, int]] = {}  # what is logged per entry: (last logged, count since)
        self._idle: trio.Event | None = None

    def put(self, entry: Any) -> None:
        """Queue an entry; never blocks. Formatting and the bounds are applied by the queue's task, woken by the
        first entry, or while a batch coalesces (it has its first) only once a batch is full or WAKE_EVERY came:
        a task switch per request cost more than formatting the entry."""
        raw = self._raw
        raw.append(entry)
        n = len(raw)
        if self._wake is not None and (n >= self._wake_every or n + len(self._entries) >= self._wake_at
                                       or (n == 1 and not self._coalescing)):
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
        if config.concurrency_limit == -1:  # Kong's "do not enqueue": sent at once while a send is free
            for item in raw:
                if formatter is not None and (item := self._format(formatter, item)) is _FAILED:
                    continue
                entries.append(item)
            room = max(0, MAX_CONCURRENT_SENDS - self._busy) + config.max_entries
            if len(entries) > room:  # more than max_entries would wait for a send: the oldest go
                full = len(entries) - room
                for _ in range(full):
                    entries.popleft()
                RECORDER.count(DROPPED, (self.name, "full"), full)
                self._dropping = True
                self._report(now, "full", logging.ERROR, "queue full, dropping old entries until processing is "
                             "successful again", count=full)
            return
        max_entries = config.max_entries
        threshold = max_entries * CAPACITY_WARNING_THRESHOLD
        max_bytes = config.max_bytes
        size_of = self._size
        full = 0
        for item in raw:  # Kong's enqueue, entry by entry
            if formatter is not None and (item := self._format(formatter, item)) is _FAILED:
                continue
            count = len(entries)
            if count >= threshold:
                if not self._capacity_warned:
                    log.warning("queue %s: queue at %d%% capacity", self.name, CAPACITY_WARNING_THRESHOLD * 100)
                    self._capacity_warned = True
                if count >= max_entries:
                    old = entries.popleft()
                    full += 1
                    if max_bytes is not None:
                        self._bytes -= size_of(old)
            else:
                self._capacity_warned = False
            if max_bytes is not None:
                size = size_of(item)
                if not self.sized or not _is_text(item):
                    self._report(now, "untyped", logging.ERROR, "queuing non-string entry to a queue that has "
                                 "queue.max_bytes set, capacity monitoring will not be correct")
                elif size > max_bytes:
                    self._report(now, "too_large", logging.ERROR, "string to be queued is longer (%d bytes) than "
                                 "the queue's max_bytes (%d bytes)", size, max_bytes)
                    RECORDER.count(DROPPED, (self.name, "too_large"))
                    continue
                if self._bytes + size > max_bytes:
                    dropped = 0
                    while self._bytes + size > max_bytes:
                        self._bytes -= size_of(entries.popleft())
                        dropped += 1
                    RECORDER.count(DROPPED, (self.name, "full"), dropped)
                    self._dropping = True
                    self._report(now, "bytes", logging.ERROR, "byte capacity exceeded, %d queue entries were "
                                 "dropped", dropped, count=dropped)
                self._bytes += size
            entries.append(item)
        if full:
            RECORDER.count(DROPPED, (self.name, "full"), full)
            self._dropping = True
            self._report(now, "full", logging.ERROR, "queue full, dropping old entries until processing is "
                         "successful again", count=full)

    def _format(self, formatter: Formatter, item: Any) -> Any:
        try:
            return formatter(item)
        except Exception:
            log.exception("queue %s: could not format an entry; dropped", self.name)
            RECORDER.count(DROPPED, (self.name, "format"))
            return _FAILED

    def _report(self, now: float, kind: str, level: int, message: str, *args: Any, count: int = 1) -> None:
        """Log what Kong logs for every entry at most every WARN_EVERY_S seconds, the count since then with it."""
        last, since = self._reported.get(kind, (-WARN_EVERY_S, 0))
        since += count
        if now < last + WARN_EVERY_S:
            self._reported[kind] = (last, since)
            return
        self._reported[kind] = (now, 0)
        if since > count:  # (the counts of what was not logged; the metric has every drop)
            what = "entries dropped" if kind == "full" or kind == "bytes" else "times"
            message += f" ({since} {what} in the last {now - last:.0f}s)"
        log.log(level, "queue %s: " + message, self.name, *args)

    def _batch(self) -> list[Any]:
        entries = self._entries
        n = min(self._max_batch, len(entries))
        batch = [entries.popleft() for _ in range(n)]
        if self.config.max_bytes is not None and self.config.concurrency_limit == 1:  # (-1 does not count)
            size_of = self._size
            self._bytes -= sum(size_of(e) for e in batch)
        if self._dropping:
            self._dropping = False
            self._report(trio.current_time(), "resumed", logging.INFO, "queue resumed processing")
        return batch

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Form and send batches until cancelled. Entries keep being formatted and bounded while a batch is sent
        (or retried), so a collector that is down costs at most the queue's bounds."""
        config = self.config
        sends = 1 if config.concurrency_limit == 1 else MAX_CONCURRENT_SENDS  # batches sent at once
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    self._take_raw(trio.current_time())
                    if not self._entries or self._busy >= sends:
                        await self._wait()
                        continue
                    if len(self._entries) < self._max_batch and config.concurrency_limit == 1:
                        deadline = self._first_at + config.max_coalescing_delay
                        if trio.current_time() < deadline:
                            self._coalescing = True
                            try:
                                with trio.move_on_at(deadline):
                                    await self._wait()
                            finally:
                                self._coalescing = False
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
        self._unsent += len(batch)
        try:
            await self._deliver_retrying(batch)
            self._unsent -= len(batch)  # sent or dropped, and counted: only a cancelled send stays unsent
        finally:
            if self.config.concurrency_limit == 1:  # Kong's next batch starts coalescing once this one is done
                self._first_at = trio.current_time()
            self._busy -= 1
            if not self._busy and self._idle is not None:
                self._idle.set()
            if self._wake is not None:
                self._wake.set()

    async def _deliver_retrying(self, batch: list[Any]) -> None:
        """Kong's handle(): a failed try is retried after initial_retry_delay * 2^retries (at most max_retry_delay)
        until a try fails more than max_retry_time seconds after the first began."""
        config = self.config
        started = trio.current_time()
        # Kong's 2 ^ retry_count * initial_retry_delay is a double, inf past 2^1023 and then capped: doubled here
        # from the capped delay (the same values), never a power too large for a float
        delay = min(config.max_retry_delay, config.initial_retry_delay)
        while True:
            try:
                await self.handler(batch)
            except Exception as e:
                log.warning("queue %s: handler could not process entries: %s", self.name, e)
                if trio.current_time() - started > config.max_retry_time:
                    log.error("queue %s: could not send entries due to max_retry_time exceeded. %d queue entries "
                              "were lost", self.name, len(batch))
                    RECORDER.count(DROPPED, (self.name, "retries"), len(batch))
                    return
                await trio.sleep(delay)
                delay = min(config.max_retry_delay, delay * 2)
            else:
                RECORDER.count(SENT, (self.name,), len(batch))
                return

    async def drain(self) -> None:
        """Send everything queued (whatever the coalescing delay), in batches of max_batch_size, after the batches in
        flight, as Kong's queue does on a worker's exit. The queue's task may still run: a batch it starts meanwhile
        is waited for too (nothing is left half-sent when the caller cancels the task), and sent one at a time."""
        while True:
            while self._busy and self._idle is not None:
                await self._idle.wait()
            self._take_raw(trio.current_time())
            if not self._entries:
                return
            self._started()
            await self._deliver(self._batch())

    def discard(self) -> None:
        """At a worker's exit, once the queue's task is over: what the queue still holds (waiting, or in a batch
        whose send was cancelled) is lost. Logged with the count, as Kong logs lost entries (queue.lua:345-347), and
        counted (reason="exit")."""
        lost = len(self._entries) + len(self._raw) + self._unsent
        self._entries.clear()
        self._raw = []
        self._bytes = self._unsent = 0
        if lost:
            RECORDER.count(DROPPED, (self.name, "exit"), lost)
            log.error("queue %s: could not send entries before the worker's exit. %d queue entries were lost",
                      self.name, lost)


class Queues:
    """The process's queues by name, and the nursery their tasks run in (queues made later start there too)."""

    def __init__(self) -> None:
        self.queues: dict[str, BatchQueue] = {}
        self._nursery: trio.Nursery | None = None
        self._stopped = trio.Event()  # run is over (set again when it runs)
        self._stopped.set()

    def queue_for(self, name: str, config: QueueConfig, handler: Handler, formatter: Formatter | None = None,
                  settings: object = None, sized: bool = True, coalesce: bool = True,
                  label: str | None = None) -> BatchQueue:
        """The queue named `name` for these settings: plugin instances with the same name and settings (the queue's
        and the sender's, `settings`) share one, as Kong shares queues by name; other settings get their own. The
        newest instance's handler and formatter serve it: a reload's other changes (a datadog plugin's tag names,
        say) apply to what is queued from then on. `label`: the name its metrics and log lines show (default
        `name`), a collector URL in it as public_url gives it."""
        key = f"{name}\0{msgspec.json.encode(config).decode()}\0{msgspec.json.encode(settings).decode()}"
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = BatchQueue(label or name, config, handler, formatter, sized, coalesce)
            if self._nursery is not None:
                self._nursery.start_soon(queue.run)
        else:
            queue.handler, queue.formatter = handler, formatter
        return queue

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The queues' tasks, until cancelled or closed."""
        self._stopped = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                for queue in self.queues.values():
                    await nursery.start(queue.run)
                self._nursery = nursery
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self._nursery = None
        finally:
            self._stopped.set()

    async def drain(self) -> None:
        """Drain every queue, each in a task of its own, as Kong's queues each flush from a timer of their own at a
        worker's exit: a collector that cannot be reached keeps its own queue retrying, not the others waiting."""
        async with trio.open_nursery() as nursery:
            for queue in list(self.queues.values()):
                nursery.start_soon(queue.drain)

    async def close(self) -> None:
        """At a worker's exit, after the drain: stop the queues' tasks (a send in progress is cancelled) and discard
        what they still hold, each queue's loss logged and counted."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        await self._stopped.wait()
        for queue in self.queues.values():
            queue.discard()


QUEUES = Queues()
