"""Kong's unit specs for the pieces the gateway shares with it:

- spec/01-unit/18-tools_uri_spec.lua (kong/tools/uri.lua): the router's path normalization and the upstream path's
  escaping (gateway/routing/normalize.py);
- spec/01-unit/26-mime-type_spec.lua (kong/tools/mime_type.lua): parse_mime_type as proxy-cache uses it and includes()
  as response-transformer's is_json_body uses it;
- spec/01-unit/27-queue_spec.lua (kong/tools/queue.lua): the log and metrics plugins' queue
  (gateway/telemetry/batch.py).

Each test names the spec `it(...)` it states (or the Kong code, where no `it` covers the behaviour).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
import trio

from gateway.http.codec import Request
from gateway.http.server import Exchange
from gateway.policies.proxy_cache.rules import parse_mime_type
from gateway.policies.response_transformer.handler import is_json
from gateway.routing.normalize import escape_path, normalize_path
from gateway.telemetry import batch
from gateway.telemetry.batch import BatchQueue, QueueConfig, Queues, apply_legacy_queue
from gateway.telemetry.entry import Entry

# --- 18-tools_uri_spec.lua ------------------------------------------------------------------------------------------
# Kong calls normalize(path, true) everywhere (router, pdk request.get_path, schema checks): slashes always merged.

_NORMALIZE = [
    # "no normalization necessary"
    ("", ""), ("/", "/"), ("/a", "/a"), ("/a/", "/a/"), ("/a/b/c", "/a/b/c"), ("/a/b/c/", "/a/b/c/"),
    # "no normalization necessary (reserved characters)"
    ("/a%2Fb%2Fc/", "/a%2Fb%2Fc/"),
    ("/%20%21%23%24%25%26%27%28%29%2A%2B%2C%2F%3A%3B%3D%3F%40%5B%5D",
     "/ %21%23%24%25%26%27%28%29%2A%2B%2C%2F%3A%3B%3D%3F%40%5B%5D"),
    # "converting percent-encoded triplets to uppercase"
    ("/a%2fb%2fc/", "/a%2Fb%2Fc/"), ("/f%6f%6f", "/foo"),
    # "decoding percent-encoded triplets of unreserved characters"
    ("/%6B%6f%6e%67", "/kong"), ("/%2E", "/"),
    # "remove dot segments" (with merge_slashes, as Kong's callers pass it)
    ("//", "/"), ("/./", "/"), ("/.", "/"), ("/..", "/"), ("/../", "/"), ("/////", "/"), ("/./.././../", "/"),
    ("/a/b/c/./../../g", "/a/g"), ("mid/content=5/../6", "mid/6"),
    # "merge_slashes"
    ("/a//b//", "/a/b/"),
    # "decodes non-ASCII characters that are unreserved, issue #2366"
    ("/endel%C3%B8st", "/endeløst"),
]


@pytest.mark.parametrize(("path", "expected"), _NORMALIZE)
def test_uri_normalize(path: str, expected: str) -> None:
    """18-tools_uri_spec.lua, describe("normalize()"): the path the router matches."""
    assert normalize_path(path.encode()) == expected.encode()


def test_uri_normalize_complex_uri_outside_the_uri_charset() -> None:
    """18-tools_uri_spec.lua, "does normalize complex uri that has characters outside of normal uri charset"."""
    path = b"/%C3%A4/a/%2e./a%2E//a/%2e/./a/../a/%2e%2E/%5f%99%af%2f%2F"
    assert normalize_path(path) == "/ä/a./a/_".encode() + b"\x99\xaf%2F%2F"


def test_uri_escape_leaves_reserved_unreserved_and_percent() -> None:
    """18-tools_uri_spec.lua, "do not escape reserved or unreserved characters, plus %"."""
    path = b"/!#$%&'()*+,/:;=?@[]ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"
    assert escape_path(path) == path


def test_uri_escape_spaces_and_utf8() -> None:
    """18-tools_uri_spec.lua, "escape spaces" and "escape utf-8 characters"."""
    assert escape_path(b"/a b/c d") == b"/a%20b/c%20d"
    assert escape_path("/a😀".encode()) == b"/a%F0%9F%98%80"
    assert escape_path("/endeløst".encode()) == b"/endel%C3%B8st"


# --- 26-mime-type_spec.lua ------------------------------------------------------------------------------------------

_MIME = [
    ("application/json", ("application", "json", {})),
    ("application/json; charset=UTF-8", ("application", "json", {"charset": "UTF-8"})),
    ("application/json; charset=UTF-8; key=Value; q=1",
     ("application", "json", {"charset": "UTF-8", "key": "Value", "q": "1"})),
    ("application/json ;  charset=UTF-8 ; key=Value", ("application", "json", {"charset": "UTF-8", "key": "Value"})),
    ('application/json; charset="UTF-8"', ("application", "json", {"charset": "UTF-8"})),
    ("Application/JSON; Charset=UTF-8; Key=Value", ("application", "json", {"charset": "UTF-8", "key": "Value"})),
    ("*/*; charset=UTF-8; q=0.1", ("*", "*", {"charset": "UTF-8", "q": "0.1"})),
    ("application/*", ("application", "*", {})),
    ("*/text", ("*", "text", {})),
    ("*", ("*", "*", {})),
    ("*; q=.2", ("*", "*", {"q": ".2"})),
    ("helloworld", None),
    (" ", None),
    ("application/json;", None),
]


@pytest.mark.parametrize(("value", "expected"), _MIME)
def test_parse_mime_type(value: str, expected: Any) -> None:
    """26-mime-type_spec.lua, describe("parse_mime_type()") it("sanity"): proxy-cache's content_type matching."""
    assert parse_mime_type(value) == expected


