"""Replication planning: base by guid, full/incremental, and each typed conflict."""

from __future__ import annotations

import pytest

from cerssd.replication.logic.plan import (
    NoCommonSnapshot,
    SourceSnapshotMissing,
    TargetDiverged,
    TargetExists,
    plan_replication,
    without_intermediates,
)
from cerssd.storage.values import Snapshot


def snap(volume: str, label: str, guid: str) -> Snapshot:
    return Snapshot(name=f"{volume}@{label}", volume=volume, label=label, guid=guid,
                    creation=0, used=0, referenced=0, userrefs=0)


SRC = [snap("p/v", "s1", "g1"), snap("p/v", "s2", "g2"), snap("p/v", "s3", "g3")]


def plan(snapshot: str = "p/v@s3", target: list[Snapshot] | None = None, exists: bool = True,
         **kw: bool):
    return plan_replication(snapshot_name=snapshot, source_snapshots=SRC, target_volume="q/v",
                            target_exists=exists, target_snapshots=target or [], **kw)


def test_full_when_target_absent() -> None:
    p = plan(exists=False)
    assert (p.mode, p.base, p.target_snapshot) == ("full", None, "q/v@s3")


def test_incremental_from_newest_common_by_guid() -> None:
    p = plan(target=[snap("q/v", "s1", "g1"), snap("q/v", "s2", "g2")])
    assert p.mode == "incremental" and p.base is not None and p.base.label == "s2"


def test_same_name_different_guid_is_not_common() -> None:
    # the target's s1 was recreated under the old name: it is not a base
    with pytest.raises(NoCommonSnapshot):
        plan(target=[snap("q/v", "s1", "OTHER")])


def test_up_to_date() -> None:
    assert plan(target=[snap("q/v", "s3", "g3")]).mode == "up-to-date"


def test_source_snapshot_missing() -> None:
    with pytest.raises(SourceSnapshotMissing):
        plan("p/v@nope", exists=False)


def test_no_common_snapshot_but_target_exists() -> None:
    with pytest.raises(NoCommonSnapshot, match="shares no snapshot"):
        plan(target=[snap("q/v", "other", "g7")])


def test_target_newer_than_base_is_diverged() -> None:
    with pytest.raises(TargetDiverged, match="newer than the common base s1"):
        plan(target=[snap("q/v", "s1", "g1"), snap("q/v", "mine", "g8")])


def test_force_full_copy_needs_absent_target() -> None:
    assert plan(exists=False, force_full_copy=True).mode == "full"
    with pytest.raises(TargetExists):
        plan(target=[snap("q/v", "s1", "g1")], force_full_copy=True)


def mark(volume: str, label: str, guid: str, creation: int = 0) -> Snapshot:
    return Snapshot(name=f"{volume}#{label}", volume=volume, label=label, guid=guid,
                    creation=creation, used=0, referenced=0, userrefs=0)


def test_bookmark_serves_when_the_common_snapshot_is_gone() -> None:
    source = [snap("p/v", "s3", "g3")]  # s1 and s2 were pruned on the source
    marks = [mark("p/v", "cerssd-b-s1", "g1"), mark("p/v", "cerssd-b-s2", "g2")]
    p = plan_replication(snapshot_name="p/v@s3", source_snapshots=source, target_volume="q/v",
                         target_exists=True, intermediates=True, source_bookmarks=marks,
                         target_snapshots=[snap("q/v", "s1", "g1"), snap("q/v", "s2", "g2")])
    assert p.mode == "incremental" and p.base is not None
    assert p.base.name == "p/v#cerssd-b-s2"
    assert p.intermediates is False  # a bookmark base allows only -i


def test_snapshot_base_preferred_over_bookmark() -> None:
    marks = [mark("p/v", "cerssd-b-s2", "g2")]
    p = plan(target=[snap("q/v", "s2", "g2")])
    p2 = plan_replication(snapshot_name="p/v@s3", source_snapshots=SRC, target_volume="q/v",
                          target_exists=True, target_snapshots=[snap("q/v", "s2", "g2")],
                          source_bookmarks=marks)
    assert p.base is not None and p2.base is not None
    assert p.base.name == p2.base.name == "p/v@s2"


def test_without_intermediates_sends_a_chain_of_i_steps() -> None:
    p = plan(target=[snap("q/v", "s1", "g1")], intermediates=True)
    chained = without_intermediates(p, SRC)
    assert chained.intermediates is False and [s.label for s in chained.chain] == ["s2"]
    assert [(b.label if b else None, s.label) for b, s in chained.steps()] == \
        [("s1", "s2"), ("s2", "s3")]
    one = without_intermediates(plan(target=[snap("q/v", "s2", "g2")], intermediates=True),
                                SRC)
    assert one.chain == () and [(b.label if b else None, s.label) for b, s in one.steps()] \
        == [("s2", "s3")]
    full = plan(exists=False, intermediates=True)
    assert without_intermediates(full, SRC) == full and full.steps() == [(None, SRC[2])]


# -- native or generic (identities: guid, and the origin a generic copy records) -----


