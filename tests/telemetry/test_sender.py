"""gateway/telemetry/sender.py's HttpSender against a real collector on 127.0.0.1 that answers scripted bytes: the
request it writes, the kept-alive connection it reuses (and when not), and the SendError each failure becomes."""

from __future__ import annotations

import base64
import re
import socket
from typing import NamedTuple

import pytest
import trio

from gateway.policies.http_log.handler import kong_endpoint
from gateway.telemetry.sender import MAX_RESPONSE_BYTES, Endpoint, HttpSender, IdlePool, SendError

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
JSON = b"application/json"


class Answer(NamedTuple):
    """What the collector does with one request: write `data` (after `delay` seconds), then hang up or not; or never
    answer (`silent`)."""

    data: bytes = OK
    hang_up: bool = False
    silent: bool = False
    delay: float = 0.0


HANG_UP = Answer(b"", hang_up=True)  # close the connection without a byte of answer
SILENT = Answer(silent=True)  # read the request, answer nothing, keep the connection open


async def read_request(stream: trio.abc.Stream, buffer: bytes) -> tuple[bytes | None, bytes]:
    """One request (head and Content-Length body) from `stream` after what `buffer` holds, and the bytes after it;
    None at the end of the stream."""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None, buffer
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    found = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    length = int(found.group(1)) if found else 0
    while len(rest) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None, b""
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


class Collector:
    """A TCP server on 127.0.0.1 that records the requests of each connection and answers them from `answers` in
    order (200 with no body once they run out)."""

    def __init__(self) -> None:
        self.port = 0
        self.answers: list[Answer] = []
        self.connections: list[list[bytes]] = []
        self.hung_up = trio.Event()  # the collector closed a connection itself

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        requests: list[bytes] = []
        self.connections.append(requests)
        buffer = b""
        try:
            while True:
                request, buffer = await read_request(stream, buffer)
                if request is None:
                    return
                requests.append(request)
                answer = self.answers.pop(0) if self.answers else Answer()
                if answer.silent:
                    await trio.sleep_forever()
                await trio.sleep(answer.delay)
                await stream.send_all(answer.data)
                if answer.hang_up:
                    await stream.aclose()
                    self.hung_up.set()
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the sender gave up on this connection
        finally:
            await stream.aclose()

    def url(self, path: str = "/log", userinfo: str = "") -> str:
        """This collector's URL with `path` and `userinfo` (ending in "@")."""
        return f"http://{userinfo}127.0.0.1:{self.port}{path}"

    @property
    def requests(self) -> list[bytes]:
        """Every request received, in order, over all connections."""
        return [request for requests in self.connections for request in requests]


@pytest.fixture
async def collector(nursery: trio.Nursery) -> Collector:
    """A collector serving in the test's nursery (cancelled when the test ends)."""
    server = Collector()
    await nursery.start(server.serve)
    return server


def sender(collector: Collector, *, keepalive: float = 60.0, read_timeout: float = 10.0) -> HttpSender:
    """A sender to the collector's /log with no configured headers."""
    return HttpSender(Endpoint(collector.url()), keepalive=keepalive, read_timeout=read_timeout)


# the request ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", [b"POST", b"PUT", b"PATCH"])
async def test_a_request_is_the_method_target_host_content_headers_authorization_configured_headers_and_body(
        collector: Collector, method: bytes) -> None:
    endpoint = Endpoint(collector.url("/logs/in?tag=a", userinfo="alice:s%3Acret@"))
    configured = [(b"X-Tag", b"one"), (b"Host", b"elsewhere.test"), (b"Content-Type", b"text/plain"),
                  (b"CONTENT-LENGTH", b"99"), (b"Authorization", b"Bearer mine"), (b"x-last", b"two")]
    body = b'{"a":1}'

    assert await HttpSender(endpoint, configured).send(body, JSON, method) == 200

    basic = base64.b64encode(b"alice:s:cret")
    assert collector.requests == [
        method + b" /logs/in?tag=a HTTP/1.1\r\n"
        b"host: 127.0.0.1:%d\r\n" % collector.port
        + b"content-type: application/json\r\n"
        b"content-length: 7\r\n"
        b"authorization: Basic " + basic + b"\r\n"
        b"X-Tag: one\r\n"
        b"x-last: two\r\n"
        b"\r\n" + body]