@pytest.mark.parametrize(("content_type", "expected"), [
    ("application/json", True),
    ("application/problem+json", True),  # includes(application/json, application/problem+json)
    ("application/problem+", False),  # "application_problem_json_malformed1"
    ("application/xxxxjson", False),
    ("application/*", False),  # includes(this, other) is not includes(other, this)
    ("*/*", False),
    ("Application/JSON; charset=utf-8", True),
    ("text/plain, application/json", True),  # is_json_body: any of the comma-separated types
    ("application/json;", False),  # not a media type for parse_mime_type
])
def test_mime_type_includes_as_is_json_body_uses_it(content_type: str, expected: bool) -> None:
    """26-mime-type_spec.lua, describe("includes()") it("sanity"), as response-transformer's is_json_body uses it
    (includes({application, json}, parsed)): the same type, and a subtype equal or ending in "+json"."""
    assert is_json(content_type.encode()) is expected


# --- 27-queue_spec.lua ----------------------------------------------------------------------------------------------


class Sink:
    """A handler recording batches; fails while `fail` says so (Kong's handler returning false)."""

    def __init__(self, fail: Any = None) -> None:
        self.batches: list[list[Any]] = []
        self.attempts: list[float] = []
        self.fail = fail
        self.hold: trio.Event | None = None

    async def __call__(self, entries: list[Any]) -> None:
        self.attempts.append(trio.current_time())
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None and self.fail(entries):
            raise RuntimeError("FAIL FAIL FAIL")
        self.batches.append(list(entries))


async def _started(nursery: trio.Nursery, config: QueueConfig, sink: Sink, formatter: Any = None) -> BatchQueue:
    queue = BatchQueue("test", config, sink, formatter)
    await nursery.start(queue.run)
    return queue


def _logged(caplog: pytest.LogCaptureFixture, level: int, text: str) -> int:
    return sum(1 for r in caplog.records if r.levelno == level and text in r.getMessage())


async def test_queue_batches_messages_when_max_batch_size_is_2(nursery, autojump_clock):
    """27-queue_spec.lua, "batches messages when `max_batch_size` is 2"."""
    sink = Sink()
    queue = await _started(nursery, QueueConfig(max_batch_size=2, max_coalescing_delay=0.1), sink)
    for entry in ("One", "Two", "Three", "Four", "Five"):
        queue.put(entry)
    await trio.sleep(5)
    assert sink.batches == [["One", "Two"], ["Three", "Four"], ["Five"]]


