"""Kong's queue semantics (kong/tools/queue.lua) on a mock clock: batching, bounds, retries, concurrency, drain."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gateway.metrics import RECORDER
from gateway.telemetry.batch import DROPPED, BatchQueue, QueueConfig, Queues, apply_legacy_queue
from gateway.telemetry.service import DRAIN_S


class Collector:
    """A handler that records batches (with the time) and fails while `down`."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list]] = []
        self.attempts: list[float] = []
        self.down = False
        self.hold: trio.Event | None = None
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, batch: list) -> None:
        self.attempts.append(trio.current_time())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.down:
                raise ConnectionError("collector down")
            self.batches.append((trio.current_time(), list(batch)))
        finally:
            self.in_flight -= 1


@pytest.fixture
def autojump(autojump_clock):  # noqa: ANN001,ANN201
    return autojump_clock


async def _run(queue: BatchQueue, nursery: trio.Nursery) -> None:
    await nursery.start(queue.run)


async def test_a_full_batch_goes_at_once(nursery, autojump):
    sink = Collector()
    queue = BatchQueue("q", QueueConfig(max_batch_size=3, max_coalescing_delay=60), sink)
    await _run(queue, nursery)
    start = trio.current_time()
    for i in range(3):
        queue.put(i)
    await trio.sleep(0.001)
    assert [b for _, b in sink.batches] == [[0, 1, 2]] and sink.batches[0][0] - start < 0.01


async def test_a_partial_batch_waits_the_coalescing_delay(nursery, autojump):
    sink = Collector()
    queue = BatchQueue("q", QueueConfig(max_batch_size=10, max_coalescing_delay=2), sink)
    await _run(queue, nursery)
    start = trio.current_time()
    queue.put("a")
    await trio.sleep(1)
    queue.put("b")
    await trio.sleep(5)
    assert [b for _, b in sink.batches] == [["a", "b"]]
    assert sink.batches[0][0] - start == pytest.approx(2, abs=0.01)  # from the first entry, not the last


async def test_beyond_max_entries_the_oldest_are_dropped_and_counted(nursery, autojump):
    sink = Collector()
    sink.down = True
    queue = BatchQueue("bounded", QueueConfig(max_batch_size=1, max_entries=5, max_retry_time=1000,
                                              initial_retry_delay=100, max_retry_delay=100), sink)
    await _run(queue, nursery)
    RECORDER.flush()
    before = DROPPED.labels("bounded", "full")._value.get()
    for i in range(20):
        queue.put(i)
        await trio.sleep(0.01)
    assert len(queue) == 5  # one batch is being retried; five wait: the newest
    RECORDER.flush()
    assert DROPPED.labels("bounded", "full")._value.get() - before == 20 - 5 - 1
    sink.down = False
    await trio.sleep(500)
    assert [b[0] for _, b in sink.batches] == [0, 15, 16, 17, 18, 19]


async def test_a_failed_batch_is_retried_with_doubling_delays_then_dropped(nursery, autojump):
    sink = Collector()
    sink.down = True
    queue = BatchQueue("retry", QueueConfig(max_retry_time=20, initial_retry_delay=1, max_retry_delay=4), sink)
    await _run(queue, nursery)
    RECORDER.flush()
    before = DROPPED.labels("retry", "retries")._value.get()
    start = trio.current_time()
    queue.put("x")
    await trio.sleep(60)
    gaps = [round(b - a, 3) for a, b in zip(sink.attempts, sink.attempts[1:], strict=False)]
    assert round(sink.attempts[0] - start, 3) == 0
    # doubling, capped at max_retry_delay; Kong's handle() drops the batch when a try fails more than max_retry_time
    # after the first (the try at 19 s did not, so one more comes at 23 s)
    assert gaps == [1, 2, 4, 4, 4, 4, 4]
    RECORDER.flush()
    assert DROPPED.labels("retry", "retries")._value.get() - before == 1


async def test_negative_max_retry_time_means_no_retry(nursery, autojump):
    sink = Collector()
    sink.down = True
    queue = BatchQueue("noretry", QueueConfig(max_retry_time=-1), sink)
    await _run(queue, nursery)
    queue.put("x")
    await trio.sleep(10)
    assert len(sink.attempts) == 1


