"""IP hash: client address modulo the weighted target list, nginx-style rehash on skip."""

from gateway.balancing import IpHash

ADDRESSES = [f"10.0.{n // 256}.{n % 256}".encode() for n in range(2000)]


def test_same_address_always_gets_the_same_target():
    balancer = IpHash([1, 2, 3])
    assert {balancer.pick(b"192.168.1.10") for _ in range(20)} == {balancer.pick(b"192.168.1.10")}


def test_mapping_is_stable_across_processes():
    balancer = IpHash([1, 1, 1, 1])
    assert [balancer.pick(f"10.0.0.{n}".encode()) for n in range(10)] == [2, 3, 1, 1, 3, 2, 2, 2, 0, 1]


def test_skip_rehashes_to_the_same_alternative_every_time():
    balancer = IpHash([1, 1, 1, 1])
    first = balancer.pick(b"192.168.1.10")
    alternatives = {balancer.pick(b"192.168.1.10", {first}) for _ in range(10)}
    assert len(alternatives) == 1
    assert first not in alternatives


def test_skip_moves_only_the_skipped_targets_addresses():
    balancer = IpHash([1, 1, 1, 1])
    before = [balancer.pick(address) for address in ADDRESSES]
    after = [balancer.pick(address, {1}) for address in ADDRESSES]
    assert {old for old, new in zip(before, after, strict=True) if old != new} == {1}


def test_falls_back_to_round_robin_when_rehashing_keeps_hitting_skipped_targets():
    balancer = IpHash([1_000_000, 1, 1])  # 21 hashes all land on target 0 almost surely
    assert [balancer.pick(b"192.168.1.10", {0}) for _ in range(4)] == [1, 2, 1, 2]


def test_without_an_address_picks_round_robin():
    balancer = IpHash([1, 1, 1])
    assert [balancer.pick(None) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_changing_the_weights_remaps_addresses_like_nginx():
    before = [IpHash([1, 1, 1]).pick(address) for address in ADDRESSES]
    after = [IpHash([1, 1, 1, 1]).pick(address) for address in ADDRESSES]
    moved = sum(old != new for old, new in zip(before, after, strict=True))
    assert moved / len(ADDRESSES) > 0.5
