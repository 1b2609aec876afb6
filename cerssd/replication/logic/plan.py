"""Planning a snapshot replication: which stream to send, or which conflict to report.

Pure logic over snapshot lists (oldest first) so every rule is unit-tested. The
common base is matched by **guid**, never by name alone: a snapshot recreated
under an old name is a different snapshot. Nothing here destroys anything; a
situation that would need destruction on the target becomes a typed conflict.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ...storage.values import Snapshot


class PlanMode(enum.StrEnum):
    """What a replication sends: full (everything), incremental (the changes since a
    common base), up-to-date (nothing: the target has the snapshot), resume (the rest of
    a partial receive, from its resume token). Also the API's schema."""

    FULL = "full"
    INCREMENTAL = "incremental"
    UP_TO_DATE = "up-to-date"
    RESUME = "resume"


class ReplicationConflict(Exception):
    """The replication cannot proceed as asked; ``message`` says why and what to do."""

    code = "conflict"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SourceSnapshotMissing(ReplicationConflict):
    code = "source-snapshot-missing"


class NoCommonSnapshot(ReplicationConflict):
    code = "no-common-snapshot"


class TargetDiverged(ReplicationConflict):
    code = "target-diverged"


class TargetExists(ReplicationConflict):
    code = "target-exists"


class TargetPoolMissing(ReplicationConflict):
    code = "target-pool-missing"


@dataclass(frozen=True)
class Plan:
    """What one replication sends (``mode``) and from which base."""

    mode: PlanMode
    snapshot: Snapshot
    base: Snapshot | None
    target_volume: str
    intermediates: bool = False
    overwrite: bool = False
    #: The snapshots between ``base`` and ``snapshot`` sent as a chain of ``-i`` steps
    #: (base -> chain[0] -> ... -> snapshot) instead of one ``-I`` stream, on a source
    #: whose ``-I`` leaves snapshots held when it is killed (``without_intermediates``).
    chain: tuple[Snapshot, ...] = ()
    #: The snapshot listings the plan was made from (source, target), so the transfer
    #: that carries it out finds its holds to release without listing both sides again;
    #: None for a plan made without them (a resumed receive).
    listed: tuple[tuple[Snapshot, ...], tuple[Snapshot, ...]] | None = field(
        default=None, compare=False, repr=False)

    @property
    def target_snapshot(self) -> str:
        return f"{self.target_volume}@{self.snapshot.label}"

    def steps(self) -> list[tuple[Snapshot | None, Snapshot]]:
        """(base, snapshot) of each stream the plan sends, in order."""
        ends = [*self.chain, self.snapshot]
        return list(zip([self.base, *self.chain], ends, strict=True))


def without_intermediates(plan: Plan, source_snapshots: Sequence[Snapshot]) -> Plan:
    """``plan`` with its ``-I`` stream replaced by ``-i`` steps through each intermediate.

    zfs-fuse's ``send -I`` takes temporary holds on both ends of the range and releases
    them only when it finishes: a sender killed mid-stream (the daemon killed) leaves
    them for ever, under a tag that is not cerssd's, and retention can never destroy
    those snapshots. Its ``send -i`` takes none. The target gets the same snapshots.
    """
    if not plan.intermediates or plan.base is None:
        return plan
    guids = [s.guid for s in source_snapshots]
    if plan.base.guid not in guids or plan.snapshot.guid not in guids:
        return replace(plan, intermediates=False)
    start, end = guids.index(plan.base.guid), guids.index(plan.snapshot.guid)
    return replace(plan, intermediates=False, chain=tuple(source_snapshots[start + 1:end]))


def plan_replication(
    *,
    snapshot_name: str,
    source_snapshots: Sequence[Snapshot],
    target_volume: str,
    target_exists: bool,
    target_snapshots: Sequence[Snapshot],
    force_full_copy: bool = False,
    intermediates: bool = False,
    overwrite: bool = False,
    source_bookmarks: Sequence[Snapshot] = (),
) -> Plan:
    snap = next((s for s in source_snapshots if s.name == snapshot_name), None)
    if snap is None:
        raise SourceSnapshotMissing(f"snapshot {snapshot_name} does not exist on the source")
    if any(t.guid == snap.guid for t in target_snapshots):
        return Plan(PlanMode.UP_TO_DATE, snap, snap, target_volume)
    if force_full_copy or not target_exists:
        if target_exists and not overwrite:
            raise TargetExists(
                f"{target_volume} already exists on the destination; a full copy would "
                "replace it: ask for overwrite explicitly, or drop force_full_copy")
        return Plan(PlanMode.FULL, snap, None, target_volume, overwrite=target_exists)
    base = newest_common(source_snapshots, snap, target_snapshots) or newest_bookmark(
        source_bookmarks, snap, target_snapshots)
    if base is None:
        raise NoCommonSnapshot(
            f"{target_volume} exists on the destination but shares no snapshot (by guid) "
            f"with {snap.volume}; nothing was sent. Replicate into a new volume, or use "
            "force_full_copy with overwrite")
    newer = _after(target_snapshots, base.guid)
    if newer:
        raise TargetDiverged(
            f"{target_volume} has snapshots newer than the common base {base.label}: "
            f"{', '.join(s.label for s in newer)}; nothing was sent or destroyed")
    # A bookmark can only be the base of a plain -i stream: intermediates are gone with it.
    return Plan(PlanMode.INCREMENTAL, snap, base, target_volume,
                intermediates and "#" not in base.name)


def newest_common(source: Sequence[Snapshot], upto: Snapshot,
                  target: Sequence[Snapshot]) -> Snapshot | None:
    """The newest source snapshot, no newer than ``upto``, whose guid the target has."""
    target_guids = {t.guid for t in target}
    candidates = source[: source.index(upto)]
    for snap in reversed(candidates):
        if snap.guid in target_guids:
            return snap
    return None


def newest_bookmark(bookmarks: Sequence[Snapshot], upto: Snapshot,
                    target: Sequence[Snapshot]) -> Snapshot | None:
    """The source bookmark of the newest target snapshot, when the snapshot itself is gone.

    A bookmark keeps its snapshot's guid, so it still proves the common history.
    """
    by_guid = {b.guid: b for b in bookmarks if b.creation <= upto.creation}
    for snap in reversed(target):
        if snap.guid in by_guid and snap.guid != upto.guid:
            return by_guid[snap.guid]
    return None


def _after(snapshots: Sequence[Snapshot], guid: str) -> list[Snapshot]:
    for i, snap in enumerate(snapshots):
        if snap.guid == guid:
            return list(snapshots[i + 1:])
    return []
