"""The state keeper against what its bus may bring: messages it cannot use, workers that are gone, and an operator's
command that comes after the root stopped waiting for it.

1. A decoded message is checked whole before any of it is applied (gateway/keeper/intake.py): one carrying values
   the keeper's state cannot hold is dropped with one log line naming its sender and what was wrong, and the state
   is as it was; a message the keeper fails to handle for another reason is dropped too, and the keeper serves on.
   Before, a GiveBack naming a period `eon` raised inside the ROUTER's pump and the keeper exited, its counters lost.
2. The keeper forgets a worker whose connection closed (gateway/keeper/peers.py, process.py), and the probe permits
   it held go to a live worker: a breaker no longer stays half-open for ever once the worker that last reported its
   target was replaced (gateway/breaker/config.py: "a probe permit with no outcome after this long is taken back
   (its worker may have died)", and each re-grant went to the same dead id).
3. An AdminOp carries a deadline (gateway/bus/keeper_link.py): README.md "Exit status: ... 1 not running, no answer,
   or failed", so a command reported failed is not carried out later.

The end-to-end tests start a supervised gateway (tests/test_shared_state.py's Gateway, loopback only) and stop it by
pid: the root, then every process that was below it.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from pathlib import Path

import pytest
import trio
import zmq
from test_shared_state import Backends, Gateway, config, free_port, http, key, route

from gateway.breaker import BreakerConfig
from gateway.breaker.machine import Breaker
from gateway.breaker.messages import Outcome, given_up
from gateway.bus import protocol as p
from gateway.bus.keeper_link import REPLY_SHARE, KeeperLink, KeeperUnavailable
from gateway.bus.zmq_trio import TrioSocket
from gateway.config import parse_config
from gateway.keeper.process import serve_keeper
from gateway.keeper.state import Keeper
from gateway.node.root import descendants
from gateway.ratelimit import Ledger
from gateway.ratelimit.ledger import REPORT_AHEAD_S
from gateway.ratelimit.messages import FallbackUsage, LeaseRequest, ReturnedLease
from gateway.ratelimit.spec import LimitSpec, Window
from gateway.ratelimit.windows import LAST_WALL, usable_wall

CONFIG = """
_format_version: '3.0'
upstreams:
  - name: up
    targets: [{target: '127.0.0.1:9001'}]
services:
  - {name: s, host: up}
routes:
  - {name: r, service: s, paths: ['/']}
plugins:
  - {name: circuit-breaker, service: s, config: {failure_threshold: 2, half_open_timeout: 1000}}
