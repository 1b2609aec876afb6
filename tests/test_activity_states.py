"""Every state transition of the activity contract, legal and illegal."""

from __future__ import annotations

import itertools

import pytest

from cerssd.activity import (
    TERMINAL,
    TRANSITIONS,
    ActivityRecord,
    IllegalTransition,
    Progress,
    State,
    Status,
    check_transition,
)

LEGAL = {
    (State.PENDING, State.RUNNING), (State.PENDING, State.CANCELLED),
    (State.PENDING, State.FAILED),
    (State.RUNNING, State.SUSPENDED), (State.RUNNING, State.RETRYING),
    (State.RUNNING, State.CANCELLING), (State.RUNNING, State.SUCCEEDED),
    (State.RUNNING, State.FAILED),
    (State.SUSPENDED, State.RUNNING), (State.SUSPENDED, State.CANCELLING),
    (State.SUSPENDED, State.FAILED),
    (State.RETRYING, State.RUNNING), (State.RETRYING, State.SUSPENDED),
    (State.RETRYING, State.CANCELLING), (State.RETRYING, State.FAILED),
    (State.CANCELLING, State.CANCELLED), (State.CANCELLING, State.FAILED),
}


@pytest.mark.parametrize(("current", "wanted"), list(itertools.product(State, State)))
def test_transition_matrix(current: State, wanted: State) -> None:
    if (current, wanted) in LEGAL:
        check_transition("a1", current, wanted)
    else:
        with pytest.raises(IllegalTransition) as info:
            check_transition("a1", current, wanted)
        assert f"is {current}; it cannot become {wanted}" in str(info.value)


def test_table_matches_the_documented_contract() -> None:
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == LEGAL


def test_terminal_states_are_final() -> None:
    assert {s for s in State if s.terminal} == TERMINAL
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset()


def test_progress_never_reports_n_greater_than_m() -> None:
    p = Progress(0, 100, estimated=False).advanced(150)
    assert (p.done, p.total, p.estimated) == (150, 150, True)
    assert Progress(0, 0).advanced(5).total == 0  # open-ended stays 0 of 0 semantics


def test_record_json_round_trip() -> None:
    record = ActivityRecord(id="ab", kind="replicate", volume="p/v", source="local",
                            target="t", created_at=1.0, state=State.FAILED,
                            progress=Progress(3, 10, estimated=True),
                            status=Status(1, "boom"), params={"x": 1})
    data = record.to_json()
    assert data["progress"]["text"] == "3 of 10"
    assert ActivityRecord.from_json(data) == record