async def test_queue_batches_messages_during_shutdown(nursery, autojump_clock):
    """27-queue_spec.lua, "batches messages during shutdown": batches of max_batch_size, without the delay."""
    sink = Sink()
    queue = await _started(nursery, QueueConfig(max_batch_size=2, max_coalescing_delay=60), sink)
    for entry in ("One", "Two", "Three", "Four", "Five"):
        queue.put(entry)
    start = trio.current_time()
    await queue.drain()
    assert sink.batches == [["One", "Two"], ["Three", "Four"], ["Five"]] and trio.current_time() - start < 1


async def test_queue_observes_max_coalescing_delay(nursery, autojump_clock):
    """27-queue_spec.lua, "observes the `max_coalescing_delay` parameter"."""
    sink = Sink()
    queue = await _started(nursery, QueueConfig(max_batch_size=2, max_coalescing_delay=3), sink)
    queue.put("One")
    await trio.sleep(1)
    queue.put("Two")
    await trio.sleep(10)
    assert sink.batches == [["One", "Two"]]


async def test_queue_coalescing_starts_when_the_previous_batch_is_done(nursery, autojump_clock):
    """kong/tools/queue.lua process_once(): with concurrency_limit 1 the next batch's coalescing delay starts when it
    is taken, after the previous batch was handled, not when its first entry came while that batch was sent."""
    sink = Sink()
    sink.hold = trio.Event()
    queue = await _started(nursery, QueueConfig(max_batch_size=10, max_coalescing_delay=2), sink)
    start = trio.current_time()
    queue.put("a")
    await trio.sleep(2.5)  # "a" is sent at 2 s and held
    queue.put("b")
    await trio.sleep(4.5)  # 7 s
    sink.hold.set()  # "a" done at 7 s: "b" is taken and waits its 2 s from then
    sink.hold = None
    await trio.sleep(10)
    assert sink.batches == [["a"], ["b"]]
    assert sink.attempts[1] - start == pytest.approx(9, abs=0.01)


async def test_queue_a_coalescing_delay_below_50ms_sends_one_entry_at_a_time(nursery, autojump_clock):
    """kong/tools/queue.lua process_once(): the loop that collects more entries runs only while
    `max_coalescing_delay - elapsed >= COALESCE_MIN_TIME` (0.05), so with max_coalescing_delay 0 (or 0.01) every batch
    holds one entry, whatever max_batch_size says (http-log then posts `[entry]` arrays of one)."""
    sink = Sink()
    queue = await _started(nursery, QueueConfig(max_batch_size=10, max_coalescing_delay=0), sink)
    for entry in ("One", "Two", "Three"):
        queue.put(entry)
    await trio.sleep(1)
    assert sink.batches == [["One"], ["Two"], ["Three"]]


async def test_queue_retries_sending_messages(nursery, autojump_clock):
    """27-queue_spec.lua, "retries sending messages"."""
    sink = Sink(fail=lambda entries: len(sink.attempts) == 1)
    queue = await _started(nursery, QueueConfig(max_coalescing_delay=0.1), sink)
    queue.put("Hello")
    await trio.sleep(5)
    assert len(sink.attempts) == 2 and sink.batches == [["Hello"]]


async def test_queue_gives_up_sending_after_retrying(nursery, autojump_clock, caplog):
    """27-queue_spec.lua, "gives up sending after retrying": a WARN per failed try, then the ERR that counts the lost
    entries."""
    caplog.set_level(logging.INFO, "gateway.telemetry")
    sink = Sink(fail=lambda entries: True)
    queue = await _started(nursery, QueueConfig(max_retry_time=1, max_coalescing_delay=0.1), sink)
    queue.put("Hello")
    queue.put("another value")
    await trio.sleep(10)
    assert _logged(caplog, logging.WARNING, "handler could not process entries: FAIL FAIL FAIL") >= 2
    assert _logged(caplog, logging.ERROR, "could not send entries due to max_retry_time exceeded. 1 queue entries "
                   "were lost") == 2


