"""Exact grants under concurrency (gateway/ratelimit/ledger.py rule 13, lease.py rules 7 and 8).

Kong compares every request with its counter's live count (rate-limiting handler.lua:89-114; policies/init.lua's
local policy: a shared-dict incr), so concurrent requests are refused only once the count reaches the limit. Before,
a key in exact mode (two instances with other limits on one counter) was granted one token per worker's lease
request, whatever the number of requests waiting there: one worker with 400 concurrent requests admitted them one
keeper round trip at a time, and those still without a token after the 1 s wait got 429s, far below the limits. And
a reload changing one instance's limit made a new spec on the counter its old spec was still counting on, so the one
instance of a config was in exact mode for up to ACTIVE_S after a reload, and bursts got 429s.
"""

from __future__ import annotations

import json
import time
from typing import Any

import trio
from e2e_helpers import Backend, GatewayNode, HttpConn, Reply
from test_rl_recall import Host
from test_rl_shared_counter import BOBS, GLOBAL, admitted_one, ask, keeper_ledger, key_of

from gateway.ratelimit import Grant, LeaseRequest, LeaseTable, LimitSpec, ReturnedLease, Status, Window
from gateway.ratelimit.ledger import EXACT_TTL_S, request_problem

T0 = 1_700_002_800.0  # an hour's start (UTC)
BURST = 400  # concurrent requests through one worker: one keeper round trip each would outlast the 1 s wait
ROUTE = {"name": "r", "paths": ["/"]}
OLD = LimitSpec(windows=(Window("hour", 100_000),))  # one instance's limit before a reload
NEW = LimitSpec(windows=(Window("hour", 200_000),))  # ... and after it


def exact_grant(granted: int) -> Grant:
    """An exact grant of `granted` tokens of bob's key (ledger.py rule 13)."""
    return Grant(key_of(BOBS), granted, (90,), (T0 + 3600,), T0, T0 + EXACT_TTL_S, exact=True)


# ---- the worker: how many requests wait ------------------------------------------------------------------------------


def test_a_lease_request_counts_the_requests_waiting_for_it():
    """lease.py rule 7: three requests told WAIT, one lease request, which says three wait for it (an exact key grants
    each a token: Kong compares each request with the live count, handler.lua:89-114)."""
    table = LeaseTable("w1", 1)
    assert [table.take(key_of(BOBS), BOBS, 0.0, T0).status for _ in range(3)] == [Status.WAIT] * 3
    [request] = table.refills(0.0)
    assert request.waiting == 3


def test_the_count_leaves_out_requests_answered():
    """Of three waiting, one admitted on the grant's token and one denied at the end of its wait: one is left."""
    table, key = LeaseTable("w1", 1), key_of(BOBS)
    for _ in range(3):
        table.take(key, BOBS, 0.0, T0)
    table.refills(0.0)
    table.apply(exact_grant(1), 0.001, T0)
    assert table.take(key, BOBS, 0.002, T0, waited=True).status is Status.ADMIT
    assert table.take(key, BOBS, 0.002, T0, waited=True).status is Status.WAIT
    assert table.take(key, BOBS, 0.003, T0, waited=True, final=True).status is Status.DENY
    [request] = table.refills(0.003)
    assert request.waiting == 1


def test_the_count_leaves_out_the_tokens_the_waiting_requests_take_next():
    """Two waiting, a grant of 4 ahead of need, three spent by requests that came since: the one token left is for a
    waiting request, so the lease request asks for one more of them."""
    table, key = LeaseTable("w1", 1), key_of(BOBS)
    table.take(key, BOBS, 0.0, T0)
    table.take(key, BOBS, 0.0, T0)
    table.refills(0.0)
    table.apply(Grant(key, 4, (96,), (T0 + 3600,), T0, T0 + 3600), 0.001, T0)
    for _ in range(3):
        assert table.spend(key, BOBS, 0.002, T0) is not None
    [request] = table.refills(0.002)  # below half its grant: due
    assert request.waiting == 1


def test_a_request_that_left_mid_wait_is_no_longer_counted_after_a_sweep():
    """Its client gone, it never takes again (every waiting request takes again after each grant): a sweep that finds
    no request in flight counts only the requests told WAIT since the sweep before."""
    table, key = LeaseTable("w1", 1), key_of(BOBS)
    table.take(key, BOBS, 0.0, T0)
    table.refills(0.0)
    table.apply(exact_grant(0), 0.001, T0)  # (its request left before the grant came)
    table.sweep(1.0)
    table.sweep(2.0)
    assert {table.take(key, BOBS, 2.1, T0 + 2.1).status for _ in range(2)} == {Status.WAIT}
    [request] = table.refills(2.1)
    assert request.waiting == 2  # the two new ones, not the one gone


