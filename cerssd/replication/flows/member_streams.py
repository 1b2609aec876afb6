"""Many tree members streamed on from their known bases, as one activity (kind
``member-streams``): the batched form of a tree's steady sync for a peer master.

A tree whose master runs cerssd (``daemon = true``, docs/peers.md) sends its members
from the master's node straight to a remote slave. Its steady sync streams hundreds of
members a cycle, each only ``send -i BASE NEW | receive -u TARGET`` (``tree_steady``):
a delegated activity per member would be hundreds of activities on both daemons, each
created through the peer's API and polled every second, for streams that take well
under a second each. So the managing daemon's tree sync hands the peer **one** request
naming every member to stream on (``POST /v1/member-streams``): the peer runs them, at
most ``max_parallel`` at once, as one activity whose progress is members done of
members to stream, and says per member whether its stream went through
(``results``: target -> null, or the error). The managing daemon's activity of the same
kind is its parent (``route`` delegated); verification (one ``zfs get`` of the received
snapshots' guids), pins and retention stay with the tree sync, as for a local master.
A member whose stream failed gets its own (delegated) ``replicate`` then, as in a local
tree: that is the per-member path, which lists and plans and reports a conflict.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ...activity import ActivityRecord, DataRoute, Progress
from ...engine import ActivityContext, ActivityEngine
from ...peers.delegate import ChildRequest, DelegatedWork
from ...servers import ServerRegistry
from ...storage.errors import BackendError
from ...storage.names import validate_snapshot, validate_volume
from ...storage.values import ReceiveProperties
from ...transport.errors import LinkError
from ..logic.receive import stream_properties
from ..retry import RetryPolicy
from ..stream.inline import SmallStream
from ..stream.transfer import TransferFailed, transfer
from .replicate import stream_options

KIND = "member-streams"


@dataclass(frozen=True)
class MemberStream:
    """One member's incremental stream: ``snapshot`` from its ``base`` label, into
    ``target`` on the destination."""

    snapshot: str
    base: str
    target: str

    def to_json(self) -> dict[str, str]:
        return {"snapshot": self.snapshot, "base": self.base, "target_volume": self.target}


@dataclass(frozen=True)
class MemberStreamsRequest:
    source: str
    destination: str
    #: The tree's root on the source: its stream options serve every member (a child of
    #: an encrypted root is encrypted: raw for all).
    root: str
    items: tuple[MemberStream, ...]
    max_parallel: int = 1
    unmounted: bool = True
    send_properties: bool = False
    receive_exclude: tuple[str, ...] = ()
    receive_set: tuple[tuple[str, str], ...] = ()
    bandwidth_limit: float | None = None

    def params(self) -> dict[str, Any]:
        return {"source": self.source, "destination": self.destination, "root": self.root,
                "items": [i.to_json() for i in self.items], "max_parallel": self.max_parallel,
                "unmounted": self.unmounted, "send_properties": self.send_properties,
                "receive_exclude": list(self.receive_exclude),
                "receive_set": dict(self.receive_set),
                "bandwidth_limit": self.bandwidth_limit}

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> MemberStreamsRequest:
        return cls(source=p["source"], destination=p["destination"], root=p["root"],
                   items=tuple(MemberStream(i["snapshot"], i["base"], i["target_volume"])
                               for i in p["items"]),
                   max_parallel=int(p.get("max_parallel", 1)),
                   unmounted=bool(p.get("unmounted", True)),
                   send_properties=bool(p.get("send_properties", False)),
                   receive_exclude=tuple(p.get("receive_exclude", ())),
                   receive_set=tuple((str(k), str(v))
                                     for k, v in dict(p.get("receive_set", {})).items()),
                   bandwidth_limit=p.get("bandwidth_limit"))


def submit_member_streams(engine: ActivityEngine, req: MemberStreamsRequest, *,
                          route: DataRoute = DataRoute.LOCAL,
                          **extra: Any) -> ActivityRecord:
    """``extra`` params are kept with the activity (a tree sync's ``parent`` and
    ``relationship``). ``route`` delegated: the source's peer daemon streams them."""
    validate_volume(req.root)
    for item in req.items:
        validate_snapshot(item.snapshot)
        validate_volume(item.target)
    return engine.submit(KIND, volume=req.root, source=req.source,
                         target=f"{req.destination}:{req.items[0].target}"
                         if len(req.items) == 1 else req.destination,
                         params={**req.params(), **extra}, self_restarting=True,
                         progress=Progress(0, len(req.items), unit="members"), route=route,
                         node=req.source if route == DataRoute.DELEGATED else None)