async def test_a_configured_authorization_is_sent_when_the_url_has_no_userinfo(collector: Collector) -> None:
    await HttpSender(Endpoint(collector.url()), [(b"Authorization", b"Bearer mine")]).send(b"{}", JSON)

    assert b"\r\nAuthorization: Bearer mine\r\n" in collector.requests[0]
    assert b"Basic" not in collector.requests[0]


async def test_kong_endpoint_requests_the_path_only_and_sends_the_userinfo_as_written(collector: Collector) -> None:
    endpoint = kong_endpoint(collector.url("/log?tag=a", userinfo="alice:s%3Acret@"))

    await HttpSender(endpoint).send(b"{}", JSON)

    head = collector.requests[0].split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"POST /log HTTP/1.1\r\n")
    assert b"\r\nauthorization: Basic " + base64.b64encode(b"alice:s%3Acret") in head


@pytest.mark.parametrize(("url", "host"), [
    ("http://collector.test/log", b"collector.test"),
    ("http://collector.test:80/log", b"collector.test"),
    ("https://collector.test:443/log", b"collector.test"),
    ("https://collector.test:80/log", b"collector.test:80"),
    ("http://collector.test:8080/log", b"collector.test:8080"),
    ("http://[::1]/log", b"[::1]"),
    ("http://[::1]:9000/log", b"[::1]:9000"),
])
def test_the_host_header_has_no_port_when_it_is_the_schemes_default(url: str, host: bytes) -> None:
    assert Endpoint(url).host_header == host


# the kept-alive connection -------------------------------------------------------------------------------------------

async def test_two_sends_reuse_one_kept_alive_connection(collector: Collector) -> None:
    http = sender(collector)

    assert await http.send(b"first", JSON) == 200
    assert await http.send(b"second", JSON) == 200

    assert len(collector.connections) == 1
    assert [request.rsplit(b"\r\n\r\n", 1)[1] for request in collector.connections[0]] == [b"first", b"second"]


async def test_concurrent_sends_each_use_a_connection_of_their_own_and_each_body_arrives_once(
        collector: Collector) -> None:
    """A queue with concurrency_limit -1 sends its batches concurrently through the plugin's one sender; Kong's
    http-log makes a client per send (handler.lua, http.new()), so they never share a connection. Sharing the kept
    one made them collide (BusyResourceError, "another task closed this fd") and the retries send bodies twice."""
    http = sender(collector)
    await http.send(b"first", JSON)  # leaves a kept-alive connection
    collector.answers = [Answer(delay=0.2) for _ in range(5)]
    statuses: list[int] = []

    async def send(body: bytes) -> None:
        statuses.append(await http.send(body, JSON))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(send, b"r%d" % i)

    assert statuses == [200] * 5
    assert sorted(request.rsplit(b"\r\n\r\n", 1)[1] for request in collector.requests[1:]) == [
        b"r%d" % i for i in range(5)]
    assert len(collector.connections) == 5  # the kept one and four more, all idle now
    await http.send(b"after", JSON)
    assert len(collector.connections) == 5
    await http.close()


async def test_the_pool_keeps_at_most_its_size_idle_and_takes_the_last_used_first(autojump_clock) -> None:
    pool: IdlePool[str] = IdlePool(keepalive=10, size=2)
    assert pool.give("a") is None and pool.give("b") is None
    assert pool.give("c") == "c"  # full: the caller closes it
    assert pool.take() == ("b", [])
    assert pool.give("b") is None


async def test_when_the_last_used_idle_connection_expired_every_idle_one_is_to_be_closed(autojump_clock) -> None:
    pool: IdlePool[str] = IdlePool(keepalive=10)
    pool.give("old")
    await trio.sleep(5)
    pool.give("newer")
    await trio.sleep(6)  # "newer" idle 6 s, "old" 11 s
    assert pool.take() == ("newer", [])
    pool.give("newer")
    await trio.sleep(10)
    assert pool.take() == (None, ["newer", "old"])
    assert len(pool) == 0


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nConnection: keep-alive, close\r\n\r\n",
], ids=["connection-close", "http-1.0", "close-among-tokens"])
async def test_an_answer_that_does_not_keep_the_connection_alive_makes_the_next_send_open_a_new_one(
        collector: Collector, answer: bytes) -> None:
    collector.answers = [Answer(answer)]
    http = sender(collector)

    await http.send(b"first", JSON)
    await http.send(b"second", JSON)

    assert [len(requests) for requests in collector.connections] == [1, 1]


