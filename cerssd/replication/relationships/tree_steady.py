"""A tree sync in the steady state: each member streamed on from its known base, with
no listing of either tree and no per-member commands around the stream.

Once a full sync has listed both trees (``tree_sync``), the relationship knows, per
member, the snapshot the slave shares with the master, and the cycle has just taken the
new one (and read its guid). A member then needs only its incremental stream
``send -i BASE NEW | receive -u TARGET``: two processes, where a member's own
``replicate`` activity runs about ten commands (listings of both sides, the size
estimate, verification, holds one by one). Everything else is done for all members at
once: one ``zfs get`` of the received snapshots' guids on the slave (the verification),
pins moved with a few commands per side (``pin_many``), and retention by label
(``logic.tree_labels``). At 1,000 members that is the difference between minutes and
well under one.

Nothing here trusts memory over ZFS: an incremental applies only onto the snapshot whose
guid the stream names, and ZFS refuses it otherwise (destination modified, base gone,
replica destroyed). A member whose stream fails is handed to its own ``replicate``
activity, which lists its two sides and plans (and reports a conflict) as any transfer
does; anything unexpected also sends the slave's next sync back to full listings.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass

from ...engine import ActivityContext
from ...storage.errors import BackendError, NotFound
from ...storage.interface import StorageBackend
from ...storage.values import StreamOptions
from ...transport.errors import LinkError
from ...transport.stream import StreamEndpoint
from ..flows.replicate import stream_options
from ..logic.members import Member
from ..logic.receive import for_stream
from ..logic.tree_labels import labels_doomed
from ..logic.tree_status import MemberSlave, TreeMember
from ..retry import RetryPolicy
from ..stream.fanout import FanoutMissed, SplitOff
from ..stream.groups import FanoutGroups, StreamKey
from ..stream.inline import SmallStream
from ..stream.transfer import TransferFailed, transfer
from .runtime import Runtime
from .tree_fanout import group_for


@dataclass(frozen=True)
class Step:
    """One member's stream from the base the slave has to the cycle's snapshot."""

    member: Member
    base: str  # label
    target: str


def steady_steps(rt: Runtime, server: str, label: str, target_root: str,
                 live: set[str]) -> tuple[list[Step], list[TreeMember]]:
    """The members that stream on from a known base, and those that need their own
    transfer (new on the slave, failing, or whose state is not known). Members already
    at ``label`` and members without it (made after the cycle's snapshot) are neither.
    ``live``: members with a transfer under way (followed, not doubled)."""
    assert rt.tree is not None
    steps: list[Step] = []
    own: list[TreeMember] = []
    for entry in rt.tree.members.values():
        if entry.newest_label != label or entry.newest_guid is None:
            continue
        state = entry.slaves.setdefault(server, MemberSlave())
        if state.label == label and state.guid == entry.newest_guid:
            continue
        member = Member(entry.name, entry.relative, entry.guid)
        if entry.relative in live or state.label is None or state.error is not None:
            own.append(entry)
        else:
            steps.append(Step(member, state.label, member.target(target_root)))
    return steps, own


class SteadySync:
    """Runs the steps of one steady sync: streams, then verification, pins, retention."""

    def __init__(self, ctx: ActivityContext, rt: Runtime, src: StorageBackend,
                 dst: StorageBackend, server: str, target_root: str,
                 policy: RetryPolicy, groups: FanoutGroups | None = None) -> None:
        self.ctx, self.rt, self.src, self.dst = ctx, rt, src, dst
        self.server, self.target_root, self.policy = server, target_root, policy
        #: The cycle's fan-out groups (``tree_fanout``): one send for several slaves.
        self.groups = groups
        assert rt.tree is not None
        self.tree = rt.tree

    async def stream_all(self, steps: list[Step], label: str, progress: list[int],
                         limit: asyncio.Semaphore | None = None,
                         ) -> tuple[list[Step], list[Step]]:
        """Each step's stream, ``max_parallel`` at once (or within ``limit``, shared
        with the sync's other transfers); returns (moved, failed)."""
        limit = limit or asyncio.Semaphore(self.rt.spec.max_parallel)
        # the root's options serve every member: a child of an encrypted root is encrypted
        root = self.rt.spec.selection.root if self.rt.spec.selection else self.target_root
        options = await stream_options(self.src, self.dst, root,
                                       properties=self.rt.spec.send_properties)
        moved: list[Step] = []
        failed: list[Step] = []
        inline = [0]

        async def one(step: Step) -> None:
            async with limit:
                await self.ctx.checkpoint()
                state = self.tree.members[step.member.relative].slaves[self.server]
                state.sending = True
                try:
                    went_inline = await self._stream(step, label, options)
                except (TransferFailed, BackendError, LinkError) as exc:
                    self.ctx.log.info("member not streamed on from its base; it gets a "
                                      "transfer of its own", member=step.member.name,
                                      error=str(exc))
                    failed.append(step)
                    return
                finally:
                    state.sending = False
            moved.append(step)
            inline[0] += went_inline
            progress[0] += 1
            self.ctx.set_progress(progress[0])

        await asyncio.gather(*(one(s) for s in steps))
        self.ctx.log.info("members streamed on", moved=len(moved), inline=inline[0],
                          failed=len(failed), slave=self.server)
        return moved, failed

    async def _stream(self, step: Step, label: str, options: StreamOptions) -> bool:
        """The step's stream; returns whether it went inline."""
        name = step.member.name
        # -I carries snapshots made between the two (an operator's) where a send keeps
        # them safe from a concurrent destroy; elsewhere (zfs-fuse) -i, as a transfer does.
        intermediates = self.src.capabilities.safe_send_holds
        entry = self.tree.members[step.member.relative]
        settings = self.rt.spec.slave(self.server).receive
        # incrementals only: what a zfs-fuse receive cannot take was set when it was made
        props = for_stream(settings, options, creates=False)
        receiver = self.dst.receive(step.target, unmounted=not settings.mount, properties=props)
        key = StreamKey(entry.newest_guid or "", entry.slaves[self.server].guid, options,
                        intermediates)
        if await self._joined(step.member.relative, key, receiver):
            return False
        sender = self.src.send(f"{name}@{label}", f"{name}@{step.base}",
                               intermediates=intermediates, options=options)
        went_inline = False
        small = None
        if self.dst.inline_limit:
            # a member that did not change: one command on the slave's shell, not an
            # SSH session of its own (``stream.inline``)
            async def deliver(data: bytes) -> None:
                nonlocal went_inline
                await self.dst.receive_inline(step.target, data,
                                              unmounted=not settings.mount, properties=props)
                went_inline = True
            small = SmallStream(self.dst.inline_limit, deliver)
        await transfer(sender, receiver, counters=self.ctx.counters, gate=self.ctx.flow,
                       limit=self.rt.spec.slave(self.server).bandwidth_limit,
                       stall_timeout=self.policy.stall_timeout, small=small)
        return went_inline

    async def _joined(self, member: str, key: StreamKey, receiver: StreamEndpoint) -> bool:
        """Received from the cycle's fan-out group for this stream, if there is one; False
        when this slave must send alone (no group, or it started without this slave, or
        split it off as slower than the others: its partial receive is gone with it)."""
        group = group_for(self.rt, self.groups, self.server, member, key) \
            if self.groups is not None else None
        if group is None:
            return False
        try:
            await group.attach(self.server, receiver, counters=self.ctx.counters,
                               gate=self.ctx.flow,
                               limit=self.rt.spec.slave(self.server).bandwidth_limit)
        except (FanoutMissed, SplitOff) as exc:
            self.ctx.log.info("fan-out left: sent alone", member=member or ".",
                              error=str(exc))
            return False
        return True

    async def settle(self, moved: list[Step], label: str) -> list[Step]:
        """Verify what arrived (one ``zfs get`` of the received snapshots' guids), record
        it, and move the pins; returns the steps whose snapshot is not what was sent."""
        if not moved:
            return []
        facts = await self.dst.snapshot_facts([f"{s.target}@{label}" for s in moved])
        good: list[Step] = []
        wrong: list[Step] = []
        for step in moved:
            entry = self.tree.members[step.member.relative]
            got = facts.get(f"{step.target}@{label}")
            state = entry.slaves[self.server]
            if got is None or got.guid != entry.newest_guid:
                state.error = (f"{step.target}@{label} is missing after the receive" if got
                               is None else f"guid mismatch after receive: {got.guid}, "
                               f"source has {entry.newest_guid}")
                wrong.append(step)
                continue
            state.shares(got)
            good.append(step)
        await self._move_pins(good, label)
        return wrong

    async def _move_pins(self, moved: list[Step], label: str) -> None:
        """Pin the new common snapshot on both sides, unpin the old base: a recursive
        command each where every member moved from one base (the usual cycle)."""
        whole = self._whole(moved)
        by_base: dict[str, list[Step]] = defaultdict(list)
        for step in moved:
            by_base[step.base].append(step)
        root = self.rt.spec.selection.root if self.rt.spec.selection else ""
        sides = ((self.src, root, True), (self.dst, self.target_root, False))
        for backend, top, source in sides:
            def name_of(step: Step, source: bool = source) -> str:
                return step.member.name if source else step.target
            await backend.pin_many([f"{name_of(s)}@{label}" for s in moved], self.server,
                                   whole=f"{top}@{label}" if whole else None)
            for base, steps in by_base.items():
                await backend.unpin_many(
                    [f"{name_of(s)}@{base}" for s in steps], self.server,
                    whole=f"{top}@{base}" if whole and len(by_base) == 1 else None)

    def _whole(self, moved: list[Step]) -> bool:
        """Whether ``moved`` is every dataset of the tree (a recursive pin then serves)."""
        sel = self.rt.spec.selection
        return sel is not None and sel.whole_subtree and len(moved) == len(self.tree.members)

    async def prune(self, label: str) -> None:
        """The slave's retention by label; a refusal sends the next sync to listings."""
        labels = self.tree.slave_labels.setdefault(self.server, {})
        labels.setdefault(label, next(
            (e.newest_created for e in self.tree.members.values()
             if e.newest_label == label and e.newest_created is not None), time.time()))
        states = [e.slaves.get(self.server) for e in self.tree.members.values()]
        if any(s is None or s.label is None for s in states):
            return  # a member's base here is unknown: keep everything
        protected = {s.label for s in states if s is not None and s.label}
        doomed = labels_doomed(labels, self.rt.spec.slave_retention, now=time.time(),
                               prefix=self.rt.spec.prefix, protected=protected,
                               keep_min=self.rt.spec.slave_keep_min)
        if not doomed:
            return
        targets = [Member(e.name, e.relative, e.guid).target(self.target_root)
                   for e in self.tree.members.values()]
        # Copies of members gone from the master, or anything else with the
        # relationship's snapshots under the target root, are not a recursive destroy's.
        sel = self.rt.spec.selection
        recursive = sel is not None and sel.whole_subtree and not self.tree.gone \
            and self.server not in self.tree.slave_foreign and self.target_root in targets
        await drop_labels(self.ctx, self.dst, targets, doomed, labels,
                          recursive_from=self.target_root if recursive else None)
        if doomed[-1] in labels:
            self.tree.known.discard(self.server)


async def drop_labels(ctx: ActivityContext, backend: StorageBackend, members: list[str],
                      doomed: list[str], labels: dict[str, float], *,
                      recursive_from: str | None = None) -> None:
    """Destroy each ``doomed`` label's snapshot of every member and forget the label:
    one recursive destroy from ``recursive_from`` (the caller says every dataset under it
    is a member), else each member's (there is no one command for some of a tree's
    datasets on zfs-fuse). Stops at the first label refused, which stays in ``labels``."""
    for label in doomed:
        try:
            if recursive_from is not None:
                await backend.destroy_snapshot(f"{recursive_from}@{label}", recursive=True)
            else:
                for name in members:
                    with contextlib.suppress(NotFound):
                        await backend.destroy_snapshot(f"{name}@{label}")
        except NotFound:
            pass  # gone already: an earlier, interrupted cycle
        except (BackendError, LinkError) as exc:
            ctx.log.warning("retention of a tree label refused; the next cycle lists the "
                            "tree whole", label=label, server=backend.server, error=str(exc))
            return
        labels.pop(label, None)
        ctx.log.info("tree retention", label=label, server=backend.server)
