"""A snapshot policy's prune plan (its dry run) as logic over a fake backend (fast tier).

The plan must be what the policy's run prunes: the same decision function, over the
same listing. These check a volume and a tree (every member's snapshot of a doomed label
listed, snapshots that are not the policy's kept with their reason), and that a
relationship's unknown base blocks the plan as it blocks the run's prune.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from cerssd.policies.guard import Protection
from cerssd.policies.prune import plan, tree_decision, tree_labels, volume_decision
from cerssd.policies.spec import parse_policy
from cerssd.storage.values import Snapshot

from .fakes.storage import FakeBackend

H = 3600
NOW = 1_800_000_000 - (1_800_000_000 % 86400)


def stamp(age: float, prefix: str = "cerssd-p-") -> str:
    return prefix + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(NOW - age))


def put(backend: FakeBackend, volume: str, label: str, age: float) -> Snapshot:
    snap = Snapshot(name=f"{volume}@{label}", volume=volume, label=label,
                    guid=f"{volume}-{label}", creation=int(NOW - age), used=0, referenced=0,
                    userrefs=0)
    backend.vols[volume].snapshots.append(snap)
    return snap


def policy(**extra: Any) -> Any:
    return parse_policy("p", {"volume": "tank/v", "interval": "1h",
                              "retention": ["1d:1h"], **extra}, servers={"local"})


def test_a_volumes_plan_is_its_runs_decision_with_what_stays(tmp_path: Path) -> None:
    backend = FakeBackend("local", tmp_path)
    backend.add_volume("tank/v")
    spec = policy(keep_min=3)
    put(backend, "tank/v", "manual", 30 * H)
    # 1d:1h: the 40 h old one is beyond the grid, the 2nd of one hour thinned, the 3rd
    # (the newest) would be thinned too; keep_min 3 spares the 2nd
    made = [put(backend, "tank/v", stamp(age), age)
            for age in (40 * H, 5 * H + 1800, 5 * H + 1200, 5 * H + 600)]
    p = asyncio.run(plan(spec, backend, Protection(), NOW))
    run = volume_decision(spec, backend.vols["tank/v"].snapshots, Protection(), NOW)
    assert p.target.verdicts == tuple(run.doomed)
    assert [v.snapshot for v in run.doomed] == [made[0]]
    doc = p.to_json()
    assert doc["place"] == "master" and doc["name"] == "local" and doc["blocked"] is None
    assert doc["kept"] == 3 and doc["keep_min"] == 3 and doc["retention"] == ["1d:1h"]
    assert [(k["snapshot"], k["rule"]) for k in doc["keep"]] == [
        ("tank/v@manual", "not-ours"), (made[2].name, "keep-min"), (made[3].name, "newest")]
    assert all(k["reason"] for k in doc["keep"])


def test_a_trees_plan_lists_every_members_snapshot_of_a_doomed_label(
        tmp_path: Path) -> None:
    backend = FakeBackend("local", tmp_path)
    for name in ("tank/t", "tank/t/a", "tank/t/b"):
        backend.add_volume(name)
    spec = policy(volume="tank/t", recursive=True)
    old, new = stamp(40 * H), stamp(H)
    for member in ("tank/t", "tank/t/a", "tank/t/b"):
        put(backend, member, old, 40 * H)
        put(backend, member, new, H)
    put(backend, "tank/t/a", "cerssd-p-keep", 50 * H)  # the prefix, but not a time
    p = asyncio.run(plan(spec, backend, Protection(), NOW))
    doc = p.to_json()
    assert [v["snapshot"] for v in doc["destroy"]] == [f"{m}@{old}" for m in
                                                       ("tank/t", "tank/t/a", "tank/t/b")]
    assert {v["rule"] for v in doc["destroy"]} == {"beyond-grid"} and doc["kept"] == 3
    assert [(k["snapshot"], k["rule"]) for k in doc["keep"]] == [
        ("tank/t/a@cerssd-p-keep", "not-ours")]
    listing = asyncio.run(backend.tree("tank/t"))
    labels = tree_labels(listing, ["tank/t", "tank/t/a", "tank/t/b"], spec.prefix)
    assert [v.snapshot.label for v in tree_decision(spec, labels, Protection(), NOW).doomed] \
        == [old]
    # a relationship's base spared by label, as the run spares it
    spared = asyncio.run(plan(spec, backend, Protection(labels=frozenset({old})), NOW))
    assert spared.target.verdicts == ()
    assert {(k["snapshot"], k["rule"]) for k in spared.to_json()["keep"]} == {
        *((f"{m}@{old}", "base") for m in ("tank/t", "tank/t/a", "tank/t/b")),
        ("tank/t/a@cerssd-p-keep", "not-ours")}


def test_nothing_is_planned_while_a_relationship_holds_the_prune_off(tmp_path: Path) -> None:
    backend = FakeBackend("local", tmp_path)
    backend.add_volume("tank/v")
    put(backend, "tank/v", stamp(40 * H), 40 * H)
    put(backend, "tank/v", stamp(H), H)
    held = Protection(hold_off="relationship web is streaming from local")
    p = asyncio.run(plan(policy(), backend, held, NOW))
    assert p.target.blocked == held.hold_off and p.to_json()["destroy"] == []
    busy = asyncio.run(plan(policy(), backend, Protection(), NOW, busy="a prune is under way"))
    assert busy.target.blocked == "a prune is under way" and busy.target.verdicts == ()