# ---- the keeper: a token for each waiting request --------------------------------------------------------------------


def test_an_exact_key_grants_a_token_to_each_waiting_request_in_one_answer():
    """handler.lua:89-114 compares each request with the live count: five waiting, five tokens, each for a request
    that takes it now, void soon after (EXACT_TTL_S), whatever the demand the worker measured (`want`)."""
    ledger = keeper_ledger()
    admitted_one(ledger, GLOBAL)
    request = LeaseRequest(key_of(BOBS), BOBS, "w1", 1, waiting=5)
    grant = ledger.grant_request(request, 0.0, T0)
    assert grant is not None and (grant.granted, grant.exact, grant.expires) == (5, True, T0 + EXACT_TTL_S)


def test_an_exact_grant_gives_no_more_than_the_limit_leaves():
    """Ten waiting on the global instance's key (hour 3) with one request of the counter admitted: two tokens."""
    ledger = keeper_ledger()
    admitted_one(ledger, BOBS)
    grant = ledger.grant_request(LeaseRequest(key_of(GLOBAL), GLOBAL, "w1", 1, waiting=10), 0.0, T0)
    assert grant is not None and (grant.granted, grant.remaining, grant.exact) == (2, (0,), True)


def test_a_negative_count_of_waiting_requests_is_refused():
    """It would take tokens from the count (intake.py drops the message whole)."""
    why = request_problem(LeaseRequest(key_of(BOBS), BOBS, "w1", 1, waiting=-1))
    assert why is not None and "waiting -1" in why


async def test_a_workers_fifty_waiting_requests_are_admitted_on_one_grant():
    """w1's fifty concurrent requests of bob, the global instance asked for: one lease request, one exact grant of
    fifty tokens, fifty admitted (Kong: usage far below 100), where one token a round trip outlasted their wait."""
    if 3600 - time.time() % 3600 < 2:  # (not across an hour's end)
        await trio.sleep(2.1)
    host = Host(2)
    assert host.request("w2", key_of(BOBS), BOBS) is Status.ADMIT
    assert host.request("w1", key_of(GLOBAL), GLOBAL) is Status.ADMIT  # bob's key is exact from now on
    leases, key = host.workers["w1"].leases, key_of(BOBS)
    assert {leases.take(key, BOBS, time.monotonic(), time.time()).status for _ in range(50)} == {Status.WAIT}
    grants = host.delivered.count(("w1", "Grants"))
    host.ask("w1")
    statuses = [leases.take(key, BOBS, time.monotonic(), time.time(), waited=True).status for _ in range(50)]
    assert statuses == [Status.ADMIT] * 50
    assert host.delivered.count(("w1", "Grants")) == grants + 1
    assert leases._leases[key].grant.exact  # type: ignore[union-attr]


# ---- the keeper: a spec a reload replaced ----------------------------------------------------------------------------


def test_a_spec_a_reload_replaced_does_not_make_its_successor_exact():
    """Generation 1's worker leased the old spec's tokens ahead of need; generation 2 (the reload raised the limit:
    a new spec on the same counter) is no exact key: its first grant waits for those tokens (which the draining
    worker could spend past the old limit) to come back, then it leases ahead as the one instance it is."""
    ledger = keeper_ledger()
    ledger.reachable = {"1.0", "2.0"}
    old = ledger.grant_request(LeaseRequest(key_of(OLD), OLD, "1.0", 5, waiting=1), 0.0, T0)
    assert old is not None and old.granted == 5
    request = LeaseRequest(key_of(NEW), NEW, "2.0", 5, waiting=1)
    grant = ledger.grant_request(request, 0.01, T0 + 0.01)
    assert grant is not None and (grant.granted, grant.exact) == (0, False)
    assert ledger.recall(request, grant, 0.01) == [(key_of(OLD), "1.0")]
    ledger.recalled(ReturnedLease(key_of(OLD), "1.0", 5, 0, old.wall))
    grant = ledger.grant_request(request, 0.02, T0 + 0.02)
    assert grant is not None and (grant.granted, grant.exact) == (5, False)


def test_the_old_generations_draining_worker_is_granted_exactly_beside_the_new_spec():
    """Generation 1's worker, still finishing its requests, asks for the old spec: the new one is asked for by a
    newer generation, so the old key compares each of its requests with the live count."""
    ledger = keeper_ledger()
    ledger.grant_request(LeaseRequest(key_of(NEW), NEW, "2.0", 1, waiting=1), 0.0, T0)
    grant = ledger.grant_request(LeaseRequest(key_of(OLD), OLD, "1.0", 5, waiting=1), 0.01, T0 + 0.01)
    assert grant is not None and (grant.granted, grant.exact) == (1, True)


