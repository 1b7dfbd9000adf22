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