async def test_queue_retries_until_a_try_fails_after_max_retry_time(nursery, autojump_clock):
    """kong/tools/queue.lua handle(): the batch is dropped when a try fails more than max_retry_time after the first
    began; the delay before a retry (initial_retry_delay * 2^n) is capped at max_retry_delay from the first one."""
    sink = Sink(fail=lambda entries: True)
    queue = await _started(nursery, QueueConfig(max_retry_time=20, initial_retry_delay=1, max_retry_delay=4), sink)
    queue.put("x")
    await trio.sleep(60)
    start = sink.attempts[0]
    assert [round(a - start, 3) for a in sink.attempts] == [0, 1, 3, 7, 11, 15, 19, 23]

    sink = Sink(fail=lambda entries: True)
    queue = await _started(nursery, QueueConfig(max_retry_time=10, initial_retry_delay=5, max_retry_delay=2), sink)
    queue.put("y")
    await trio.sleep(60)
    start = sink.attempts[0]
    assert [round(a - start, 3) for a in sink.attempts][:3] == [0, 2, 4]  # min(max_retry_delay, 5 * 2^n)


async def test_queue_continues_processing_after_hard_error_in_handler(nursery, autojump_clock, caplog):
    """27-queue_spec.lua, "continue processing after hard error in handler"."""
    caplog.set_level(logging.INFO, "gateway.telemetry")
    sink = Sink(fail=lambda entries: entries == ["Two"])
    queue = await _started(nursery, QueueConfig(max_entries=5, max_coalescing_delay=0.1, max_retry_time=3), sink)
    for entry in ("One", "Two", "Three"):
        queue.put(entry)
    await trio.sleep(20)
    assert sink.batches == [["One"], ["Three"]]
    assert _logged(caplog, logging.ERROR, "queue test: could not send entries due to max_retry_time exceeded. 1 queue "
                   "entries were lost") == 1


async def test_queue_warns_when_it_reaches_its_capacity_limit(nursery, autojump_clock, caplog):
    """27-queue_spec.lua, "warns when queue reaches its capacity limit": "queue at 80% capacity", once until the queue
    is below it again."""
    caplog.set_level(logging.INFO, "gateway.telemetry")
    sink = Sink()
    queue = await _started(nursery, QueueConfig(max_batch_size=1000, max_entries=100, max_coalescing_delay=3600),
                           sink)
    for _ in range(79):
        queue.put("something")
    await trio.sleep(0.01)
    assert _logged(caplog, logging.WARNING, "queue at 80% capacity") == 0
    queue.put("something")
    queue.put("something")
    await trio.sleep(0.01)
    assert _logged(caplog, logging.WARNING, "queue at 80% capacity") == 1
    queue.put("something")
    await trio.sleep(0.01)
    assert _logged(caplog, logging.WARNING, "queue at 80% capacity") == 1  # not more than once


async def test_queue_drops_entries_when_it_reaches_its_capacity(nursery, autojump_clock, caplog):
    """27-queue_spec.lua, "drops entries when queue reaches its capacity": the oldest go, with Kong's ERR, and the
    INFO "queue resumed processing" when a batch is taken again."""
    caplog.set_level(logging.INFO, "gateway.telemetry")
    sink = Sink()
    queue = await _started(nursery, QueueConfig(max_batch_size=2, max_entries=2, max_coalescing_delay=0.1), sink)
    for entry in ("One", "Two", "Three", "Four", "Five"):
        queue.put(entry)
    await trio.sleep(1)
    assert sink.batches == [["Four", "Five"]]
    assert _logged(caplog, logging.ERROR, "queue full, dropping old entries until processing is successful again")
    queue.put("Six")
    await trio.sleep(1)
    assert sink.batches[-1] == ["Six"]
    assert _logged(caplog, logging.INFO, "queue resumed processing") == 1


async def test_queue_drops_entries_when_it_reaches_its_max_bytes(nursery, autojump_clock, caplog):
    """27-queue_spec.lua, "drops entries when it reaches its max_bytes"."""
    caplog.set_level(logging.INFO, "gateway.telemetry")
    sink = Sink()
    queue = await _started(nursery, QueueConfig(max_bytes=6, max_retry_time=1), sink, formatter=lambda e: e)
    for entry in ("1", "22", "333", "4444"):
        queue.put(entry)
    await trio.sleep(2)
    assert sink.batches == [["4444"]]
    assert _logged(caplog, logging.ERROR, "byte capacity exceeded, 3 queue entries were dropped") == 1
    queue.put("55555")
    await trio.sleep(2)
    queue.put("666666")
    await trio.sleep(2)
    assert sink.batches == [["4444"], ["55555"], ["666666"]]


