"""Routes and handlers of the control API (``/v1``), declared in one table.

The table drives the router, the credential check (``mutating``) and the served
OpenAPI document, so the three cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from aiohttp import web

from .. import __version__, snapshots
from ..activity import DataRoute, IllegalTransition
from ..capacity import API_WAIT, CapacityCache
from ..config import stores_problem
from ..engine import EngineClosed, UnknownActivity
from ..journal import ActivityFilter
from ..metrics import CONTENT_TYPE, Metrics
from ..objectstore.client import StoreError
from ..objectstore.layout import BackupMissing, BrokenChain
from ..objectstore.stores import UnknownStore
from ..parsing import ConfigError
from ..policies.runtime import PolicyError, UnknownPolicy
from ..replication.flows.replicate import (
    ReplicationRequest,
    make_plan,
    submit_replication,
    transfer_route,
)
from ..replication.logic.holds import holds_of
from ..replication.logic.plan import ReplicationConflict
from ..replication.logic.receive import parse_receive
from ..replication.logic.spec import parse_relationship
from ..replication.relationships.runtime import RelationshipError, UnknownRelationship
from ..servers import ServerUnavailable, UnknownServer
from ..storage.errors import BackendError, NotFound
from ..storage.names import InvalidName, validate_snapshot, validate_snapshot_label, validate_volume
from ..transport.ssh import AuthenticationFailed, HostKeyRejected, SshError
from ..volume_roots import volume_roots, within
from ..volume_states import REPLICATING, VolumeBusy, replication_holds
from . import backups, failover, member_batches, policies, prune, volumes
from . import models as m
from .context import ApiContext
from .models import MAX_WAIT
from .openapi import openapi_document
from .peercred import may_mutate, peer_credentials
from .peers import check_peer, child_of
from .problems import ApiProblem, problem_response
from .routing import Handler, Route, json_response, relationship_name
from .schema import parse_query, read_body

log = structlog.get_logger("cerssd.api")
_OPENAPI: dict[str, Any] | None = None


async def scrape(metrics: Metrics, capacity: CapacityCache | None) -> web.Response:
    """A Prometheus scrape, on the control socket or the metrics port: the capacity
    figures it has (measured at most every 30 s, never waited for: ``capacity.py``)."""
    if capacity is not None:
        await capacity.current(fresh=False)
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})


class ControlApi:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    # -- daemon -------------------------------------------------------------------------
    async def status(self, request: web.Request) -> web.Response:
        by_state: dict[str, int] = {}
        for (_, state), n in self.ctx.engine.counts().items():
            by_state[state] = by_state.get(state, 0) + n
        cfg = self.ctx.config()
        return json_response({
            "version": __version__, "pid": os.getpid(), "started_at": self.ctx.started_at,
            "uptime_seconds": round(time.time() - self.ctx.started_at, 3),
            "config": str(cfg.source) if cfg.source else None,
            "daemon": {"log_level": cfg.daemon.log_level,
                       "control_group": cfg.daemon.control_group,
                       "activity_retention": cfg.daemon.activity_retention,
                       "shutdown_timeout": cfg.daemon.shutdown_timeout},
            "activities": by_state,
            "servers": {n: e.probed for n, e in self.ctx.servers.entries.items()},
            "cluster": self.ctx.cluster.to_json() if self.ctx.cluster is not None else None,
        })

    async def servers(self, request: web.Request) -> web.Response:
        return json_response({"items": [e.to_json() for e in self.ctx.servers.entries.values()]})

    async def links(self, request: web.Request) -> web.Response:
        return json_response({"items": [link.to_json() for link in self.ctx.servers.links.all()]})

    async def capabilities(self, request: web.Request) -> web.Response:
        """The capability booleans and, beside them, each server's pool space (measured
        at most every 30 s: ``capacity.py``)."""
        measured = (await self.ctx.capacity.current(API_WAIT) if self.ctx.capacity
                    else {})
        return json_response({
            name: {**caps.to_json(),
                   **({"capacity": measured[name].to_json()} if name in measured else {})}
            for name, caps in self.ctx.servers.capabilities().items()})

    async def metrics(self, request: web.Request) -> web.Response:
        return await scrape(self.ctx.metrics, self.ctx.capacity)

    async def openapi(self, request: web.Request) -> web.Response:
        global _OPENAPI
        if _OPENAPI is None:  # the same for the daemon's life: built on first use
            _OPENAPI = openapi_document(ROUTES)
        return json_response(_OPENAPI)

    # -- volumes and snapshots ----------------------------------------------------------
    async def volumes(self, request: web.Request) -> web.Response:
        q = parse_query(request.query, m.VolumesQuery)
        backend = await self.ctx.servers.backend(q.server)
        policies = self.ctx.policies.all() if self.ctx.policies is not None else ()
        roots = volume_roots(self.ctx.servers.entry(q.server).config,
                             (rt.spec for rt in self.ctx.relationships.registry.all()),
                             (p.spec for p in policies))
        if q.root is not None:
            roots = within(roots, q.root)
        page = await backend.volumes(roots, limit=q.limit, offset=q.offset)
        states = self.ctx.volume_states
        return json_response({"server": q.server,
                      "roots": list(roots) if roots is not None else None,
                      "items": [{**v.to_json(), "state": states.state_of(q.server, v)}
                                for v in page.items],
                      "total": page.total, "limit": q.limit, "offset": q.offset})

    async def snapshots(self, request: web.Request) -> web.Response:
        q = parse_query(request.query, m.ServerQuery)
        volume = validate_volume(request.match_info["volume"])
        backend = await self.ctx.servers.backend(q.server)
        items = await backend.snapshots(volume)
        servers = list(self.ctx.servers.entries)
        return json_response({"server": q.server, "volume": volume,
                      "items": [{**s.to_json(),
                                 **(await holds_of(backend, s, servers)).to_json()}
                                for s in items]})

    async def create_snapshot(self, request: web.Request) -> web.Response:
        volume = validate_volume(request.match_info["volume"])
        body = await read_body(request, m.SnapshotCreate)
        validate_snapshot(f"{volume}@{body.name}")  # the whole name fits ZFS's limit
        backend = await self.ctx.servers.backend(body.server)
        await backend.volume(volume)  # 404 now rather than a failed activity
        self.ctx.volume_states.check([(body.server, volume)], "a snapshot")
        record = snapshots.submit_create(self.ctx.engine, body.server, volume, body.name)
        return json_response(record.to_json(), 202)

    async def destroy_snapshot(self, request: web.Request) -> web.Response:
        volume = validate_volume(request.match_info["volume"])
        label = validate_snapshot_label(request.match_info["label"])
        name = str(validate_snapshot(f"{volume}@{label}"))
        q = parse_query(request.query, m.ServerQuery)
        backend = await self.ctx.servers.backend(q.server)
        if not await backend.has_snapshot(name):  # 404 now rather than a failed activity
            raise NotFound(f"snapshot {name} does not exist on {q.server}")
        self.ctx.volume_states.check([(q.server, volume)], "destroying a snapshot")
        record = snapshots.submit_destroy(self.ctx.engine, q.server, name)
        return json_response(record.to_json(), 202)

    # -- replication --------------------------------------------------------------------
    async def replicate(self, request: web.Request) -> web.Response:
        body = await read_body(request, m.ReplicationCreate)
        snapshot = body.snapshot
        volume = validate_snapshot(snapshot).volume
        req = ReplicationRequest(
            snapshot=snapshot, source=body.source, destination=body.destination,
            target_volume=body.target_volume or volume,
            force_full_copy=body.force_full_copy, overwrite=body.overwrite,
            intermediates=body.intermediates, bandwidth_limit=body.bandwidth_limit or None,
            path=str(body.path), unmounted=not body.mount,
            send_properties=body.send_properties, **_receive_properties(body))
        if req.source == req.destination and req.target_volume == volume:
            raise ApiProblem(422, "Unprocessable Content",
                             "target_volume: replicating to the same server needs a different "
                             "target_volume", field="target_volume")
        if body.parent is not None and (running := child_of(
                self.ctx.engine, "replicate", body.parent)) is not None:
            return json_response(running.to_json(), 200)  # a delegating daemon asked again
        src = await self.ctx.servers.backend(req.source)
        dst = await self.ctx.servers.backend(req.destination)
        both_remote = all(self.ctx.servers.entry(s).config.kind == "ssh"
                          for s in (req.source, req.destination))
        # conflicts answer 409 before any work starts
        plan = await make_plan(req, src, dst, both_remote=both_remote)
        route = transfer_route(self.ctx.servers, req.source, req.destination)
        if route == DataRoute.DELEGATED:  # the source's cerssd sends it: docs/peers.md
            await check_peer(self.ctx.servers.peer(req.source))
        with self.ctx.engine.submitting(**({"peer_parent": body.parent} if body.parent
                                           else {})):
            record = self.ctx.volume_states.submit_holding(
                holds=replication_holds(req), busy=REPLICATING,
                submit=lambda: submit_replication(self.ctx.engine, req, route=route))
        return json_response({**record.to_json(), "plan": plan.mode, "path": plan.path}, 202)

    # -- relationships ------------------------------------------------------------------
    async def relationships(self, request: web.Request) -> web.Response:
        view = self.ctx.relationships.view
        return json_response({"items": [view.to_json(rt) for rt in view.all()]})

    async def relationship(self, request: web.Request) -> web.Response:
        return self._relationship_now(request)

    async def relationship_members(self, request: web.Request) -> web.Response:
        q = parse_query(request.query, m.MembersQuery)
        rels = self.ctx.relationships
        rt = rels.registry.get(relationship_name(request))
        return json_response(rels.view.members_page(rt, state=q.state, limit=q.limit,
                                                    offset=q.offset))

    async def create_relationship(self, request: web.Request) -> web.Response:
        body = await read_body(request, m.RelationshipCreate)
        # The table as it would be written in the config file (and is persisted): the
        # fields given, defaults left out, as parse_relationship reads both.
        table = msgspec.to_builtins(body)
        name = table.pop("name")
        try:
            spec = parse_relationship(name, table, servers=self.ctx.servers.entries, key="",
                                      origin="api",
                                      stores=self.ctx.relationships.registry.store_names,
                                      drivers=self.ctx.servers.drivers())
        except ConfigError as exc:
            field_name = exc.key.removeprefix(".") or "name"
            raise ApiProblem(422, "Unprocessable Content", f"{field_name}: {exc.problem}",
                             field=field_name) from exc
        if spec.stores and (problem := stores_problem(
                self.ctx.servers.entry(spec.master).config, spec.is_tree)) is not None:
            raise ApiProblem(422, "Unprocessable Content", f"stores: {problem}",
                             field="stores")
        rels = self.ctx.relationships
        return json_response(rels.view.to_json(rels.verbs.create(spec)), 201)

    async def remove_relationship(self, request: web.Request) -> web.Response:
        await self.ctx.relationships.verbs.remove(relationship_name(request))
        return web.Response(status=204)

    async def pause_relationship(self, request: web.Request) -> web.Response:
        await self.ctx.relationships.verbs.pause(relationship_name(request))
        return self._relationship_now(request)

    async def resume_relationship(self, request: web.Request) -> web.Response:
        await self.ctx.relationships.verbs.resume(relationship_name(request))
        return self._relationship_now(request)

    async def sync_relationship(self, request: web.Request) -> web.Response:
        self.ctx.relationships.verbs.sync_now(relationship_name(request))
        return self._relationship_now(request, 202)

    def _relationship_now(self, request: web.Request, status: int = 200) -> web.Response:
        """The relationship as it is now (a control verb's answer: after the verb)."""
        rels = self.ctx.relationships
        rt = rels.registry.get(relationship_name(request))
        return json_response(rels.view.to_json(rt), status)

    # -- activities ---------------------------------------------------------------------
    async def activities(self, request: web.Request) -> web.Response:
        q = parse_query(request.query, m.ActivitiesQuery)
        where = ActivityFilter(state=str(q.state) if q.state else None, kind=q.kind,
                               volume=q.volume, relationship=q.relationship, since=q.since,
                               until=q.until)
        engine = self.ctx.engine
        items = engine.page_json(where, q.limit, q.offset)
        tail = json.dumps({"total": engine.count(where), "limit": q.limit, "offset": q.offset})
        # The records go out as the journal holds them: a page of history is not parsed
        # and serialised again on every request.
        return web.Response(text='{"items": [' + ", ".join(items) + "], " + tail[1:],
                            content_type="application/json")

    async def activity(self, request: web.Request) -> web.Response:
        q = parse_query(request.query, m.WaitQuery)
        activity = self.ctx.engine.get(request.match_info["id"])
        if q.wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(activity.done.wait(), min(q.wait, MAX_WAIT))
        return json_response(activity.snapshot().to_json())

    async def suspend(self, request: web.Request) -> web.Response:
        return json_response((await self.ctx.engine.suspend(request.match_info["id"])).to_json())

    async def resume(self, request: web.Request) -> web.Response:
        return json_response((await self.ctx.engine.resume(request.match_info["id"])).to_json())

    async def cancel(self, request: web.Request) -> web.Response:
        record = await self.ctx.engine.cancel(request.match_info["id"])
        return json_response(record.to_json(), 202)


_A = ControlApi
#: The 409 every action on a volume may get from a server without stateless_snapshots.
VOLUME_BUSY = "volume busy on a stateful server (the problem names the holding activity)"
ID = "{id:[0-9a-f]+}"
VOL = "{volume:[^@]+?}"
REL = "{name}"  # any segment: the handler answers a bad name with 400
ROUTES: list[Route[ControlApi]] = [
    Route("GET", "/v1/status", _A.status, "Daemon status: version, uptime, activity counts",
          returns=m.DaemonStatus),
    Route("GET", "/v1/servers", _A.servers, "Configured servers and their backends",
          returns=m.Servers),
    Route("GET", "/v1/capabilities", _A.capabilities,
          "Capabilities published per server, and beside them its pools' space (total, "
          "free, allocated, provisioned, thin_ratio)", returns=m.CapabilitiesByServer),
    Route("GET", "/v1/links", _A.links,
          "Link health per remote server: up, lost (since, last error) or retrying",
          returns=m.Links),
    Route("GET", "/v1/volumes", _A.volumes,
          "Volumes the daemon serves on a server (its pools key, else the pools its "
          "relationships name, else every pool: roots), paginated with a total, each with "
          "its state: available, in-use, or busy (backing-up, replicating, restoring, "
          "failing-over) on a stateful server",
          query=m.VolumesQuery, returns=m.Volumes, responses={404: "unknown server"}),
    Route("GET", f"/v1/volumes/{VOL}/snapshots", _A.snapshots,
          "Snapshots of a volume, oldest first, with guid and creation, and who holds "
          "each: cerssd_holds (cerssd's tags) and foreign_holds (holds that are not "
          "cerssd's, which retention cannot get past)", query=m.ServerQuery,
          returns=m.Snapshots, responses={404: "unknown volume or server"}),
    Route("POST", f"/v1/volumes/{VOL}/snapshots", _A.create_snapshot,
          "Create a snapshot (an activity)", mutating=True, body=m.SnapshotCreate,
          ok=202, returns=m.Activity,
          responses={202: "activity created", 404: "unknown volume or server",
                     409: VOLUME_BUSY}),
    Route("DELETE", f"/v1/volumes/{VOL}/snapshots/{{label}}", _A.destroy_snapshot,
          "Destroy a snapshot (an activity)", mutating=True, query=m.ServerQuery,
          ok=202, returns=m.Activity,
          responses={202: "activity created", 404: "unknown snapshot, volume or server",
                     409: VOLUME_BUSY}),
    Route("POST", "/v1/volumes", volumes.create_volume,
          "Create a volume: a filesystem (with a quota when a size is given), a block "
          "volume of a size, or a clone of a snapshot (an activity)", mutating=True,
          body=m.VolumeCreate, ok=202, returns=m.Activity,
          responses={202: "activity created", 400: "invalid name (or a pool's name)",
                     404: "unknown server, parent volume or snapshot",
                     409: "exists (volume-exists), no block volumes or clones on the "
                     "server, or " + VOLUME_BUSY,
                     422: "a block volume without a size, a clone with one"}),
    Route("POST", f"/v1/volumes/{VOL}/revert", volumes.revert_volume,
          "Revert a volume to a snapshot: later snapshots and changes are destroyed (an "
          "activity; dry_run says what would be)", mutating=True, body=m.VolumeRevert,
          ok=202, returns=m.RevertAccepted,
          responses={200: ("dry run", m.RevertPlan), 202: "activity created",
                     404: "unknown volume, snapshot or server",
                     409: "a later snapshot is a replication base (replication-base) "
                     "without force, or " + VOLUME_BUSY}),
    Route("POST", f"/v1/volumes/{VOL}/extend", volumes.extend_volume,
          "Grow a block volume's size or a filesystem's quota (an activity)", mutating=True,
          body=m.VolumeExtend, ok=202, returns=m.Activity,
          responses={202: "activity created", 404: "unknown volume or server",
                     409: "smaller than now (would-shrink, naming the current size), a "
                     "filesystem without a quota (no-size), or " + VOLUME_BUSY}),
    Route("DELETE", f"/v1/volumes/{VOL}", volumes.delete_volume,
          "Delete a volume and what is below it (an activity); refused while clones, "
          "volumes below it or relationships depend on it, unless force",
          mutating=True, query=m.VolumeDeleteQuery, ok=202, returns=m.DeleteAccepted,
          responses={202: "activity created", 400: "invalid name (or a pool's name)",
                     404: "unknown volume or server",
                     409: "has dependents (has-dependents, naming them) without force, or "
                     + VOLUME_BUSY}),
    Route("POST", "/v1/replications", _A.replicate,
          "snapshot_replicate: send a snapshot from one server to another (an activity)",
          mutating=True, body=m.ReplicationCreate, ok=202, returns=m.ReplicationAccepted,
          responses={202: "activity created", 404: "unknown snapshot or server",
                     409: "conflict (no common snapshot, diverged), or " + VOLUME_BUSY}),
    Route("GET", "/v1/relationships", _A.relationships,
          "Relationships with each slave's state, lag and link", returns=m.Relationships),
    Route("POST", "/v1/relationships", _A.create_relationship,
          "Create a relationship: keep a volume replicated to slaves, continuously",
          mutating=True, body=m.RelationshipCreate, ok=201, returns=m.Relationship,
          responses={201: "created", 409: "exists", 422: "invalid definition"}),
    Route("GET", f"/v1/relationships/{REL}", _A.relationship, "One relationship",
          returns=m.Relationship, responses={404: "unknown relationship"}),
    Route("GET", f"/v1/relationships/{REL}/volumes", _A.relationship_members,
          "A tree relationship's members, by name, with each slave's state (in-sync, "
          "behind, sending, failing), lag and error; paginated, filterable by state",
          query=m.MembersQuery, returns=m.Members, responses={404: "unknown relationship"}),
    Route("DELETE", f"/v1/relationships/{REL}", _A.remove_relationship,
          "Stop and forget a relationship made through the API (snapshots are kept)",
          mutating=True, ok=204,
          responses={204: "removed", 404: "unknown relationship",
                     409: "defined in the config file"}),
    Route("POST", f"/v1/relationships/{REL}/pause", _A.pause_relationship,
          "Pause: no new cycles, running transfers suspended", mutating=True,
          returns=m.Relationship, responses={404: "unknown relationship",
                                             409: "stopped, already paused, or failing over"}),
    Route("POST", f"/v1/relationships/{REL}/resume", _A.resume_relationship,
          "Resume a paused relationship, or start a stopped one", mutating=True,
          returns=m.Relationship, responses={404: "unknown relationship", 409: "not paused"}),
    Route("POST", f"/v1/relationships/{REL}/sync-now", _A.sync_relationship,
          "Start a cycle now; retrying transfers try again now", mutating=True,
          ok=202, returns=m.Relationship,
          responses={202: "cycle requested", 404: "unknown relationship",
                     409: "paused or stopped"}),
    Route("POST", f"/v1/relationships/{REL}/failover", failover.failover,
          "Fail over to a slave (or back to the home master): fence, final sync, promote, "
          "reverse (an activity)", mutating=True, body=m.FailoverCreate,
          ok=202, returns=m.Activity,
          responses={202: "activity created", 404: "unknown relationship or server",
                     409: "not a slave, failover under way, or master down without force"}),
    Route("POST", f"/v1/relationships/{REL}/rejoin", failover.rejoin_old_master,
          "Rejoin a fenced old master as a slave: dry run first, rollback only with consent",
          mutating=True, body=m.RejoinCreate, returns=m.RejoinPlan,
          responses={200: "dry run, or rejoined (a rejoin activity, waited for)",
                     404: "unknown relationship or server",
                     409: "not fenced, no shared snapshot, consent needed, or the volume "
                     "is held on a stateful server (Volume Busy)",
                     502: "the rollback failed (Rejoin Failed, naming the activity)"}),
    Route("GET", "/v1/policies", policies.list_policies,
          "Snapshot policies ([snapshots.NAME]): schedule, grid, last run and its result, "
          "snapshots kept", returns=m.Policies),
    Route("GET", "/v1/policies/{policy}", policies.show_policy, "One snapshot policy",
          returns=m.Policy, responses={400: "invalid name", 404: "unknown policy"}),
    Route("POST", "/v1/policies/{policy}/run", policies.run_policy,
          "Run a snapshot policy now (snapshot, then prune by its grid)", mutating=True,
          ok=202, returns=m.Policy,
          responses={202: "run requested", 400: "invalid name", 404: "unknown policy",
                     409: "its activity is suspended"}),
    Route("POST", "/v1/policies/{policy}/prune", policies.prune_policy,
          "A snapshot policy's grid now, or a dry run: what goes and what stays, and why",
          mutating=True, body=m.PolicyPrune, returns=m.PolicyPruneResult,
          responses={200: "the plan (and its prune activity unless a dry run)",
                     400: "invalid name", 404: "unknown policy"}),
    Route("POST", f"/v1/relationships/{REL}/prune", prune.prune_relationship,
          "Retention now on the master, slaves and stores, or a dry run: what goes and why",
          mutating=True, body=m.RelationshipPrune, returns=m.RelationshipPruneResult,
          responses={200: "the plan per place (and its prune activity unless a dry run)",
                     404: "unknown relationship", 409: "a failover is under way",
                     422: "only names something that is not one of its places"}),
    Route("GET", "/v1/stores", backups.list_stores,
          "Object stores (endpoint, bucket, prefix, link; never credentials)",
          returns=m.Stores),
    Route("GET", "/v1/backups", backups.list_backups,
          "Complete backups in a store (those with a manifest), oldest first",
          query=m.BackupsQuery, returns=m.Backups,
          responses={404: "unknown store", 409: "no store configured"}),
    Route("POST", "/v1/backups", backups.create_backup,
          "Back up a snapshot straight into an object store (an activity)", mutating=True,
          body=m.BackupCreate, ok=202, returns=m.Activity,
          responses={202: "activity created", 404: "unknown snapshot, server or store",
                     409: "server cannot copy directly, or " + VOLUME_BUSY}),
    Route("POST", "/v1/backups/prune", backups.prune_backups,
          "Delete backups a retention grid no longer keeps (never a needed parent)",
          mutating=True, body=m.BackupPrune, returns=m.PrunePlan,
          responses={200: "dry run or nothing to delete",
                     202: ("activity created", m.PruneAccepted), 404: "unknown store",
                     409: VOLUME_BUSY}),
    Route("POST", "/v1/restores", backups.create_restore,
          "Restore a backed-up snapshot (and its chain) into a volume (an activity)",
          mutating=True, body=m.RestoreCreate, ok=202, returns=m.RestoreAccepted,
          responses={202: "activity created", 404: "no such backup, server or store",
                     409: "broken chain or target exists, or " + VOLUME_BUSY}),
    Route("POST", "/v1/member-streams", member_batches.create_member_streams,
          "Stream a tree's members on to a slave from this node (a managing daemon's "
          "delegated batch, an activity)", mutating=True, body=m.MemberStreamsCreate,
          ok=202, returns=m.Activity,
          responses={200: ("the batch this parent already started", m.Activity),
                     202: "activity created", 404: "unknown server",
                     422: "source is not this daemon's local server"}),
    Route("POST", "/v1/member-backups", member_batches.create_member_backups,
          "Back up a tree's members from this node into a store (a managing daemon's "
          "delegated batch, an activity)", mutating=True, body=m.MemberBackupsCreate,
          ok=202, returns=m.Activity,
          responses={200: ("the batch this parent already started", m.Activity),
                     202: "activity created", 404: "unknown server or store",
                     422: "server is not this daemon's local server"}),
    Route("GET", "/v1/activities", _A.activities, "Activities, newest first, paginated",
          query=m.ActivitiesQuery, returns=m.ActivityPage),
    Route("GET", f"/v1/activities/{ID}", _A.activity,
          "One activity; with ?wait=S, answered when it finishes (or after S seconds)",
          query=m.WaitQuery, returns=m.Activity, responses={404: "unknown activity"}),
    Route("POST", f"/v1/activities/{ID}/suspend", _A.suspend,
          "Suspend: no further progress (the sender is blocked)", mutating=True,
          returns=m.Activity, responses={404: "unknown activity", 409: "not running"}),
    Route("POST", f"/v1/activities/{ID}/resume", _A.resume, "Resume a suspended activity",
          mutating=True, returns=m.Activity,
          responses={404: "unknown activity", 409: "not suspended"}),
    Route("POST", f"/v1/activities/{ID}/cancel", _A.cancel, "Cancel and roll back",
          mutating=True, ok=202, returns=m.Activity,
          responses={202: "cancelling", 404: "unknown activity", 409: "already finished"}),
    Route("GET", "/v1/openapi.json", _A.openapi, "This document",
          returns=m.OpenApiDocument),
    Route("GET", "/metrics", _A.metrics, "Prometheus metrics (text format)",
          media="text/plain"),
]

_ERRORS: list[tuple[type[BaseException], int, str]] = [
    (InvalidName, 400, "Invalid Name"),
    (UnknownActivity, 404, "Unknown Activity"),
    (UnknownServer, 404, "Unknown Server"),
    (UnknownRelationship, 404, "Unknown Relationship"),
    (UnknownStore, 404, "Unknown Store"),
    (UnknownPolicy, 404, "Unknown Snapshot Policy"),
    (PolicyError, 409, "Snapshot Policy Conflict"),
    (BackupMissing, 404, "Unknown Backup"),
    (BrokenChain, 409, "Broken Backup Chain"),
    (RelationshipError, 409, "Relationship Conflict"),
    (NotFound, 404, "Not Found"),
    (IllegalTransition, 409, "Illegal State Change"),
    (ReplicationConflict, 409, "Replication Conflict"),
    (VolumeBusy, 409, "Volume Busy"),
    (ServerUnavailable, 503, "Server Unavailable"),
    (HostKeyRejected, 502, "Host Key Rejected"),
    (AuthenticationFailed, 502, "SSH Authentication Failed"),
    (SshError, 503, "Server Unreachable"),
    (EngineClosed, 503, "Shutting Down"),
    (BackendError, 502, "Backend Error"),
]
#: Object-store failures: unreachable (retry later) or refused (fix the config).
_STORE_TRANSIENT = (503, "Object Store Unreachable")
_STORE_PERMANENT = (502, "Object Store Error")


def _receive_properties(body: m.ReplicationCreate) -> dict[str, Any]:
    """The properties the receive filters, checked as a relationship's are (a delegating
    daemon sends its relationship's; none by default)."""
    table = {k: v for k, v in (("receive_exclude", body.receive_exclude),
                               ("receive_set", body.receive_set)) if v is not None}
    if not table:
        return {}
    try:
        props = parse_receive(table, "").properties
    except ConfigError as exc:
        raise ApiProblem(422, "Unprocessable Content", f"{exc.key}: {exc.problem}",
                         field=exc.key.split("[")[0].split(".")[0]) from exc
    return {"receive_exclude": props.exclude, "receive_set": props.override}


def _problem_for(request: web.Request, exc: BaseException) -> web.Response | None:
    if isinstance(exc, ApiProblem):
        return problem_response(request, exc.status, exc.title, exc.detail, **exc.extra)
    for kind, status, title in _ERRORS:
        if isinstance(exc, kind):
            detail = (f"no activity {exc.args[0]}" if isinstance(exc, UnknownActivity)
                      else f"no server {exc.args[0]} in the config"
                      if isinstance(exc, UnknownServer)
                      else f"no relationship {exc.args[0]}"
                      if isinstance(exc, UnknownRelationship)
                      else f"no store {exc.args[0]} in the config"
                      if isinstance(exc, UnknownStore)
                      else f"no snapshot policy {exc.args[0]} in the config"
                      if isinstance(exc, UnknownPolicy) else str(exc))
            extra = ({"code": exc.code} if isinstance(exc, ReplicationConflict)
                     else {"code": "volume-busy", **exc.hold.to_json()}
                     if isinstance(exc, VolumeBusy) else {})
            return problem_response(request, status, title, detail, **extra)
    if isinstance(exc, StoreError):
        status, title = _STORE_PERMANENT if exc.permanent else _STORE_TRANSIENT
        return problem_response(request, status, title, str(exc), store=exc.store)
    return None


def build_app(ctx: ApiContext, *, check_credentials: bool = True) -> web.Application:
    api = ControlApi(ctx)
    mutating_handlers: set[str] = set()

    @web.middleware
    async def guard(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                    ) -> web.StreamResponse:
        try:
            if check_credentials and request.match_info.route.name in mutating_handlers:
                peer = peer_credentials(request.transport.get_extra_info("socket")
                                        if request.transport else None)
                if not may_mutate(peer, ctx.config().daemon.control_group):
                    who = f"uid {peer.uid}" if peer else "an unidentified peer"
                    raise ApiProblem(403, "Forbidden",
                                     f"{who} may read but not change anything: mutating calls "
                                     "need root or the daemon.control_group group")
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return problem_response(request, exc.status, exc.reason, exc.text or exc.reason)
        except Exception as exc:
            response = _problem_for(request, exc)
            if response is not None:
                return response
            # A defect: one log line (the traceback as structured frames, no locals) and
            # a problem document, never aiohttp's text/plain 500.
            log.error("api request failed", method=request.method, path=request.path,
                      error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            return problem_response(request, 500, "Internal Server Error",
                                    f"the daemon failed to answer {request.method} "
                                    f"{request.path} ({type(exc).__name__}); the daemon's "
                                    "log has the details")

    app = web.Application(middlewares=[guard])
    for i, route in enumerate(ROUTES):
        name = f"r{i}"
        if route.mutating:
            mutating_handlers.add(name)
        app.router.add_route(route.method, route.path,
                             _bind(api, route.handler), name=name)
    return app


def _bind(api: ControlApi, handler: Handler[ControlApi],
          ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await handler(api, request)

    return handle
