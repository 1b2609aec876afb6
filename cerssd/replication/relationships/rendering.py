"""Relationships as the API and the metrics show them: JSON documents, derived states.

Read-only: nothing here changes a relationship. Each slave's state is derived from its
facts, its live transfer and its link at the moment of asking (``status.slave_state``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

from ...activity import ActivityRecord, LinkCondition, State
from ...links import Links, LinkState
from ..logic.roles import ReplicationStatus, replication_status
from ..logic.slave_status import (
    RelationshipState,
    SlaveState,
    SlaveStatus,
    slave_json,
    slave_state,
)
from ..logic.tree_backup_facts import StoreBackups
from ..logic.tree_status import MemberState, TreeStatus
from .registry import TREE_BACKUP, TREE_SYNC, RelationshipRegistry
from .runtime import Runtime


class RelationshipView:
    def __init__(self, registry: RelationshipRegistry, links: Links) -> None:
        self.registry = registry
        #: Each server's and object store's link, by name (the health shown with it).
        self.links = links
        #: What the leader's automatic-failover watch saw of a relationship (None: not
        #: watched here).
        self.auto_status: Callable[[str], dict[str, Any] | None] = lambda name: None

    def all(self) -> Iterable[Runtime]:
        return self.registry.all()

    def to_json(self, rt: Runtime) -> dict[str, Any]:
        activity = self.registry.activity_of(rt)
        record = activity.snapshot() if activity else None
        state = _state(record)
        servers = [s.server for s in rt.spec.slaves]
        tree = self.tree_json(rt, servers) if rt.tree is not None else None
        if state == RelationshipState.RUNNING and tree and (tree["failing_total"] or any(
                b["failing_total"] for b in tree["stores"].values())):
            state = RelationshipState.DEGRADED
        return {
            **rt.spec.to_json(),
            "state": state, **({"tree": tree} if tree is not None else {}),
            "replication_status": self.replication_status(rt),
            "active_server": rt.spec.master, "home_master": rt.home,
            "failover": rt.failover.to_json(),
            "activity": record.id if record else None,
            "link": asdict(record.link) if record and record.link else None,
            "cycles": rt.cycles, "last_cycle_at": rt.last_cycle_at,
            "next_cycle_at": rt.next_cycle_at if record else None,
            "cycle_waiting_since": rt.cycle_waiting_since if record else None,
            "newest_snapshot": rt.newest[0] if rt.newest else None,
            "last_error": rt.last_error, "slaves": self.slaves_json(rt),
            "backups": self.stores_json(rt),
            "last_hooks": rt.last_hooks, "skipped_cycles": rt.skipped_cycles,
            **({"auto_failover": {**rt.spec.auto_failover.to_json(),
                                  "watch": self.auto_status(rt.name)}}
               if rt.spec.auto_failover is not None else {}),
        }

    def members_page(self, rt: Runtime, *, state: MemberState | None, limit: int,
                     offset: int) -> dict[str, Any]:
        """One page of a tree's members with each slave's state (empty for one volume)."""
        if rt.tree is None:
            return {"relationship": rt.name, "items": [], "total": 0}
        items, total = rt.tree.page([s.server for s in rt.spec.slaves], time.time(),
                                    state=state, limit=limit, offset=offset,
                                    stores=rt.spec.stores)
        return {"relationship": rt.name, "items": items, "total": total}

    def slaves_json(self, rt: Runtime) -> list[dict[str, Any]]:
        """Each slave's facts with its derived state, live transfer and link."""
        now = time.time()
        transfers = self.registry.transfers(rt.name)
        newest = rt.newest[1] if rt.newest else None
        slaves = []
        syncs = {a.record.params.get("destination"): a.snapshot()
                 for a in self.registry.engine.live(TREE_SYNC, rt.name)}
        for server, status in rt.slaves.items():
            transfer = transfers[server].snapshot() if server in transfers else None
            link = self.links.get(server)
            if rt.tree is not None:
                slaves.append(_tree_slave(rt.tree, status, now, syncs.get(server), link))
                continue
            state = slave_state(status, newest_guid=newest, transfer=transfer, link=link)
            slaves.append(slave_json(status, now=now, state=state, transfer=transfer,
                                     link=link))
        return slaves

    def tree_json(self, rt: Runtime, servers: list[str]) -> dict[str, Any]:
        """A tree's summary; per object store, its members by backup state."""
        assert rt.tree is not None
        now = time.time()
        members = rt.tree.members.values()
        return {**rt.tree.summary(servers, now),
                "stores": {store: rt.tree.backups.get(store, StoreBackups()).summary(
                    members, now) for store in rt.spec.stores}}

    def stores_json(self, rt: Runtime) -> list[dict[str, Any]]:
        """Each object store's newest backup (by guid) and its live backup, if any (for
        a tree: its ``tree-backup``; the members' backups are in the tree summary)."""
        live = self.registry.backups(rt.name) if rt.tree is None else {
            a.record.params.get("store"): a for a in self.registry.engine.live(
                TREE_BACKUP, rt.name)}
        return [{"store": store, "last_backup_guid": base,
                 "backup": live[store].snapshot().to_json() if store in live else None,
                 "link": link.to_json() if (link := self.links.get(store)) else None}
                for store, base in rt.store_bases.items()]

    def replication_status(self, rt: Runtime) -> ReplicationStatus:
        activity = self.registry.activity_of(rt)
        replicating = activity is not None and activity.record.state != State.SUSPENDED
        return replication_status(rt.spec, rt.home, rt.failover, replicating=replicating)


def _tree_slave(tree: TreeStatus, status: SlaveStatus, now: float,
                sync: ActivityRecord | None, link: LinkState | None) -> dict[str, Any]:
    """A tree's slave as a whole: in sync when every member is, syncing while its sync
    runs, error when a member fails, lost when its link is; lag is the worst member's."""
    server = status.server
    states = [m.state(server) for m in tree.members.values()]
    lags = [m.lag(server, now) for m in tree.members.values()]
    worst = None if not lags or None in lags else max(x for x in lags if x is not None)
    if link is not None and link.state != LinkCondition.UP:
        state = SlaveState.LOST
    elif MemberState.FAILING in states:
        state = SlaveState.ERROR
    elif sync is not None:
        state = SlaveState.SYNCING
    elif states and all(x == MemberState.IN_SYNC for x in states):
        state = SlaveState.IN_SYNC
    else:
        state = SlaveState.BEHIND
    doc = slave_json(status, now=now, state=state, transfer=sync, link=link)
    failing = [f"{m.name}: {m.slaves[server].error}" for m in tree.members.values()
               if m.state(server) == MemberState.FAILING]
    return {**doc, "lag_seconds": None if worst is None else round(worst, 1),
            "error": f"{len(failing)} members failing, first {failing[0]}" if failing
            else None}


def _state(record: ActivityRecord | None) -> RelationshipState:
    if record is None:
        return RelationshipState.STOPPED
    by_activity = {State.SUSPENDED: RelationshipState.PAUSED,
                   State.RETRYING: RelationshipState.RETRYING,
                   State.CANCELLING: RelationshipState.STOPPING}
    return by_activity.get(record.state, RelationshipState.RUNNING)