def test_an_old_generations_tokens_out_ahead_of_a_lower_limit_are_recalled_before_a_new_grant():
    """A reload kept a global {hour: 10} and bob's {hour: 1000}: generation 1's worker holds the global key's tokens
    leased ahead of need (bob's key unknown then). Its kept connections are still served while it drains, and Kong
    compares each of their requests with the live count, so bob's first grant on generation 2 waits for those
    tokens to be recalled, though the global key, asked for by generation 1 only, makes it no exact key."""
    ledger = keeper_ledger()
    ledger.reachable = {"1.0", "2.0"}
    _, held = ask(ledger, GLOBAL, worker="1.0", want=5)
    assert held.granted > 0
    request, grant = ask(ledger, BOBS, worker="2.0", want=5)
    assert (grant.granted, grant.exact) == (0, False)
    assert ledger.recall(request, grant, 0.0) == [(key_of(GLOBAL), "1.0")]


def test_instances_of_one_generation_are_exact_whichever_workers_ask():
    """A global instance and a consumer's asked for by two workers of one generation are two instances, not a
    reload's old and new spec."""
    ledger = keeper_ledger()
    ask(ledger, GLOBAL, worker="2.0", want=1)
    _, grant = ask(ledger, BOBS, worker="2.1", want=5)
    assert (grant.granted, grant.exact) == (1, True)


# ---- end to end ------------------------------------------------------------------------------------------------------


async def _gets(count: int, port: int, target: str, statuses: list[int]) -> None:
    """`count` GETs of `target` at once, each on a connection of its own (all connected first, so they arrive
    together), their statuses added to `statuses`."""
    streams: list[trio.SocketStream] = []
    request = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()

    async def connect() -> None:
        streams.append(await trio.open_tcp_stream("127.0.0.1", port))

    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(request)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        statuses.append(int(data.split(b" ", 2)[1]))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(connect)
    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(one, stream)


async def _status(port: int, target: str) -> int:
    """One GET on a new connection: its status."""
    statuses: list[int] = []
    await _gets(1, port, target, statuses)
    return statuses[0]


def _tally(statuses: list[int]) -> dict[int, int]:
    return {status: statuses.count(status) for status in sorted(set(statuses))}


async def test_concurrent_requests_on_an_exact_key_through_one_worker_are_all_admitted(nursery, tmp_path):
    """A global instance {hour: 10000} and bob's {hour: 100000}, limit_by ip, on one counter (policies/init.lua:50-72)
    with the global one asked for: 400 concurrent requests of bob through one worker, usage far below both limits,
    are all admitted, as Kong compares each with the live count (handler.lua:89-114)."""
    if 3600 - time.time() % 3600 < 5:  # (not across an hour's end)
        await trio.sleep(5.1)
    backend = Backend("b")
    await nursery.start(backend.serve)
    doc: dict[str, Any] = {
        "services": [{"name": "s", "url": f"http://{backend.target}", "routes": [ROUTE]}],
        "consumers": [{"username": "anon"},
                      {"username": "bob", "keyauth_credentials": [{"key": "kb"}],
                       "plugins": [{"name": "rate-limiting",
                                    "config": {"hour": 100000, "policy": "local", "limit_by": "ip"}}]}],
        "plugins": [{"name": "key-auth", "config": {"anonymous": "anon"}},
                    {"name": "rate-limiting", "config": {"hour": 10000, "policy": "local", "limit_by": "ip"}}]}
    gw = GatewayNode(tmp_path / "gw", doc, status_listen=None)
    statuses: list[int] = []
    try:
        await gw.start(workers=1)
        with trio.fail_after(10):
            assert await _status(gw.port, "/") == 200  # the global instance's key asked for: bob's is exact
            await _gets(BURST, gw.port, "/?apikey=kb", statuses)
    finally:
        gw.cleanup()
    assert _tally(statuses) == {200: BURST}


async def test_a_reload_changing_the_one_instances_limit_refuses_no_concurrent_request(nursery, tmp_path):
    """One rate-limiting instance; a reload raises its hour limit from 100000 to 200000 (Kong: the same counter, the
    new limit). Requests go on during the reload, then 400 at once on the new generation: usage far below either
    limit, Kong admits every one (handler.lua:89-114), and the old spec the reload replaced makes the new one no
    peer to compare with per request (ledger.py rule 13)."""
    if 3600 - time.time() % 3600 < 10:  # (not across an hour's end)
        await trio.sleep(10.1)
    backend = Backend("b")
    await nursery.start(backend.serve)

    def doc(hour: int) -> dict[str, Any]:
        return {"services": [{"name": "s", "url": f"http://{backend.target}", "routes": [ROUTE]}],
                "plugins": [{"name": "rate-limiting", "config": {"hour": hour, "policy": "local", "limit_by": "ip"}}]}

    gw = GatewayNode(tmp_path / "gw", doc(100000), status_listen=None)
    statuses: list[int] = []
    try:
        await gw.start(workers=1)
        with trio.fail_after(10):
            statuses.append(await _status(gw.port, "/"))
            written = json.loads(gw.config.read_text())
            written["plugins"] = doc(200000)["plugins"]
            gw.config.write_text(json.dumps(written))
            reloaded = trio.Event()

            async def reload() -> None:
                await gw.admin("reload")
                reloaded.set()

            async with trio.open_nursery() as during:
                during.start_soon(reload)
                while not reloaded.is_set():  # the old spec's key stays asked for up to the reload's end
                    statuses.append(await _status(gw.port, "/"))
            await _gets(BURST, gw.port, "/", statuses)
    finally:
        gw.cleanup()
    assert _tally(statuses) == {200: len(statuses)}