async def test_queue_warns_about_improper_max_bytes_setting(nursery, autojump_clock, caplog):
    """27-queue_spec.lua, "warns about improper max_bytes setting": a string longer than max_bytes is not queued (Kong's
    enqueue returns nil, err: the entries waiting stay), and a non-string entry is queued with an ERR."""
    caplog.set_level(logging.INFO, "gateway.telemetry")
    sink = Sink()
    sink.hold = trio.Event()
    queue = await _started(nursery, QueueConfig(max_bytes=1, max_batch_size=10, max_coalescing_delay=1), sink,
                           formatter=lambda e: e)
    queue.put("1")
    queue.put("23")
    await trio.sleep(0.01)
    assert _logged(caplog, logging.ERROR, "string to be queued is longer (2 bytes) than the queue's max_bytes "
                   "(1 bytes)") == 1
    queue.put({"foo": "bar"})
    await trio.sleep(0.01)
    assert _logged(caplog, logging.ERROR, "queuing non-string entry to a queue that has queue.max_bytes set, "
                   "capacity monitoring will not be correct") == 1
    sink.hold.set()
    await trio.sleep(5)
    assert sink.batches == [["1", {"foo": "bar"}]]


async def test_queue_concurrency_limit_minus_one_does_not_enqueue(nursery, autojump_clock):
    """kong/tools/queue.lua enqueue(): with concurrency_limit -1 an entry goes to a timer of its own at once, no
    max_entries or max_bytes applies (nothing is dropped)."""
    sink = Sink()
    queue = await _started(nursery, QueueConfig(max_entries=1, max_bytes=1, concurrency_limit=-1), sink,
                           formatter=lambda e: e)
    for entry in ("One", "Two", "Three"):
        queue.put(entry)
    await trio.sleep(1)
    assert sorted(b[0] for b in sink.batches) == ["One", "Three", "Two"]


