"""One run of a snapshot policy: the snapshot (through the hooks), then its grid's pruning.

A volume: one listing of its snapshots, one ``zfs snapshot``, then a destroy per snapshot
the grid drops. A tree: one listing of the datasets (with every snapshot only on the first
run, or after a prune was refused), one atomic snapshot of every member
(``snapshot_tree``: one command on OpenZFS), then the grid applied to the policy's labels
and each label it drops destroyed from every member at once (``tree_steady.drop_labels``:
one recursive destroy where the selection is the whole subtree).

Only snapshots whose label starts with the policy's prefix are ever pruned; the newest is
always kept; a snapshot ZFS refuses to destroy (held) is kept and named in the result,
never forced; and nothing is pruned while a relationship replicating the policy streams
or does not know its bases yet (``guard``). The label is remembered in the activity before
the snapshot is taken, so a daemon killed in between uses it rather than making another.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from ..engine import ActivityContext
from ..hooks import HookRun, SnapshotSkipped, around_snapshot
from ..replication.logic.members import select
from ..replication.relationships.tree import cycle_label
from ..replication.relationships.tree_steady import drop_labels
from ..storage.errors import Busy, NotFound
from ..storage.interface import StorageBackend
from ..storage.values import Snapshot
from .guard import Protection
from .prune import listed, tree_decision, tree_labels, volume_decision
from .runtime import PolicyRuntime, RunOutcome, RunResult

#: Gives the protection when the run is ready to prune (asked late: a relationship's
#: stream may have ended meanwhile).
Guard = Callable[[], Protection]


async def run_volume(ctx: ActivityContext, rt: PolicyRuntime, backend: StorageBackend,
                     guard: Guard) -> RunResult:
    spec = rt.spec
    started = time.time()
    existing = await backend.snapshots(spec.volume)
    label = _label(ctx, rt, started, {s.label for s in existing})
    have = next((s for s in existing if s.label == label), None)
    hooks: tuple[HookRun, ...] = ()
    outcome = RunOutcome.SNAPSHOT
    if have is None:
        async def take() -> Snapshot:
            return await backend.create_snapshot(spec.volume, label)
        try:
            made, hooks = await around_snapshot(spec.hooks, volumes=[spec.volume],
                                                label=label, take=take, server=spec.server)
        except SnapshotSkipped as skipped:
            outcome, hooks = RunOutcome.SKIPPED, skipped.runs
        else:
            existing.append(made)
            have = made
    ctx.remember(pending_label=None)
    if have is not None:
        rt.newest = (label, float(have.creation))
    protection = guard()
    destroyed, why = 0, protection.hold_off
    held: list[str] = []
    if why is None:
        doomed = [v.snapshot for v in
                  volume_decision(spec, existing, protection, time.time()).doomed]
        destroyed, held = await _destroy_each(backend, [s.name for s in doomed])
        gone = {s.name for s in doomed} - set(held)
        existing = [s for s in existing if s.name not in gone]
    rt.labels = {s.label: float(s.creation) for s in existing if s.label.startswith(spec.prefix)}
    return RunResult(outcome, started, time.time() - started,
                     label=label if have is not None else None,
                     volumes=1 if have is not None else 0, destroyed=destroyed,
                     kept_held=tuple(held), prune_skipped=why, hooks=hooks)


async def run_tree(ctx: ActivityContext, rt: PolicyRuntime, backend: StorageBackend,
                   guard: Guard) -> RunResult:
    spec = rt.spec
    sel = spec.selection
    started = time.time()
    whole = rt.labels is None or rt.relist
    listing = await backend.tree(sel.root, selector=sel.by_property, snapshots=whole)
    members = select(sel, spec.name, listed(listing))
    names = [m.name for m in members]
    if whole:
        rt.labels = tree_labels(listing, names, spec.prefix)
        rt.relist = False
    assert rt.labels is not None
    if not members:
        ctx.log.warning("policy selects no dataset", root=sel.root)
        return RunResult(RunOutcome.EMPTY, started, time.time() - started)
    label = _label(ctx, rt, started, rt.labels)
    outcome = RunOutcome.SNAPSHOT
    hooks: tuple[HookRun, ...] = ()

    async def take() -> None:
        await backend.snapshot_tree(sel.root, label, names)
    try:
        if label in rt.labels:  # made before a restart: completed, no hook runs again
            await take()
        else:
            _, hooks = await around_snapshot(spec.hooks, volumes=names, label=label,
                                            take=take, server=spec.server)
    except SnapshotSkipped as skipped:
        outcome, hooks = RunOutcome.SKIPPED, skipped.runs
    else:
        rt.labels.setdefault(label, started)
        rt.newest = (label, rt.labels[label])
        ctx.log.info("policy snapshot taken", label=label, members=len(names))
    ctx.remember(pending_label=None)
    protection = guard()
    destroyed, why = 0, protection.hold_off
    if why is None:
        doomed = [v.snapshot.label for v in
                  tree_decision(spec, rt.labels, protection, time.time()).doomed]
        before = len(rt.labels)
        await drop_labels(ctx, backend, names, doomed, rt.labels,
                          recursive_from=sel.root if sel.whole_subtree and sel.root in names
                          else None)
        destroyed = before - len(rt.labels)
        if doomed and doomed[-1] in rt.labels:
            rt.relist = True  # refused (held?): the next run lists and says whose hold
    return RunResult(outcome, started, time.time() - started,
                     label=label if outcome == RunOutcome.SNAPSHOT else None,
                     volumes=len(names) if outcome == RunOutcome.SNAPSHOT else 0,
                     destroyed=destroyed, prune_skipped=why, hooks=hooks)


def _label(ctx: ActivityContext, rt: PolicyRuntime, now: float,
           taken: set[str] | dict[str, float]) -> str:
    """The run's label: the one remembered before a restart, else a new one, remembered
    before the snapshot is made."""
    pending = ctx.params.get("pending_label")
    if isinstance(pending, str) and pending.startswith(rt.spec.prefix):
        return pending
    label = cycle_label(rt.spec.prefix, now, taken)
    ctx.remember(pending_label=label)
    return label


async def _destroy_each(backend: StorageBackend, names: list[str]) -> tuple[int, list[str]]:
    """Destroy ``names`` one by one; a held one (``Busy``) is kept, never forced."""
    destroyed, held = 0, []
    for name in names:
        try:
            await backend.destroy_snapshot(name)
        except Busy:
            held.append(name)
            continue
        except NotFound:
            continue
        destroyed += 1
    return destroyed, held


Runner = Callable[[ActivityContext, PolicyRuntime, StorageBackend, Guard],
                  Awaitable[RunResult]]


def runner(rt: PolicyRuntime) -> Runner:
    return run_tree if rt.spec.is_tree else run_volume
