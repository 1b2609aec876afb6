"""States are enumerations in the code and the same strings on the wire, and the OpenAPI
document lists the values a state field can take."""

from __future__ import annotations

import enum
import json
from typing import Any

import msgspec
import pytest

from cerssd.activity import LinkCondition, LinkHealth, State
from cerssd.api.app import ROUTES
from cerssd.api.openapi import openapi_document
from cerssd.links import Links
from cerssd.replication.logic.plan import PlanMode
from cerssd.replication.logic.roles import (
    STATUSES,
    FailoverState,
    FailoverStatus,
    ReplicationStatus,
)
from cerssd.replication.logic.slave_status import STATES, RelationshipState, SlaveState
from cerssd.replication.logic.tree_status import MemberState
from cerssd.storage.registry import BACKENDS
from cerssd.volume_states import BUSY_STATES, VolumeState

#: The strings each state had before it was an enumeration: the API, the journal, the
#: metrics' labels and the operator's scripts read these.
WIRE: list[tuple[type[enum.StrEnum], list[str]]] = [
    (LinkCondition, ["up", "lost", "retrying"]),
    (PlanMode, ["full", "incremental", "up-to-date", "resume"]),
    (ReplicationStatus, ["enabled", "disabled", "failing-over", "failed-over",
                         "failover-error", "failing-back"]),
    (FailoverStatus, ["failing-over", "failing-back", "failover-error"]),
    (SlaveState, ["in-sync", "syncing", "behind", "lost", "error"]),
    (RelationshipState, ["running", "degraded", "paused", "retrying", "stopping", "stopped"]),
    (MemberState, ["in-sync", "behind", "sending", "failing"]),
    (VolumeState, ["available", "in-use", "backing-up", "replicating", "restoring",
                   "failing-over", "pruning", "rejoining", "creating", "reverting",
                   "extending", "deleting"]),
]


@pytest.mark.parametrize(("kind", "values"), WIRE, ids=[k.__name__ for k, _ in WIRE])
def test_members_are_their_strings_everywhere(kind: type[enum.StrEnum],
                                              values: list[str]) -> None:
    members = list(kind)
    assert members == values
    assert json.dumps(members) == json.dumps(values)  # the API's and the journal's JSON
    assert msgspec.json.encode(members) == msgspec.json.encode(values)
    assert [f"{m}" for m in members] == [str(m) for m in members] == values  # messages


def test_metric_label_lists_keep_their_order() -> None:
    assert list(STATES) == ["in-sync", "syncing", "behind", "lost", "error"]
    assert list(STATUSES) == ["enabled", "disabled", "failing-over", "failed-over",
                              "failover-error", "failing-back"]
    assert VolumeState.AVAILABLE not in BUSY_STATES and VolumeState.IN_USE not in BUSY_STATES


def test_remembered_failover_status_comes_back_as_the_enum() -> None:
    state = FailoverState(status=FailoverStatus.FAILING_BACK, activity="a1")
    again = FailoverState.restore(json.loads(json.dumps(state.remembered())))
    assert again.status is FailoverStatus.FAILING_BACK
    assert FailoverState.restore({}).status is None


def test_link_states_are_enum_members_through_a_loss_and_the_journal() -> None:
    links = Links(["far"])
    lost = links.lost("far", "reset")
    assert lost is not None and lost.state is LinkCondition.LOST
    retrying = links.retrying("far", 1, 0.0)
    assert retrying is not None and retrying.state is LinkCondition.RETRYING
    health = retrying.health()
    assert json.loads(json.dumps(health.__dict__))["state"] == "retrying"
    up = links.up("far")
    assert up is not None and up.state is LinkCondition.UP and LinkHealth("x").state == "up"


def _schema(doc: dict[str, Any], model: str, field: str) -> dict[str, Any]:
    schema: dict[str, Any] = doc["components"]["schemas"][model]["properties"][field]
    ref = schema.get("$ref")
    if ref is not None:
        return {**doc["components"]["schemas"][ref.rsplit("/", 1)[1]], **schema}
    return schema


@pytest.mark.parametrize(("model", "field", "values"), [
    ("Volume", "state", list(VolumeState)),
    ("RelationshipSlave", "state", list(SlaveState)),
    ("RelationshipLink", "state", list(LinkCondition)),
    ("LinkState", "state", list(LinkCondition)),
    ("Relationship", "replication_status", list(ReplicationStatus)),
    ("Relationship", "state", list(RelationshipState)),
    ("Relationship", "origin", ["config", "api"]),
    ("ReplicationAccepted", "plan", list(PlanMode)),
    ("BackupSummary", "kind", ["full", "incremental"]),
    ("Server", "kind", ["local", "ssh"]),
    ("Server", "backend", list(BACKENDS)),  # registry.BackendName follows BACKENDS
    ("Policy", "state", [*State, "stopped"]),  # models.PolicyState follows State
    ("Store", "compression", ["none", "zstd", "lz4"]),
])
def test_openapi_lists_the_allowed_values(model: str, field: str, values: list[str]) -> None:
    schema = _schema(openapi_document(ROUTES), model, field)
    assert sorted(schema["enum"]) == sorted(values), schema
