"""What a tree relationship knows about its members' backups, per object store.

A tree's backup keeps one chain per member in the bucket, under the member's own volume
name (docs/backups.md), so a member restores exactly as a single volume does. Per store
and member the relationship knows the newest snapshot of the member's dataset with a
complete backup (the next incremental's base, spared by the master's retention like a
slave's) and the last failure. The facts come from one listing of the bucket under the
tree's root, the first time a store is backed up in the daemon's life, and are kept up
to date by the backups since (``relationships.tree_backup``): at 1,000 members with weeks
of history, listing the bucket every cycle would cost more than the cycle.

Facts are keyed by the member's relative name *and* its dataset's guid: a renamed member
starts a chain of its own under its new name (a restore walks one volume's chain), and a
member destroyed and made again under the same name is a new dataset.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

#: How many failing members a summary names (the rest are counted).
FAILING_SHOWN = 20


class TreeMember(Protocol):
    """A member as the master's last listing showed it (``tree_status.TreeMember``,
    which keeps these facts in a field of its ``TreeStatus``)."""

    relative: str
    name: str
    guid: str
    newest_guid: str | None
    newest_label: str | None


class BackupState(enum.StrEnum):
    """A member's backups in one store."""

    BACKED_UP = "backed-up"  # the store has the master's newest snapshot of the member
    BEHIND = "behind"  # it does not yet (its backup is due or waits its turn)
    SENDING = "sending"  # its upload is under way
    FAILING = "failing"  # its last backup failed (``error`` says why)


@dataclass
class MemberBackup:
    """One member in one store."""

    #: The member's dataset these facts are about.
    dataset_guid: str
    #: The newest snapshot of the member with a complete backup in the store, if any.
    guid: str | None = None
    label: str | None = None
    created: float | None = None
    error: str | None = None
    sending: bool = False

    def backed_up(self, guid: str, label: str, created: float) -> None:
        self.guid, self.label, self.created, self.error = guid, label, created, None


@dataclass
class StoreBackups:
    """A tree's members in one store, by relative name."""

    members: dict[str, MemberBackup] = field(default_factory=dict)
    #: A listing of the bucket established every member's facts in this daemon's life:
    #: backups since go on from them without listing it again.
    known: bool = False
    #: A cycle came while this store's backup ran: the newest snapshot is backed up as
    #: soon as it ends, not an interval later.
    skipped: bool = False

    def facts(self, entry: TreeMember) -> MemberBackup | None:
        """The member's facts, if they are about its current dataset."""
        f = self.members.get(entry.relative)
        return f if f is not None and f.dataset_guid == entry.guid else None

    def state(self, entry: TreeMember) -> BackupState:
        f = self.facts(entry)
        if f is None:
            return BackupState.BEHIND
        if f.sending:
            return BackupState.SENDING
        if f.error is not None:
            return BackupState.FAILING
        if entry.newest_guid is not None and f.guid == entry.newest_guid:
            return BackupState.BACKED_UP
        return BackupState.BEHIND

    def forget_others(self, members: Iterable[str]) -> None:
        """Drop the facts of members no longer in the tree (gone, renamed, deselected)."""
        keep = set(members)
        for rel in [r for r in self.members if r not in keep]:
            del self.members[rel]

    def summary(self, members: Iterable[TreeMember], now: float) -> dict[str, Any]:
        """Counts by state, the oldest newest-backup's age and the failing members."""
        counts = dict.fromkeys(BackupState, 0)
        worst: float | None = 0.0
        failing = []
        for entry in members:
            state = self.state(entry)
            counts[state] += 1
            f = self.facts(entry)
            if state == BackupState.FAILING and f is not None:
                failing.append({"member": entry.name, "error": f.error})
            if state != BackupState.BACKED_UP:
                if f is None or f.created is None:
                    worst = None
                elif worst is not None:
                    worst = max(worst, now - f.created)
        return {**{s.value.replace("-", "_"): n for s, n in counts.items()},
                "oldest_backup_age_seconds": None if worst is None else round(worst, 1),
                "failing_members": failing[:FAILING_SHOWN], "failing_total": len(failing)}


@dataclass(frozen=True)
class Step:
    """One member's backup in a steady run: from its known base (None: plan it first)."""

    member: TreeMember
    base_label: str | None
    base_guid: str | None


def steady_steps(store: StoreBackups, members: Iterable[TreeMember], label: str) -> list[Step]:
    """The members to back up to the cycle's snapshot ``label``: from the base the store
    is known to have, or (new, failing, or about another dataset) planned from listings
    of their own. Members already backed up at ``label`` and members without it (made
    after the cycle's snapshot, or whose snapshot is not known) are left out."""
    steps = []
    for entry in members:
        if entry.newest_label != label or entry.newest_guid is None:
            continue
        f = store.facts(entry)
        if f is not None and f.guid == entry.newest_guid:
            continue
        if f is None or f.error is not None or f.label is None or f.guid is None:
            steps.append(Step(entry, None, None))
        else:
            steps.append(Step(entry, f.label, f.guid))
    return steps


def bases(backups: Mapping[str, StoreBackups], stores: Iterable[str],
          relative: str) -> set[str] | None:
    """Guids of the member's snapshots its stores' next incrementals need (the master's
    retention keeps them); None while a store's facts about it are unknown."""
    guids = set()
    for name in stores:
        f = backups.get(name, StoreBackups()).members.get(relative)
        if f is None:
            return None
        if f.guid is not None:
            guids.add(f.guid)
    return guids


def base_labels(backups: Mapping[str, StoreBackups], stores: Iterable[str],
                relatives: Iterable[str]) -> set[str] | None:
    """The labels every store's next incrementals need, for retention by label; None
    while a store's facts about a member are unknown."""
    labels = set()
    relatives = list(relatives)
    for name in stores:
        known = backups.get(name, StoreBackups()).members
        for rel in relatives:
            f = known.get(rel)
            if f is None:
                return None
            if f.label is not None:
                labels.add(f.label)
    return labels
