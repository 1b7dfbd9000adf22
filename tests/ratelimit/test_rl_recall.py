"""Recalls (gateway/ratelimit/ledger.py rule 12, lease.py rule 7): a request refused for a window exhausted while
tokens of it are out at other workers waits while the keeper recalls them, and is refused only once nothing came back.

Kong's `policy: local` counts in one shared dict that every worker increments (rate-limiting policies/init.lua:
318-327) and stops a request only when limit - usage <= 0, usage counting admitted requests (handler.lua:89-114):
`minute: 8` admits 8 requests and refuses the 9th, whichever worker each lands on. Before, the keeper charged tokens
leased ahead of need to the window, so a worker without tokens was refused while another held 3 unspent: a sequential
client on new connections got 5 x 200, a 429, then 200s again.
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime
from typing import Any

import trio
from e2e_helpers import Backend, GatewayNode
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace
from test_rl_simulation import T0 as SIM_T0
from test_rl_simulation import Sim, ratios

from gateway.bus import protocol as p
from gateway.config import parse_config
from gateway.keeper.state import Keeper
from gateway.ratelimit import Grant, LeaseRequest, LeaseTable, Ledger, LimitSpec, ReturnedLease, Status, Window
from gateway.ratelimit.ledger import RECALL_S
from gateway.ratelimit.redis_script import Reply
from gateway.state.shared import SharedState

T0 = datetime(2026, 3, 5, 13, 0, 10, tzinfo=UTC).timestamp()  # 50 s before a minute's end
MINUTE_8 = LimitSpec(windows=(Window("minute", 8),))


def keeper_ledger(workers: int) -> Ledger:
    """The ledger of a keeper that can send its workers w1.. a Recall."""
    ledger = Ledger(workers)
    ledger.reachable = {f"w{i}" for i in range(1, workers + 1)}
    return ledger


def ask(ledger: Ledger, worker: str, want: int = 5, used: int = 0, spec: LimitSpec = MINUTE_8,
        at: float = 0.0, waiting: bool = True) -> tuple[LeaseRequest, Any]:
    """`worker`'s lease request for "k" (a request waits for it) and the ledger's grant for it."""
    request = LeaseRequest("k", spec, worker, want, used, waiting=waiting)
    return request, ledger.grant_request(request, at, T0 + at)


def w1_holds(tokens: int, spec: LimitSpec = MINUTE_8) -> Ledger:
    """A two-worker ledger whose window w1 and w2 have handed out whole, w1 holding `tokens` of it unspent (w2 spent
    what it got, and says so)."""
    ledger = keeper_ledger(2)
    limit = spec.windows[0].limit
    ledger.grant("k", spec, tokens, 0.0, T0, "w1")
    while ledger.grant("k", spec, limit, 0.0, T0, "w2").granted:
        pass
    return ledger


# ---- the keeper's ledger ------------------------------------------------------------------------------------------


def test_a_request_refused_while_another_worker_holds_tokens_recalls_them():
    ledger = w1_holds(3)
    request, grant = ask(ledger, "w2", used=5)
    assert (grant.granted, grant.remaining) == (0, (0,))
    assert ledger.recall(request, grant, 0.0) == [("k", "w1")]
    assert ledger.recalling


def test_a_request_refused_with_no_token_out_elsewhere_is_answered_at_once():
    """Nothing can come back: the refusal goes out (Kong's usage has reached the limit)."""
    ledger = keeper_ledger(2)
    while ledger.grant("k", MINUTE_8, 8, 0.0, T0, "w2").granted:
        pass
    request, grant = ask(ledger, "w2", used=8)
    assert ledger.recall(request, grant, 0.0) is None
    assert not ledger.recalling


def test_a_workers_own_tokens_are_not_recalled_for_it():
    ledger = keeper_ledger(2)
    while ledger.grant("k", MINUTE_8, 8, 0.0, T0, "w1").granted:
        pass
    request, grant = ask(ledger, "w1")
    assert ledger.recall(request, grant, 0.0) is None


def test_a_grant_is_no_reason_to_recall():
    ledger = keeper_ledger(2)
    request, grant = ask(ledger, "w1")
    assert grant.granted and ledger.recall(request, grant, 0.0) is None


def test_tokens_given_back_to_a_recall_are_granted_to_the_held_request():
    ledger = w1_holds(3)
    request, grant = ask(ledger, "w2", used=5)
    ledger.recall(request, grant, 0.0)
    assert ledger.recalled(ReturnedLease("k", "w1", 3, 0, T0)) == ["k"]
    assert not ledger.recalling
    again = ledger.grant_request(LeaseRequest("k", MINUTE_8, "w2", 5), 0.01, T0 + 0.01)
    assert again is not None and again.granted >= 1


def test_tokens_spent_before_the_recall_arrived_stay_spent():
    """w1 spent 2 of its 3 before it read the recall: 1 comes back, and the window admits 8 in all, never 9."""
    ledger = w1_holds(3)
    request, grant = ask(ledger, "w2", used=5)
    ledger.recall(request, grant, 0.0)
    ledger.recalled(ReturnedLease("k", "w1", 1, 2, T0))
    granted = 0
    while (g := ledger.grant("k", MINUTE_8, 5, 0.02, T0 + 0.02, "w2")).granted:
        granted += g.granted
    assert granted == 1


def test_a_recall_waits_for_every_worker_recalled():
    ledger = keeper_ledger(3)
    ledger.grant("k", MINUTE_8, 2, 0.0, T0, "w1")
    ledger.grant("k", MINUTE_8, 2, 0.0, T0, "w2")
    while ledger.grant("k", MINUTE_8, 8, 0.0, T0, "w3").granted:
        pass
    request, grant = ask(ledger, "w3", used=4)
    assert sorted(ledger.recall(request, grant, 0.0)) == [("k", "w1"), ("k", "w2")]
    assert ledger.recalled(ReturnedLease("k", "w1", 2, 0, T0)) == []
    assert ledger.recalled(ReturnedLease("k", "w2", 0, 2, T0)) == ["k"]


def test_a_request_refused_during_a_recall_waits_for_it_without_recalling_again():
    ledger = w1_holds(3)
    request, grant = ask(ledger, "w2", used=5)
    ledger.recall(request, grant, 0.0)
    again, refused = ask(ledger, "w2", at=0.01)
    assert ledger.recall(again, refused, 0.01) == []  # w1 is recalled already: its answer is waited for
    assert ledger.recalled(ReturnedLease("k", "w1", 3, 0, T0)) == ["k"]


def test_a_request_asked_ahead_of_need_is_refused_and_told_to_ask_again_not_held():
    """Held, it would take the tokens of a worker that needs them now for one that does not (lease.py rule 7)."""
    ledger = w1_holds(3)
    request, grant = ask(ledger, "w2", used=5, waiting=False)
    assert (grant.granted, grant.retry) == (0, 0.0)
    assert ledger.recall(request, grant, 0.0) is None


def test_workers_no_recall_can_reach_are_not_recalled_and_their_tokens_are_asked_about_later():
    """A worker gone (or a Ledger without a keeper): its tokens come back as rule 9 says, if at all."""
    ledger = w1_holds(3)
    ledger.reachable = {"w2"}
    request, grant = ask(ledger, "w2", used=5)
    assert grant.retry == 1.0  # (RECHECK_S: tokens valid for the minute's 50 s left)
    assert ledger.recall(request, grant, 0.0) is None


def test_a_recall_unanswered_for_recall_s_answers_its_held_requests_without_it():
    ledger = w1_holds(3)
    request, grant = ask(ledger, "w2", used=5)
    ledger.recall(request, grant, 1.0)
    assert ledger.recalls_overdue(1.0 + RECALL_S - 0.01) == []
    assert ledger.recalls_overdue(1.0 + RECALL_S) == ["k"]
    assert not ledger.recalling
    assert ledger.recalled(ReturnedLease("k", "w1", 3, 0, T0)) == []  # a late answer is credited all the same
    assert ledger.usage("k", 2.0, T0 + 1)["minute"] == 5.0


def test_a_worker_that_let_a_recall_go_unanswered_is_not_recalled_again_until_heard_from():
    """Busy or hung: a second recall would keep the next request waiting past its own wait (lease.py WAIT_S)."""
    ledger = w1_holds(3)
    request, grant = ask(ledger, "w2", used=5)
    ledger.recall(request, grant, 0.0)
    ledger.recalls_overdue(RECALL_S)
    request, grant = ask(ledger, "w2", at=RECALL_S)
    assert grant.retry == 1.0 and ledger.recall(request, grant, RECALL_S) is None  # (rule 9's: RECHECK_S)
    ask(ledger, "w1", at=1.0)  # heard from
    request, grant = ask(ledger, "w2", at=1.0)
    assert grant.retry == 0.0 and ledger.recall(request, grant, 1.0) == [("k", "w1")]


def test_an_answer_writes_the_workers_outstanding_tokens_down_to_those_granted_after_the_recall():
    """w1's answer accounts for every token granted to it before the recall: a worker restarted under the same name
    leaves none of its predecessor's counted, so a full window then says its end, not ask again soon."""
    ledger = w1_holds(3)
    request, grant = ask(ledger, "w2", used=5)
    ledger.recall(request, grant, 0.0)
    ledger.recalled(ReturnedLease("k", "w1", 0, 0, 0.0))  # its predecessor's 3 tokens: gone with it
    assert ledger.usage("k", 0.0, T0)["minute"] == 8.0
    _, refused = ask(ledger, "w2", at=0.01)
    assert (refused.granted, round(refused.retry, 2)) == (0, 49.99)


def test_tokens_granted_to_a_recalled_worker_before_its_answer_came_stay_out_there():
    """Granted after the Recall left, they reach the worker after it answered (the keeper's messages to it keep their
    order): its answer does not account for them."""
    ledger = keeper_ledger(2)
    ledger.grant("k", MINUTE_8, 3, 0.0, T0, "w1")
    while ledger.grant("k", MINUTE_8, 8, 0.0, T0, "w2").granted:
        pass
    request, grant = ask(ledger, "w2", used=4)  # (it holds 1 of its 5, and asks ahead of need)
    ledger.recall(request, grant, 0.0)
    ledger.return_unused(ReturnedLease("k", "w2", 1, 0, T0))  # w2's sweep gives it back meanwhile
    assert ledger.grant("k", MINUTE_8, 1, 0.01, T0 + 0.01, "w1").granted == 1
    ledger.recalled(ReturnedLease("k", "w1", 3, 0, T0))
    assert ledger._keys["k"].outstanding == {"w1": 1}


def test_a_grant_leaving_the_window_exhausted_while_others_hold_tokens_lets_its_worker_ask_again():
    """Its worker, once out of tokens, asks (and waits for a recall) rather than refuse without asking."""
    ledger = keeper_ledger(2)
    ledger.grant("k", MINUTE_8, 4, 0.0, T0, "w1")
    last = ledger.grant("k", MINUTE_8, 8, 0.0, T0, "w2")
    while last.remaining[0]:
        last = ledger.grant("k", MINUTE_8, 8, 0.0, T0, "w2")
    assert (last.granted >= 1, last.retry) == (True, 0.0)


def test_under_policy_redis_the_host_recalls_what_its_workers_hold_of_its_block():
    """Redis has nothing left beyond this host's block, and w1 holds 3 of it unspent: w2's request is held for them,
    as under policy local (the recall is the host's: Kong's workers INCR the Redis counter themselves)."""
    spec = LimitSpec(windows=(Window("minute", 8),), store="rl")
    ledger = keeper_ledger(2)
    ledger.add_store("rl", "gateway:rl:")
    assert ledger.grant("k", spec, 4, 0.0, T0, "w1") is None  # the key's first block first
    [(key, _, _)] = ledger.remote_calls(0.0, T0)
    ledger.remote_applied(key, Reply(block=8, hosts=1, active=1, level=None, remaining=(0,)), 0.0, T0)
    ledger.grant("k", spec, 4, 0.0, T0, "w1")
    while ledger.grant("k", spec, 8, 0.0, T0, "w2").granted:
        pass
    request, grant = ask(ledger, "w2", used=4, spec=spec)
    assert (grant.granted, grant.remaining, ledger.recall(request, grant, 0.0)) == (0, (0,), [("k", "w1")])
    assert ledger.recalled(ReturnedLease("k", "w1", 3, 1, T0)) == ["k"]
    again = ledger.grant_request(LeaseRequest("k", spec, "w2", 5), 0.01, T0 + 0.01)
    assert again is not None and again.granted == 1


def test_an_empty_bucket_alone_recalls_nothing():
    """Bucket tokens come back within LEASE_TTL_S; an overloaded bucket is empty most of the time."""
    spec = LimitSpec(algorithm="token-bucket", rate=1, burst=3)
    ledger = keeper_ledger(2)
    while ledger.grant("k", spec, 4, 0.0, T0, "w1").granted:
        pass
    request, grant = ask(ledger, "w2", spec=spec)
    assert grant.granted == 0 and ledger.recall(request, grant, 0.0) is None


# ---- the worker's lease table ---------------------------------------------------------------------------------------


def table_with(granted: int, spent: int, key: str = "k") -> LeaseTable:
    """w1's table, granted `granted` tokens of `key` (of the 8 a minute), `spent` of them spent."""
    table, ledger = LeaseTable("w1", 2), Ledger(workers=2)
    table.take(key, MINUTE_8, 0.0, T0)
    table.refills(0.0)
    table.apply(ledger.grant(key, MINUTE_8, granted, 0.0, T0, "w1"), 0.0, T0)
    table.take(key, MINUTE_8, 0.0, T0)  # the first request's token
    for _ in range(spent - 1):
        assert table.spend(key, MINUTE_8, 0.0, T0) is not None
    return table


def test_a_recall_gives_back_every_unspent_token_and_tells_what_was_spent():
    table = table_with(4, 1)
    returned, [answer] = table.recall(["k"])
    assert returned == []
    assert (answer.key, answer.worker, answer.unused, answer.used, answer.wall) == ("k", "w1", 3, 1, T0)
    assert table._leases["k"].tokens == 0


def test_after_a_recall_the_worker_asks_again_when_it_needs_a_token():
    table = table_with(4, 1)
    table.recall(["k"])
    assert table.spend("k", MINUTE_8, 0.1, T0 + 0.1) is None
    assert table.take("k", MINUTE_8, 0.1, T0 + 0.1).status is Status.WAIT
    [request] = table.refills(0.1)
    assert (request.used, request.unused) == (0, 0)  # told with the answer already


def test_a_lease_request_says_whether_a_request_waits_for_it():
    table = LeaseTable("w1", 2)
    table.take("k", MINUTE_8, 0.0, T0)
    [first] = table.refills(0.0)
    table.apply(Ledger(workers=2).grant("k", MINUTE_8, 4, 0.0, T0, "w1"), 0.0, T0)
    for _ in range(3):
        table.take("k", MINUTE_8, 0.0, T0)
    [ahead] = table.refills(0.0)  # below half its grant: asked ahead of need
    assert (first.waiting, ahead.waiting) == (True, False)


def test_a_waiting_request_told_that_other_workers_hold_what_is_left_asks_again():
    """A refusal without retry (ledger.py rule 12): the next request is held while they are recalled; only the last
    call of a wait is denied."""
    refusal = Grant("k", 0, (0,), (T0 + 50,), T0, T0 + 50)
    table = LeaseTable("w1", 2)
    table.take("k", MINUTE_8, 0.0, T0)
    table.refills(0.0)
    table.apply(refusal, 0.0, T0)
    assert table.take("k", MINUTE_8, 0.0, T0, waited=True).status is Status.WAIT
    [request] = table.refills(0.0)
    assert request.waiting
    table.apply(refusal, 0.0, T0)
    assert table.take("k", MINUTE_8, 0.0, T0, waited=True, final=True).status is Status.DENY


def test_a_recall_of_a_key_without_a_lease_answers_none():
    assert LeaseTable("w1", 2).recall(["gone"]) == ([], [ReturnedLease("gone", "w1", 0, 0, 0.0)])


def test_a_recall_lifts_the_keepers_word_that_the_limit_was_exhausted():
    """w1 got the window's last tokens (retry: ask again later); recalled, they are the keeper's to grant again."""
    table = table_with(4, 1)
    lease = table._leases["k"]
    lease.blocked_until = 30.0
    table.recall(["k"])
    assert table.take("k", MINUTE_8, 0.1, T0 + 0.1).status is Status.WAIT
    table.refills(0.1)
    table.apply(replace(lease.grant, granted=0, retry=20.0), 0.1, T0 + 0.1)  # (a request of its own, answered)
    lease.tokens = 1
    table.recall(["k"])  # the token it was granted, recalled before its waiting request took it
    assert table.take("k", MINUTE_8, 0.1, T0 + 0.1, waited=True).status is Status.WAIT


def test_the_tokens_of_a_recalled_key_evicted_since_the_last_sweep_go_back_with_the_answer():
    table = table_with(4, 1)
    table._returned.append(ReturnedLease("k", "w1", 2, 0, T0 - 1))
    table._returned.append(ReturnedLease("other", "w1", 1, 0, T0 - 1))
    returned, _ = table.recall(["k"])
    assert returned == [ReturnedLease("k", "w1", 2, 0, T0 - 1)]
    assert table._returned == [ReturnedLease("other", "w1", 1, 0, T0 - 1)]


# ---- the keeper and its workers, in-process ----------------------------------------------------------------------


class Host:
    """A keeper and its workers (SharedState), every message delivered at once: a worker's to the keeper, the keeper's
    replies and its outbox (Recalls, the grants of held requests) to the worker each is for. A `silent` worker's
    messages are lost both ways (one busy or hung)."""

    def __init__(self, workers: int) -> None:
        self.keeper = Keeper(parse_config("_format_version: '3.0'\n"), workers=workers)
        self.workers = {f"w{i}": SharedState(f"w{i}", workers) for i in range(1, workers + 1)}
        self.silent: set[str] = set()
        self.delivered: list[tuple[str, str]] = []  # (worker, message type) the keeper sent, in order
        for name, worker in self.workers.items():
            worker._send = self._line(name)
            worker.on_message(p.Heartbeat(incarnation=self.keeper.incarnation))

    def _line(self, name: str) -> Any:
        def send(msg: p.Msg) -> bool:
            if name not in self.silent:
                replies, _ = self.keeper.handle(name.encode(), msg, trio.current_time(), time.time())
                self.deliver([(name.encode(), reply) for reply in replies] + self.keeper.outbox())
            return True

        return send

    def deliver(self, messages: list[tuple[bytes, p.Msg]]) -> None:
        for to, msg in messages:
            if to.decode() not in self.silent:
                self.delivered.append((to.decode(), type(msg).__name__))
                self.workers[to.decode()].on_message(msg)

    def ask(self, worker: str) -> None:
        """The worker's flush: its lease requests due go to the keeper."""
        shared = self.workers[worker]
        requests = shared.leases.refills(time.monotonic())
        if requests:
            shared._ask(requests)

    def request(self, worker: str, key: str, spec: LimitSpec = MINUTE_8) -> Status:
        """One request of `key` at `worker` as the plugin decides it (a leased token, else take, asking the keeper
        and taking again after its answer), then the worker's flush (requests ahead of need)."""
        leases = self.workers[worker].leases
        status = Status.ADMIT
        if leases.spend(key, spec, time.monotonic(), time.time()) is None:
            status = leases.take(key, spec, time.monotonic(), time.time()).status
            if status is Status.WAIT:
                self.ask(worker)
                status = leases.take(key, spec, time.monotonic(), time.time(), waited=True, final=True).status
        self.ask(worker)
        return status


async def test_a_sequential_client_on_two_workers_gets_the_limit_then_refusals():
    """w1's first request leases 4 tokens ahead of need; w2 takes the window's other 4, then its next request waits
    while the keeper recalls w1's 3 unspent ones and is admitted: 8 admitted, as Kong's counter, then refusals."""
    host = Host(2)
    got = [host.request(worker, "k") for worker in ("w1", *["w2"] * 7, "w1", "w2")]
    assert got == [Status.ADMIT] * 8 + [Status.DENY] * 2
    assert ("w1", "Recall") in host.delivered
    assert not host.keeper.held and not host.keeper.ledger.recalling


@given(st.lists(st.sampled_from(["w1", "w2", "w3"]), min_size=1, max_size=24), st.integers(1, 12))
@settings(max_examples=150, deadline=None)
def test_a_sequential_client_is_admitted_exactly_the_limit_whichever_workers_its_requests_land_on(workers, limit):
    """Kong's one counter: the first `limit` requests admitted, every later one refused (handler.lua:89-114),
    however they fall on three workers."""
    spec = LimitSpec(windows=(Window("hour", limit),))

    async def run() -> list[Status]:
        host = Host(3)
        return [host.request(worker, "k", spec) for worker in workers]

    if 3600 - time.time() % 3600 < 1:  # (not across an hour's end)
        time.sleep(1.1)
    got = trio.run(run)
    admitted = min(limit, len(workers))
    assert got == [Status.ADMIT] * admitted + [Status.DENY] * (len(workers) - admitted)


async def test_a_recalled_worker_answers_at_once_naming_the_keeper_that_recalled():
    host = Host(2)
    host.request("w1", "k")
    sent: list[p.Msg] = []
    host.workers["w1"]._send = lambda msg: sent.append(msg) or True
    host.workers["w1"].on_message(p.Recall(keys=["k"], keeper=host.keeper.incarnation))
    [answer] = sent
    assert isinstance(answer, p.GiveBack) and answer.keeper == host.keeper.incarnation
    assert [(r.key, r.worker, r.unused, r.used) for r in answer.recalled] == [("k", "w1", 3, 1)]


async def test_a_recall_of_another_keeper_incarnation_is_not_answered():
    """Its tokens were dropped when the worker restated to the keeper now running (lease.py rule 5)."""
    host = Host(2)
    host.request("w1", "k")
    sent: list[p.Msg] = []
    host.workers["w1"]._send = lambda msg: sent.append(msg) or True
    host.workers["w1"].on_message(p.Recall(keys=["k"], keeper="older"))
    assert sent == [] and host.workers["w1"].leases._leases["k"].tokens == 3


async def test_an_answer_to_another_keeper_incarnation_is_not_credited():
    host = Host(2)
    host.request("w1", "k")
    answer = p.GiveBack(recalled=[ReturnedLease("k", "w1", 3, 0, time.time())], keeper="older")
    host.keeper.handle(b"w1", answer, trio.current_time(), time.time())
    assert host.keeper.ledger.usage("k", trio.current_time(), time.time())["minute"] == 4.0


async def test_an_answer_with_negative_counts_is_dropped_whole():
    host = Host(2)
    host.request("w1", "k")
    answer = p.GiveBack(returned=[ReturnedLease("k", "w1", 3, 0, time.time())],
                        recalled=[ReturnedLease("k", "w1", -5, 0, time.time())], keeper=host.keeper.incarnation)
    host.keeper.handle(b"w1", answer, trio.current_time(), time.time())
    assert host.keeper.ledger.usage("k", trio.current_time(), time.time())["minute"] == 4.0


def w2_waits_for(host: Host) -> None:
    """w1 holds 3 tokens of "k" unspent and has gone silent, w2 was granted the window's other 4: w2's next request
    waits for w1's answer."""
    host.request("w1", "k")
    while host.keeper.ledger.grant("k", MINUTE_8, 8, trio.current_time(), time.time(), "w2").granted:
        pass
    host.silent.add("w1")
    assert host.workers["w2"].leases.take("k", MINUTE_8, time.monotonic(), time.time()).status is Status.WAIT
    host.ask("w2")


async def test_held_requests_are_answered_after_recall_s_when_a_recalled_worker_is_silent():
    """A worker busy or gone does not hold a request past its wait (lease.py WAIT_S): refused after RECALL_S."""
    host = Host(2)
    w2_waits_for(host)
    assert list(host.keeper.held) == ["k"] and host.keeper.ticking()
    now = trio.current_time()
    assert host.keeper.tick(now)[0] == []
    host.deliver(host.keeper.tick(now + RECALL_S)[0])
    assert host.delivered[-1] == ("w2", "Grants")
    leases = host.workers["w2"].leases
    assert leases.take("k", MINUTE_8, time.monotonic(), time.time(), waited=True).status is Status.DENY
    assert not host.keeper.held and not host.keeper.ticking()


async def test_a_worker_gone_leaves_no_request_held_for_it_nor_a_route_to_it():
    host = Host(2)
    w2_waits_for(host)
    host.keeper.peer_gone(b"w2", trio.current_time())
    assert host.keeper.held["k"] == [] and "w2" not in host.keeper.routes


class RecallSim(Sim):
    """test_rl_simulation's workers, keeper and bus (latency 1-5 ms, each channel in order, Poisson arrivals at 2.5x
    the limit), the keeper holding refused requests while it recalls tokens (ledger.py rule 12)."""

    def __init__(self, shares: list[float], seed: int) -> None:
        super().__init__(shares, seed)
        self.ledger.reachable = {table.worker for table in self.tables}
        self.held: dict[str, list[tuple[int, LeaseRequest]]] = {}
        self.keeper_free = [0.0] * len(shares)  # FIFO per keeper -> worker channel
        self.recalls = 0

    def to_worker(self, now: float, worker: int, action: Any, payload: Any) -> None:
        arrival = self.keeper_free[worker] = max(self.keeper_free[worker], now + self.latency())
        self.at(arrival, action, worker, payload)

    def keeper_grant(self, now: float, worker: int, request: LeaseRequest) -> None:
        grant = self.ledger.grant_request(request, now, SIM_T0 + now)
        recalls = self.ledger.recall(request, grant, now)
        if recalls is None:
            self.to_worker(now, worker, self.receive, grant)
            return
        self.held.setdefault(request.key, []).append((worker, LeaseRequest(request.key, request.spec, request.worker,
                                                                           request.want)))
        for key, name in recalls:
            self.recalls += 1
            self.to_worker(now, int(name[1:]), self.recalled, key)
        self.at(now + RECALL_S, self.overdue, worker, None)

    def recalled(self, now: float, worker: int, key: str) -> None:
        self.send(now, worker, self.keeper_answer, self.tables[worker].recall([key]))

    def keeper_answer(self, now: float, worker: int, answer: Any) -> None:
        returned, recalled = answer
        for back in returned:
            self.ledger.return_unused(back)
        self.answer_held([key for back in recalled for key in self.ledger.recalled(back)], now)

    def overdue(self, now: float, worker: int, _: None) -> None:
        self.answer_held(self.ledger.recalls_overdue(now), now)

    def answer_held(self, keys: list[str], now: float) -> None:
        for key in keys:
            for worker, request in self.held.pop(key, ()):
                self.to_worker(now, worker, self.receive, self.ledger.grant_request(request, now, SIM_T0 + now))


def test_recalls_keep_two_workers_never_over_the_limit_and_within_five_percent_under():
    """The simulation's bounds (test_rl_simulation.py: 1% over at most, for one second's count dated by a worker's
    clock), none over here: what a recalled worker spent before it read the recall stays charged, what it gives
    back is granted once."""
    sim = RecallSim([0.7, 0.3], seed=1)
    admitted = ratios(sim.run(6.0))
    assert len(admitted) == 6 and sim.recalls
    assert all(0.95 <= r <= 1.0 for r in admitted), admitted


def test_recalls_keep_four_uneven_workers_never_over_the_limit_and_within_five_percent_under():
    sim = RecallSim([0.4, 0.3, 0.2, 0.1], seed=2)
    admitted = ratios(sim.run(6.0))
    assert len(admitted) == 6 and sim.recalls
    assert all(0.95 <= r <= 1.0 for r in admitted), admitted


# ---- through the gateway --------------------------------------------------------------------------------------------


def _get(port: int, client: str) -> int:
    """One GET on a new connection from `client` (a loopback address); its status."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(client, 0)) as conn:
        conn.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


async def test_two_workers_admit_a_sequential_client_on_new_connections_8_a_minute_then_refuse(nursery, tmp_path):
    """`minute: 8, limit_by: ip`, 2 workers, each client's 10 requests one after another on new connections, which
    the kernel spreads over the workers: 8 x 200 then 429s, as Kong's shared counter (rate-limiting
    policies/init.lua:318-327, handler.lua:89-114). Before, about half the clients got a 429 after 5 admitted while
    the other worker held 3 tokens leased ahead of need, then 200s again."""
    backend = Backend("b")
    await nursery.start(backend.serve)
    doc = {"services": [{"name": "s", "url": f"http://{backend.target}", "routes": [{"name": "r", "paths": ["/"]}]}],
           "plugins": [{"name": "rate-limiting", "config": {"minute": 8, "limit_by": "ip"}}]}
    node = GatewayNode(tmp_path / "gw", doc, status_listen=None)
    try:
        await node.start(workers=2)
        if 60 - time.time() % 60 < 3:  # every client within one minute
            await trio.sleep(60 - time.time() % 60 + 0.05)
        for client in range(2, 18):  # (one in four went wrong before: all 16 right by chance, 1 in 150)
            got = [await trio.to_thread.run_sync(_get, node.port, f"127.0.0.{client}") for _ in range(10)]
            assert got == [200] * 8 + [429] * 2, (client, got)
    finally:
        node.cleanup()
