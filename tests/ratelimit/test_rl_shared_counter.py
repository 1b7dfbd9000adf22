"""Specs of one counter with other limits (gateway/ratelimit/ledger.py rule 13, lease.py rule 8).

Kong keys a counter by the plugin's route, service and identifier (rate-limiting policies/init.lua:50-72), so a
global instance {hour: 3} and a consumer's {hour: 100}, both `limit_by: ip`, count one address on one counter
(init.lua:302-328 increments it), and each request compares the counter's live usage with ITS instance's limits
(handler.lua get_usage, :89-114: refused once limit - usage <= 0). Before, the keeper leased the global instance's
tokens ahead of need and its worker spent them after the consumer's requests had taken the counter past 3: five
requests from one address, anonymous, anonymous, bob, bob, anonymous, were all admitted, where Kong refuses the
fifth (usage 4 >= 3).
"""

from __future__ import annotations

import socket
import time
from typing import Any

import trio
from e2e_helpers import Backend, GatewayNode
from hypothesis import given, settings
from hypothesis import strategies as st
from test_rl_recall import Host

from gateway.ratelimit import Grant, LeaseRequest, LeaseTable, Ledger, LimitSpec, ReturnedLease, Status, Window
from gateway.ratelimit.ledger import ACTIVE_S, EXACT_TTL_S
from gateway.ratelimit.spec import spec_tag

T0 = 1_700_002_800.0  # an hour's start (UTC)
COUNTER = "00000000-0000-0000-0000-000000000000:00000000-0000-0000-0000-000000000000|10.0.0.1"
GLOBAL = LimitSpec(windows=(Window("hour", 3),))  # the global instance's
BOBS = LimitSpec(windows=(Window("hour", 100),))  # the consumer's own


def key_of(spec: LimitSpec) -> str:
    """The lease key of `spec` on the address's counter (the spec's tag, then Kong's counter)."""
    return spec_tag(spec) + COUNTER


def keeper_ledger() -> Ledger:
    """The ledger of a keeper that can send workers w1 and w2 a Recall."""
    ledger = Ledger(2)
    ledger.reachable = {"w1", "w2"}
    return ledger


def ask(ledger: Ledger, spec: LimitSpec, worker: str = "w1", want: int = 5, used: int = 0, at: float = 0.0,
        waiting: bool = True) -> tuple[LeaseRequest, Grant]:
    """`worker`'s lease request for `spec`'s key and the ledger's grant for it."""
    request = LeaseRequest(key_of(spec), spec, worker, want, used, waiting=waiting)
    grant = ledger.grant_request(request, at, T0 + at)
    assert grant is not None  # (policy local)
    return request, grant


def admitted_one(ledger: Ledger, spec: LimitSpec, worker: str = "w1") -> None:
    """`worker` is granted one token of `spec`'s key and tells it spent (none of it is out)."""
    ask(ledger, spec, worker, want=1)
    ask(ledger, spec, worker, want=0, used=1)


# ---- the keeper: exact grants while a spec with another limit counts on the counter ---------------------------------


def test_a_key_whose_counter_a_spec_with_another_limit_uses_grants_one_token_per_waiting_request():
    """handler.lua get_usage compares each request with the live count: a token leased ahead of need would be spent
    without that comparison, so while the global instance's key is asked for, bob's grants one token to a request
    that waits (Grant.exact), none to one asked ahead of need, and its token is void soon (its request left)."""
    ledger = keeper_ledger()
    admitted_one(ledger, GLOBAL)
    _, grant = ask(ledger, BOBS, want=5)
    assert (grant.granted, grant.exact, grant.expires) == (1, True, T0 + EXACT_TTL_S)
    _, ahead = ask(ledger, BOBS, want=5, waiting=False)
    assert (ahead.granted, ahead.exact, ahead.retry) == (0, True, 0.0)


def test_specs_with_the_same_limits_on_one_counter_lease_ahead_as_one_spec():
    """Neither's grants take the count past the other's limit (a reload changing another setting: a new spec, the
    same limits), so both lease ahead of need as before."""
    ledger = keeper_ledger()
    strict = LimitSpec(windows=(Window("hour", 100),), fault_tolerant=False)
    ask(ledger, BOBS)
    _, grant = ask(ledger, strict, want=5)
    assert (grant.granted, grant.exact) == (5, False)


def test_a_key_leases_ahead_again_once_the_spec_with_another_limit_is_not_asked_for():
    """Its peer not asked for within ACTIVE_S: nothing but this key's own grants moves the count."""
    ledger = keeper_ledger()
    admitted_one(ledger, GLOBAL)
    _, grant = ask(ledger, BOBS, want=5, at=ACTIVE_S + 0.1)
    assert (grant.granted, grant.exact) == (5, False)


