"""Whose holds keep a snapshot: cerssd's own (``cerssd:SERVER``) or someone else's.

cerssd pins a replication's common base for its destination (the backend names the
pin: on ZFS the hold ``cerssd:<destination>``). Any
other hold is not cerssd's to release: an operator's, or one a killed ``zfs send -I``
left on zfs-fuse. Retention cannot destroy such a snapshot, so the snapshot listing
and the prune result name it instead of skipping it silently. ``userrefs`` counts every
hold; subtracting cerssd's own tags leaves the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ...storage.interface import StorageBackend
from ...storage.values import Snapshot


@dataclass(frozen=True)
class Holds:
    """A snapshot's holds, split into cerssd's tags and a count of everyone else's."""

    cerssd: tuple[str, ...]
    foreign: int

    def to_json(self) -> dict[str, Any]:
        return {"cerssd_holds": list(self.cerssd), "foreign_holds": self.foreign}

    def reason(self) -> str:
        parts = []
        if self.cerssd:
            parts.append(f"held by cerssd ({', '.join(self.cerssd)}): a replication base")
        if self.foreign:
            parts.append(f"held by {self.foreign} hold(s) that are not cerssd's (an "
                         "operator's, or a killed zfs send's on zfs-fuse): release them "
                         "to let retention destroy it")
        return "; ".join(parts) or "busy"


NO_HOLDS = Holds((), 0)


async def holds_of(backend: StorageBackend, snapshot: Snapshot,
                   servers: Iterable[str]) -> Holds:
    """``snapshot``'s holds; ``servers`` are the configured server names (cerssd's pins)."""
    if not snapshot.userrefs:
        return NO_HOLDS
    own = await backend.pinned_by(snapshot.name, servers)
    return Holds(tuple(sorted(backend.pin_tag(s) for s in own)),
                 max(snapshot.userrefs - len(own), 0))
