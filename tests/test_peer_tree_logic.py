"""The rules of a peer master's tree batches that need no daemon (fast tier).

The integration test (``test_peer_trees.py``) runs them against real peers; these pin
what is hard to see there: the split of ``max_parallel`` between a sync's own transfers
and its batch, a batch's request surviving the journal, and a restarted managing
daemon's clean-up sparing the uploads of its live delegated tree backups.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from cerssd.activity import DataRoute
from cerssd.replication.flows.backup import delegated_uploads
from cerssd.replication.flows.member_backups import MemberBackupItem, base_snapshot
from cerssd.replication.flows.member_streams import MemberStream, MemberStreamsRequest
from cerssd.replication.relationships.tree_sync import split_slots


@pytest.mark.parametrize(("width", "own", "expected"), [
    (4, 0, (0, 4)),    # no own transfer: the batch has every slot
    (4, 1, (1, 3)),
    (4, 9, (2, 2)),    # own transfers take at most half
    (5, 9, (2, 3)),
    (1, 3, (1, 0)),    # one slot: the batch waits for the own transfers
    (64, 1, (1, 63)),
])
def test_own_transfers_and_the_batch_share_max_parallel(
        width: int, own: int, expected: tuple[int, int]) -> None:
    mine, batch = split_slots(width, own)
    assert (mine, batch) == expected
    assert mine + batch <= width and mine <= own


def test_a_batch_request_round_trips_through_its_params() -> None:
    req = MemberStreamsRequest(
        source="nodeA", destination="nodeB", root="tank/cinder",
        items=(MemberStream("tank/cinder/a@c2", "c1", "backup/cinder/a"),
               MemberStream("tank/cinder@c2", "c1", "backup/cinder")),
        max_parallel=3, unmounted=True, send_properties=True,
        receive_exclude=("mountpoint",), receive_set=(("readonly", "on"),),
        bandwidth_limit=1000.0)
    journaled = json.loads(json.dumps(req.params()))  # as the journal keeps it
    assert MemberStreamsRequest.from_params(journaled) == req


def test_a_backup_items_base_is_named_with_its_guid() -> None:
    item = MemberBackupItem("tank/cinder/a@c2", "tank/cinder/a@c1", "123", remembered=True)
    assert MemberBackupItem(**json.loads(json.dumps(item.to_json()))) == item
    base = base_snapshot("tank/cinder/a@c1", "123")
    assert (base.volume, base.label, base.guid) == ("tank/cinder/a", "c1", "123")


def _live(kind: str, route: DataRoute, params: dict[str, Any]) -> Any:
    return SimpleNamespace(record=SimpleNamespace(kind=kind, route=route, params=params))


def test_a_restart_spares_the_uploads_of_live_delegated_tree_backups() -> None:
    live = [
        _live("backup", DataRoute.DELEGATED, {"snapshot": "tank/v@s1"}),
        _live("tree-backup", DataRoute.DELEGATED,
              {"peer_uploads": ["tank/cinder/a/c2.", "tank/cinder/c2."]}),
        _live("tree-backup", DataRoute.LOCAL, {"uploads": {"k": "u"}}),  # our own
        _live("backup", DataRoute.LOCAL, {"snapshot": "tank/w@s1"}),
    ]
    assert sorted(delegated_uploads(live)) == ["tank/cinder/a/c2.", "tank/cinder/c2.",
                                               "tank/v/s1."]