def test_a_grant_over_a_lower_limit_waits_while_that_specs_tokens_leased_ahead_come_back():
    """The global instance (3) leased its worker a token ahead of need before bob's key came: bob's grant would take
    the count past 3 while that token can still be spent unchecked, so bob's request is held while it is recalled
    (from the requesting worker too); once given back, the count is what was admitted and bob's key grants."""
    ledger = keeper_ledger()
    ask(ledger, GLOBAL, want=1)
    ask(ledger, GLOBAL, want=1, used=1)
    ask(ledger, GLOBAL, want=1, used=1)  # 2 admitted, the 3rd token out at w1
    request, grant = ask(ledger, BOBS)
    assert (grant.granted, grant.remaining, grant.retry) == (0, (97,), 0.0)
    assert ledger.recall(request, grant, 0.0) == [(key_of(GLOBAL), "w1")]
    assert ledger.recalled(ReturnedLease(key_of(GLOBAL), "w1", 1, 0, T0)) == [key_of(BOBS)]
    request, grant = ask(ledger, BOBS)
    assert (grant.granted, grant.remaining) == (1, (97,)) and ledger.recall(request, grant, 0.0) is None


def test_a_grant_under_the_other_specs_limit_is_not_held_for_its_tokens():
    """The global instance's grants never take the count past bob's 100: bob's tokens leased ahead stay out."""
    ledger = keeper_ledger()
    ask(ledger, BOBS, worker="w2", want=1)
    request, grant = ask(ledger, GLOBAL, want=5)
    assert (grant.granted, grant.exact) == (1, True) and ledger.recall(request, grant, 0.0) is None


def test_a_refusal_recalls_another_specs_tokens_the_requesting_worker_holds_ahead_of_need():
    """Kong counts admitted requests: bob's 20 tokens leased ahead of need at w1 are not usage, so the global
    instance's request on w1 (usage 0 of its 10) is held while they come back, not refused."""
    ledger, ten = keeper_ledger(), LimitSpec(windows=(Window("hour", 10),))
    ask(ledger, BOBS, want=20)
    request, grant = ask(ledger, ten)
    assert (grant.granted, grant.remaining) == (0, (0,))
    assert ledger.recall(request, grant, 0.0) == [(key_of(BOBS), "w1")]


# ---- the worker ------------------------------------------------------------------------------------------------------


def test_an_exact_grant_leaves_the_key_due_for_no_token_ahead_of_need():
    """lease.py rule 8: the token spent, the next request asks for its own, nothing is asked for meanwhile."""
    table, wall = LeaseTable("w1", 1), T0
    assert table.take(key_of(BOBS), BOBS, 0.0, wall).status is Status.WAIT
    table.refills(0.0)
    table.apply(Grant(key_of(BOBS), 1, (99,), (T0 + 3600,), wall, wall + EXACT_TTL_S, exact=True), 0.001, wall)
    assert table.take(key_of(BOBS), BOBS, 0.002, wall, waited=True).status is Status.ADMIT
    assert table.refills(0.003) == []


# ---- a keeper and its worker -----------------------------------------------------------------------------------------


def admit(host: Host, spec: LimitSpec, worker: str = "w1") -> tuple[Status, int]:
    """One request of `spec`'s key at `worker` as the plugin decides it (a leased token, else take, asking the keeper
    and taking again while told to wait, as its _wait_grant), then the worker's flush: the status and the remaining
    the X-RateLimit-Remaining header reports."""
    leases, key = host.workers[worker].leases, key_of(spec)
    lease = leases.spend(key, spec, time.monotonic(), time.time())
    if lease is not None:
        result = (Status.ADMIT, lease.grant.remaining[0] + lease.tokens)  # type: ignore[union-attr]
    else:
        decision = leases.take(key, spec, time.monotonic(), time.time())
        for _ in range(4):
            if decision.status is not Status.WAIT:
                break
            host.ask(worker)
            decision = leases.take(key, spec, time.monotonic(), time.time(), waited=True)
        result = (decision.status, decision.remaining(0))
    host.ask(worker)
    return result


async def test_the_global_instance_refuses_once_the_consumers_admissions_took_the_counter_to_its_limit():
    """Kong: anonymous (usage 0 -> remaining 2), anonymous (1), bob (2 of his 100: 97), bob (96), anonymous: usage 4
    >= 3, refused with remaining 0."""
    if 3600 - time.time() % 3600 < 2:  # (not across an hour's end)
        await trio.sleep(2.1)
    host = Host(1)
    got = [admit(host, spec) for spec in (GLOBAL, GLOBAL, BOBS, BOBS, GLOBAL)]
    assert got == [(Status.ADMIT, 2), (Status.ADMIT, 1), (Status.ADMIT, 97), (Status.ADMIT, 96), (Status.DENY, 0)]


