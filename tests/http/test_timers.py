"""The coarse connection timers (gateway.http.timers): a lazy min-heap of deadlines, driven here by hand with
`expire(now)` on Trio's mock clock."""

from __future__ import annotations

import math

import trio
import trio.testing

from gateway.http.timers import CLIENT_CHECK_S, TIMER_RESOLUTION_S, ConnTimer, Phase, Timers


def run(fn):  # noqa: ANN001, ANN201
    return trio.run(fn, clock=trio.testing.MockClock())


def test_a_due_timer_fires_and_cancels_its_scope():
    async def main() -> None:
        timers = Timers()
        timer = ConnTimer(trio.current_time() + 5, Phase.NEW)
        timers.add(timer)
        assert timers.expire(trio.current_time() + 4.9) == 0
        assert timers.expire(trio.current_time() + 5) == 1
        assert timer.scope.cancel_called

    run(main)


def test_a_due_timer_with_a_retryable_upstream_closes_that_and_leaves_the_connection_alone():
    class Upstream:
        closed = 0

        def close(self) -> None:
            self.closed += 1

    async def main() -> None:
        timers = Timers()
        timer = ConnTimer(math.inf, Phase.BUSY)
        timers.add(timer)
        timer.set(1, Phase.UPSTREAM_READ)
        timer.upstream = upstream = Upstream()
        assert timers.expire(trio.current_time() + 1) == 1
        assert upstream.closed == 1 and timer.upstream is None
        assert not timer.scope.cancel_called

    run(main)


def test_a_later_deadline_pushes_nothing_and_the_timer_is_requeued_when_popped():
    async def main() -> None:
        timers = Timers()
        timer = ConnTimer(trio.current_time() + 5, Phase.NEW)
        timers.add(timer)
        timer.set(60, Phase.UPSTREAM_READ)  # later than the queued 5 s: no new heap entry
        assert len(timers._heap) == 1
        assert timers.expire(trio.current_time() + 5) == 0  # popped, requeued at 60
        assert timer.queued == trio.current_time() + 60
        assert timers.expire(trio.current_time() + 60) == 1

    run(main)


def test_an_earlier_deadline_is_pushed_and_the_old_entry_goes_stale():
    async def main() -> None:
        timers = Timers()
        timer = ConnTimer(trio.current_time() + 60, Phase.IDLE)
        timers.add(timer)
        timer.set(1, Phase.UPSTREAM_WRITE)
        assert timer.queued == trio.current_time() + 1
        assert timers.expire(trio.current_time() + 1) == 1
        timer.scope = trio.CancelScope()
        assert timers.expire(trio.current_time() + 60) == 0  # the stale 60 s entry is dropped, not fired

    run(main)


def test_a_cleared_timer_never_fires_and_leaves_the_heap():
    async def main() -> None:
        timers = Timers()
        timer = ConnTimer(trio.current_time() + 1, Phase.NEW)
        timers.add(timer)
        timer.clear()
        assert timers.expire(trio.current_time() + 100) == 0
        assert timers._heap == [] and timer.queued == math.inf

    run(main)


def test_shorten_and_restore_bring_a_deadline_forward_at_once():
    async def main() -> None:
        timers = Timers()
        timer = ConnTimer(trio.current_time() + 75, Phase.IDLE)
        timers.add(timer)
        timer.shorten(trio.current_time() + 1)  # a drain
        assert timers.expire(trio.current_time() + 1) == 1
        other = ConnTimer(trio.current_time() + 10, Phase.UPSTREAM_BODY)
        timers.add(other)
        saved = other.save()
        other.set(60, Phase.CLIENT_WRITE)
        timers.expire(trio.current_time() + 10)  # requeued at 60 while the write waits
        other.restore(saved)  # the 10 s deadline is back (and past): it fires at the next sweep
        assert other.phase == Phase.UPSTREAM_BODY
        assert timers.expire(trio.current_time() + 10) == 1

    run(main)


def test_a_discarded_timer_never_fires():
    async def main() -> None:
        timers = Timers()
        timer = ConnTimer(trio.current_time() + 1, Phase.NEW)
        timers.add(timer)
        timers.discard(timer)
        assert timers.expire(trio.current_time() + 2) == 0
        assert not timer.scope.cancel_called

    run(main)