async def test_concurrency_limit_one_sends_in_order_one_at_a_time(nursery, autojump):
    sink = Collector()
    sink.hold = trio.Event()
    queue = BatchQueue("serial", QueueConfig(max_batch_size=1), sink)
    await _run(queue, nursery)
    for i in range(3):
        queue.put(i)
    await trio.sleep(1)
    assert sink.in_flight == 1
    sink.hold.set()
    await trio.sleep(1)
    assert [b for _, b in sink.batches] == [[0], [1], [2]] and sink.max_in_flight == 1


async def test_concurrency_limit_minus_one_sends_batches_in_parallel(nursery, autojump):
    sink = Collector()
    sink.hold = trio.Event()
    queue = BatchQueue("parallel", QueueConfig(max_batch_size=1, concurrency_limit=-1), sink)
    await _run(queue, nursery)
    for i in range(3):
        queue.put(i)
    await trio.sleep(1)
    assert sink.in_flight == 3
    sink.hold.set()
    await trio.sleep(1)
    assert sorted(b[0] for _, b in sink.batches) == [0, 1, 2]


async def test_concurrency_limit_minus_one_sends_each_entry_at_once_alone(nursery, autojump):
    """kong/tools/queue.lua: with concurrency_limit -1 an entry is not enqueued but handed to the handler at once,
    as a batch of one, whatever max_batch_size and max_coalescing_delay say."""
    sink = Collector()
    queue = BatchQueue("unqueued", QueueConfig(max_batch_size=10, max_coalescing_delay=60, concurrency_limit=-1),
                       sink)
    await _run(queue, nursery)
    start = trio.current_time()
    for i in range(3):
        queue.put(i)
    await trio.sleep(0.001)
    assert sorted(b for _, b in sink.batches) == [[0], [1], [2]]
    assert all(at - start < 0.01 for at, _ in sink.batches)


async def test_drain_sends_what_waits_without_the_delay(nursery, autojump):
    sink = Collector()
    queue = BatchQueue("drain", QueueConfig(max_batch_size=100, max_coalescing_delay=3600), sink)
    await _run(queue, nursery)
    for i in range(5):
        queue.put(i)
    start = trio.current_time()
    await queue.drain()
    assert [b for _, b in sink.batches] == [[0, 1, 2, 3, 4]] and trio.current_time() - start < 1


async def test_a_queue_whose_collector_is_down_keeps_no_other_queue_from_draining(nursery, autojump):
    """Kong's queues each run in a timer of their own (queue.lua:243-251) and at a worker's exit each sends what it
    holds (queue.lua:406-412): one retrying a collector that is down for all of WorkerTelemetry.drain's DRAIN_S must
    not keep a healthy queue after it from sending (drained one after the other, its entries were lost)."""
    delivered: list[str] = []

    async def down(batch: list[str]) -> None:
        raise OSError("connection refused")

    async def healthy(batch: list[str]) -> None:
        delivered.extend(batch)

    queues = Queues()
    failing = queues.queue_for("down", QueueConfig(), down)  # (first: drained first)
    flushing = queues.queue_for("up", QueueConfig(max_batch_size=1000, max_coalescing_delay=1000), healthy)
    await nursery.start(queues.run)
    failing.put("lost-anyway")
    flushing.put("must-be-sent")
    await trio.sleep(0.1)
    with trio.move_on_after(DRAIN_S):
        await queues.drain()
    assert delivered == ["must-be-sent"]


async def test_entries_are_formatted_by_the_queue_not_by_put(nursery, autojump):
    sink = Collector()
    formatted = []
    queue = BatchQueue("fmt", QueueConfig(), sink, formatter=lambda x: formatted.append(x) or f"<{x}>")
    queue.put(1)
    assert formatted == []
    await _run(queue, nursery)
    await trio.sleep(2)
    assert formatted == [1] and [b for _, b in sink.batches] == [["<1>"]]


