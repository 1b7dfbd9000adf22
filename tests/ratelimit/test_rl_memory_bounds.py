"""Bounded memory of rate limiting: the keeper drops keys whose windows ended (ledger.py rule 10), as Kong's counters
expire with their period, and a worker keeps at most MAX_LEASES keys (lease.py rule 6), as Kong's counters live in a
fixed-size shared dict, whatever identifiers a client makes up."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h11
import pytest
import trio
from e2e_helpers import node_factory, wait_for

import gateway.ratelimit.lease as lease_module
import gateway.ratelimit.ledger as ledger_module
from gateway.config import parse_config
from gateway.ratelimit import Grant, LeaseTable, Ledger, LimitSpec, ReturnedLease, Status, Window
from gateway.ratelimit.lease import MAX_LEASES
from gateway.ratelimit.ledger import MAX_KEYS
from gateway.runtime import compile_config

T0 = 1_700_000_040.0  # a whole minute (UTC)
SECOND = LimitSpec(windows=(Window("second", 100),))
SECOND_MINUTE = LimitSpec(windows=(Window("second", 100), Window("minute", 1000)))


def per(period: str, limit: int) -> LimitSpec:
    return LimitSpec(windows=(Window(period, limit),))


# ---- the keeper: keys go with their windows (ledger.py rule 10) ---------------------------------------------------


async def _requests_with_distinct_header(port: int, n: int, header: str) -> list[int]:
    """`n` requests on one kept-alive connection, each with its own value of `header`; their statuses."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    statuses = []
    try:
        for i in range(n):
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            await stream.send_all(conn.send(h11.Request(method="GET", target="/", headers=[
                ("host", "gw.test"), (header, f"client-{i}")])) + conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    statuses.append(event.status_code)
                elif isinstance(event, h11.EndOfMessage):
                    break
    finally:
        await trio.aclose_forcefully(stream)
    return statuses


async def test_the_keeper_drops_rate_limit_keys_once_their_windows_have_ended(tmp_path: Path) -> None:
    """Kong's local policy keeps each counter with its period's TTL (kong/plugins/rate-limiting/policies/init.lua,
    local increment: `shm:incr(cache_key, value, 0, EXPIRATION[period])`): a key a client made up is gone once its
    window ended. The keeper calls Ledger.expire every second, so `gateway admin limits` lists no such key."""
    with node_factory(tmp_path) as make:
        doc = {"services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"name": "r", "paths": ["/"]}]}],
               "plugins": [{"name": "rate-limiting", "config": {"second": 1000, "policy": "local",
                                                                "limit_by": "header", "header_name": "X-Client"}},
                           {"name": "request-termination", "config": {"status_code": 200, "message": "ok"}}]}
        gw = make(doc, workers=1, status_listen=None)
        await gw.start(workers=1)
        with trio.fail_after(5):
            statuses = await _requests_with_distinct_header(gw.port, 40, "X-Client")
        assert statuses == [200] * 40
        assert len((await gw.admin("limits"))["keys"]) == 40  # one key per header value
        # within 3.5 s every `second` window ended over 2 s ago, and the keeper expired them since (polled: they go
        # 1-2 s after the last request)
        await wait_for(_no_keys(gw), 3.5, interval=0.1, what="every rate-limiting key expired")
        assert (await gw.admin("limits"))["keys"] == []


def _no_keys(gw: Any) -> Any:
    async def none_left() -> bool:
        return (await gw.admin("limits"))["keys"] == []
    return none_left


def test_a_key_with_a_current_window_is_kept_with_its_count() -> None:
    """policies/init.lua gives each period's counter its own TTL (EXPIRATION[period]): the minute's outlives the
    second's. A key is dropped only when no window is current, so the tokens it handed out stay counted."""
    ledger = Ledger()
    ledger.grant("k", SECOND_MINUTE, 10, 0.0, T0, "w")
    assert ledger.expire(1.5, T0 + 1.5) == 0
    assert ledger.usage("k", 1.5, T0 + 1.5) == {"minute": 10.0}


def test_a_key_asked_for_in_each_window_stays_and_goes_one_window_after_the_last() -> None:
    """shm:incr with EXPIRATION: a counter incremented in each second lives on; one not incremented is gone when
    its second ends (kong/plugins/rate-limiting/policies/init.lua)."""
    ledger = Ledger()
    ledger.grant("k", SECOND, 1, 0.0, T0, "w")
    ledger.grant("k", SECOND, 1, 1.2, T0 + 1.2, "w")
    assert ledger.expire(1.3, T0 + 1.3) == 0 and ledger.keys() == ["k"]
    assert ledger.expire(2.1, T0 + 2.1) == 1 and ledger.keys() == []


def test_expire_with_nothing_due_looks_at_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keeper calls expire every second: with no window ended it costs a look at its schedule, not one at each
    of up to MAX_KEYS keys (ledger.py rule 10)."""
    ledger = Ledger()
    for i in range(1000):
        ledger.grant(f"k{i}", per("hour", 10), 1, 0.0, T0, "w")
    looked: list[str] = []
    monkeypatch.setattr(Ledger, "_expire_key", lambda self, state, now, wall: looked.append(state.key))
    assert ledger.expire(30.0, T0 + 30) == 0
    assert looked == []


def test_a_bucket_key_stays_while_its_bucket_refills_and_goes_once_it_is_full() -> None:
    """A bucket (the guide's token-bucket) has no window to end with: its key goes once the bucket is full again
    and no leased token is out, when it is the same as a new key's (ledger.py rule 10)."""
    ledger, spec = Ledger(), LimitSpec(algorithm="token-bucket", rate=1, burst=20)
    ledger.grant("k", spec, 6, 0.0, T0, "w")
    ledger.return_unused(ReturnedLease("k", "w", 0, 6, T0))  # spent: the bucket refills from 14
    assert ledger.expire(1.0, T0 + 1) == 0 and ledger.keys() == ["k"]
    assert ledger.expire(6.0, T0 + 6) == 1 and ledger.keys() == []


def test_the_expiry_schedule_stays_bounded_while_keys_are_evicted(monkeypatch: pytest.MonkeyPatch) -> None:
    """An evicted key's place in the schedule (a `day` window's: a day away) is dropped with the others once they
    outnumber the keys kept, so a stream of one-off identifiers grows neither the keys nor their schedule."""
    monkeypatch.setattr(ledger_module, "MAX_KEYS", 100)
    ledger = Ledger()
    for i in range(10_000):
        ledger.grant(f"client-{i}", per("day", 100), 1, 0.0, T0, "w")
    assert len(ledger.keys()) == 100
    assert len(ledger._checks) <= 2 * 100 + 1024


# ---- a worker: at most MAX_LEASES keys (lease.py rule 6) ----------------------------------------------------------


def grant(key: str, granted: int, wall: float = T0) -> Grant:
    return Grant(key, granted, (50,), (T0 + 1,), wall, T0 + 1, 0.0, 0.0)


def leased(table: LeaseTable, key: str, granted: int, now: float = 0.0) -> None:
    """`key` asked for at `now` (monotonic) and given `granted` tokens."""
    table.take(key, SECOND, now, T0 + now)
    table.refills(now)
    table.apply(grant(key, granted), now, T0 + now)


def test_a_workers_lease_table_is_bounded_whatever_the_number_of_keys_a_client_makes_up() -> None:
    """Kong's counters live in a fixed-size shm (kong/templates/nginx_kong.lua `lua_shared_dict
    kong_rate_limiting_counters 12m`): a client varying the limit_by header evicts counters, never grows a worker.
    The keeper keeps MAX_KEYS (ledger.py rule 8), and each worker as many leases at most (lease.py rule 6)."""
    spec = LimitSpec(windows=(Window("minute", 100),))
    table, ledger = LeaseTable("w1", 1), Ledger(1)
    now0, wall0 = time.monotonic(), time.time()
    n = MAX_KEYS + 5000
    for i in range(n):
        now, wall = now0 + i * 1e-6, wall0 + i * 1e-6
        table.take(f"rl:{i}", spec, now, wall)
        for request in table.refills(now):
            table.apply(ledger.grant_request(request, now, wall), now, wall)
    assert len(ledger.keys()) <= MAX_KEYS
    assert len(table._leases) <= MAX_LEASES <= MAX_KEYS


MIB = 1024 * 1024


def _header_plugin() -> Any:
    """The compiled rate-limiting plugin of a one-route config, limit_by header X-Client."""
    doc = {"services": [{"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}],
           "plugins": [{"name": "rate-limiting", "id": "0b6f3c52-8d2e-4f4a-a1c9-7e5d3b2a1f00",
                        "config": {"minute": 100, "limit_by": "header", "header_name": "X-Client"}}]}
    runtime = compile_config(parse_config(json.dumps(doc)))
    route = runtime.router.match(b"GET", b"/", None, []).payload
    (policy,) = [p for p in route.policies if p.name == "rate-limiting"]
    return policy


def test_long_header_identifiers_keep_each_key_within_the_stated_memory_bound() -> None:
    """Kong keeps its counters in `lua_shared_dict kong_rate_limiting_counters 12m` (kong/templates/nginx_kong.lua),
    a bound in bytes: long identifiers only mean fewer counters. The gateway bounds the count of keys (MAX_LEASES,
    MAX_KEYS) and states their memory (README: a worker 65-85 MiB, the keeper 90-145 MiB at the bound), so a key must
    not grow with a client's header value (up to a header line's 8 KB): X-Client values of 8,000 bytes, 1,500 of
    them, measured in a worker's LeaseTable and the keeper's Ledger and scaled to the bound, stay within it."""
    policy = _header_plugin()
    n = 1500
    values = [(b"%06d" % i) + b"x" * 7994 for i in range(n)]
    spec = policy.spec
    now0, wall0 = time.monotonic(), time.time()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = LeaseTable("w1", 1)
        requests = []
        for i, value in enumerate(values):
            ex = SimpleNamespace(request=SimpleNamespace(headers=[(b"x-client", value)]), client_ip="10.0.0.1")
            now = now0 + i * 1e-6
            table.take(policy.key(ex), spec, now, wall0 + i * 1e-6)
            requests += table.refills(now)
        worker_bytes = tracemalloc.get_traced_memory()[0] - before

        before = tracemalloc.get_traced_memory()[0]
        ledger = Ledger(1)
        for i, request in enumerate(requests):
            # the keeper decodes each bus message: its key is a string of its own, not the worker's
            fresh = request.__class__(*(bytes(request.key, "latin-1").decode("latin-1") if f == "key"
                                        else getattr(request, f) for f in request.__struct_fields__))
            ledger.grant_request(fresh, now0 + i * 1e-6, wall0 + i * 1e-6)
        keeper_bytes = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(requests) == n and len(ledger.keys()) == n
    worker_at_bound = worker_bytes / n * MAX_LEASES
    keeper_at_bound = keeper_bytes / n * MAX_KEYS
    assert worker_at_bound <= 85 * MIB, f"a worker's leases at MAX_LEASES: {worker_at_bound / MIB:.0f} MiB"
    assert keeper_at_bound <= 145 * MIB, f"the keeper's keys at MAX_KEYS: {keeper_at_bound / MIB:.0f} MiB"


def test_an_evicted_key_gives_its_leased_tokens_back_at_the_next_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """As an idle key forgotten by `sweep` (lease.py rule 2), an evicted one's unspent tokens go back to the keeper,
    which credits the windows they were charged to (ledger.py rule 9)."""
    monkeypatch.setattr(lease_module, "MAX_LEASES", 2)
    table = LeaseTable("w1", 1)
    leased(table, "a", 10)
    leased(table, "b", 10)
    table.take("c", SECOND, 0.1, T0 + 0.1)
    assert table.sweep(0.2) == [ReturnedLease("a", "w1", 10, 0, T0)]


def test_a_key_asked_for_again_is_kept_over_one_that_was_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eviction is least recently used first, as the shm's LRU (approximately: CLOCK, lease.py rule 6)."""
    monkeypatch.setattr(lease_module, "MAX_LEASES", 2)
    table = LeaseTable("w1", 1)
    leased(table, "a", 10)
    leased(table, "b", 10)
    assert table.take("a", SECOND, 0.1, T0 + 0.1).status is Status.ADMIT
    table.take("c", SECOND, 0.2, T0 + 0.2)
    assert table.take("a", SECOND, 0.3, T0 + 0.3).status is Status.ADMIT  # still leased here
    assert [back.key for back in table.sweep(0.4)] == ["b"]


def test_a_grant_arriving_for_an_evicted_key_is_given_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keeper charged those tokens to the key's windows: unspent here, they go back to it (ledger.py rule 9)."""
    monkeypatch.setattr(lease_module, "MAX_LEASES", 1)
    table = LeaseTable("w1", 1)
    table.take("a", SECOND, 0.0, T0)
    table.refills(0.0)  # the request for "a" is on its way
    table.take("b", SECOND, 0.01, T0 + 0.01)
    table.apply(grant("a", 5), 0.02, T0 + 0.02)
    assert table.sweep(0.1) == [ReturnedLease("a", "w1", 5, 0, T0)]


def test_a_restarted_keeper_is_not_given_back_the_old_keepers_tokens_of_evicted_keys(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """lease.py rule 5: the old keeper's tokens are dropped; credited to the new keeper's windows, they would
    lower counts it never charged."""
    monkeypatch.setattr(lease_module, "MAX_LEASES", 1)
    table = LeaseTable("w1", 1)
    leased(table, "a", 10)
    table.take("b", SECOND, 0.1, T0 + 0.1)
    table.restate(T0 + 0.2)
    assert table.sweep(0.3) == []


def test_an_evicted_keys_local_share_use_is_reported_when_the_keeper_is_there(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What a worker admitted on its local share reaches the keeper (lease.py rule 4) even if the key is evicted
    before the next report."""
    monkeypatch.setattr(lease_module, "MAX_LEASES", 1)
    table = LeaseTable("w1", 1)
    table.fallback(True, 1)
    assert table.take("a", SECOND, 0.0, T0).status is Status.ADMIT
    table.fallback(False, 1)
    table.take("b", SECOND, 0.1, T0 + 0.1)
    assert [(usage.key, usage.total) for usage in table.reports(T0 + 0.2)] == [("a", 1)]


def test_while_the_keeper_is_lost_an_evicted_keys_local_share_use_is_forgotten(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Keeping the use of every evicted key until the keeper is back would grow the worker again; the key counts
    from 0 once seen again, as an evicted key at the keeper (ledger.py rule 8)."""
    monkeypatch.setattr(lease_module, "MAX_LEASES", 1)
    table = LeaseTable("w1", 1)
    table.fallback(True, 1)
    table.take("a", SECOND, 0.0, T0)
    table.take("b", SECOND, 0.1, T0 + 0.1)
    table.fallback(False, 1)
    assert [usage.key for usage in table.reports(T0 + 0.2)] == ["b"]
