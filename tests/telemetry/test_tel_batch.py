"""Kong's queue semantics (kong/tools/queue.lua) on a mock clock: batching, bounds, retries, concurrency, drain,
what a worker's exit loses, and the queues' labels (no collector credentials on /metrics)."""

from __future__ import annotations

import logging

import msgspec
import prometheus_client
import pytest
import trio
import trio.testing
from backends import free_port, wait_until

from gateway.config import parse_config
from gateway.http.server import ConnectionSet
from gateway.metrics import RECORDER
from gateway.policies.http_log.handler import HttpLog
from gateway.policies.http_log.schema import HttpLogConfig
from gateway.policies.opentelemetry.handler import OpenTelemetry
from gateway.policies.opentelemetry.schema import OpenTelemetryConfig
from gateway.policies.zipkin.handler import Zipkin
from gateway.policies.zipkin.schema import ZipkinConfig
from gateway.telemetry.batch import DROPPED, QUEUES, BatchQueue, QueueConfig, Queues, apply_legacy_queue, public_url
from gateway.telemetry.service import DRAIN_S, WorkerTelemetry


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


def _dropped(queue: str, reason: str) -> float:
    RECORDER.flush()
    return DROPPED.labels(queue, reason)._value.get()


# ---- retries past 2^1023 ---------------------------------------------------------------------------------------------


async def test_a_batch_failing_past_1024_retries_is_retried_every_max_retry_delay_until_max_retry_time(nursery,
                                                                                                         autojump):
    """kong/tools/queue.lua:354 `sleep(math_min(self.max_retry_delay, 2 ^ retry_count * self.initial_retry_delay))`:
    Lua's 2 ^ n is a double (inf past 2^1023, capped by the min), so a collector down for an hour with
    max_retry_delay 1 (max_retry_time has no upper bound, queue_schema.lua) is retried every second, and the batch
    dropped after the hour (queue.lua:344-347); no power of two too large for a float ends the queue's task."""
    sink = Collector()
    sink.down = True
    queue = BatchQueue("retry-past-1024", QueueConfig(max_retry_delay=1, max_retry_time=3600), sink)
    await _run(queue, nursery)
    before = _dropped("retry-past-1024", "retries")
    logging.getLogger("gateway.telemetry").disabled = True  # (a warning per try)
    try:
        queue.put("x")
        await trio.sleep(3700)
    finally:
        logging.getLogger("gateway.telemetry").disabled = False
    gaps = [round(b - a, 3) for a, b in zip(sink.attempts, sink.attempts[1:], strict=False)]
    assert gaps[:7] == [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64]
    assert len(gaps) > 3000 and set(gaps[7:]) == {1}
    assert _dropped("retry-past-1024", "retries") - before == 1


# ---- what a worker's exit loses --------------------------------------------------------------------------------------


async def test_what_the_queues_still_hold_when_their_drain_is_cut_is_logged_and_counted_as_lost(nursery, autojump,
                                                                                                caplog):
    """Kong never drops entries without an error naming the count (queue.lua:345-347, "%d queue entries were lost").
    A worker's drain gives the queues DRAIN_S; then the batch a queue's task was retrying and the entries waiting
    behind it are lost: one error line for that queue with their count, and gateway_log_queue_dropped_total
    {reason="exit"}; a queue that sent everything says nothing."""

    async def down(batch: list[int]) -> None:
        raise OSError("connection refused")

    queues = Queues()
    failing = queues.queue_for("exit-down", QueueConfig(max_batch_size=2), down)
    healthy = queues.queue_for("exit-up", QueueConfig(), Collector())
    await nursery.start(queues.run)
    before = _dropped("exit-down", "exit")
    for i in range(5):
        failing.put(i)  # two in the batch being retried, three waiting
    healthy.put("sent")
    await trio.sleep(0.1)
    with caplog.at_level(logging.ERROR, logger="gateway.telemetry"):
        with trio.move_on_after(DRAIN_S):
            await queues.drain()
        await queues.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["queue exit-down: could not send entries before the worker's exit. 5 queue entries were lost"]
    assert _dropped("exit-down", "exit") - before == 5 and _dropped("exit-up", "exit") == 0
    assert len(failing) == 0


async def test_a_workers_telemetry_drain_ends_with_the_loss_of_what_its_queues_hold(autojump, caplog):
    """WorkerTelemetry.drain (a worker's exit): the queues get DRAIN_S, then what they hold is lost, logged and
    counted; here the batch the drain itself was retrying (no queue task runs)."""

    async def down(batch: list[bytes]) -> None:
        raise OSError("connection refused")

    name = "exit-worker"
    queue = QUEUES.queue_for(name, QueueConfig(max_batch_size=10, max_coalescing_delay=100), down)
    try:
        telemetry = WorkerTelemetry(parse_config('_format_version: "3.0"\ngateway: {access_log: false}\n'),
                                    ConnectionSet())
        for i in range(5):
            queue.put(b"entry %d" % i)
        before = _dropped(name, "exit")
        with caplog.at_level(logging.ERROR, logger="gateway.telemetry"):
            await telemetry.drain()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert f"queue {name}: could not send entries before the worker's exit. 5 queue entries were lost" in errors
        assert _dropped(name, "exit") - before == 5
    finally:
        for key in [k for k, q in QUEUES.queues.items() if q is queue]:
            del QUEUES.queues[key]


