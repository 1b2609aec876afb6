"""A relationship's live state on its own (pure): remembered and restored, new roles
taken, the bases the master must keep, and the refusal while a failover runs."""

from __future__ import annotations

import json

import pytest

from cerssd.replication.logic.roles import Fenced, RolesInvalid, promoted
from cerssd.replication.logic.spec import RelationshipSpec, parse_relationship
from cerssd.replication.relationships.runtime import (
    RelationshipError,
    check_no_failover,
    new_runtime,
    restore_runtime,
)
from cerssd.replication.relationships.upkeep import protected_bases

SERVERS = ("local", "s1", "s2")


def spec() -> RelationshipSpec:
    return parse_relationship("web", {"volume": "tank/web", "slaves": ["s1", "s2"],
                                      "interval": "15m"},
                              servers=SERVERS)


def test_facts_survive_a_restart_through_the_journal_form() -> None:
    rt = new_runtime(spec())
    rt.cycles, rt.last_cycle_at, rt.newest = 3, 1000.0, ("tank/web@a", "g1")
    rt.slaves["s1"].last_snapshot_guid = "g1"
    rt.slaves["s1"].last_cycle_bytes = 42
    stored = json.loads(json.dumps(rt.remembered()))  # as the journal keeps it
    back = restore_runtime(spec(), stored, SERVERS)
    assert (back.cycles, back.last_cycle_at, back.newest) == (3, 1000.0, ("tank/web@a", "g1"))
    assert back.slaves["s1"].last_snapshot_guid == "g1"
    assert back.slaves["s1"].last_cycle_bytes == 42
    assert back.slaves["s2"].last_snapshot_guid is None
    assert back.spec.master == back.home == "local"


def test_roles_a_failover_left_are_restored_and_the_home_master_kept() -> None:
    rt = new_runtime(spec())
    rt.failover.last_failover_at = 2000.0
    rt.take_roles(promoted(rt.spec, "s1", keep_old_master=True))
    back = restore_runtime(spec(), json.loads(json.dumps(rt.remembered())), SERVERS)
    assert back.spec.master == "s1" and back.home == "local"
    assert sorted(back.slaves) == ["local", "s2"]
    with pytest.raises(RolesInvalid):  # a server the roles name is no longer configured
        restore_runtime(spec(), rt.remembered(), ("local", "s2"))


def test_new_roles_keep_the_facts_of_a_slave_that_stays_in_place() -> None:
    rt = new_runtime(spec())
    rt.slaves["s2"].last_snapshot_guid = "g2"
    rt.slaves["s1"].last_snapshot_guid = "g1"
    rt.newest, rt.group_ids = ("tank/web@a", "g2"), ["grp"]
    kept = rt.slaves["s2"]
    rt.take_roles(promoted(rt.spec, "s1", keep_old_master=False))
    assert rt.spec.master == "s1" and sorted(rt.slaves) == ["s2"]
    assert rt.slaves["s2"] is kept and kept.last_snapshot_guid == "g2"
    assert rt.newest is None and rt.group_ids == []  # the new master's are not known yet


def test_the_master_keeps_every_base_and_nothing_is_pruned_while_one_is_unknown() -> None:
    rt = new_runtime(spec())
    assert protected_bases(rt) is None
    rt.slaves["s1"].last_snapshot_guid = "g1"
    rt.slaves["s2"].last_snapshot_guid = "g2"
    assert protected_bases(rt) == {"g1", "g2"}


def test_verbs_are_refused_while_a_failover_runs() -> None:
    rt = new_runtime(spec())
    check_no_failover(rt)  # nothing runs: allowed
    rt.failover.status, rt.failover.activity = "failing-over", "a1"
    with pytest.raises(RelationshipError, match=r"failing-over .*a1"):
        check_no_failover(rt)
    rt.failover.status = None
    rt.failover.fenced["local"] = Fenced("local", "tank/web", since=1.0)
    check_no_failover(rt)  # a fenced old master alone does not block the verbs


def test_a_reload_moving_a_tree_slave_forgets_what_it_knew_of_that_slave() -> None:
    """A tree's steady syncs stream from bases known per slave: a slave whose target
    moved is listed again at its next sync, the others keep streaming."""
    from cerssd.replication.logic.tree_status import MemberSlave, TreeMember

    def tree_spec(s2_target: str) -> RelationshipSpec:
        return parse_relationship("t", {
            "volume": "tank/t", "recursive": True, "interval": "15m",
            "slaves": ["s1", {"server": "s2", "target_volume": s2_target}]}, servers=SERVERS)

    rt = new_runtime(tree_spec("tank/t"))
    assert rt.tree is not None
    rt.tree.members["a"] = TreeMember("a", "tank/t/a", "1", slaves={
        "s1": MemberSlave("2", "L"), "s2": MemberSlave("2", "L")})
    rt.tree.known |= {"s1", "s2"}
    rt.tree.slave_labels = {"s1": {"L": 1.0}, "s2": {"L": 1.0}}
    rt.redefine(tree_spec("tank/elsewhere"))
    assert rt.tree.known == {"s1"} and set(rt.tree.slave_labels) == {"s1"}
    assert set(rt.tree.members["a"].slaves) == {"s1"}
