"""The point an unplanned failover of a tree promotes its copies at.

Every cycle snapshots all members of a tree at one instant under one label, so one label
on every member is one consistent state of the whole tree. When the master is lost
mid-sync, the slave's copies disagree: some received the last cycle's snapshot, some
only the one before. Promoting each copy at its own newest snapshot would give a tree
that never existed; rolling the ahead ones back to the older shared label would destroy
snapshots on the only copy left. Neither is for cerssd to choose: it promotes at once
only where every copy agrees, and otherwise says what each choice means and waits for
the operator to name the label (``at``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Members named in a message before "and N more".
SHOWN = 10


class TreeDisagrees(Exception):
    """The copies do not share their newest label: the operator must choose one."""


@dataclass(frozen=True)
class TreePoint:
    """Where each member's copy stands against the label promoted at."""

    label: str
    #: Copies whose newest snapshot is ``label``: promoted as they are.
    at: tuple[str, ...]
    #: Copies with snapshots after ``label``: rolled back to it, then promoted.
    ahead: tuple[str, ...]
    #: Copies without ``label``: left read-only, not promoted.
    lacking: tuple[str, ...]


def consistent_point(labels: Mapping[str, Sequence[str]], chosen: str | None) -> TreePoint:
    """``labels``: per member (relative name), the relationship's snapshot labels its copy
    has, oldest first (members without a copy or without any label are absent or empty).
    Without ``chosen``, the newest label every copy has as its newest, or
    ``TreeDisagrees`` saying what the choices are."""
    held = {rel: list(ls) for rel, ls in labels.items() if ls}
    if not held:
        raise TreeDisagrees("no member's copy has a snapshot of this relationship: "
                            "there is nothing to promote")
    if chosen is None:
        newest = {ls[-1] for ls in held.values()}
        if len(newest) == 1:
            chosen = newest.pop()
        else:
            raise TreeDisagrees(_choices(held))
    if not any(chosen in ls for ls in held.values()):
        raise TreeDisagrees(f"no member's copy has the snapshot {chosen}")
    at = tuple(rel for rel, ls in held.items() if ls[-1] == chosen)
    ahead = tuple(rel for rel, ls in held.items() if chosen in ls and ls[-1] != chosen)
    lacking = tuple(sorted({*labels} - {*at, *ahead}))
    return TreePoint(chosen, at, ahead, lacking)


def _choices(held: Mapping[str, list[str]]) -> str:
    by_newest: dict[str, list[str]] = {}
    for rel, ls in held.items():
        by_newest.setdefault(ls[-1], []).append(rel or ".")
    common = set.intersection(*(set(ls) for ls in held.values()))
    shared = max(common, key=lambda lb: max(ls.index(lb) for ls in held.values()),
                 default=None)
    parts = [f"{len(rels)} at {label} ({shown(rels)})" for label, rels in
             sorted(by_newest.items(), key=lambda kv: -len(kv[1]))]
    advice = (f"at={shared} rolls the copies ahead back to it: the whole tree as of one "
              "instant, later snapshots on this slave destroyed"
              if shared else "no label is on every copy")
    return ("the slave's copies do not agree on their newest snapshot: " + "; ".join(parts)
            + f". Choose the point with at=LABEL: {advice}; a newer label promotes the "
            "copies that have it and leaves the others read-only")


def shown(rels: Sequence[str]) -> str:
    shown = ", ".join(sorted(rels)[:SHOWN])
    return shown + (f" and {len(rels) - SHOWN} more" if len(rels) > SHOWN else "")
