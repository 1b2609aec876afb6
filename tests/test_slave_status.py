"""A slave's state and lag, derived from its facts, its transfer and its link (pure)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cerssd.activity import ActivityRecord, State
from cerssd.links import LinkState
from cerssd.replication.logic.slave_status import SlaveStatus, slave_json, slave_state

TRANSFER = ActivityRecord(id="t1", kind="replicate", volume="tank/v", source="local",
                          target="s1:tank/v", created_at=0.0)


def facts(**kw: object) -> SlaveStatus:
    status = SlaveStatus("s1", "tank/v", last_snapshot="tank/v@x", last_snapshot_guid="g1",
                         last_snapshot_created=1000.0, last_success_at=1001.0)
    for key, value in kw.items():
        setattr(status, key, value)
    return status


@pytest.mark.parametrize(("status", "transfer", "link", "expected"), [
    (facts(), None, None, "in-sync"),
    (facts(last_snapshot_guid="g0"), None, None, "behind"),
    (facts(last_snapshot_guid=None), None, None, "behind"),
    (facts(), replace(TRANSFER, state=State.RUNNING), None, "syncing"),
    (facts(), replace(TRANSFER, state=State.SUSPENDED), None, "syncing"),
    (facts(), replace(TRANSFER, state=State.RETRYING), None, "lost"),
    (facts(), None, LinkState("s1", state="lost"), "lost"),
    (facts(), None, LinkState("s1", state="retrying"), "lost"),
    (facts(error="boom"), None, LinkState("s1"), "error"),
    (facts(error="boom"), replace(TRANSFER, state=State.RUNNING), None, "syncing"),
    (facts(), replace(TRANSFER, state=State.SUCCEEDED), None, "in-sync"),
])
def test_state(status: SlaveStatus, transfer: ActivityRecord | None, link: LinkState | None,
               expected: str) -> None:
    assert slave_state(status, newest_guid="g1", transfer=transfer, link=link) == expected


def test_lag_is_the_age_of_the_newest_snapshot_the_slave_has() -> None:
    status = facts()
    assert status.lag(1060.0) == 60.0
    assert facts(last_snapshot_created=None).lag(1060.0) is None
    doc = slave_json(status, now=1090.0, state="in-sync", transfer=None, link=None)
    assert doc["lag_seconds"] == 90.0 and doc["link"]["state"] == "up"
    assert doc["activity"] is None and doc["last_snapshot"] == "tank/v@x"


def test_facts_survive_a_restart_round_trip() -> None:
    status = facts(last_cycle_bytes=123, error="x")
    again = SlaveStatus("s1", "tank/v")
    again.restore({**status.remembered(), "unknown": 1})
    assert again == status
