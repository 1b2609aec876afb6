"""Fan-out for trees: one ``zfs send`` per member feeding every slave that needs it.

A tree with two standbys would otherwise send each member's stream twice, once per
slave's ``tree-sync``. The cycle knows, before it starts the syncs, which slaves will
stream each member on from the same base (``tree_steady.steady_steps``, the same plan
each sync makes): for every member two or more slaves share, it makes one fan-out group
(``stream.fanout.FanoutGroup``, the one single volumes use) and records its id per slave
and member in ``TreeStatus.fanout``. Each sync's stream of that member joins the group
when the stream it is about to run is exactly the group's (``StreamKey``), and sends
alone otherwise, or when the group started without it (``FanoutMissed``) or split it off
as too slow (``SplitOff``). A sync that ends without joining a group it was counted in
withdraws from it, so the others do not wait for it.
"""

from __future__ import annotations

from ..stream.fanout import FanoutGroup
from ..stream.groups import FanoutGroups, StreamKey
from .runtime import Runtime


def group_for(rt: Runtime, groups: FanoutGroups, server: str, member: str,
              key: StreamKey) -> FanoutGroup | None:
    """The group this slave's stream of ``member`` joins, if the cycle made one for
    exactly this stream."""
    assert rt.tree is not None
    group_id = rt.tree.fanout.get((server, member))
    entry = groups.get(group_id) if group_id is not None else None
    return entry.group if entry is not None and entry.key == key else None


def withdraw_all(rt: Runtime, groups: FanoutGroups, server: str) -> None:
    """A sync ending: the groups it was counted in need not wait for it (harmless for
    the ones it joined)."""
    assert rt.tree is not None
    for (slave, _member), group_id in rt.tree.fanout.items():
        entry = groups.get(group_id) if slave == server else None
        if entry is not None:
            entry.group.withdraw(server)