async def test_entries_put_while_a_batch_coalesces_wait_for_one_wake_of_the_queue(nursery, autojump):
    """The first entry wakes the queue's task (the batch's delay starts); later ones are formatted together when the
    batch is full, WAKE_EVERY came, or the delay ends: a task switch per request cost more than its entry."""
    sink = Collector()
    formatted: list[tuple[int, float]] = []
    queue = BatchQueue("wake", QueueConfig(max_batch_size=200, max_coalescing_delay=1), sink,
                       formatter=lambda x: formatted.append((x, trio.current_time())) or x)
    await _run(queue, nursery)
    start = trio.current_time()
    for i in range(10):
        queue.put(i)
        await trio.sleep(0.01)
    assert [x for x, _ in formatted] == [0]  # the rest wait, unformatted
    await trio.sleep(2)
    assert [x for x, _ in formatted] == list(range(10)) and [b for _, b in sink.batches] == [list(range(10))]
    assert sink.batches[0][0] - start == pytest.approx(1.0, abs=0.01)  # the delay counted from the first entry


async def test_a_batch_filled_while_coalescing_goes_at_once(nursery, autojump):
    sink = Collector()
    queue = BatchQueue("fill", QueueConfig(max_batch_size=5, max_coalescing_delay=60), sink)
    await _run(queue, nursery)
    queue.put(0)
    await trio.sleep(0.01)
    start = trio.current_time()
    for i in range(1, 5):
        queue.put(i)
        await trio.sleep(0.001)
    await trio.sleep(0.01)
    assert [b for _, b in sink.batches] == [[0, 1, 2, 3, 4]] and sink.batches[0][0] - start < 0.02


async def test_max_bytes_bounds_formatted_entries(nursery, autojump):
    sink = Collector()
    sink.down = True
    queue = BatchQueue("bytes", QueueConfig(max_bytes=10, initial_retry_delay=100, max_retry_time=1000,
                                            max_retry_delay=100), sink, formatter=lambda x: x)
    await _run(queue, nursery)
    for item in (b"aaaa", b"bbbb", b"cccc", b"dddd"):
        queue.put(item)
        await trio.sleep(0.01)
    assert len(queue) == 2  # "aaaa" in flight; of the rest only 8 bytes fit in 10


async def test_max_bytes_does_not_count_entries_that_are_not_strings(nursery, autojump):
    """kong/tools/queue.lua: only string entries have a size; others (opentelemetry's spans) are queued uncounted."""
    sink = Collector()
    sink.down = True
    queue = BatchQueue("spans", QueueConfig(max_bytes=10, initial_retry_delay=100, max_retry_time=1000,
                                            max_retry_delay=100), sink, formatter=lambda x: object())
    await _run(queue, nursery)
    for item in range(4):
        queue.put(item)
        await trio.sleep(0.01)
    assert len(queue) == 3  # one in flight, three waiting: none dropped, the task still running
    queue.put(5)
    await trio.sleep(0.01)
    assert len(queue) == 4


@pytest.mark.parametrize(("queue_size", "flush_timeout", "expected"), [
    (None, None, (1, 1.0)), (7, 3, (7, 3)), (1, 2, (1, 1.0)),  # the old defaults change nothing
    (1, 0, (1, 0)), (5, 2, (5, 1.0)),
])
def test_the_deprecated_queue_fields_apply_as_kongs_get_plugin_params_applies_them(queue_size, flush_timeout,
                                                                                    expected):
    queue = QueueConfig()
    apply_legacy_queue(queue, queue_size, flush_timeout)
    assert (queue.max_batch_size, queue.max_coalescing_delay) == expected


def test_the_deprecated_queue_fields_win_over_the_queue_as_in_kong():
    queue = QueueConfig(max_batch_size=50, max_coalescing_delay=5)
    apply_legacy_queue(queue, 7, 3)
    assert (queue.max_batch_size, queue.max_coalescing_delay) == (7, 3)


async def test_a_shared_queue_is_served_by_its_newest_instances_handler_and_formatter():
    """Two instances with the same name and settings share a queue (Kong's); the newer one's formatter and handler
    apply, so a reload's change that the settings do not show (a datadog plugin's tag names) is not ignored."""
    queues = Queues()
    first = queues.queue_for("datadog:p1", QueueConfig(), Collector(), lambda e: b"old", settings=("h", 1))
    newer_handler = Collector()
    second = queues.queue_for("datadog:p1", QueueConfig(), newer_handler, lambda e: b"new", settings=("h", 1))
    assert second is first
    assert second.formatter is not None and second.formatter(None) == b"new" and second.handler is newer_handler
    assert queues.queue_for("datadog:p1", QueueConfig(), Collector(), settings=("h", 2)) is not first