"""
T = "up|127.0.0.1:9001"
OPEN_S = 1.0
WALL = 1_700_000_000.0  # the keeper's wall clock in the tests that do not run one
MINUTE = LimitSpec(windows=(Window("minute", 100),))
A, B = b"\x00A", b"\x00B"  # two workers' bus ids


def keeper() -> Keeper:
    return Keeper(parse_config(CONFIG), workers=2)


def hello(k: Keeper, sender: bytes, worker: str = "", pid: int = 0, now: float = 0.0) -> list[p.Msg]:
    return k.handle(sender, p.Hello(worker=worker or sender.hex(), pid=pid), now, WALL)[0]


def trip(k: Keeper, sender: bytes, now: float = 0.0) -> None:
    """Two failures in a row from `sender`: the breaker of T opens (failure_threshold 2)."""
    k.handle(sender, p.Outcomes(items=[Outcome(T, 0, 2, 2, 2, 2)]), now, WALL)
    assert k.breakers.describe(now, T)[T]["state"] == "open"


def report(period: str = "minute", windows: tuple[int, ...] = (5,), wall: float = WALL) -> p.GiveBack:
    spec = LimitSpec(windows=(Window(period, 100),))
    return p.GiveBack(fallback=[FallbackUsage("k", "w1", spec, windows, 5, wall)])


def minute_used(k: Keeper) -> float:
    return k.ledger.usage("k", 0.0, WALL).get("minute", 0.0)


def on_the_bus(msg: p.Msg) -> p.Msg:
    """`msg` as the keeper reads it: decoded from its frame (a check made at decoding would refuse it there)."""
    return p.decode(p.encode(msg))


# ---- 1. a message the keeper cannot use is dropped, and the state is as it was --------------------------------------


@pytest.mark.parametrize("msg", [
    report(period="eon"),
    report(windows=(5, 5)),
    report(windows=()),
    report(wall=math.inf),
    report(wall=math.nan),
    report(wall=LAST_WALL),
    report(wall=-1.0),
], ids=["unknown-period", "more-counts-than-windows", "fewer-counts", "wall-inf", "wall-nan", "wall-past-9999",
        "wall-before-1970"])
def test_a_fallback_report_the_ledger_cannot_count_is_dropped_whole(msg: p.GiveBack) -> None:
    """gateway/ratelimit/ledger.py rule 5: a report is added to the windows it fell in; one whose period, counts or
    date name no window (windows.py raised ValueError/OverflowError; zip(strict=True) ValueError) is dropped."""
    k = keeper()
    k.handle(b"w1", p.AskLeases(requests=[LeaseRequest("k", MINUTE, "w1", 3)]), 0.0, WALL)
    before = minute_used(k)
    assert k.handle(b"w1", on_the_bus(msg), 0.0, WALL) == ([], [])
    assert minute_used(k) == before


def test_a_fallback_report_dated_ahead_of_the_keepers_clock_is_dropped() -> None:
    """A report is dated by the same host's clock just before it leaves (gateway/state/shared.py _give_reports): one
    from further ahead would move the key's windows ahead of time."""
    k = keeper()
    k.handle(b"w1", report(wall=WALL + REPORT_AHEAD_S + 120), 0.0, WALL)
    assert k.ledger.keys() == []


def test_a_fallback_report_dated_within_the_slack_is_counted() -> None:
    k = keeper()
    k.handle(b"w1", report(wall=WALL + REPORT_AHEAD_S / 2), 0.0, WALL)
    assert minute_used(k) == 5


def test_a_give_back_with_one_bad_report_credits_none_of_its_returned_tokens() -> None:
    """A message is checked whole before any of it is applied (gateway/keeper/intake.py)."""
    k = keeper()
    k.handle(b"w1", p.AskLeases(requests=[LeaseRequest("k", MINUTE, "w1", 3)]), 0.0, WALL)
    before = minute_used(k)
    bad = report(period="eon")
    k.handle(b"w1", p.GiveBack(returned=[ReturnedLease("k", "w1", 1, 0, WALL)], fallback=bad.fallback), 0.0, WALL)
    assert minute_used(k) == before


def test_tokens_given_back_in_a_negative_count_are_not_charged() -> None:
    """ledger.return_unused subtracts `unused` from the window: a negative count would add to it."""
    k = keeper()
    k.handle(b"w1", p.AskLeases(requests=[LeaseRequest("k", MINUTE, "w1", 3)]), 0.0, WALL)
    before = minute_used(k)
    k.handle(b"w1", p.GiveBack(returned=[ReturnedLease("k", "w1", -50, 0, WALL)]), 0.0, WALL)
    assert minute_used(k) == before


@pytest.mark.parametrize("spec", [
    LimitSpec(windows=(Window("eon", 5),)),
    LimitSpec(windows=(Window("minute", 5), Window("minute", 9))),
    LimitSpec(windows=(Window("minute", -1),)),
    LimitSpec(algorithm="token-bucket", rate=math.nan),
    LimitSpec(algorithm="token-bucket", rate=math.inf),
    LimitSpec(algorithm="token-bucket", rate=1.0, burst=-3),
], ids=["unknown-period", "period-twice", "negative-limit", "rate-nan", "rate-inf", "negative-burst"])
def test_a_lease_request_with_a_spec_the_ledger_cannot_keep_gets_no_grant_and_makes_no_key(spec: LimitSpec) -> None:
    """The Ledger keeps a key's spec and computes with it at every later grant (windows.window_bounds, the bucket's
    floor(level) and retry / rate): a spec it cannot compute with is refused before it is kept."""
    k = keeper()
    assert k.handle(b"w1", on_the_bus(p.AskLeases(requests=[LeaseRequest("k", spec, "w1", 1)])), 0.0, WALL) == \
        ([], [])
    assert k.ledger.keys() == []


