"""The bounded memo the caches of the request path share (gateway.memo)."""

from __future__ import annotations

from gateway.memo import Derived, Memo


def test_a_kept_answer_is_found_again():
    memo: Memo[str, int] = Memo(2)
    assert memo.keep("a", 1) == 1
    assert memo.get("a") == 1 and memo.get("b") is None


def test_past_its_size_the_oldest_answer_leaves_first():
    memo: Memo[str, int] = Memo(2)
    for i, key in enumerate("abc"):
        memo.keep(key, i)
    assert list(memo) == ["b", "c"]


def test_a_derived_answer_is_made_once_on_its_first_look_up():
    made: list[str] = []
    memo: Derived[str, str] = Derived(lambda key: made.append(key) or key.upper(), 2)
    assert (memo["a"], memo["a"]) == ("A", "A")
    assert made == ["a"]


def test_past_its_size_the_oldest_derived_answer_leaves_first():
    memo: Derived[str, str] = Derived(str.upper, 2)
    for key in "abc":
        assert memo[key] == key.upper()
    assert list(memo) == ["b", "c"]
