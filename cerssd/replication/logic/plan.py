"""Planning a snapshot replication: which stream to send, or which conflict to report.

Pure logic over snapshot lists (oldest first) so every rule is unit-tested. The
common base is matched by **identity**, never by name alone: a snapshot recreated
under an old name is a different snapshot. A snapshot's identities are its guid and,
for a copy the generic path made, the ``origin`` it records (the guid of the source
snapshot it copies): two snapshots match when they share one. Nothing here destroys
anything; a situation that would need destruction on the target becomes a typed
conflict.

**Native or generic** (``PlanPath``): a native stream (``zfs send | zfs receive``)
needs the same driver at both ends and, for an incremental, a base matched by guid (the
receiver checks it). Otherwise the generic path copies files from the snapshot's
read-only view into the destination volume and snapshots it with the source's guid as
its origin. ``ReplicationPath.AUTO`` takes the native path wherever it can; ``NATIVE``
and ``GENERIC`` force one (a conflict where it cannot serve).
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


class PlanPath(enum.StrEnum):
    """How a planned replication moves data (the API's ``plan.path``)."""

    NATIVE = "native"
    GENERIC = "generic"


class ReplicationPath(enum.StrEnum):
    """Which path a request asks for: ``auto`` lets the planner pick."""

    AUTO = "auto"
    NATIVE = "native"
    GENERIC = "generic"


@dataclass(frozen=True)
class Ends:
    """What the path choice needs to know of the two servers."""

    source_driver: str
    destination_driver: str
    #: Both servers are remote: no side of a file copy runs where the daemon's keys are.
    both_remote: bool = False
    #: Where each end can be read or written as files (``capabilities.snapshot_views``).
    source_views: bool = True
    destination_views: bool = True
    #: Where ``rsync`` runs (``capabilities.file_copy``): the file copy needs it at both.
    source_rsync: bool = True
    destination_rsync: bool = True

    @property
    def same_driver(self) -> bool:
        return self.source_driver == self.destination_driver


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


class PathUnavailable(ReplicationConflict):
    """Neither path can serve (or not the one asked for): the message says why."""

    code = "path-unavailable"


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
    path: PlanPath = PlanPath.NATIVE
    #: The target's snapshot the base matched (the one a generic copy rolls back to).
    target_base: Snapshot | None = None

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
    ends: Ends | None = None,
    path: ReplicationPath = ReplicationPath.AUTO,
) -> Plan:
    """``ends`` None: both ends of one driver (the native path, as before paths)."""
    ends = ends or Ends("zfs", "zfs")
    snap = next((s for s in source_snapshots if s.name == snapshot_name), None)
    if snap is None:
        raise SourceSnapshotMissing(f"snapshot {snapshot_name} does not exist on the source")
    if any(matches(t, snap) for t in target_snapshots):
        same = next(t for t in target_snapshots if matches(t, snap))
        return Plan(PlanMode.UP_TO_DATE, snap, snap, target_volume,
                    path=PlanPath.NATIVE if same.guid == snap.guid else PlanPath.GENERIC,
                    target_base=same)
    if force_full_copy or not target_exists:
        if target_exists and not overwrite:
            raise TargetExists(
                f"{target_volume} already exists on the destination; a full copy would "
                "replace it: ask for overwrite explicitly, or drop force_full_copy")
        return Plan(PlanMode.FULL, snap, None, target_volume, overwrite=target_exists,
                    path=choose_path(path, ends, by_guid=True))
    found = newest_match(source_snapshots, snap, target_snapshots) or newest_bookmark(
        source_bookmarks, snap, target_snapshots)
    if found is None:
        raise NoCommonSnapshot(
            f"{target_volume} exists on the destination but shares no snapshot (by guid "
            f"or recorded origin) with {snap.volume}; nothing was sent. Replicate into a "
            "new volume, or use force_full_copy with overwrite")
    base, target_base = found
    newer = _after(target_snapshots, target_base)
    if newer:
        raise TargetDiverged(
            f"{target_volume} has snapshots newer than the common base {base.label}: "
            f"{', '.join(s.label for s in newer)}; nothing was sent or destroyed")
    chosen = choose_path(path, ends, by_guid=target_base.guid == base.guid)
    # A bookmark can only be the base of a plain -i stream: intermediates are gone with it.
    return Plan(PlanMode.INCREMENTAL, snap, base, target_volume,
                intermediates and "#" not in base.name and chosen == PlanPath.NATIVE,
                path=chosen, target_base=target_base)


