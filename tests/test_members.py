"""Tree membership: subtree, include/exclude globs and a ZFS user property, on listings."""

from __future__ import annotations

import pytest

from cerssd.replication.logic.members import (
    ListedDataset,
    Member,
    SelectionError,
    TreeSelection,
    matches,
    select,
    trees_overlap,
    unmatched_patterns,
    validate_user_property,
)

TREE = ["tank/cinder", "tank/cinder/vol-1", "tank/cinder/vol-1/snapdir", "tank/cinder/tmp",
        "tank/cinder/tmp/x", "tank/cinder/vol-2", "tank/cinder/vol-2/scratch",
        "tank/cinderella", "tank/other"]


def listing(names: list[str], selectors: dict[str, str] | None = None) -> list[ListedDataset]:
    return [ListedDataset(name=n, guid=str(i), selector=(selectors or {}).get(n))
            for i, n in enumerate(names)]


def names(members: tuple[Member, ...]) -> list[str]:
    return [m.name for m in members]


def test_a_single_volume_selection_is_the_root_alone() -> None:
    sel = TreeSelection(root="tank/cinder")
    assert names(select(sel, "r", listing(TREE))) == ["tank/cinder"]


def test_recursive_selects_the_root_and_every_descendant_but_not_a_name_sharing_prefix() -> None:
    got = names(select(TreeSelection(root="tank/cinder", recursive=True), "r", listing(TREE)))
    assert got == sorted(n for n in TREE if n == "tank/cinder" or n.startswith("tank/cinder/"))
    assert "tank/cinderella" not in got


def test_exclude_takes_a_subtree_out_and_globs_match_at_any_level() -> None:
    sel = TreeSelection(root="tank/cinder", recursive=True, exclude=("tmp", "*/scratch"))
    assert names(select(sel, "r", listing(TREE))) == [
        "tank/cinder", "tank/cinder/vol-1", "tank/cinder/vol-1/snapdir", "tank/cinder/vol-2"]


def test_include_selects_subtrees_and_dot_names_the_root() -> None:
    sel = TreeSelection(root="tank/cinder", recursive=True, include=("vol-*",))
    assert names(select(sel, "r", listing(TREE))) == [
        "tank/cinder/vol-1", "tank/cinder/vol-1/snapdir", "tank/cinder/vol-2",
        "tank/cinder/vol-2/scratch"]
    sel = TreeSelection(root="tank/cinder", recursive=True, include=(".", "vol-1"))
    assert names(select(sel, "r", listing(TREE))) == [
        "tank/cinder", "tank/cinder/vol-1", "tank/cinder/vol-1/snapdir"]


def test_the_property_selects_on_or_the_relationships_name_as_zfs_inherits_it() -> None:
    # As `zfs get -r` reports it: set on vol-1 (inherited below), off on vol-2's scratch.
    values = {"tank/cinder/vol-1": "on", "tank/cinder/vol-1/snapdir": "on",
              "tank/cinder/vol-2": "nightly", "tank/cinder/vol-2/scratch": "off",
              "tank/cinder/tmp": "other-relationship"}
    sel = TreeSelection(root="tank/cinder", by_property="cerssd:replicate")
    assert names(select(sel, "nightly", listing(TREE, values))) == [
        "tank/cinder/vol-1", "tank/cinder/vol-1/snapdir", "tank/cinder/vol-2"]


def test_members_mirror_the_hierarchy_under_a_slaves_target_root() -> None:
    members = select(TreeSelection(root="tank/cinder", recursive=True), "r",
                     listing(["tank/cinder/vol-1", "tank/cinder"]))
    assert [m.target("backup/node1") for m in members] == ["backup/node1",
                                                          "backup/node1/vol-1"]
    assert members[0].relative == "" and members[1].relative == "vol-1"


def test_parents_come_before_children_whatever_the_listing_order() -> None:
    shuffled = list(reversed(TREE))
    got = names(select(TreeSelection(root="tank/cinder", recursive=True), "r",
                       listing(shuffled)))
    for i, name in enumerate(got):
        parent = name.rpartition("/")[0]
        if parent in got:
            assert got.index(parent) < i


@pytest.mark.parametrize(("pattern", "relative", "expected"), [
    ("tmp", "tmp", True), ("tmp", "tmp/x", True), ("tmp", "x/tmp", False),
    ("*/scratch", "vol-2/scratch", True), ("*/scratch", "vol-2/scratch/deep", True),
    ("*/scratch", "scratch", False), (".", "", True), (".", "vol-1", False),
    ("vol-?", "vol-1", True), ("VOL-1", "vol-1", False),
])
def test_matches(pattern: str, relative: str, expected: bool) -> None:
    assert matches(pattern, relative) is expected


def test_patterns_that_match_nothing_are_reported() -> None:
    sel = TreeSelection(root="tank/cinder", recursive=True, include=("vol-*", "vlo-*"),
                        exclude=("tmp", "nothing"))
    assert unmatched_patterns(sel, listing(TREE)) == ("vlo-*", "nothing")


@pytest.mark.parametrize("prop", ["cerssd:replicate", "com.example:sync", "a:", "x:y:z",
                                  "m+1:n_2.3-4"])
def test_valid_user_properties(prop: str) -> None:
    assert validate_user_property(prop) == prop


@pytest.mark.parametrize("prop", ["replicate", ":name", "Cerssd:Replicate", "a:b c", "a:b;rm",
                                  "a:" + "x" * 300, "a:b\n", ""])
def test_invalid_user_properties_are_refused(prop: str) -> None:
    with pytest.raises(SelectionError, match="not a ZFS user property"):
        TreeSelection(root="tank", by_property=prop)


@pytest.mark.parametrize("pattern", ["", "/tmp", "tmp/", "a//b", "a@b", "a\0b"])
def test_invalid_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(SelectionError, match="not a pattern"):
        TreeSelection(root="tank", recursive=True, exclude=(pattern,))


def test_patterns_need_a_tree() -> None:
    with pytest.raises(SelectionError, match="need recursive"):
        TreeSelection(root="tank/a", include=("x",))


@pytest.mark.parametrize(("a", "b", "expected"), [
    (TreeSelection("tank/a", recursive=True), TreeSelection("tank/a/b"), True),
    (TreeSelection("tank/a"), TreeSelection("tank/a/b"), False),
    (TreeSelection("tank/a"), TreeSelection("tank/a"), True),
    (TreeSelection("tank/a", by_property="x:y"), TreeSelection("tank/a/b", recursive=True), True),
    (TreeSelection("tank/a", recursive=True), TreeSelection("tank/ab", recursive=True), False),
])
def test_trees_overlap(a: TreeSelection, b: TreeSelection, expected: bool) -> None:
    assert trees_overlap(a, b) is expected
    assert trees_overlap(b, a) is expected