def test_a_lease_request_with_a_negative_count_gets_no_grant() -> None:
    k = keeper()
    assert k.handle(b"w1", p.AskLeases(requests=[LeaseRequest("k", MINUTE, "w1", 1, used=-7)]), 0.0, WALL) == \
        ([], [])


def test_outcomes_with_negative_counts_are_dropped() -> None:
    """gateway/breaker/machine.py counts a batch's failures as given: -5 would cancel real ones."""
    k = keeper()
    k.handle(b"w1", p.Outcomes(items=[Outcome(T, 0, 1, 1, 1, 1)]), 0.0, WALL)
    k.handle(b"w1", p.Outcomes(items=[Outcome(T, 0, -5, 0, 0, 0)]), 0.0, WALL)
    k.handle(b"w1", p.Outcomes(items=[Outcome(T, 0, 1, 1, 1, 1)]), 0.0, WALL)
    assert k.breakers.describe(0.0, T)[T]["state"] == "open"


def test_a_dropped_message_is_logged_once_naming_its_worker_and_what_was_wrong(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "gateway.keeper")
    k = keeper()
    hello(k, b"w1", "g1w0", pid=4242)
    k.handle(b"w1", report(period="eon"), 0.0, WALL)
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.keeper"]
    assert len(lines) == 1
    assert "GiveBack" in lines[0] and "worker g1w0 (pid 4242)" in lines[0] and "'eon'" in lines[0], lines


def test_a_cache_store_for_a_dictionary_kong_has_no_shared_dict_for_makes_none() -> None:
    """Kong's shared dicts are those of its nginx template (gateway/policies/proxy_cache/schema.py DICTIONARIES);
    each of the keeper's may grow to 128 MiB, so a store must not make a new one per name it is sent."""
    k = keeper()
    k.handle(b"w1", p.CacheStore(dictionary="no-such-dict", key="x", entry=b"e"), 0.0, WALL)
    assert k.caches == {}


def test_a_cache_store_for_a_shared_dict_of_kongs_is_kept() -> None:
    k = keeper()
    k.handle(b"w1", p.CacheStore(dictionary="kong", key="x", entry=b"e"), 0.0, WALL)
    assert k.handle(b"w1", p.CacheFetch(id=1, dictionary="kong", key="x"), 0.0, WALL)[0] == \
        [p.CacheEntry(id=1, entry=b"e")]


def test_a_store_batch_drops_only_the_item_the_keeper_cannot_use() -> None:
    k = keeper()
    batch = p.StoreBatch(items=[p.CacheStore(dictionary="no-such-dict", key="x", entry=b"e"),
                                p.CountersAdd(items=[("c", 2, 60.0)]), p.CountersGet(id=1, keys=["c"])])
    assert k.handle(b"w1", batch, 0.0, WALL)[0] == [p.StoreBatch(items=[p.CounterValues(id=1, values=[2])])]


@pytest.mark.parametrize(("wall", "usable"), [(0.0, True), (WALL, True), (LAST_WALL - 1, True), (LAST_WALL, False),
                                              (-0.5, False), (math.inf, False), (math.nan, False)])
def test_usable_walls_are_those_a_calendar_year_can_be_found_for(wall: float, usable: bool) -> None:
    """windows.window_bounds computes the end of the year holding `wall`: datetime ends with the year 9999."""
    assert usable_wall(wall) is usable


