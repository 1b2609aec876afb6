"""The fan-out groups of the running cycle, shared between a relationship and its transfers.

A relationship makes one group per set of slaves that need the same stream (same
snapshot, same base, same stream options); each slave's transfer, a child activity of
its own, looks its group up by id and joins the single send only if the stream it
planned is exactly the group's (``StreamKey``). Groups live in memory only: after a
daemon restart a transfer finds none and sends on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...storage.values import StreamOptions
from .fanout import FanoutGroup


@dataclass(frozen=True)
class StreamKey:
    """What makes two slaves' streams the same stream."""

    snapshot_guid: str
    base_guid: str | None
    options: StreamOptions
    intermediates: bool


@dataclass(frozen=True)
class GroupEntry:
    key: StreamKey
    group: FanoutGroup


class FanoutGroups:
    def __init__(self) -> None:
        self._groups: dict[str, GroupEntry] = {}
        #: Sends started by groups since the daemon started (a metric).
        self.sends = 0

    def add(self, group_id: str, key: StreamKey, group: FanoutGroup) -> None:
        self._groups[group_id] = GroupEntry(key, group)

    def get(self, group_id: str) -> GroupEntry | None:
        return self._groups.get(group_id)

    def live_sends(self) -> int:
        return sum(e.group.sends_started for e in self._groups.values())

    def discard(self, group_id: str) -> None:
        entry = self._groups.pop(group_id, None)
        if entry is not None:
            self.sends += entry.group.sends_started
