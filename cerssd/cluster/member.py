"""This managing daemon as a member of a cluster: its lease, its leader locks, its writes.

One lease per daemon (``lease_ttl``), kept alive every third of the TTL. Per
relationship one key, ``PREFIX/leaders/NAME``, attached to the lease of the daemon that
leads it: created only if absent (a transaction comparing its create revision with 0),
so exactly one daemon holds it; it vanishes when that daemon's lease expires (the daemon
died, paused, or lost etcd), and another takes it at its next tick: within the TTL plus
a third of it.

A round (every third of the TTL) costs etcd the same whatever the number of
relationships: one keepalive of the lease all our locks share, one range read over
``PREFIX/leaders/`` (who leads what, and on which lease), and one time-to-live per
*other* manager's lease (a handful). Only a lock that changes hands costs more: one
transaction to take it (create if absent; it is absent once its holder's lease
expired), one to give back a lock a reload removed.

A relationship's facts (roles, failover state, slaves) are at ``PREFIX/state/NAME``,
written only in a transaction that compares the leader key's create revision with the
one this daemon made: a daemon whose lock was lost and taken again by another (however
long it was paused) has every write refused, and steps down.

A daemon that cannot renew its lease steps down from everything a second before the
lease can have expired in etcd (it cannot know whether etcd still counts it), so two
daemons never run the same relationship's cycles on purpose; the compare above is
what holds when timing does not (a process stopped and continued).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from ..replication.relationships.runtime import RelationshipError
from .config import ClusterConfig
from .etcd import (
    Compare,
    Delete,
    EtcdClient,
    EtcdUnavailable,
    KeyValue,
    LeaseGone,
    Put,
    Range,
    Target,
)

log = structlog.get_logger("cerssd.cluster")

StepDown = Callable[[str], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Leader:
    """Who leads one relationship, as last seen."""

    node: str | None
    #: The leader key's create revision: a new value is a new term (a takeover).
    term: int | None = None
    #: When the leader's lease expires unless renewed (as etcd said at the last round).
    lease_expires_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "term": self.term,
                "lease_expires_at": self.lease_expires_at}


class ClusterMember:
    def __init__(self, config: ClusterConfig, client: EtcdClient,
                 names: Callable[[], Iterable[str]]) -> None:
        self.config = config
        self.client = client
        self._names = names
        self.step_down: StepDown | None = None
        #: Called when this daemon becomes a relationship's leader (to make sure an
        #: activity is there to run it, whatever this daemon's own journal said).
        self.on_lead: Callable[[str], None] | None = None
        self.lease: int | None = None
        #: When the lease was last renewed (the local clock at the renewal's start).
        self.renewed_at: float | None = None
        self.reachable = False
        self.last_error: str | None = None
        #: Relationship -> the create revision of the leader key this daemon holds.
        self._terms: dict[str, int] = {}
        self.leaders: dict[str, Leader] = {}
        self._leading: dict[str, asyncio.Event] = {}
        self._writes: dict[str, Mapping[str, Any]] = {}
        self._wake_writer = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stepping: set[asyncio.Task[None]] = set()
        #: Leaderships taken and lost since start (the lease-flapping metric).
        self.taken = 0
        self.lost = 0
        #: Rounds completed since start (with ``client.requests``: what a round costs).
        self.rounds = 0

    @property
    def tick(self) -> float:
        return self.config.lease_ttl / 3

    def key(self, kind: str, name: str) -> str:
        return f"{self.config.prefix}{kind}/{name}"

    # -- the Leadership interface ------------------------------------------------------
    def leads(self, name: str) -> bool:
        return name in self._terms

    async def lead(self, name: str) -> Mapping[str, Any] | None:
        event = self._leading.setdefault(name, asyncio.Event())
        await event.wait()
        kv = await self._retrying(lambda: self.client.get(self.key("state", name)))
        return json.loads(kv.value) if kv is not None else None

    def check(self, name: str) -> None:
        if not self.leads(name):
            leader = self.leaders.get(name, Leader(None)).node
            raise RelationshipError(
                f"this daemon ({self.config.node}) does not lead relationship {name}; "
                + (f"{leader} does: ask it" if leader else "no manager leads it now"
                   + ("" if self.reachable else " (etcd unreachable)")))

    def publish(self, name: str, remembered: Mapping[str, Any]) -> None:
        if self.leads(name):
            self._writes[name] = remembered
            self._wake_writer.set()

    async def commit(self, name: str, remembered: Mapping[str, Any]) -> None:
        self.check(name)
        ok = False
        while self.leads(name):  # etcd away: until it answers or our lease runs out
            try:
                ok = await self._write(name, remembered)
                break
            except EtcdUnavailable:
                await asyncio.sleep(min(1.0, self.tick))
        if not ok:
            raise RelationshipError(f"this daemon lost the lead of relationship {name}; "
                                    "nothing decided")

    # -- running -----------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._writer()),
                       asyncio.create_task(self._deadline())]

    async def close(self) -> None:
        """Stop, and give the locks back at once (revoking the lease) so another takes
        over without waiting for the TTL."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.lease is not None:
            with contextlib.suppress(EtcdUnavailable, LeaseGone):
                await self.client.revoke(self.lease)
        await self.client.close()

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.run_round()
            except EtcdUnavailable as exc:
                if self.reachable or self.last_error is None:
                    log.warning("etcd unreachable; nothing clustered is led until it "
                                "answers", error=str(exc))
                self.reachable, self.last_error = False, str(exc)
            except Exception as exc:  # an answer we did not expect: report, go on trying
                log.exception("cluster round failed", error=str(exc))
                self.reachable, self.last_error = False, f"unexpected: {exc}"
            await asyncio.sleep(max(0.0, self.tick - (time.monotonic() - started)))

    async def _deadline(self) -> None:
        """Apart from the rounds (a round may wait seconds on a member that does not
        answer): step down on time, whatever the round is doing."""
        while True:
            await self._expire()
            await asyncio.sleep(0.2)

    async def run_round(self) -> None:
        """One round: renew the lease, learn who leads what, take the locks that are
        free (``_run`` does one every tick; a test may call it directly)."""
        await self._renew()
        if not self.reachable:
            log.info("etcd reachable", node=self.config.node)
        self.reachable, self.last_error = True, None
        held = {kv.key: kv for kv in await self.client.get_prefix(self.config.prefix
                                                                   + "leaders/")}
        # Each other manager's lease once per round (a handful of managers, not one
        # call per relationship): when its relationships would be taken over.
        expiry = {self.lease: self.lease_expires_at()}
        for kv in held.values():
            if kv.lease not in expiry:
                ttl = await self.client.time_to_live(kv.lease)
                expiry[kv.lease] = time.time() + ttl if ttl is not None else None
        names = list(self._names())
        await self._release_retired(held, set(names))
        for name in names:
            seen = held.get(self.key("leaders", name))
            if seen is None:
                seen = await self._campaign(name)
            await self._follow(name, seen, expiry.get(seen.lease) if seen else None)
        self.rounds += 1

    async def _release_retired(self, held: Mapping[str, KeyValue], names: set[str]) -> None:
        """Give back the locks of relationships a reload removed here, so that a manager
        still configured with them is not left following nobody."""
        start = len(self.config.prefix + "leaders/")
        for key, kv in held.items():
            name = key[start:]
            if name in names or kv.value != self.config.node or kv.lease != self.lease:
                continue
            await self.client.txn([Compare(key, Target.CREATE, kv.create_revision)],
                                  [Delete(key)])
            self._terms.pop(name, None)
            log.info("gave back the lead of a relationship no longer configured here",
                     relationship=name)

    async def _renew(self) -> None:
        began = time.monotonic()
        if self.lease is not None:
            try:
                await self.client.keepalive(self.lease)
            except LeaseGone:
                log.warning("our lease expired in etcd; stepping down", node=self.config.node)
                self.lease = None
                await self._lose_all()
        if self.lease is None:
            self.lease = await self.client.grant(self.config.lease_ttl)
        self.renewed_at = began

    async def _campaign(self, name: str) -> KeyValue | None:
        """Create ``name``'s lock on our lease if it is still absent: one transaction,
        which reads the key back in either branch (ours, or whoever was quicker)."""
        key = self.key("leaders", name)
        assert self.lease is not None
        result = await self.client.txn([Compare(key, Target.CREATE, 0)],
                                       [Put(key, self.config.node, self.lease), Range(key)],
                                       [Range(key)])
        found = result.ranges[0] if result.ranges else ()
        return found[0] if found else None

    async def _follow(self, name: str, kv: KeyValue | None,
                      expires_at: float | None = None) -> None:
        """Take note of who leads ``name``; become leader or step down accordingly."""
        mine = kv is not None and kv.value == self.config.node and kv.lease == self.lease
        self.leaders[name] = Leader(kv.value if kv else None,
                                    kv.create_revision if kv else None,
                                    self.lease_expires_at() if mine else expires_at)
        if mine and kv is not None and name not in self._terms:
            self._terms[name] = kv.create_revision
            self.taken += 1
            log.info("leading relationship", relationship=name, node=self.config.node,
                     term=kv.create_revision)
            self._leading.setdefault(name, asyncio.Event()).set()
            if self.on_lead is not None:
                self.on_lead(name)
        elif not mine and name in self._terms:
            await self._lose(name, f"now led by {kv.value if kv else 'nobody'}")

    async def _expire(self) -> None:
        """Step down from everything before our lease can have expired in etcd."""
        if not self._terms or self.renewed_at is None:
            return
        if time.monotonic() >= self.renewed_at + self.config.lease_ttl - 1:
            log.warning("lease not renewed in time; stepping down from every relationship",
                        node=self.config.node)
            self.lease = None
            await self._lose_all()

    async def _lose_all(self) -> None:
        for name in list(self._terms):
            await self._lose(name, "lease lost")

    async def _lose(self, name: str, why: str) -> None:
        if self._terms.pop(name, None) is None:
            return
        self.lost += 1
        self._writes.pop(name, None)
        if self.leaders.get(name, Leader(None)).node == self.config.node:
            self.leaders[name] = Leader(None)  # not us; who, the next round will say
        self._leading.setdefault(name, asyncio.Event()).clear()
        log.warning("stepping down from relationship", relationship=name,
                    node=self.config.node, reason=why)
        if self.step_down is not None:
            # Not awaited here: the write that found the lead lost may be the cycle's
            # own, inside the very activity the step-down cancels and waits for.
            task = asyncio.create_task(self.step_down(name))
            self._stepping.add(task)
            task.add_done_callback(self._stepping.discard)

    # -- writes -------------------------------------------------------------------------
    async def _write(self, name: str, remembered: Mapping[str, Any]) -> bool:
        term = self._terms.get(name)
        if term is None:
            return False
        result = await self.client.txn(
            [Compare(self.key("leaders", name), Target.CREATE, term)],
            [Put(self.key("state", name), json.dumps(remembered))])
        if not result.succeeded:
            await self._lose(name, "a write was refused: another manager took the lead")
        return result.succeeded

    async def _writer(self) -> None:
        """Publish the latest facts of each relationship, in order, retrying while etcd
        is away (the leader steps down on its own if that lasts)."""
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            while self._writes:
                name = next(iter(self._writes))
                remembered = self._writes.pop(name)
                try:
                    await self._write(name, remembered)
                except EtcdUnavailable:
                    self._writes.setdefault(name, remembered)
                    await asyncio.sleep(self.tick)
                except Exception:  # never let the writer die: the next save tries again
                    log.exception("sharing a relationship's facts failed", relationship=name)

    async def _retrying(self, call: Callable[[], Awaitable[KeyValue | None]]) -> KeyValue | None:
        while True:
            try:
                return await call()
            except EtcdUnavailable:
                await asyncio.sleep(self.tick)

    # -- status -------------------------------------------------------------------------
    def lease_expires_at(self) -> float | None:
        """Wall-clock estimate of when our lease expires if not renewed again."""
        if self.lease is None or self.renewed_at is None:
            return None
        return time.time() + (self.renewed_at + self.config.lease_ttl - time.monotonic())

    def to_json(self) -> dict[str, Any]:
        return {"node": self.config.node, "etcd": list(self.config.etcd),
                "etcd_reachable": self.reachable, "last_error": self.last_error,
                "lease_ttl": self.config.lease_ttl,
                "lease_expires_at": self.lease_expires_at(),
                "leaderships_taken": self.taken, "leaderships_lost": self.lost,
                "relationships": {n: self._leader_json(n) for n in self._names()}}

    def _leader_json(self, name: str) -> dict[str, Any]:
        seen = self.leaders.get(name, Leader(None))
        if self.leads(name):  # our own lease: as of now, not of the last round
            seen = Leader(seen.node, seen.term, self.lease_expires_at())
        return {**seen.to_json(), "leading": self.leads(name)}
