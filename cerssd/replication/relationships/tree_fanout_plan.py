"""The cycle's side of a tree's fan-out (``tree_fanout``): which slaves' steady syncs
will stream a member on from the same base, so one send can feed them all."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass

from ...servers import ServerRegistry
from ...storage.interface import StorageBackend
from ...storage.values import StreamOptions
from ..flows.replicate import stream_options
from ..stream.fanout import FanoutGroup
from ..stream.groups import FanoutGroups, StreamKey
from .runtime import Runtime
from .tree_steady import Step, steady_steps


@dataclass(frozen=True)
class _Planned:
    server: str
    steps: list[Step]
    options: StreamOptions


async def plan_fanout(rt: Runtime, groups: FanoutGroups, servers: ServerRegistry,
                      master: StorageBackend, label: str, slaves: list[str], *,
                      stall_timeout: float | None) -> None:
    """The groups of this cycle's steady syncs to ``slaves`` (recorded per slave and
    member in ``rt.tree.fanout``); the last cycle's are discarded first."""
    tree, sel = rt.tree, rt.spec.selection
    assert tree is not None and sel is not None
    for group_id in set(tree.fanout.values()):
        groups.discard(group_id)
    tree.fanout = {}
    steady = [s for s in slaves if s in tree.known]
    if not rt.spec.fanout or len(steady) < 2:
        return
    planned = []
    for server in steady:
        dst = await servers.backend(server)
        steps, _ = steady_steps(rt, server, label, rt.spec.slave(server).target_volume, set())
        planned.append(_Planned(server, steps, await stream_options(
            master, dst, sel.root, properties=rt.spec.send_properties)))
    intermediates = master.capabilities.safe_send_holds
    by_key: dict[tuple[str, StreamKey], list[str]] = defaultdict(list)
    bases: dict[tuple[str, StreamKey], str] = {}
    for p in planned:
        for step in p.steps:
            entry = tree.members[step.member.relative]
            base = entry.slaves[p.server].guid
            if entry.newest_guid is None:
                continue
            found = (step.member.relative, StreamKey(entry.newest_guid, base, p.options,
                                                     intermediates))
            by_key[found].append(p.server)
            bases[found] = step.base
    for (member, key), names in by_key.items():
        if len(names) < 2:
            continue
        name = tree.members[member].name
        sender = master.send(f"{name}@{label}", f"{name}@{bases[(member, key)]}",
                             intermediates=intermediates, options=key.options)
        group_id = uuid.uuid4().hex[:12]
        groups.add(group_id, key, FanoutGroup(sender, names, buffer_limit=rt.spec.fanout_buffer,
                                              stall_timeout=stall_timeout))
        for server in names:
            tree.fanout[(server, member)] = group_id


