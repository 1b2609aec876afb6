"""Who may act on a relationship, and where its remembered facts (roles above all) go.

The relationship manager owns this interface; two implementations serve it:

* ``Alone`` (the default): this daemon is the only manager. It leads every
  relationship, and a relationship's facts live in its SQLite journal only.
* ``cluster.member.ClusterMember`` (``[cluster]`` configured): several managing daemons
  share the relationships through etcd. One leads each relationship (a lease-held lock);
  only it runs the cycles and writes the facts, each write a transaction that holds only
  while its lock is still the one it took. A write that fails makes it step down.

The journal keeps its copy in both cases: it is what a restarted daemon shows before it
reaches etcd, never what it acts on in a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class Leadership(Protocol):
    async def lead(self, name: str) -> Mapping[str, Any] | None:
        """Return once this daemon leads ``name``: with the facts its previous leader
        left (to lay over the runtime), or None when there are none to take."""

    def leads(self, name: str) -> bool:
        """Whether this daemon leads ``name`` now."""

    def check(self, name: str) -> None:
        """Raise ``RelationshipError`` unless this daemon leads ``name`` now."""

    def publish(self, name: str, remembered: Mapping[str, Any]) -> None:
        """Share ``name``'s facts (written soon, in order; a refused write steps down)."""

    async def commit(self, name: str, remembered: Mapping[str, Any]) -> None:
        """Share ``name``'s facts now; raises ``RelationshipError`` if this daemon no
        longer leads it (a failover's decision must not be made twice)."""


class Alone:
    """A single managing daemon: it leads everything; its journal is the only store."""

    async def lead(self, name: str) -> Mapping[str, Any] | None:
        return None

    def leads(self, name: str) -> bool:
        return True

    def check(self, name: str) -> None:
        return None

    def publish(self, name: str, remembered: Mapping[str, Any]) -> None:
        return None

    async def commit(self, name: str, remembered: Mapping[str, Any]) -> None:
        return None