def test_a_key_reloaded_from_token_bucket_to_fixed_window_is_limited_by_its_windows_alone() -> None:
    """A changed spec keeps the key's windows (ledger.py _state, a reload); its bucket went on limiting a spec
    without one, and divided by its rate of 0 (ZeroDivisionError in the keeper) once empty."""
    ledger = Ledger(1)
    bucket = LimitSpec(windows=(Window("minute", 100),), algorithm="token-bucket", rate=1.0, burst=1)
    assert ledger.grant("k", bucket, 1, 0.0, WALL, "w").granted == 1  # the bucket is empty now
    grant = ledger.grant("k", MINUTE, 1, 0.0, WALL, "w")
    assert (grant.granted, grant.retry) == (1, 0.0)


async def test_a_message_the_keeper_fails_to_handle_is_dropped_and_it_serves_on(tmp_path: Path,
                                                                                caplog: pytest.LogCaptureFixture
                                                                                ) -> None:
    """The last resort of gateway/keeper/process.py: whatever a message makes Keeper.handle raise, the keeper logs
    it and goes on (it used to exit, and the root restarts it 5 times a minute at most, then gives up)."""
    caplog.set_level(logging.ERROR, "gateway.keeper")
    k = keeper()
    handle = k.handle

    def failing(sender: bytes, msg: p.Msg, now: float, wall: float) -> tuple[list[p.Msg], list[p.Msg]]:
        if isinstance(msg, p.CountersAdd):
            raise RuntimeError("a bug")
        return handle(sender, msg, now, wall)

    k.handle = failing  # type: ignore[method-assign]
    bus = f"ipc://{tmp_path}/bus.sock"
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        async with trio.open_nursery() as nursery:
            ready = trio.Event()
            nursery.start_soon(serve_keeper, k, bus, ready.set)
            await ready.wait()
            dealer.connect(bus)
            dealer.send(p.encode(p.CountersAdd(items=[("c", 1, 60.0)])))
            dealer.send(p.encode(p.Hello(worker="w1")))
            with trio.fail_after(5):
                answer = p.decode((await TrioSocket(dealer).recv_multipart())[-1])
            assert isinstance(answer, p.Snapshot)
            nursery.cancel_scope.cancel()
    finally:
        dealer.close()
        ctx.term()
    assert any("CountersAdd" in r.getMessage() for r in caplog.records if r.name == "gateway.keeper")


def _stop(gw: Gateway) -> None:
    if gw.root:
        gw.pids.update(descendants(gw.root))
    gw.stop()


def test_a_bus_message_the_ledger_cannot_use_leaves_the_keeper_running(tmp_path: Path) -> None:
    """One well-formed msgpack frame on the bus (a GiveBack whose FallbackUsage names a period `eon`) raised
    ValueError from gateway/ratelimit/windows.py inside the ROUTER's pump: the keeper exited with status 1 (every
    cache entry, counter and window with it), and six such frames within 60 s passed the root's restart intensity
    (5 / 60 s): the whole gateway exited."""
    doc = config(free_port(), [{"name": "s", "url": "http://127.0.0.1:9"}], [route("s", "s")])
    gw = Gateway(tmp_path, doc, workers=1)
    try:
        gw.start()
        before = gw.keeper()
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"ipc://{gw.dir}/run/bus.sock")
        try:
            for _ in range(6):
                sock.send(p.encode(report(period="eon", wall=time.time())))
            time.sleep(1.0)
        finally:
            sock.close()
        after = gw.keeper()
        assert (after["pid"], after["restarts"]) == (before["pid"], before["restarts"]), \
            "the state keeper died of a bus message:\n" + gw.log()[-1500:]
    finally:
        _stop(gw)


# ---- 2. a worker that is gone is forgotten, and its probe permits go to a live one ---------------------------------


