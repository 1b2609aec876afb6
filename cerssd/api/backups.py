"""Control API for object stores, backups and restores (``/v1/stores``, ``/v1/backups``...).

Kept apart from ``app.py`` so each file stays readable; the routes join the one table
that drives the router, the credential check and the OpenAPI document.
"""

from __future__ import annotations

import time

from aiohttp import web

from ..engine import ActivityError
from ..objectstore import catalog
from ..objectstore.layout import BackupMissing, BrokenChain
from ..objectstore.stores import Stores
from ..parsing import ConfigError
from ..replication.flows.backup import BackupRequest, submit_backup
from ..replication.flows.bucket_prune import bucket_plan, submit_backup_prune
from ..replication.flows.restore import (
    IdentityProblem,
    RestoreRequest,
    identity_for,
    restore_chain,
    submit_restore,
)
from ..replication.logic.retention import parse_grid
from ..volume_states import (
    BACKING_UP,
    PRUNING,
    RESTORING,
    backup_holds,
    backup_prune_holds,
    restore_holds,
)
from . import models as m
from .peers import check_peer, child_of
from .problems import ApiProblem
from .routing import Api, json_response
from .schema import parse_query, read_body


def _stores(api: Api) -> Stores:
    stores = api.ctx.stores
    if stores is None or not stores.stores:
        raise ApiProblem(409, "No Object Store", "no [stores.NAME] is configured")
    return stores


def _store_name(api: Api, name: str | None) -> str:
    stores = _stores(api)
    if name is None:
        if len(stores.stores) != 1:
            raise ApiProblem(422, "Unprocessable Content", "store: several object stores are "
                             "configured; name one", field="store")
        return next(iter(stores.stores))
    stores.get(name)
    return name


def _conflict(exc: ActivityError) -> ApiProblem:
    return ApiProblem(409, "Conflict", exc.message, code=exc.reason)


async def list_stores(api: Api, request: web.Request) -> web.Response:
    stores = api.ctx.stores
    return json_response({"items": [s.to_json() for s in (stores.all() if stores else [])]})


async def list_backups(api: Api, request: web.Request) -> web.Response:
    q = parse_query(request.query, m.BackupsQuery)
    name = _store_name(api, q.store)
    found = await catalog.backups(_stores(api).get(name), q.volume)
    return json_response({"store": name, "items": [m.summary() for m in found]})


async def create_backup(api: Api, request: web.Request) -> web.Response:
    body = await read_body(request, m.BackupCreate)
    req = BackupRequest(snapshot=body.snapshot, server=body.server,
                        store=_store_name(api, body.store), force_full=body.force_full,
                        intermediates=body.intermediates)
    if body.parent is not None and (running := child_of(api.ctx.engine, "backup",
                                                        body.parent)) is not None:
        return json_response(running.to_json(), 200)  # a delegating daemon asked again
    backend = await api.ctx.servers.backend(req.server)
    await backend.snapshot(req.snapshot)  # 404 now rather than a failed activity
    if api.ctx.servers.delegates(req.server):
        await check_peer(api.ctx.servers.peer(req.server))
    try:
        with api.ctx.engine.submitting(**({"peer_parent": body.parent} if body.parent else {})):
            record = api.ctx.volume_states.submit_holding(
                holds=backup_holds(req), busy=BACKING_UP,
                submit=lambda: submit_backup(api.ctx.engine, api.ctx.servers, _stores(api),
                                             req))
    except ActivityError as exc:
        raise _conflict(exc) from exc
    return json_response(record.to_json(), 202)


async def create_restore(api: Api, request: web.Request) -> web.Response:
    body = await read_body(request, m.RestoreCreate)
    req = RestoreRequest(store=_store_name(api, body.store), snapshot=body.snapshot,
                         server=body.server, target_volume=body.target_volume,
                         identity_file=body.identity_file)
    if body.parent is not None and (running := child_of(api.ctx.engine, "restore",
                                                        body.parent)) is not None:
        return json_response(running.to_json(), 200)  # a delegating daemon asked again
    await api.ctx.servers.backend(req.server)
    delegated = api.ctx.servers.delegates(req.server)
    if delegated:
        await check_peer(api.ctx.servers.peer(req.server))
    try:
        store = _stores(api).get(req.store)
        backups = await restore_chain(store, req.snapshot)
        if not delegated:  # a delegated restore's identity file is on the peer's node
            identity_for(req, store, backups)
        with api.ctx.engine.submitting(**({"peer_parent": body.parent} if body.parent
                                           else {})):
            record = api.ctx.volume_states.submit_holding(
                holds=restore_holds(req), busy=RESTORING,
                submit=lambda: submit_restore(api.ctx.engine, api.ctx.servers, _stores(api),
                                              req))
    except BackupMissing as exc:
        raise ApiProblem(404, "Unknown Backup", str(exc), code="no-such-backup") from exc
    except BrokenChain as exc:
        raise ApiProblem(409, "Broken Backup Chain", str(exc), code="broken-chain") from exc
    except IdentityProblem as exc:
        raise ApiProblem(422, "Unprocessable Content", str(exc), field="identity_file",
                         code="identity") from exc
    except ActivityError as exc:
        raise _conflict(exc) from exc
    return json_response({**record.to_json(), "chain": [m.snapshot for m in backups]}, 202)


async def prune_backups(api: Api, request: web.Request) -> web.Response:
    body = await read_body(request, m.BackupPrune)
    volume = body.volume
    try:
        grid = parse_grid(body.retention, "retention")
    except ConfigError as exc:
        raise ApiProblem(422, "Unprocessable Content", f"{exc.key}: {exc.problem}",
                         field="retention") from exc
    if body.keep_min < 1:
        raise ApiProblem(422, "Unprocessable Content", "keep_min: must be at least 1",
                         field="keep_min")
    name = _store_name(api, body.store)
    found = await catalog.backups(_stores(api).get(name), volume)
    verdicts = bucket_plan(found, grid, now=time.time(), keep_min=body.keep_min)
    going = {v.snapshot.guid for v in verdicts}
    doomed = [m for m in found if m.guid in going]
    plan = {"store": name, "volume": volume, "delete": [m.snapshot for m in doomed],
            "keep": [m.snapshot for m in found if m.guid not in going],
            "keep_min": body.keep_min, "destroy": [v.to_json() for v in verdicts]}
    if body.dry_run or not doomed:
        return json_response(plan)
    record = api.ctx.volume_states.submit_holding(
        holds=backup_prune_holds(api.ctx.servers.entries, volume), busy=PRUNING,
        submit=lambda: submit_backup_prune(api.ctx.engine, name, volume, doomed))
    return json_response({**record.to_json(), "plan": plan}, 202)
