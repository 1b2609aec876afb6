"""What a tree relationship knows about its members: per member and slave, in sync or not.

A tree has hundreds of members, so its status is kept as plain per-member facts that the
tree's cycles and member transfers update, and is summarised (counts, the worst lag, the
failing members) for the relationship's view and metrics; the full per-member list is
served a page at a time (``GET /v1/relationships/NAME/volumes``). Nothing here is
remembered across restarts: the first cycle after a start lists each server's tree once
and learns it all again.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ...storage.values import Snapshot
from .tree_backup_facts import StoreBackups


class MemberState(enum.StrEnum):
    """A member on one slave."""

    IN_SYNC = "in-sync"  # has the master's newest snapshot of the member
    BEHIND = "behind"  # does not yet (a transfer is due or waits its turn)
    SENDING = "sending"  # a transfer is under way
    FAILING = "failing"  # its last transfer or plan failed (``error`` says why)


@dataclass
class MemberSlave:
    """One member on one slave."""

    #: The guid of the newest snapshot this slave shares with the master, if known.
    guid: str | None = None
    label: str | None = None
    created: float | None = None
    error: str | None = None
    sending: bool = False

    def shares(self, snap: Snapshot) -> None:
        """The slave has ``snap`` (the master's, same guid): its newest common one."""
        self.guid, self.label, self.created = snap.guid, snap.label, float(snap.creation)
        self.error = None


@dataclass
class TreeMember:
    """A member of the tree as the master's last listing showed it."""

    relative: str
    name: str
    guid: str
    #: The master's newest snapshot of the member made by the relationship.
    newest_guid: str | None = None
    newest_label: str | None = None
    newest_created: float | None = None
    slaves: dict[str, MemberSlave] = field(default_factory=dict)

    def note_newest(self, snap: Snapshot) -> None:
        """``snap`` is the master's newest snapshot of the member made by the relationship."""
        self.newest_guid, self.newest_label = snap.guid, snap.label
        self.newest_created = float(snap.creation)

    def state(self, server: str) -> MemberState:
        s = self.slaves.get(server)
        if s is None:
            return MemberState.BEHIND
        if s.sending:
            return MemberState.SENDING
        if s.error is not None:
            return MemberState.FAILING
        if self.newest_guid is not None and s.guid == self.newest_guid:
            return MemberState.IN_SYNC
        return MemberState.BEHIND

    def lag(self, server: str, now: float) -> float | None:
        """Seconds since the slave's newest shared snapshot was taken (None: has none)."""
        s = self.slaves.get(server)
        if s is None or s.created is None:
            return None
        if self.newest_guid is not None and s.guid == self.newest_guid:
            return 0.0
        return max(0.0, now - s.created)

    def to_json(self, servers: Iterable[str], now: float) -> dict[str, Any]:
        return {"name": self.name, "relative": self.relative, "guid": self.guid,
                "newest_snapshot": f"{self.name}@{self.newest_label}"
                if self.newest_label else None,
                "slaves": [{"server": server, "state": self.state(server),
                            "last_snapshot": self.slaves[server].label
                            if server in self.slaves else None,
                            "lag_seconds": self.lag(server, now),
                            "error": self.slaves[server].error
                            if server in self.slaves else None} for server in servers]}


@dataclass
class TreeStatus:
    """The members by relative name, and what the master's listings noticed."""

    members: dict[str, TreeMember] = field(default_factory=dict)
    #: Members that vanished from the master (destroyed, or renamed out of the tree):
    #: relative name -> when noticed. Their copies on the slaves are left alone.
    gone: dict[str, float] = field(default_factory=dict)
    #: include/exclude patterns that matched nothing at the last listing.
    unmatched: tuple[str, ...] = ()
    #: Members renamed on the master since the last listing: new relative -> old.
    renamed: dict[str, str] = field(default_factory=dict)
    #: The label of the newest cycle snapshot of the tree.
    newest_label: str | None = None
    #: Slaves a cycle found still syncing (an older snapshot): each gets a sync of the
    #: newest as soon as its current one ends, not an interval later.
    skipped: set[str] = field(default_factory=set)
    #: The cycle labels the master's members have (label -> creation), known from a full
    #: listing and kept up to date by the cycles since (``tree_labels``); None until a
    #: cycle has listed the tree whole, as the first after a start does.
    master_labels: dict[str, float] | None = None
    #: The same for each slave's copy, from the last full sync to it.
    slave_labels: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Slaves whose target root held, at the last listing, snapshots of the relationship
    #: on datasets that are no member's copy (members gone before this daemon started):
    #: retention there goes member by member, never recursively.
    slave_foreign: set[str] = field(default_factory=set)
    #: Slaves whose per-member state a full sync established in this daemon's life: the
    #: syncs to them that follow stream each member on from its known base without
    #: listing either tree (``tree_steady``). Something unexpected takes a slave out.
    known: set[str] = field(default_factory=set)
    #: Something unexpected happened on the master (a retention destroy refused): the
    #: next cycle lists the tree whole again.
    relist: bool = False
    #: This cycle's fan-out groups (``relationships.tree_fanout``): (slave, member) ->
    #: group id.
    fanout: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Per object store: each member's backups there (``tree_backup_facts``).
    backups: dict[str, StoreBackups] = field(default_factory=dict)

    def failing(self, servers: Iterable[str]) -> list[dict[str, Any]]:
        out = []
        for m in self.members.values():
            for server in servers:
                s = m.slaves.get(server)
                if s is not None and s.error is not None and not s.sending:
                    out.append({"member": m.name, "server": server, "error": s.error})
        return out

    def summary(self, servers: list[str], now: float) -> dict[str, Any]:
        per_slave = {}
        for server in servers:
            counts = dict.fromkeys(MemberState, 0)
            worst = 0.0
            for m in self.members.values():
                counts[m.state(server)] += 1
                lag = m.lag(server, now)
                if lag is None and m.state(server) != MemberState.IN_SYNC:
                    lag = float("inf")
                worst = max(worst, lag or 0.0)
            per_slave[server] = {
                **{state.value.replace("-", "_"): n for state, n in counts.items()},
                "worst_lag_seconds": None if worst == float("inf") else worst}
        failing = self.failing(servers)
        return {"members": len(self.members), "slaves": per_slave,
                "failing": failing[:20], "failing_total": len(failing),
                "gone": sorted(self.gone), "renamed": dict(self.renamed),
                "unmatched_patterns": list(self.unmatched)}

    def page(self, servers: list[str], now: float, *, state: MemberState | None = None,
             limit: int = 100, offset: int = 0,
             stores: Iterable[str] = ()) -> tuple[list[dict[str, Any]], int]:
        """Members sorted by name, those with ``state`` on some slave if given; with
        each of ``stores``' backup state of the member."""
        chosen = [m for _, m in sorted(self.members.items())
                  if state is None or any(m.state(s) == state for s in servers)]
        known = [(name, self.backups.get(name, StoreBackups())) for name in stores]
        return [{**m.to_json(servers, now), **({"backups": [
            {"store": name, "state": facts.state(m),
             "last_snapshot": f.label if (f := facts.facts(m)) else None,
             "error": f.error if f else None} for name, facts in known]} if known else {})}
            for m in chosen[offset:offset + limit]], len(chosen)