def test_a_gone_workers_probe_permit_is_taken_back_and_sent_to_a_live_worker() -> None:
    """README.md: "in half-open the keeper grants exactly `half_open_max_calls` probe permits across all workers";
    a permit sent to a worker that exited is no longer in flight, and goes again to one that can spend it."""
    k = keeper()
    hello(k, A)
    hello(k, B)
    trip(k, A)
    direct, _ = k.tick(OPEN_S)
    assert direct == [(A, p.ProbePermit(target=T))]  # to the worker that reported the target's traffic
    assert k.peer_gone(A, OPEN_S + 0.1) == [(B, p.ProbePermit(target=T))]
    assert k.breakers.in_flight(T) == (OPEN_S + 0.1,)


def test_a_permit_granted_while_no_worker_is_known_goes_to_the_next_worker_to_say_hello() -> None:
    k = keeper()
    hello(k, A)
    trip(k, A)
    assert k.peer_gone(A, 0.5) == []
    assert k.tick(OPEN_S)[0] == []  # no live worker to take it
    replies = hello(k, B, now=OPEN_S + 0.2)
    assert [type(m) for m in replies] == [p.Snapshot, p.ProbePermit]


def test_a_permit_waiting_for_a_worker_is_void_once_the_breaker_left_half_open() -> None:
    k = keeper()
    hello(k, A)
    trip(k, A)
    k.peer_gone(A, 0.5)
    k.tick(OPEN_S)
    k.admin("breakers", {"action": "reset", "target": T}, OPEN_S + 0.1, WALL)
    assert [type(m) for m in hello(k, B, now=OPEN_S + 0.2)] == [p.Snapshot]


def test_a_gone_worker_is_no_candidate_for_permits_and_not_counted_as_connected() -> None:
    """gateway/node/status_source.py shows the keeper's `workers_seen` as workers_connected."""
    k = keeper()
    hello(k, A)
    hello(k, B)
    k.peer_gone(A, 0.0)
    assert k.admin("health", {}, 0.0, WALL)[0]["workers_seen"] == 1
    trip(k, B)
    assert k.tick(OPEN_S)[0] == [(B, p.ProbePermit(target=T))]


def test_a_probe_outcome_from_a_worker_frees_the_permit_that_worker_held() -> None:
    """A given-up probe (gateway/breaker/messages.py given_up) hands the permit back; its re-grant goes to the
    same worker, and when that worker is gone afterwards the one permit it then holds is placed elsewhere."""
    k = keeper()
    hello(k, A)
    hello(k, B)
    trip(k, A)
    k.tick(OPEN_S)
    replies, _ = k.handle(A, p.Outcomes(items=[given_up(T)]), OPEN_S + 0.5, WALL)
    assert replies == [p.ProbePermit(target=T)]
    assert k.breakers.in_flight(T) == (OPEN_S + 0.5,)
    assert k.peer_gone(A, OPEN_S + 1) == [(B, p.ProbePermit(target=T))]
    assert k.breakers.in_flight(T) == (OPEN_S + 1,)


def test_a_worker_unknown_to_the_keeper_going_is_nothing_to_do() -> None:
    k = keeper()
    assert k.peer_gone(b"\x00root", 0.0) == []


def test_a_breaker_takes_back_a_permit_in_flight_but_not_one_that_lapsed() -> None:
    """gateway/breaker/config.py: "a probe permit with no outcome after this long is taken back"."""
    cfg = BreakerConfig(error_threshold=1, volume_threshold=1, open_s=1.0, half_open_max_calls=2, probe_ttl_s=10.0)
    breaker = Breaker("t", cfg)
    breaker.record(False, 0.0)
    breaker.tick(1.0)
    assert breaker.grant_probe(1.0) and breaker.grant_probe(2.0)
    assert breaker.take_back(2.0) and breaker.in_flight == (1.0,)
    assert breaker.grant_probe(11.5)  # the one of 1.0 lapsed at 11.0
    assert not breaker.take_back(1.0)
    assert breaker.in_flight == (11.5,)


