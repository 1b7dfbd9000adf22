"""Algorithm names, aliases and the make_balancer factory."""

import random

import pytest

from gateway.balancing import (
    ALGORITHMS,
    Balancer,
    ConsistentHashing,
    IpHash,
    KongLatency,
    LeastConnections,
    RandomTwoChoices,
    RoundRobin,
    canonical_algorithm,
    make_balancer,
)

EXPECTED_ALIASES = {
    "round-robin": ["round_robin", "roundRobin", "rr", "wrr", "weighted-round-robin"],
    "least-connections": ["leastConn", "least_conn", "least-conn", "leastconn"],
    "consistent-hashing": ["consistent_hashing", "consistentHashing", "hash", "chash"],
    "random": ["p2c", "random-p2c"],
    "latency": ["ewma", "peak-ewma", "least-latency", "leastLatency"],
    "ip-hash": ["ip_hash", "ipHash", "source"],
}
CLASSES = {
    "round-robin": RoundRobin,
    "least-connections": LeastConnections,
    "consistent-hashing": ConsistentHashing,
    "random": RandomTwoChoices,
    "latency": KongLatency,
    "ip-hash": IpHash,
}
ALL_SPELLINGS = [(alias, name) for name, aliases in EXPECTED_ALIASES.items() for alias in [name, *aliases]]


@pytest.mark.parametrize(("spelling", "canonical"), ALL_SPELLINGS)
def test_every_spelling_maps_to_its_canonical_name(spelling, canonical):
    assert canonical_algorithm(spelling) == canonical
    assert ALGORITHMS[spelling] == canonical


def test_algorithms_lists_exactly_the_documented_spellings():
    assert sorted(ALGORITHMS) == sorted(spelling for spelling, _ in ALL_SPELLINGS)


def test_unknown_algorithm_error_names_the_choices():
    with pytest.raises(ValueError) as excinfo:
        canonical_algorithm("fastest")
    assert str(excinfo.value) == (
        "unknown algorithm 'fastest'; expected one of: "
        "round-robin, least-connections, consistent-hashing, random, latency, ip-hash"
    )


def test_spellings_are_case_sensitive():
    with pytest.raises(ValueError, match="unknown algorithm 'ROUND-ROBIN'"):
        canonical_algorithm("ROUND-ROBIN")


@pytest.mark.parametrize(("spelling", "canonical"), ALL_SPELLINGS)
def test_make_balancer_builds_the_named_algorithm(spelling, canonical):
    balancer = make_balancer(spelling, [1, 2], slots=100)
    assert type(balancer) is CLASSES[canonical]
    assert isinstance(balancer, Balancer)


def test_make_balancer_rejects_unknown_algorithm():
    with pytest.raises(ValueError, match="unknown algorithm 'nope'"):
        make_balancer("nope", [1])


def test_make_balancer_passes_slots_to_consistent_hashing():
    with pytest.raises(ValueError, match="slots must be between 10 and 65536, got 9"):
        make_balancer("chash", [1], slots=9)


def test_make_balancer_uses_the_given_rng():
    first = make_balancer("random", [1, 1, 1, 1], rng=random.Random(42))
    second = make_balancer("p2c", [1, 1, 1, 1], rng=random.Random(42))
    assert [first.pick() for _ in range(50)] == [second.pick() for _ in range(50)]


def test_make_balancer_rejects_negative_weights():
    with pytest.raises(ValueError, match="non-negative integers, got -1"):
        make_balancer("rr", [1, -1])


def test_make_balancer_rejects_non_integer_weights():
    with pytest.raises(ValueError, match="non-negative integers, got 1.5"):
        make_balancer("least-connections", [1.5])