def test_a_parked_timer_leaves_the_live_set_and_still_fires():
    async def main() -> None:
        timers = Timers()
        timer = ConnTimer(math.inf, Phase.BUSY)
        timers.add(timer)
        timers.park(timer)  # its connection relays a stream
        assert timer not in timers.live
        timer.set(60, Phase.CLIENT_WRITE)  # a write that waits for the client is still bounded
        assert timers.expire(trio.current_time() + 60) == 1
        timers.unpark(timer)
        assert timer in timers.live

    run(main)


def test_unpark_after_discard_does_not_bring_a_closed_connection_back():
    async def main() -> None:
        timers = Timers()
        timer = ConnTimer(math.inf, Phase.BUSY)
        timers.add(timer)
        timers.park(timer)
        timers.discard(timer)
        timers.unpark(timer)
        assert timer not in timers.live

    run(main)


def test_idle_streams_without_deadlines_cost_the_sweep_nothing():
    async def main() -> None:
        timers = Timers()
        for _ in range(10000):
            timer = ConnTimer(trio.current_time() + 10, Phase.NEW)
            timers.add(timer)
            timer.clear()  # streaming: no deadline
        timers.expire(trio.current_time() + 11)
        assert timers._heap == []  # the next sweeps have nothing to look at

    run(main)


def run_autojump(fn):  # noqa: ANN001, ANN201
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


class CountingTimers(Timers):
    def __init__(self) -> None:
        super().__init__()
        self.sweeps = 0

    def expire(self, now: float) -> int:
        self.sweeps += 1
        return super().expire(now)


def test_an_idle_sweeper_wakes_every_client_check_interval():
    async def main() -> None:
        timers = CountingTimers()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timers.expire_forever)
            await trio.sleep(10.05)
            nursery.cancel_scope.cancel()
        assert CLIENT_CHECK_S == 0.5 and timers.sweeps == 21  # at 0, 0.5, ..., 10

    run_autojump(main)


def test_a_deadline_set_while_the_sweeper_idles_wakes_it_and_fires_within_the_resolution():
    async def main() -> None:
        timers = CountingTimers()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timers.expire_forever)
            await trio.sleep(0.6)  # the sweeper now sleeps until 1.0
            timer = ConnTimer(math.inf, Phase.BUSY)
            timers.add(timer)
            timer.set(0.25, Phase.UPSTREAM_READ)
            with timer.scope:
                await trio.sleep(100)
            assert timer.scope.cancelled_caught
            assert 0.85 <= trio.current_time() <= 0.85 + TIMER_RESOLUTION_S
            nursery.cancel_scope.cancel()

    run_autojump(main)


def test_a_sweeper_under_many_deadlines_sweeps_at_most_every_resolution():
    async def main() -> None:
        timers = CountingTimers()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timers.expire_forever)
            for i in range(100):  # deadlines 10 ms apart for a second
                timer = ConnTimer(math.inf, Phase.BUSY)
                timers.add(timer)
                timer.set(0.01 * (i + 1), Phase.HEAD)
            await trio.sleep(1.005)
            nursery.cancel_scope.cancel()
        assert timers.sweeps <= 1 + 1.005 / TIMER_RESOLUTION_S + 1

    run_autojump(main)


class _Client:
    """A client connection as the sweeper sees it: what a peek at its socket would say."""

    def __init__(self, closed: bool | None) -> None:
        self.closed = closed
        self.peeks = 0

    def peer_closed(self, behind_bytes: bool = True) -> bool | None:
        self.peeks += 1
        return self.closed


def _waiting(timers: Timers, phase: Phase, closed: bool | None) -> ConnTimer:
    timer = ConnTimer(math.inf, Phase.BUSY)
    timers.add(timer)
    timer.set(60, phase)
    timer.client = _Client(closed)
    return timer


def test_a_client_that_closed_while_its_request_waits_for_the_upstream_ends_the_request():
    async def main() -> None:
        timers = Timers()
        head, body = _waiting(timers, Phase.UPSTREAM_READ, True), _waiting(timers, Phase.UPSTREAM_BODY, True)
        assert timers.check_clients() == 2
        for timer in (head, body):
            assert timer.scope.cancel_called and timer.gone

    run(main)