def test_a_probes_outcome_with_its_grant_time_frees_that_permit_not_the_oldest() -> None:
    cfg = BreakerConfig(error_threshold=1, volume_threshold=1, open_s=1.0, half_open_max_calls=2)
    breaker = Breaker("t", cfg)
    breaker.record(False, 0.0)
    breaker.tick(1.0)
    breaker.grant_probe(1.0)
    breaker.grant_probe(1.5)
    breaker.record_outcome(given_up("t"), 2.0, granted_at=1.5)
    assert breaker.in_flight == (1.0,)


async def test_a_closed_worker_connection_is_forgotten_by_the_running_keeper(tmp_path: Path) -> None:
    """gateway/keeper/process.py: the ROUTER's monitor reports the closed connection, and the keeper's heartbeat to
    each worker finds the one gone (ROUTER_MANDATORY: EHOSTUNREACH)."""
    k = keeper()
    bus = f"ipc://{tmp_path}/bus.sock"
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        async with trio.open_nursery() as nursery:
            ready = trio.Event()
            nursery.start_soon(serve_keeper, k, bus, ready.set)
            await ready.wait()
            dealer.connect(bus)
            dealer.send(p.encode(p.Hello(worker="w1")))
            with trio.fail_after(5):
                await TrioSocket(dealer).recv_multipart()
            assert len(k.peers) == 1
            dealer.close()
            with trio.fail_after(2):
                while len(k.peers):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        dealer.close()
        ctx.term()


def test_a_half_open_breaker_recovers_after_the_worker_that_last_reported_the_target_was_replaced(
        tmp_path: Path) -> None:
    """README.md "Open -> half-open after `half_open_timeout`; in half-open the keeper grants exactly
    `half_open_max_calls` probe permits across all workers; `success_threshold` successful probes close it". The
    permits went to the DEALER ids of the workers that had reported the target, which a restarted or reloaded worker
    never has again: the ROUTER dropped them, and the breaker stayed half-open (every request 503, the target
    healthy) until an operator reset it."""
    with Backends("a") as (a,):
        doc = config(free_port(), [{"name": "cb", "url": "http://up"}], [route("cb", "cb")],
                     [{"name": "circuit-breaker", "service": "cb",
                       "config": {"failure_threshold": 2, "half_open_timeout": 300, "success_threshold": 1}}],
                     [{"name": "up", "targets": [{"target": f"127.0.0.1:{a.port}"}]}])
        gw = Gateway(tmp_path, doc, workers=1)
        try:
            gw.start()
            target = key("up", a)
            a.mode = "fail"
            deadline = time.monotonic() + 5
            while gw.admin("breakers")[target]["state"] != "open":  # type: ignore[index]
                assert time.monotonic() < deadline, "the breaker did not open"
                trio.run(http, gw.port, "/cb")
                time.sleep(0.05)
            a.mode = "ok"
            old = gw.worker_pids()[0]
            os.kill(old, signal.SIGKILL)  # the supervisor starts a new worker (a reload replaces it the same way)
            deadline = time.monotonic() + 5
            while gw.worker_pids() in ([old], []):
                assert time.monotonic() < deadline, "no new worker"
                time.sleep(0.05)
            statuses = []
            deadline = time.monotonic() + 4  # half_open_timeout is 0.3 s
            state = ""
            while time.monotonic() < deadline:
                statuses.append(trio.run(http, gw.port, "/cb").status)
                state = gw.admin("breakers")[target]["state"]  # type: ignore[index]
                if state == "closed" and statuses[-1] == 200:
                    break
                time.sleep(0.2)
            assert state == "closed" and statuses[-1] == 200, \
                f"breaker {state!r} with a healthy target; statuses {statuses}"
        finally:
            _stop(gw)


# ---- 3. an operator's command carried out in time, or not at all ----------------------------------------------------


def drain(deadline: float) -> p.AdminOp:
    return p.AdminOp(cmd="targets", args={"action": "drain", "target": T}, id=7, deadline=deadline)


def drained(k: Keeper) -> bool:
    return k.targets[T].drained


