"""Smooth weighted round-robin (nginx)."""

from gateway.balancing import RoundRobin
from gateway.balancing.round_robin import smooth_schedule


def letters(balancer, picks, skip=()):
    return "".join("abc"[balancer.pick(None, skip)] for _ in range(picks))


def test_weights_5_1_1_give_nginx_documented_sequence():
    assert letters(RoundRobin([5, 1, 1]), 7) == "aabacaa"


def test_sequence_repeats_every_period():
    assert letters(RoundRobin([5, 1, 1]), 21) == "aabacaa" * 3


def test_equal_weights_rotate_in_index_order():
    balancer = RoundRobin([1, 1, 1])
    assert [balancer.pick() for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_common_factor_of_the_weights_does_not_change_the_sequence():
    assert smooth_schedule([10, 2, 2]) == smooth_schedule([5, 1, 1]) == [0, 0, 1, 0, 2, 0, 0]


def test_schedule_leaves_out_zero_weights():
    assert smooth_schedule([2, 0, 1]) == [0, 2, 0]
    assert smooth_schedule([0, 0]) == []


def test_skipped_turns_pass_to_the_next_usable_entry():
    assert letters(RoundRobin([5, 1, 1]), 6, skip={0}) == "bcbcbc"


def test_skip_resumes_the_schedule_where_it_left_off():
    balancer = RoundRobin([1, 1, 1])
    assert balancer.pick(None, {0}) == 1
    assert [balancer.pick() for _ in range(3)] == [2, 0, 1]


def test_hash_key_is_ignored():
    balancer = RoundRobin([1, 1])
    assert [balancer.pick(b"same") for _ in range(4)] == [0, 1, 0, 1]


def test_set_weight_recomputes_the_schedule():
    balancer = RoundRobin([1, 1])
    balancer.set_weight(1, 2)
    picks = [balancer.pick() for _ in range(6)]
    assert picks.count(1) == 4
    assert picks.count(0) == 2


def _reference_schedule(weights):
    """nginx's smooth WRR step by step, for every weight pattern (the loop smooth_schedule shortens)."""
    from math import gcd
    divisor = gcd(*weights)
    effective = [w // divisor for w in weights]
    live = [i for i, w in enumerate(effective) if w]
    current, total, out = [0] * len(weights), sum(effective), []
    for _ in range(total):
        for i in live:
            current[i] += effective[i]
        best = max(live, key=current.__getitem__)
        current[best] -= total
        out.append(best)
    return out


def test_equal_weights_make_the_targets_in_order_as_nginxs_steps_do():
    for weights in ([1] * 7, [100] * 50, [100, 0, 100, 0, 100], [3, 3, 0]):
        assert smooth_schedule(weights) == _reference_schedule(weights)