def choose_path(asked: ReplicationPath, ends: Ends, *, by_guid: bool) -> PlanPath:
    """The path a replication takes: native where one driver serves both ends and the
    base (if any) is the same snapshot by guid; generic otherwise or when asked."""
    native_problem = None
    if not ends.same_driver:
        native_problem = (f"a native stream needs one driver at both ends "
                          f"({ends.source_driver} -> {ends.destination_driver})")
    elif not by_guid:
        native_problem = ("the destination shares the base with the source only as a "
                          "file-level copy (recorded origin, not the same guid): an "
                          "incremental stream cannot start from it")
    if asked == ReplicationPath.NATIVE and native_problem:
        raise PathUnavailable(f"path native: {native_problem}; use path generic or auto")
    if asked == ReplicationPath.NATIVE or (asked == ReplicationPath.AUTO
                                           and native_problem is None):
        return PlanPath.NATIVE
    if generic_problem := _generic_problem(ends):
        why = f" ({native_problem})" if native_problem else ""
        raise PathUnavailable(f"the generic path is needed{why} but cannot serve: "
                              f"{generic_problem}")
    return PlanPath.GENERIC


def generic_fallback(plan: Plan, asked: ReplicationPath, ends: Ends) -> Plan | None:
    """The generic plan to take instead of a native full copy the destination's ZFS
    could not read (an older ZFS refusing a newer one's stream features), or None.

    Only for ``path = "auto"`` (a forced native path fails as asked) and only for a full
    copy: an incremental native stream can only follow a native full copy the receiver
    already read, and once a pair has been copied the generic way the planner keeps it
    generic (the base matches by origin, not guid)."""
    if asked != ReplicationPath.AUTO or plan.path != PlanPath.NATIVE \
            or plan.mode != PlanMode.FULL or _generic_problem(ends) is not None:
        return None
    return replace(plan, path=PlanPath.GENERIC, intermediates=False, chain=())


def _generic_problem(ends: Ends) -> str | None:
    if not ends.source_views:
        return f"the source's {ends.source_driver} driver has no read-only snapshot view"
    if not ends.destination_views:
        return f"the destination's {ends.destination_driver} driver cannot be written as files"
    for side, present in (("source", ends.source_rsync),
                          ("destination", ends.destination_rsync)):
        if not present:
            return (f"rsync is not installed on the {side} server (the file copy runs "
                    "rsync at both ends): install it there (Debian: apt install rsync)")
    if ends.both_remote:
        return ("both servers are remote: the file copy (rsync over SSH) runs on this "
                "daemon's node with one end local, since cerssd gives its SSH keys to no "
                "server; replicate through a server local to a daemon (peer daemons will "
                "lift this)")
    return None


def matches(a: Snapshot, b: Snapshot) -> bool:
    """Whether ``a`` and ``b`` are the same point of history (a copy of the other, or
    both copies of one snapshot)."""
    return bool(a.identities & b.identities)


def newest_match(source: Sequence[Snapshot], upto: Snapshot,
                 target: Sequence[Snapshot]) -> tuple[Snapshot, Snapshot] | None:
    """The newest source snapshot, no newer than ``upto``, that the target has (by any
    identity), with the target's snapshot it matched; a guid match wins over an
    origin match of the same source snapshot."""
    by_identity: dict[str, Snapshot] = {}
    for t in target:
        for ident in t.identities:
            if ident not in by_identity or t.guid == ident:
                by_identity[ident] = t
    for snap in reversed(source[: source.index(upto)]):
        if snap.guid in by_identity:
            return snap, by_identity[snap.guid]
        if snap.origin and snap.origin in by_identity:
            return snap, by_identity[snap.origin]
    return None


def newest_bookmark(bookmarks: Sequence[Snapshot], upto: Snapshot,
                    target: Sequence[Snapshot]) -> tuple[Snapshot, Snapshot] | None:
    """The source bookmark of the newest target snapshot, when the snapshot itself is
    gone, with that target snapshot.

    A bookmark keeps its snapshot's guid, so it still proves the common history.
    """
    by_guid = {b.guid: b for b in bookmarks if b.creation <= upto.creation}
    for snap in reversed(target):
        for ident in snap.identities:
            if ident in by_guid and ident != upto.guid:
                return by_guid[ident], snap
    return None


def _after(snapshots: Sequence[Snapshot], found: Snapshot) -> list[Snapshot]:
    for i, snap in enumerate(snapshots):
        if snap.name == found.name:
            return list(snapshots[i + 1:])
    return []