def test_a_command_read_after_its_deadline_is_refused_and_changes_nothing() -> None:
    k = keeper()
    replies, broadcasts = k.handle(b"root", drain(time.monotonic() - 1.0), 0.0, WALL)
    assert len(replies) == 1 and isinstance(replies[0], p.AdminResult)
    assert not replies[0].ok and "not carried out" in (replies[0].error or "")
    assert broadcasts == [] and not drained(k)


def test_a_command_read_before_its_deadline_is_carried_out() -> None:
    k = keeper()
    replies, _ = k.handle(b"root", drain(time.monotonic() + 60.0), 0.0, WALL)
    assert isinstance(replies[0], p.AdminResult) and replies[0].ok and drained(k)


def test_a_late_reload_config_is_still_carried_out(tmp_path: Path) -> None:
    """gateway/node/root.py: "the state keeper did not confirm; it reads the new config when it restarts": it re-reads
    the config the root wrote, which is right whenever it comes (gateway/bus/protocol.py LATE_APPLIED)."""
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    k = Keeper(parse_config(CONFIG), workers=2, config_path=str(path))
    replies, _ = k.handle(b"root", p.AdminOp(cmd="reload_config", id=1, deadline=time.monotonic() - 1.0), 0.0, WALL)
    assert isinstance(replies[0], p.AdminResult) and replies[0].ok


async def test_the_root_gives_a_command_a_deadline_before_it_stops_waiting(tmp_path: Path) -> None:
    """The keeper's answer to a command carried out just before its deadline still has REPLY_SHARE of the timeout
    to come back, and a caller that gives up says nothing was changed."""
    endpoint = f"ipc://{tmp_path}/bus.sock"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    link = KeeperLink(ctx, endpoint)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            sent = time.monotonic()
            with pytest.raises(KeeperUnavailable, match="nothing was changed"):
                await link.call("targets", {"action": "drain", "target": T}, timeout=0.4)
            op = p.decode((await TrioSocket(router).recv_multipart())[-1])
            nursery.cancel_scope.cancel()
    finally:
        link.close()
        router.close()
        ctx.term()
    assert isinstance(op, p.AdminOp)
    assert sent < op.deadline <= sent + 0.4 * (1 - REPLY_SHARE) + 0.05


def test_a_target_drain_reported_as_failed_is_not_applied_later(tmp_path: Path) -> None:
    """README.md "Exit status: 0 done; 1 not running, no answer, or failed": `gateway admin targets drain` exits 1 when
    the keeper is slow, and an operator told the drain failed must be able to trust that nothing changed. The root's
    DEALER kept the AdminOp queued (SNDHWM 100, no deadline in the message), and the keeper applied it whenever it
    read it: the target was drained seconds after the operator was told it was not, and saved so."""
    with Backends("a") as (a,):
        doc = config(free_port(), [{"name": "s", "url": "http://up"}], [route("s", "s")], [],
                     [{"name": "up", "targets": [{"target": f"127.0.0.1:{a.port}"}]}])
        gw = Gateway(tmp_path, doc, workers=1)
        keeper_pid = 0
        try:
            gw.start()
            target = key("up", a)
            keeper_pid = gw.keeper()["pid"]
            os.kill(keeper_pid, signal.SIGSTOP)  # a keeper that hangs for a few seconds (swapped out, a long GC ...)
            out = gw.cli("admin", "--config", str(gw.config), "targets", "drain", f"target={target}")
            assert out.returncode == 1 and "did not answer" in out.stderr, out
            os.kill(keeper_pid, signal.SIGCONT)
            time.sleep(0.5)
            states = {t["key"]: t["drained"] for t in gw.admin("targets")}  # type: ignore[union-attr]
            assert states[target] is False, "the drain the operator was told had failed was applied afterwards"
        finally:
            if keeper_pid:
                os.kill(keeper_pid, signal.SIGCONT)
            _stop(gw)