@pytest.fixture
def legacy_warnings(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> SimpleNamespace:
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(batch, "_legacy_warned", {})
    monkeypatch.setattr(batch, "time", SimpleNamespace(monotonic=lambda: clock.now))
    caplog.set_level(logging.WARNING, "gateway.telemetry")
    return clock


def test_queue_converts_common_legacy_queue_parameters(legacy_warnings, caplog):
    """27-queue_spec.lua, "converts common legacy queue parameters" (retry_count, which Kong ignores, is taken by the
    plugins' schemas: tests/kongconfig/test_deprecated_plugin_fields.py)."""
    queue = QueueConfig()
    apply_legacy_queue(queue, 234, 345)
    assert (queue.max_batch_size, queue.max_coalescing_delay) == (234, 345)
    assert "the queue_size parameter is deprecated, please update your configuration to use queue.max_batch_size " \
           "instead" in caplog.text
    assert "the flush_timeout parameter is deprecated, please update your configuration to use " \
           "queue.max_coalescing_delay instead" in caplog.text


def test_queue_converts_opentelemetry_legacy_queue_parameters(legacy_warnings, caplog):
    """27-queue_spec.lua, "converts opentelemetry plugin legacy queue parameters"."""
    queue = QueueConfig()
    apply_legacy_queue(queue, None, None, batch_span_count=234, batch_flush_delay=345)
    assert (queue.max_batch_size, queue.max_coalescing_delay) == (234, 345)
    assert "the batch_span_count parameter is deprecated, please update your configuration to use " \
           "queue.max_batch_size instead" in caplog.text
    assert "the batch_flush_delay parameter is deprecated, please update your configuration to use " \
           "queue.max_coalescing_delay instead" in caplog.text


def test_queue_opentelemetry_config_warns_about_its_legacy_queue_parameters(legacy_warnings, caplog):
    """27-queue_spec.lua, "converts opentelemetry plugin legacy queue parameters", through the plugin's config."""
    from gateway.policies.opentelemetry.schema import OpenTelemetryConfig
    config = msgspec.convert({"traces_endpoint": "http://127.0.0.1:4318/v1/traces", "batch_span_count": 234,
                              "batch_flush_delay": 5}, OpenTelemetryConfig)
    assert (config.queue.max_batch_size, config.queue.max_coalescing_delay) == (234, 5)
    assert "the batch_span_count parameter is deprecated" in caplog.text
    assert "the batch_flush_delay parameter is deprecated" in caplog.text


def test_queue_logs_deprecation_messages_only_every_so_often(legacy_warnings, caplog):
    """27-queue_spec.lua, "logs deprecation messages only every so often" (MIN_WARNING_INTERVAL_SECONDS, 60)."""
    for _ in range(10):
        apply_legacy_queue(QueueConfig(), 7, None)
    assert caplog.text.count("the queue_size parameter is deprecated") == 1
    legacy_warnings.now += 1000
    for _ in range(10):
        apply_legacy_queue(QueueConfig(), 7, None)
    assert caplog.text.count("the queue_size parameter is deprecated") == 2


def test_queue_defaulted_legacy_parameters_are_ignored(legacy_warnings, caplog):
    """27-queue_spec.lua, "defaulted legacy parameters are ignored when converting"."""
    queue = QueueConfig(max_batch_size=123, max_coalescing_delay=234)
    apply_legacy_queue(queue, 1, 2, batch_span_count=200, batch_flush_delay=3)
    assert (queue.max_batch_size, queue.max_coalescing_delay) == (123, 234) and "deprecated" not in caplog.text


# What max_bytes counts is what Kong queues: http-log's cjson.encode(serialize()) string (no newline); statsd's
# and zipkin's entries are tables (`#entry` is 0: not counted, with the "non-string entry" ERR).


def _entry() -> Entry:
    conn = SimpleNamespace(peer=("127.0.0.1", 50000), scheme=b"http", listen_port=b"8000")
    request = Request(b"GET", b"/x", [(b"host", b"example.test")], b"1.1", True)
    ex = Exchange(request, conn, None, None, None)  # type: ignore[arg-type]
    return Entry(ex, 10.0, 10.5, 200, wall=1_700_000_000.0)


def test_queue_http_log_entries_count_their_json_against_max_bytes():
    """27-queue_spec.lua, "drops entries when it reaches its max_bytes", for http-log's entries: an entry as long as
    max_bytes is queued."""
    from gateway.policies.http_log.handler import HttpLog
    from gateway.policies.http_log.schema import HttpLogConfig
    entry = _entry()
    size = len(entry.json())
    config = msgspec.convert({"http_endpoint": "http://127.0.0.1:9/", "queue": {"max_bytes": size}}, HttpLogConfig)
    queue = HttpLog(config, Queues()).queue
    queue.put(entry)
    queue._take_raw(0.0)
    assert len(queue) == 1


def _plugin_queue(name: str) -> BatchQueue:
    if name == "statsd":
        from gateway.policies.statsd.handler import Statsd
        from gateway.policies.statsd.schema import StatsdConfig
        return Statsd(msgspec.convert({"queue": {"max_bytes": 5}}, StatsdConfig), "p", Queues()).queue
    from gateway.policies.zipkin.handler import Zipkin
    from gateway.policies.zipkin.schema import ZipkinConfig
    queue = Zipkin(msgspec.convert({"http_endpoint": "http://127.0.0.1:9/", "queue": {"max_bytes": 5}}, ZipkinConfig),
                   "p", queues=Queues()).queue
    assert queue is not None
    return queue


@pytest.mark.parametrize("plugin", ["statsd", "zipkin"])
def test_queue_table_entries_are_not_counted_against_max_bytes(plugin: str):
    """kong/tools/queue.lua enqueue(): only string entries have a size (statsd enqueues kong.log.serialize()'s
    table, zipkin its span tables), so max_bytes drops none of them."""
    queue = _plugin_queue(plugin)
    queue.formatter = None  # (the lines or span the plugin's formatter makes, longer than max_bytes)
    for _ in range(3):
        queue.put(b"x" * 100)
    queue._take_raw(0.0)
    assert len(queue) == 3
