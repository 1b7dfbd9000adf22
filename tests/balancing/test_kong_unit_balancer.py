"""The balancers against Kong's other balancer unit specs: spec/01-unit/09-balancer/01-generic_spec.lua,
04-round_robin_spec.lua and 05-worker_consistency_spec.lua, read with kong/runloop/balancer/{balancers,
round_robin,consistent_hashing,least_connections,latency}.lua.

Kong's round-robin wheel is a random shuffle of each address's weight / gcd entries (a worker's own math.random);
ours is nginx's smooth order (README, "Balancing algorithms"). What a client can see of it is the same: each pass of
the wheel gives every address exactly its share, skipped (unhealthy) entries pass their turn on, a weight applies to
each address of a name. A name's addresses are targets of their own here (gateway.discovery.dns), each with the
name's weight, as Kong gives each address its target's weight.
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio
from backends import EchoBackend, free_port, request, service, upstream

from gateway.balancing import KongConsistentHashing, KongLatency, LeastConnections, RoundRobin, make_balancer
from gateway.health.threshold import unusable_targets

SLOTS = 10


def counts(balancer, picks, skip=()):  # noqa: ANN001, ANN201
    return Counter(balancer.pick(None, skip) for _ in range(picks))


def kong_hashing(weights: list[int], ports: list[int]) -> KongConsistentHashing:
    return KongConsistentHashing(weights, [("127.0.0.1", "127.0.0.1", p) for p in ports], slots=SLOTS)


# --- 04-round_robin_spec.lua -----------------------------------------------------------------------------------------


def test_round_robin_gives_each_target_its_weight_every_pass_of_the_wheel():
    """"gets an IP address and port number; round-robin": weights 100 and 50, run down the wheel (15 entries with
    wheelSize 15) twice: exactly 20 and 10."""
    assert counts(RoundRobin([100, 50]), 30) == {0: 20, 1: 10}


def test_round_robin_skips_unhealthy_addresses():
    """"round-robin skips unhealthy addresses": the one marked down gets nothing, the other all 30."""
    assert counts(RoundRobin([100, 50]), 30, skip={0}) == {1: 30}


def test_unhealthy_address_of_a_name_passes_its_turns_and_stays_unhealthy_after_renewal():
    """"renewed DNS A record; unhealthy entries remain unhealthy after renewal": mashape.test (weight 5, two
    addresses, 1.2.3.4 down) and getkong.test (weight 10): 15 picks give 1.2.3.5 five and 9.9.9.9 ten, and the same
    again once the identical record is renewed (here a new balancer over the same addresses; health is kept by
    address, so the skip stays)."""
    weights = [5, 5, 10]  # 1.2.3.4, 1.2.3.5 (mashape.test), 9.9.9.9 (getkong.test)
    first = counts(RoundRobin(weights), 15, skip={0})
    assert first == {1: 5, 2: 10}
    assert counts(RoundRobin(weights), 15, skip={0}) == first


def test_each_address_of_a_name_has_the_names_weight():
    """"adding a host (fitting indices)": mashape.test weight 5 with two addresses and getkong.test weight 10 with
    one: wheel entries 1, 1, 2 (the gcd is 5)."""
    assert counts(RoundRobin([5, 5, 10]), 4) == {0: 1, 1: 1, 2: 2}


def test_a_weight_change_applies_to_every_address_of_the_name():
    """"weight change updates properly": mashape.test (two addresses) and getkong.test at 10: one entry each;
    mashape.test to 25: entries 5, 5 and 2."""
    balancer = RoundRobin([10, 10, 10])
    assert counts(balancer, 3) == {0: 1, 1: 1, 2: 1}
    balancer.set_weight(0, 25)
    balancer.set_weight(1, 25)
    assert counts(balancer, 12) == {0: 5, 1: 5, 2: 2}


def test_address_order_changes_no_share():
    """"DNS record order has no effect" and "changing hostname order has no effect": the same entries per address
    whatever order they come in."""
    weights = [10, 20, 30, 10]
    order = [2, 0, 3, 1]
    forward = counts(RoundRobin(weights), 7)
    reordered = counts(RoundRobin([weights[i] for i in order]), 7)
    assert {i: forward[i] for i in range(4)} == {order[j]: reordered[j] for j in range(4)}


def test_low_weight_next_to_a_huge_one_does_not_fail():
    """"low weight with zero-indices assigned doesn't fail": weights 99999 and 1, either way round."""
    for weights in ([99999, 1], [1, 99999]):
        balancer = RoundRobin(weights)
        assert counts(balancer, 100000) == {weights.index(99999): 99999, weights.index(1): 1}


def test_an_address_that_fails_to_resolve_has_no_weight():
    """"accepts a hostname that does not resolve": its weight is 0 (gateway.discovery.dns reports the name with
    weight 0), so the balancer picks nothing until another target comes, then that one only."""
    assert make_balancer("round-robin", [0]).pick() is None
    assert counts(make_balancer("round-robin", [0, 10]), 5) == {1: 5}


# --- 01-generic_spec.lua (round-robin, consistent-hashing, least-connections) ----------------------------------------


def generic_balancers(weights: list[int]):  # noqa: ANN201
    ports = [8000 + i for i in range(len(weights))]
    return {"round-robin": RoundRobin(weights), "consistent-hashing": kong_hashing(weights, ports),
            "least-connections": LeastConnections(weights)}


@pytest.mark.parametrize("algorithm", ["round-robin", "consistent-hashing", "least-connections"])
def test_no_addresses_is_no_peer(algorithm):
    """"fails when there are no addresses added": getPeer answers "Balancer is unhealthy" (Kong's 503)."""
    assert generic_balancers([])[algorithm].pick(b"any string") is None


@pytest.mark.parametrize("algorithm", ["round-robin", "consistent-hashing", "least-connections"])
def test_all_addresses_unhealthy_is_no_peer_and_one_coming_back_is_picked(algorithm):
    """"fails when all addresses are unhealthy" and "recovers when balancer switches to healthy": three targets of
    weight 100, all down: no peer; 127.0.0.2 back: it gets the key."""
    balancer = generic_balancers([100, 100, 100])[algorithm]
    assert balancer.pick(b"a client string", {0, 1, 2}) is None
    assert balancer.pick(b"a string", {0, 2}) == 1


def test_health_threshold_50_drops_and_recovers_with_the_healthy_weight():
    """"dropping below the health threshold marks unhealthy", "rising above the health threshold marks healthy",
    "fails when balancer switches to unhealthy" (healthThreshold 50): three of 100, one down is 66 % (healthy),
    two down 33 % (unhealthy: no peer at all, the healthy one included), one back up healthy again."""
    weights = [100, 100, 100]
    assert unusable_targets(weights, {1}, set(), 50) == {1}
    assert unusable_targets(weights, {1, 2}, set(), 50) == {0, 1, 2}
    assert unusable_targets(weights, {2}, set(), 50) == {2}
    assert unusable_targets([], set(), set(), 50) == set()  # no target: nothing to pick anyway ("empty balancer")


def test_a_name_readdressed_by_dns_recovers():
    """"recovers when dns entries are replaced by healthy ones": getkong.test's only address down is no peer; DNS
    then answers 5.6.7.8 (a new target list, a new balancer, no health state for that address): it is picked, and
    for consistent-hashing the key gets a peer."""
    for algorithm in ("round-robin", "least-connections"):
        assert make_balancer(algorithm, [50]).pick(None, {0}) is None
        assert make_balancer(algorithm, [50]).pick(None) == 0
    assert kong_hashing([50], [8000]).pick(b"from the client", {0}) is None
    assert kong_hashing([50], [8000]).pick(b"from the client") == 0


def test_latency_with_no_target_is_no_peer():
    """01-generic's "fails when there are no addresses added" for the algorithm it does not list."""
    assert KongLatency([]).pick() is None


# --- retries (balancers' getPeer with a handle) ------------------------------------------------------------------


def test_which_balancers_retry_away_from_the_tried_targets():
    """getPeer with a handle (a retry): least_connections.lua and latency.lua keep `handle.failedAddresses` and pick
    among the others; round_robin.lua just moves its pointer on round the wheel, and consistent_hashing.lua starts
    again from `handle.hashValue`, the key's own point: neither looks at what was tried."""
    ports = [8000, 8001]
    assert LeastConnections([1, 1]).retry_skips_tried
    assert KongLatency([1, 1]).retry_skips_tried
    assert not RoundRobin([1, 1]).retry_skips_tried
    assert not kong_hashing([1, 1], ports).retry_skips_tried
    assert not make_balancer("consistent-hashing", [1, 1]).retry_skips_tried


async def test_consistent_hashing_retries_the_keys_own_target(nursery, gateway):
    """consistent_hashing.lua getPeer: a retry starts again from handle.hashValue, the key's point, so while the
    key's target is available (no health check marked it down) every try of the request goes to it: a key whose
    target refuses connections gets Kong's 502 after `retries` + 1 tries; the other target sees none of it."""
    live = EchoBackend("live")
    await nursery.start(live.serve)
    dead = free_port()
    ports = [live.port, dead]
    kong = kong_hashing([10, 10], ports)
    key = next(k for k in (f"key-{n}" for n in range(1000)) if kong.pick(k.encode()) == 1)
    port = await gateway({"services": [service("svc", "http://balanced")],
                          "upstreams": [upstream("balanced", ports, [10, 10], slots=SLOTS, hash_on="header",
                                                 hash_on_header="hashme")]})
    with trio.fail_after(10):
        reply = await request(port, "GET", "/", headers=[("hashme", key)])
    assert reply.status == 502
    assert not live.requests