@given(st.lists(st.tuples(st.sampled_from(["w1", "w2", "w3"]), st.booleans()), min_size=1, max_size=24))
@settings(max_examples=80, deadline=None)
def test_requests_of_both_instances_on_three_workers_are_admitted_as_kongs_one_counter(requests):
    """Whatever the order and the workers: a request of the global instance (hour 3) or bob's (hour 6) is admitted
    exactly when the counter's usage, every admitted request of both, is below its instance's limit (handler.lua
    :89-114), as a sequential client of Kong sees it."""
    six = LimitSpec(windows=(Window("hour", 6),))

    async def run() -> list[Status]:
        host = Host(3)
        return [admit(host, six if bob else GLOBAL, worker)[0] for worker, bob in requests]

    if 3600 - time.time() % 3600 < 1:  # (not across an hour's end)
        time.sleep(1.1)
    usage, expected = 0, []
    for _, bob in requests:
        admitted = usage < (6 if bob else 3)
        usage += admitted
        expected.append(Status.ADMIT if admitted else Status.DENY)
    assert trio.run(run) == expected


# ---- end to end ------------------------------------------------------------------------------------------------------


def _get(port: int, target: str) -> tuple[int, str | None]:
    """One GET on a new connection: its status and X-RateLimit-Remaining-Hour."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    remaining = next((line.split(":", 1)[1].strip() for line in head[1:]
                      if line.lower().startswith("x-ratelimit-remaining-hour:")), None)
    return int(head[0].split(" ", 2)[1]), remaining


async def test_a_global_and_a_consumers_instance_on_one_counter_admit_as_kong_through_a_gateway(nursery, tmp_path):
    """As above through a real gateway (keeper and worker processes): the anonymous requests under the global
    instance (hour 3), bob's under his own (hour 100), on Kong's one counter `<empty>:<empty>:<ip>`
    (policies/init.lua:66-72, 302-328): the global instance's third request sees usage 4 >= 3 and is refused."""
    if 3600 - time.time() % 3600 < 5:  # (not across an hour's end)
        await trio.sleep(5.1)
    backend = Backend("b")
    await nursery.start(backend.serve)
    doc: dict[str, Any] = {
        "services": [{"name": "s", "url": f"http://{backend.target}", "routes": [{"name": "r", "paths": ["/"]}]}],
        "consumers": [{"username": "anon"},
                      {"username": "bob", "keyauth_credentials": [{"key": "kb"}],
                       "plugins": [{"name": "rate-limiting",
                                    "config": {"hour": 100, "policy": "local", "limit_by": "ip"}}]}],
        "plugins": [{"name": "key-auth", "config": {"anonymous": "anon"}},
                    {"name": "rate-limiting", "config": {"hour": 3, "policy": "local", "limit_by": "ip"}}]}
    gw = GatewayNode(tmp_path / "gw", doc, status_listen=None)
    try:
        await gw.start(workers=1)
        got = [await trio.to_thread.run_sync(_get, gw.port, target)
               for target in ["/", "/", "/?apikey=kb", "/?apikey=kb", "/"]]
    finally:
        gw.cleanup()
    assert got == [(200, "2"), (200, "1"), (200, "97"), (200, "96"), (429, "0")], got


async def test_a_request_held_for_a_rule13_recall_is_answered_with_a_token():
    """ledger.py rule 13: bob's request (limit 100) on w2 is held while the global instance's token w1 leased ahead
    of need is recalled. Once w1 answers, the keeper grants the held request again (state.py _answer_held); it
    waits (it was held because it waits), so its exact grant carries its token, at once, as Kong admits it (usage
    1 < 100); not a grant of 0 after which its worker must ask a second time."""
    if 3600 - time.time() % 3600 < 2:
        await trio.sleep(2.1)
    host = Host(2)
    assert host.request("w1", key_of(GLOBAL), GLOBAL) is Status.ADMIT  # 1 admitted; 1 more leased ahead to w1
    w1 = host.workers["w1"].leases._leases[key_of(GLOBAL)]
    assert w1.tokens == 1
    leases = host.workers["w2"].leases
    assert leases.take(key_of(BOBS), BOBS, time.monotonic(), time.time()).status is Status.WAIT
    host.ask("w2")  # held, w1 recalled, w1 answers, the held request granted again
    assert ("w1", "Recall") in host.delivered and not host.keeper.held
    grant = leases._leases[key_of(BOBS)].grant
    assert grant is not None and grant.exact
    assert grant.granted == 1, f"the held request's grant carried {grant.granted} tokens (remaining {grant.remaining})"