class MemberStreamsWork:
    """The streams themselves, on the node whose daemon holds the source."""

    def __init__(self, record: ActivityRecord, servers: ServerRegistry,
                 policy: RetryPolicy) -> None:
        self.req = MemberStreamsRequest.from_params(record.params)
        self.servers = servers
        self.policy = policy

    async def run(self, ctx: ActivityContext) -> None:
        req = self.req
        src = await self.servers.backend(req.source)
        dst = await self.servers.backend(req.destination)
        options = await stream_options(src, dst, req.root, properties=req.send_properties)
        # incrementals only: what a receive that creates the replica sets was set then
        props = stream_properties(ReceiveProperties(req.receive_exclude, req.receive_set),
                                  options, creates=False)
        # -I where a send keeps the intermediates safe (OpenZFS), else -i (zfs-fuse)
        intermediates = src.capabilities.safe_send_holds
        limit = asyncio.Semaphore(max(1, req.max_parallel))
        results: dict[str, str | None] = {}
        done = [0]

        async def one(item: MemberStream) -> None:
            async with limit:
                await ctx.checkpoint()
                volume = item.snapshot.partition("@")[0]
                small = None
                if dst.inline_limit:  # an unchanged member: one command, not a session
                    async def deliver(data: bytes) -> None:
                        await dst.receive_inline(item.target, data,
                                                 unmounted=req.unmounted, properties=props)
                    small = SmallStream(dst.inline_limit, deliver)
                try:
                    await transfer(
                        src.send(item.snapshot, f"{volume}@{item.base}",
                                 intermediates=intermediates, options=options),
                        dst.receive(item.target, unmounted=req.unmounted, properties=props),
                        counters=ctx.counters, gate=ctx.flow, limit=req.bandwidth_limit,
                        stall_timeout=self.policy.stall_timeout, small=small)
                except (TransferFailed, BackendError, LinkError) as exc:
                    results[item.target] = str(exc) or type(exc).__name__
                    ctx.log.info("member not streamed on", member=item.snapshot,
                                 error=results[item.target])
                else:
                    results[item.target] = None
            done[0] += 1
            ctx.set_progress(done[0])

        await asyncio.gather(*(one(i) for i in req.items))
        failed = sum(1 for e in results.values() if e is not None)
        ctx.remember(results=results, failed=failed)
        ctx.log.info("members streamed on", moved=len(results) - failed, failed=failed,
                     destination=req.destination)

    async def rollback(self, ctx: ActivityContext) -> None:
        """Nothing to undo: a stream cut off is a receive ZFS discards (not resumable),
        and the members that arrived are whole snapshots, as a cancelled tree sync's."""


def delegated_member_streams(record: ActivityRecord, servers: ServerRegistry,
                             policy: RetryPolicy) -> DelegatedWork:
    """The parent of a batch the source's peer daemon streams to the destination over its
    own SSH connection; the peer names its own storage ``daemon_server``."""
    req = MemberStreamsRequest.from_params(record.params)
    body = {**req.params(), "source": servers.entry(req.source).config.daemon_server,
            "mount": not req.unmounted}
    del body["unmounted"]
    if not req.bandwidth_limit:
        del body["bandwidth_limit"]
    return DelegatedWork(servers.peer(req.source), servers.links, policy,
                         ChildRequest("/v1/member-streams", body, adopt=("results",)))


def register(engine: ActivityEngine, servers: ServerRegistry,
             policy: RetryPolicy | None = None) -> None:
    def work(r: ActivityRecord) -> MemberStreamsWork | DelegatedWork:
        if r.route == DataRoute.DELEGATED:
            return delegated_member_streams(r, servers, policy or RetryPolicy())
        return MemberStreamsWork(r, servers, policy or RetryPolicy())

    engine.register(KIND, work)