class SourcedConn(HttpConn):
    """A kept-alive client connection from a chosen source address (its own rate-limiting identifier)."""

    @classmethod
    async def open_from(cls, port: int, source: str) -> SourcedConn:
        return cls(await trio.open_tcp_stream("127.0.0.1", port, local_address=source), port)


async def _once(port: int, target: str, source: str = "127.0.0.1") -> Reply:
    conn = await SourcedConn.open_from(port, source)
    try:
        return await conn.request("GET", target)
    finally:
        await conn.aclose()


async def test_after_a_reload_the_old_generation_spends_no_token_past_the_lower_limit(nursery, tmp_path):
    """A global rate-limiting {hour: 10} and bob's {hour: 1000}, limit_by ip: one counter (Kong's local key
    ratelimit:<plugin route>:<plugin service>:<ip>:..., policies/init.lua:62-67; both unscoped). Anonymous requests on
    generation 1 lease the global key's tokens ahead of need (bob's key unknown: alone). A reload keeps both
    instances (the specs unchanged). Generation 2 admits 12 of bob's requests: the counter is 3 + 12 = 15. An
    anonymous request then reaching generation 1 on a connection it kept (one more request in its drain) is compared
    by Kong with the live count, 15 >= 10: 429 (handler.lua get_usage: remaining = limit - current_usage <= 0 stops
    it). So bob's first grant waits for generation 1's tokens of the global key to be recalled (found by the 40th
    session's review of its own generation rule)."""
    if 3600 - time.time() % 3600 < 10:
        await trio.sleep(10.1)
    backend = Backend("b")
    await nursery.start(backend.serve)

    def doc(probe: bool) -> dict[str, Any]:
        routes = [{"name": "r", "paths": ["/r"]}]
        if probe:  # generation 1 only: generation 2 answers /probe 404
            routes.append({"name": "p", "paths": ["/probe"]})
        return {"services": [{"name": "s", "url": f"http://{backend.target}", "routes": routes}],
                "consumers": [{"username": "anon"},
                              {"username": "bob", "keyauth_credentials": [{"key": "kb"}],
                               "plugins": [{"name": "rate-limiting",
                                            "config": {"hour": 1000, "policy": "local", "limit_by": "ip"}}]}],
                "plugins": [{"name": "key-auth", "config": {"anonymous": "anon"}},
                            {"name": "rate-limiting", "config": {"hour": 10, "policy": "local", "limit_by": "ip"}}]}

    gw = GatewayNode(tmp_path / "gw", doc(True), status_listen=None)
    anon: list[HttpConn] = []
    try:
        await gw.start(workers=1)
        with trio.fail_after(20):
            for _ in range(3):  # three anonymous requests on generation 1, each on a connection it keeps alive
                conn = await HttpConn.open(gw.port)
                assert (await conn.request("GET", "/r")).status == 200
                anon.append(conn)
            written = json.loads(gw.config.read_text())
            written["services"] = doc(False)["services"]
            gw.config.write_text(json.dumps(written))
            nursery.start_soon(gw.admin, "reload")
            seen = []
            while (st := (await _once(gw.port, "/probe", "127.0.0.2")).status) != 404:  # (another address)
                seen.append(st)
                assert len(seen) < 300, (seen[-5:], gw.log()[-3000:])
                await trio.sleep(0.01)
            await trio.sleep(0.05)
            bob = await HttpConn.open(gw.port)
            bobs = [(await bob.request("GET", "/r?apikey=kb")).status for _ in range(12)]
            assert bobs == [200] * 12  # Kong: bob's limit is 1000
            late = await anon[0].request("GET", "/r")  # generation 1, draining: one more request on a kept connection
    finally:
        gw.cleanup()
    # Kong: 3 anonymous + 12 of bob's on the counter, the global instance's limit 10: refused
    assert late.status == 429, (late.status, late.headers)