async def test_an_answer_delimited_by_the_close_of_the_connection_is_read_to_the_end(collector: Collector) -> None:
    collector.answers = [Answer(b"HTTP/1.1 200 OK\r\n\r\nall of it", hang_up=True)]
    http = sender(collector)

    assert await http.send(b"first", JSON) == 200
    assert await http.send(b"second", JSON) == 200

    assert [len(requests) for requests in collector.connections] == [1, 1]


async def test_a_kept_alive_connection_the_collector_closed_while_idle_is_retried_once_on_a_new_one(
        collector: Collector) -> None:
    collector.answers = [Answer(OK, hang_up=True)]  # an answer that keeps the connection alive, then a close
    http = sender(collector)
    await http.send(b"first", JSON)
    await collector.hung_up.wait()

    assert await http.send(b"second", JSON) == 200

    assert [len(requests) for requests in collector.connections] == [1, 1]
    assert collector.connections[1][0].endswith(b"second")


async def test_a_connection_idle_longer_than_keepalive_is_not_reused(collector: Collector) -> None:
    http = sender(collector, keepalive=0.1)
    await http.send(b"first", JSON)
    await http.send(b"soon after", JSON)
    await trio.sleep(0.15)

    await http.send(b"after the keepalive", JSON)

    assert [len(requests) for requests in collector.connections] == [2, 1]


async def test_keepalive_0_reuses_a_connection_however_long_it_was_idle(collector: Collector) -> None:
    http = sender(collector, keepalive=0)
    await http.send(b"first", JSON)
    await trio.sleep(0.15)

    await http.send(b"second", JSON)

    assert [len(requests) for requests in collector.connections] == [2]


