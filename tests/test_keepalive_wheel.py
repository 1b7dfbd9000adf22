"""The keep-alive wheel of idle SSE streams (gateway.pipeline.keepalive): who gets a comment, and who writes it."""

from __future__ import annotations

import trio
import trio.testing

from gateway.pipeline.keepalive import COMMENT, Stream, StreamKeepAlives


class Client:
    """A response that takes `room` bytes at once, recording what it took; its body is open-ended (chunked or ended
    by close: the comment goes as it is here) unless `fixed_length`."""

    def __init__(self, room: int = 1 << 20, fixed_length: bool = False) -> None:
        self.room = room
        self.fixed_length = fixed_length
        self.written = b""

    def extra_body(self, data: bytes) -> bytes | None:
        return None if self.fixed_length else bytes(bytearray(data))  # a new object, as a codec's framing is

    def send_now(self, data: bytes) -> bytes:
        taken = data[:self.room]
        self.room -= len(taken)
        self.written += taken
        return data[len(taken):]


async def parked(wheel: StreamKeepAlives, client: Client, nursery: trio.Nursery,
                 woken: list[Stream] | None = None) -> Stream:
    """A stream opened at time 0 whose task waits for its upstream, parked as the stream watch parks it (a real
    task); it is added to `woken` once resumed."""
    stream = wheel.open(client)

    async def task() -> None:
        stream.task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.SUCCEEDED)
        if woken is not None:
            woken.append(stream)

    nursery.start_soon(task)
    await trio.testing.wait_all_tasks_blocked()
    return stream


async def test_a_stream_silent_for_its_interval_gets_a_comment_written_by_the_wheel_without_waking_its_task(nursery):
    wheel, client, woken = StreamKeepAlives(15.0), Client(), []
    stream = await parked(wheel, client, nursery, woken)
    assert wheel.due(15.0) == 1
    assert client.written == COMMENT
    await trio.testing.wait_all_tasks_blocked()
    assert woken == [] and stream.task is not None
    assert stream.last == 15.0


async def test_a_stream_that_heard_from_its_upstream_within_the_interval_gets_none(nursery):
    wheel, client = StreamKeepAlives(15.0), Client()
    stream = await parked(wheel, client, nursery)
    stream.last = 10.0
    assert wheel.due(15.0) == 0
    assert client.written == b""


async def test_intervals_are_jittered_by_at_most_a_tenth_so_streams_opened_together_do_not_speak_at_once():
    wheel = StreamKeepAlives(15.0)
    streams = [wheel.open(Client()) for _ in range(200)]
    intervals = {s.interval for s in streams}
    assert len(intervals) > 150
    assert all(13.5 <= i <= 15.0 for i in intervals)


async def test_a_comment_the_kernel_takes_only_in_part_is_owed_and_the_streams_task_woken_to_send_the_rest(
        nursery):
    wheel, client, woken = StreamKeepAlives(15.0), Client(room=4), []
    stream = await parked(wheel, client, nursery, woken)
    assert wheel.due(15.0) == 1
    assert client.written == COMMENT[:4]
    assert stream.owed == COMMENT[4:]
    await trio.testing.wait_all_tasks_blocked()
    assert woken == [stream] and stream.task is None


async def test_a_connection_that_cannot_write_at_once_owes_the_whole_comment(nursery):
    wheel, client = StreamKeepAlives(15.0), Client(room=0)
    stream = await parked(wheel, client, nursery)
    wheel.due(15.0)
    assert stream.owed == COMMENT


async def test_a_stream_whose_task_is_writing_is_left_alone():
    wheel, client = StreamKeepAlives(15.0), Client()
    stream = wheel.open(client)  # no task: not parked at its wait
    assert wheel.due(15.0) == 0
    assert client.written == b""
    assert stream.last == 0.0


async def test_a_stream_in_the_middle_of_an_event_gets_no_comment_that_would_split_it(nursery):
    wheel, client = StreamKeepAlives(15.0), Client()
    stream = await parked(wheel, client, nursery)
    stream.at_boundary = False
    assert wheel.due(15.0) == 0
    assert client.written == b""
    assert stream.task is not None


async def test_a_closed_stream_is_forgotten(nursery):
    wheel, client = StreamKeepAlives(15.0), Client()
    stream = await parked(wheel, client, nursery)
    wheel.close(stream)
    assert wheel.due(15.0) == 0
    assert wheel.open_streams == 0


async def test_a_tick_looks_only_at_the_streams_due_then(nursery):
    wheel = StreamKeepAlives(15.0)
    looked = []

    class Watched(Client):
        def send_now(self, data: bytes) -> bytes:
            looked.append(self)
            return super().send_now(data)

    streams = [await parked(wheel, Watched(), nursery) for _ in range(100)]
    for now in range(1, 13):
        assert wheel.due(float(now)) == 0  # none due before 13.5 s
    assert sum(len(b) for b in wheel._buckets.values()) == 100  # each still queued once
    assert wheel.due(15.0) == 100
    assert len(looked) == 100
    assert all(s.last == 15.0 for s in streams)


async def test_a_stream_that_heard_from_its_upstream_is_requeued_for_its_new_due_time(nursery):
    wheel, client = StreamKeepAlives(15.0), Client()
    stream = await parked(wheel, client, nursery)
    stream.interval = 15.0
    stream.last = 10.0  # the upstream spoke at 10 s
    assert wheel.due(15.0) == 0
    assert wheel.due(24.0) == 0
    assert wheel.due(25.0) == 1
    assert client.written == COMMENT


async def test_a_response_of_fixed_length_is_never_given_a_comment(nursery):
    wheel, client = StreamKeepAlives(15.0), Client(fixed_length=True)
    stream = await parked(wheel, client, nursery)
    assert stream.comment == b""
    assert wheel.due(15.0) == wheel.due(30.0) == 0 and client.written == b""
    assert wheel.open_streams == 1  # still an open stream (the watch and the metrics count it)
    wheel.close(stream)
    assert wheel.open_streams == 0


async def test_streams_share_one_framed_comment():
    first, second = StreamKeepAlives(15.0).open(Client()), StreamKeepAlives(15.0).open(Client())
    assert first.comment == COMMENT and first.comment is second.comment