# ---- labels: no collector credentials on /metrics or in the log ------------------------------------------------------


def test_a_queue_label_shows_a_collector_url_without_userinfo_params_query_or_fragment():
    """kong/plugins/http-log/schema.lua:12: http_endpoint is `encrypted = true, referenceable = true`: its userinfo
    (Basic credentials) and a query (a token) are secrets; what it names, scheme, host, port and path, is not."""
    assert public_url("https://user:pa%40ss@collector.example:8443/v1/logs;k=v?token=t#f") == (
        "https://collector.example:8443/v1/logs")
    assert public_url("http://[::1]:9411/api/v2/spans") == "http://[::1]:9411/api/v2/spans"
    assert public_url("http://user@127.0.0.1") == "http://127.0.0.1"


SECRET_URL = "http://logger:s3cr3t-P4ss@127.0.0.1:9{path}?token=t0k3n"


@pytest.mark.parametrize(("plugin", "expected"), [
    (lambda: HttpLog(msgspec.convert({"http_endpoint": SECRET_URL.format(path="/logs")}, HttpLogConfig), Queues()),
     "http-log:http://127.0.0.1:9/logs:POST:application/json:"),
    (lambda: Zipkin(msgspec.convert({"http_endpoint": SECRET_URL.format(path="/api/v2/spans")}, ZipkinConfig), "p",
                    queues=Queues()),
     "zipkin:p:http://127.0.0.1:9/api/v2/spans"),
    (lambda: OpenTelemetry(msgspec.convert({"traces_endpoint": SECRET_URL.format(path="/v1/traces")},
                                           OpenTelemetryConfig), "p", queues=Queues()),
     "opentelemetry:p:http://127.0.0.1:9/v1/traces:traces"),
], ids=["http-log", "zipkin", "opentelemetry"])
def test_a_plugins_queue_label_names_its_collector_without_credentials_or_query(plugin, expected):
    """Kong's queue names carry the endpoint (http-log's make_queue_name, handler.lua:167-185), which Kong keeps
    secret (schema `encrypted`) and exports no metric of: the label (gateway_log_queue_*'s `queue`, the queue's
    log lines) keeps where it sends, not the userinfo or the query."""
    queue = plugin().queue
    assert queue.name.startswith(expected)
    assert "s3cr3t" not in queue.name and "t0k3n" not in queue.name and "logger" not in queue.name


def test_http_log_endpoints_differing_only_in_credentials_keep_queues_of_their_own():
    """The label hides the credentials, the queue's identity keeps them: Kong's queue name is the whole endpoint
    (http-log handler.lua:167-185), so each collector account gets its own queue (and its own Authorization)."""
    queues = Queues()
    first, second = (HttpLog(msgspec.convert({"http_endpoint": f"http://{user}@127.0.0.1:9/logs"}, HttpLogConfig),
                             queues).queue for user in ("a:1", "b:2"))
    assert first is not second and first.name == second.name


async def test_http_log_endpoint_credentials_are_published_neither_on_metrics_nor_in_the_log(nursery, caplog):
    """/metrics (status_listen, scraped and stored by Prometheus) and the error log show the queue's label: a
    batch dropped by an http-log whose http_endpoint has userinfo and a token query shows neither."""
    refused = free_port()
    config = msgspec.convert({"http_endpoint": f"http://logger:s3cr3t-P4ss@127.0.0.1:{refused}/logs?token=t0k3n",
                              "queue": {"max_retry_time": -1}}, HttpLogConfig)
    queues = Queues()
    plugin = HttpLog(config, queues)
    plugin.queue.formatter = None  # the entry is already JSON
    await nursery.start(queues.run)
    before = _dropped(plugin.queue.name, "retries")
    with caplog.at_level(logging.WARNING, logger="gateway.telemetry"):
        plugin.queue.put(b'{"request":{}}')
        await wait_until(lambda: _dropped(plugin.queue.name, "retries") > before, "the entry dropped", timeout=10)
    exposition = prometheus_client.generate_latest().decode()
    assert f'gateway_log_queue_dropped_total{{queue="{plugin.queue.name}",reason="retries"}}' in exposition
    logged = [r.getMessage() for r in caplog.records]
    assert any("max_retry_time exceeded" in line for line in logged)
    for text in (exposition, *logged):
        assert "s3cr3t" not in text and "t0k3n" not in text