def test_a_client_that_sent_bytes_or_nothing_while_waiting_is_left_alone():
    async def main() -> None:
        timers = Timers()
        pipelined, quiet = _waiting(timers, Phase.UPSTREAM_READ, False), _waiting(timers, Phase.UPSTREAM_READ, None)
        assert timers.check_clients() == 0
        assert not pipelined.scope.cancel_called and not quiet.scope.cancel_called
        assert not pipelined.gone and not quiet.gone

    run(main)


def test_a_client_that_closed_while_its_request_is_connected_or_written_upstream_ends_the_request():
    """nginx watches the client from the start of the upstream request, the connect included:
    ngx_http_upstream_init_request sets ngx_http_upstream_rd_check_broken_connection before ngx_http_upstream_connect
    (src/http/ngx_http_upstream.c:661)."""
    async def main() -> None:
        timers = Timers()
        connect, write = _waiting(timers, Phase.UPSTREAM_CONNECT, True), _waiting(timers, Phase.UPSTREAM_WRITE, True)
        assert timers.check_clients() == 2
        for timer in (connect, write):
            assert timer.scope.cancel_called and timer.gone

    run(main)


def test_a_client_not_waiting_on_its_upstream_is_not_looked_at():
    async def main() -> None:
        timers = Timers()
        others = [_waiting(timers, phase, True) for phase in Phase
                  if phase not in (Phase.UPSTREAM_CONNECT, Phase.UPSTREAM_WRITE, Phase.UPSTREAM_READ,
                                   Phase.UPSTREAM_BODY)]
        assert timers.check_clients() == 0
        assert all(timer.client.peeks == 0 and not timer.scope.cancel_called for timer in others)  # type: ignore[union-attr]

    run(main)


def test_a_gone_client_of_a_retryable_try_cancels_the_connection_not_just_the_try():
    async def main() -> None:
        timers = Timers()
        timer = _waiting(timers, Phase.UPSTREAM_READ, True)
        timer.upstream = object()  # type: ignore[assignment]
        assert timers.check_clients() == 1
        assert timer.scope.cancel_called and timer.upstream is None

    run(main)


def test_the_sweeper_looks_at_waiting_clients_every_client_check_interval():
    async def main() -> None:
        timers = Timers()
        timer = _waiting(timers, Phase.UPSTREAM_READ, None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timers.expire_forever)
            await trio.sleep(CLIENT_CHECK_S * 4 + 0.01)
            nursery.cancel_scope.cancel()
        assert timer.client.peeks == 4  # type: ignore[union-attr]

    run_autojump(main)


def test_closed_connections_timers_far_in_the_future_leave_the_heap_once_it_has_doubled():
    """nginx deletes a connection's timers as it closes it (ngx_close_connection): 5,000 connections closed with a
    timer an hour away (a long read_timeout) must not stay in the heap, with their scopes, for that hour."""
    async def main() -> None:
        timers = Timers()
        kept = ConnTimer(math.inf, Phase.BUSY)
        timers.add(kept)
        kept.set(30, Phase.UPSTREAM_READ)
        for _ in range(5000):
            timer = ConnTimer(math.inf, Phase.BUSY)
            timers.add(timer)
            timer.set(3600, Phase.UPSTREAM_READ)
            timers.discard(timer)
        timers.tidy()
        assert len(timers._heap) == 1 and timers._heap[0][2] is kept
        assert timers.expire(trio.current_time() + 30) == 1 and kept.scope.cancel_called

    run(main)


def test_a_heap_of_valid_deadlines_is_left_whole():
    async def main() -> None:
        timers = Timers()
        for _ in range(3000):
            timer = ConnTimer(math.inf, Phase.BUSY)
            timers.add(timer)
            timer.set(3600, Phase.UPSTREAM_READ)
        timers.tidy()
        assert len(timers._heap) == 3000

    run(main)


def test_the_sweeper_tidies_the_heap_as_it_wakes():
    async def main() -> None:
        timers = Timers()
        for _ in range(2000):
            timer = ConnTimer(math.inf, Phase.BUSY)
            timers.add(timer)
            timer.set(3600, Phase.UPSTREAM_READ)
            timers.discard(timer)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timers.expire_forever)
            await trio.sleep(CLIENT_CHECK_S)
            assert timers._heap == []
            nursery.cancel_scope.cancel()

    run_autojump(main)
