"""The point an unplanned failover of a tree promotes its copies at (pure logic)."""

from __future__ import annotations

import pytest

from cerssd.replication.logic.tree_point import TreeDisagrees, consistent_point


def test_copies_that_agree_are_promoted_at_their_newest_label() -> None:
    point = consistent_point({"": ["l1", "l2"], "a": ["l1", "l2"], "b": ["l2"]}, None)
    assert (point.label, point.ahead, point.lacking) == ("l2", (), ())
    assert sorted(point.at) == ["", "a", "b"]


def test_copies_that_disagree_name_the_shared_label_and_change_nothing() -> None:
    with pytest.raises(TreeDisagrees) as refused:
        consistent_point({"": ["l1", "l2"], "a": ["l1", "l2"], "b": ["l1"]}, None)
    text = str(refused.value)
    assert "2 at l2" in text and "1 at l1 (b)" in text and "at=l1 rolls" in text


def test_a_chosen_older_label_rolls_the_ahead_copies_back() -> None:
    point = consistent_point({"": ["l1", "l2"], "a": ["l1", "l2"], "b": ["l1"]}, "l1")
    assert point.label == "l1" and point.at == ("b",) and sorted(point.ahead) == ["", "a"]
    assert point.lacking == ()


def test_a_chosen_newer_label_leaves_the_copies_without_it_out() -> None:
    point = consistent_point({"": ["l1", "l2"], "b": ["l1"], "new": []}, "l2")
    assert point.at == ("",) and point.lacking == ("b", "new")


def test_no_label_anywhere_or_an_unknown_choice_is_refused() -> None:
    with pytest.raises(TreeDisagrees, match="nothing to promote"):
        consistent_point({"": [], "a": []}, None)
    with pytest.raises(TreeDisagrees, match="no member's copy has the snapshot l9"):
        consistent_point({"": ["l1"]}, "l9")


def test_copies_with_no_label_in_common_say_so() -> None:
    with pytest.raises(TreeDisagrees, match="no label is on every copy"):
        consistent_point({"": ["l1"], "a": ["l2"]}, None)