def copy_of(source: Snapshot, volume: str = "q/v", guid: str = "") -> Snapshot:
    return Snapshot(name=f"{volume}@{source.label}", volume=volume, label=source.label,
                    guid=guid or f"c{source.guid}", creation=0, used=0, referenced=0,
                    userrefs=0, origin=source.guid)


def test_other_driver_takes_the_generic_path() -> None:
    from cerssd.replication.logic.plan import Ends

    p = plan_replication(snapshot_name="p/v@s3", source_snapshots=SRC, target_volume="q/v",
                         target_exists=False, target_snapshots=[],
                         ends=Ends("zfs", "btrfs"))
    assert (p.mode, p.path) == ("full", "generic")
    same = plan_replication(snapshot_name="p/v@s3", source_snapshots=SRC,
                            target_volume="q/v", target_exists=False, target_snapshots=[],
                            ends=Ends("zfs", "zfs"))
    assert same.path == "native"


def test_a_copy_is_matched_by_its_origin_and_stays_generic() -> None:
    from cerssd.replication.logic.plan import PathUnavailable, ReplicationPath

    target = [copy_of(SRC[0]), copy_of(SRC[1])]
    p = plan(target=target)
    assert (p.mode, p.path, p.base, p.target_base) == (
        "incremental", "generic", SRC[1], target[1])
    assert not p.intermediates  # rsync copies the newest state only
    with pytest.raises(PathUnavailable, match="file-level copy"):
        plan(target=target, path=ReplicationPath.NATIVE)  # type: ignore[arg-type]
    up = plan(snapshot="p/v@s2", target=target)
    assert (up.mode, up.path) == ("up-to-date", "generic")


def test_a_guid_base_goes_native_unless_generic_is_asked() -> None:
    from cerssd.replication.logic.plan import ReplicationPath

    target = [snap("q/v", "s2", "g2")]
    assert plan(target=target).path == "native"
    forced = plan(target=target, path=ReplicationPath.GENERIC)  # type: ignore[arg-type]
    assert (forced.mode, forced.path) == ("incremental", "generic")


def test_after_failover_the_copies_match_the_old_masters_snapshots() -> None:
    # the old slave (copies with origins) is the master now; the old master follows it
    master = [copy_of(SRC[0], "q/v"), copy_of(SRC[1], "q/v"), snap("q/v", "s9", "g9")]
    p = plan_replication(snapshot_name="q/v@s9", source_snapshots=master,
                         target_volume="p/v", target_exists=True, target_snapshots=SRC[:2])
    assert (p.mode, p.path, p.base) == ("incremental", "generic", master[1])


def test_a_diverged_copy_and_remote_to_remote_are_refused() -> None:
    from cerssd.replication.logic.plan import Ends, PathUnavailable

    with pytest.raises(TargetDiverged, match="theirs"):
        plan(target=[copy_of(SRC[0]), snap("q/v", "theirs", "x")])
    with pytest.raises(PathUnavailable, match="both servers are remote"):
        plan_replication(snapshot_name="p/v@s3", source_snapshots=SRC, target_volume="q/v",
                         target_exists=False, target_snapshots=[],
                         ends=Ends("zfs", "btrfs", both_remote=True))


def test_an_unreadable_native_first_copy_falls_back_to_generic_only_when_auto() -> None:
    from cerssd.replication.logic.plan import Ends, ReplicationPath, generic_fallback

    zfs = Ends("zfs", "zfs")
    first = plan(exists=False, intermediates=True)
    assert (first.mode, first.path) == ("full", "native")
    generic = generic_fallback(first, ReplicationPath.AUTO, zfs)
    assert generic is not None
    assert (generic.mode, generic.path, generic.intermediates) == ("full", "generic", False)
    assert generic.snapshot == first.snapshot and generic.target_volume == "q/v"
    # a forced native path fails as asked; an incremental follows a stream that was read
    assert generic_fallback(first, ReplicationPath.NATIVE, zfs) is None
    incremental = plan(target=[snap("q/v", "s2", "g2")])
    assert generic_fallback(incremental, ReplicationPath.AUTO, zfs) is None
    # where files cannot carry it either, the native failure stands
    assert generic_fallback(first, ReplicationPath.AUTO,
                            Ends("zfs", "zfs", both_remote=True)) is None
    assert generic_fallback(first, ReplicationPath.AUTO,
                            Ends("zfs", "zfs", source_views=False)) is None


def test_the_generic_path_needs_rsync_at_both_ends() -> None:
    from cerssd.replication.logic.plan import (
        Ends,
        PathUnavailable,
        ReplicationPath,
        generic_fallback,
    )

    for ends, side in ((Ends("zfs", "btrfs", source_rsync=False), "source"),
                       (Ends("zfs", "btrfs", destination_rsync=False), "destination")):
        with pytest.raises(PathUnavailable, match=f"rsync is not installed on the {side}"):
            plan_replication(snapshot_name="p/v@s3", source_snapshots=SRC,
                             target_volume="q/v", target_exists=False, target_snapshots=[],
                             ends=ends)
    first = plan(exists=False)
    assert generic_fallback(first, ReplicationPath.AUTO,
                            Ends("zfs", "zfs", destination_rsync=False)) is None