async def test_a_1xx_before_the_final_answer_is_skipped(collector: Collector) -> None:
    collector.answers = [Answer(b"HTTP/1.1 100 Continue\r\n\r\n"
                                b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
                                b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")]
    http = sender(collector)

    assert await http.send(b"first", JSON) == 201
    assert await http.send(b"second", JSON) == 200

    assert [len(requests) for requests in collector.connections] == [2]


@pytest.mark.parametrize(("answer", "status"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}", 200),
    (b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 202),
], ids=["content-length", "chunked"])
async def test_the_body_of_an_answer_is_read_and_discarded_and_the_connection_reused(
        collector: Collector, answer: bytes, status: int) -> None:
    collector.answers = [Answer(answer)]
    http = sender(collector)

    assert await http.send(b"first", JSON) == status
    assert await http.send(b"second", JSON) == 200

    assert [len(requests) for requests in collector.connections] == [2]


# failures ------------------------------------------------------------------------------------------------------------

ERROR_500 = Answer(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops")
async def test_a_non_2xx_answer_raises_send_error_naming_the_endpoint_and_the_status(collector: Collector) -> None:
    collector.answers = [ERROR_500]

    with pytest.raises(SendError) as raised:
        await sender(collector).send(b"first", JSON)

    assert str(raised.value) == f"http://127.0.0.1:{collector.port}/log: the collector answered 500"
    assert len(collector.requests) == 1


async def test_a_connection_whose_non_2xx_answer_allowed_it_is_reused(collector: Collector) -> None:
    collector.answers = [ERROR_500]
    http = sender(collector)
    with pytest.raises(SendError, match="the collector answered 500"):
        await http.send(b"first", JSON)

    assert await http.send(b"second", JSON) == 200

    assert [len(requests) for requests in collector.connections] == [2]


async def test_a_non_2xx_answer_on_a_reused_connection_is_not_sent_again(collector: Collector) -> None:
    collector.answers = [Answer(), Answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")]
    http = sender(collector)
    await http.send(b"first", JSON)

    with pytest.raises(SendError, match="the collector answered 503"):
        await http.send(b"second", JSON)

    assert [len(requests) for requests in collector.connections] == [2]


async def test_no_answer_on_a_reused_connection_fails_after_one_read_timeout_without_sending_again(
        collector: Collector) -> None:
    collector.answers = [Answer(), SILENT, SILENT]
    http = sender(collector, read_timeout=0.5)
    await http.send(b"first", JSON)
    started = trio.current_time()

    with pytest.raises(SendError, match=r"no answer within 0\.5s"):
        await http.send(b"second", JSON)

    # one read timeout; a second (sent again) would be 1 s: the margin is a busy host's scheduling
    assert trio.current_time() - started < 0.85
    assert len(collector.requests) == 2


async def test_a_fresh_connection_closed_without_an_answer_raises_send_error(collector: Collector) -> None:
    collector.answers = [HANG_UP]
    http = sender(collector)

    with pytest.raises(SendError) as raised:
        await http.send(b"first", JSON)

    assert str(raised.value) == f"http://127.0.0.1:{collector.port}/log: closed"  # ngx_lua's word
    assert len(collector.connections) == 1  # not retried


CHUNK = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"  # 64 KiB


OVERSIZED = [  # an answer's head after its status line, and a body over MAX_RESPONSE_BYTES
    b"Content-Length: %d\r\n\r\n" % (MAX_RESPONSE_BYTES + 1) + b"x" * (MAX_RESPONSE_BYTES + 1),
    b"Transfer-Encoding: chunked\r\n\r\n" + CHUNK * 17 + b"0\r\n\r\n",
]


@pytest.mark.parametrize("rest", OVERSIZED, ids=["content-length", "chunked"])
async def test_a_non_2xx_answer_larger_than_max_response_bytes_raises_send_error(
        collector: Collector, rest: bytes) -> None:
    """The size guard: an answer is never read past MAX_RESPONSE_BYTES; one that is not a 2xx is a failed answer."""
    collector.answers = [Answer(b"HTTP/1.1 500 Internal Server Error\r\n" + rest)]
    http = sender(collector)

    with pytest.raises(SendError) as raised:
        await http.send(b"first", JSON)

    assert str(raised.value) == f"http://127.0.0.1:{collector.port}/log: the collector answered 500"


@pytest.mark.parametrize("rest", OVERSIZED, ids=["content-length", "chunked"])
async def test_a_2xx_answer_larger_than_max_response_bytes_is_delivered_on_a_closed_connection(
        collector: Collector, rest: bytes) -> None:
    """Kong's http-log counts any status below 300 as delivered (kong/plugins/http-log/handler.lua), so the batch
    is not sent again; the body is left unread past MAX_RESPONSE_BYTES and the connection, mid-answer, is closed:
    the next send opens another."""
    collector.answers = [Answer(b"HTTP/1.1 200 OK\r\n" + rest)]
    http = sender(collector)

    assert await http.send(b"first", JSON) == 200
    assert await http.send(b"second", JSON) == 200

    assert [len(requests) for requests in collector.connections] == [1, 1]


@pytest.mark.parametrize("answer", [
    Answer(b"HTTP/1.1 abc\r\n\r\n"),
    Answer(b"garbage that is no HTTP at all\r\n\r\n"),
    Answer(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
    Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
    Answer(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n"),
    Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\ncut", hang_up=True),
    Answer(b"HTTP/1.1 200 OK\r\nContent-Le", hang_up=True),
    Answer(b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n"),
], ids=["status-abc", "garbage", "bad-length", "bad-chunk-size", "bad-header", "cut-body", "cut-head", "status-099"])
async def test_a_malformed_answer_raises_send_error_reading_the_answer_failed(
        collector: Collector, answer: Answer) -> None:
    collector.answers = [answer]
    http = sender(collector)

    with pytest.raises(SendError) as raised:
        await http.send(b"first", JSON)

    assert str(raised.value).startswith(f"http://127.0.0.1:{collector.port}/log: reading the answer failed: ")


async def test_no_answer_within_read_timeout_raises_send_error(collector: Collector) -> None:
    collector.answers = [SILENT]
    http = sender(collector, read_timeout=0.2)

    with pytest.raises(SendError) as raised:
        await http.send(b"first", JSON)

    assert str(raised.value) == f"http://127.0.0.1:{collector.port}/log: timeout (no answer within 0.2s)"


async def test_a_refused_connection_raises_send_error_connection_refused() -> None:
    with socket.socket() as bound:  # bound but not listening: connections to it are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        http = HttpSender(Endpoint(f"http://127.0.0.1:{port}/log"), connect_timeout=1)

        with pytest.raises(SendError) as raised:
            await http.send(b"first", JSON)

    assert str(raised.value) == f"http://127.0.0.1:{port}/log: connection refused"  # ngx_lua's strerror
