"""Control API for the volume operations: create (or clone), revert, extend, delete.

Every request is checked before an activity exists, so a bad one is a 4xx problem
document and nothing runs: names by the models (full matches), the server (404), the
volume and snapshot (404), what the server's driver can do (409: no block volumes, no
clones), what is taken (409 ``volume-exists``), a shrink (409 naming the current size),
and what depends on the volume (409 naming it, unless ``force``). Then the activity is
submitted, holding the volume on a stateful server (``volume_states``), and the answer
is 202 with its document (follow it with ``GET /v1/activities/{id}``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import volumes as ops
from ..storage.errors import NotFound
from ..storage.interface import StorageBackend
from ..storage.names import validate_snapshot, validate_volume
from ..volume_states import CREATING, DELETING, EXTENDING, REVERTING
from . import models as m
from .problems import ApiProblem
from .routing import Api, json_response
from .schema import parse_query, read_body


def _conflict(title: str, detail: str, code: str, **extra: Any) -> ApiProblem:
    return ApiProblem(409, title, detail, code=code, **extra)


def _volume_path(request: web.Request) -> str:
    volume = validate_volume(request.match_info["volume"])
    if "/" not in volume:
        raise ApiProblem(400, "Invalid Name", f"volume: {volume!r} is a pool; volume "
                         "operations act on pool/name", field="volume")
    return volume


def _relationships(api: Api, server: str, volume: str) -> list[str]:
    return ops.relationship_uses((rt.spec for rt in api.ctx.relationships.registry.all()),
                                 server, volume)


async def create_volume(api: Api, request: web.Request) -> web.Response:
    body = await read_body(request, m.VolumeCreate)
    name = body.name
    if "/" not in name:
        raise ApiProblem(400, "Invalid Name", f"name: {name!r} is a pool; a volume is "
                         "pool/name", field="name")
    backend = await api.ctx.servers.backend(body.server)
    caps = api.ctx.servers.entry(body.server).capabilities
    block = body.type == m.VolumeType.VOLUME
    if body.from_snapshot is not None:
        await _check_clone(body, backend, caps.clones)
    elif block and body.size is None:
        raise ApiProblem(422, "Unprocessable Content", "size: a block volume needs a size",
                         field="size")
    elif block and not caps.zvols:
        raise _conflict("No Block Volumes", f"server {body.server} has no block volumes "
                        "(zvols): its driver does not publish zvols; create a filesystem",
                        "no-block-volumes")
    if await backend.exists(name):
        raise _conflict("Volume Exists", f"{name} already exists on {body.server}",
                        "volume-exists")
    parent = name.rpartition("/")[0]
    if not await backend.exists(parent):
        raise NotFound(f"{parent} does not exist on {body.server}; create the parent first")
    kind = ops.CLONE if body.from_snapshot else ops.CREATE
    params: dict[str, Any] = {"type": str(body.type), "size": body.size,
                              "from_snapshot": body.from_snapshot}
    record = api.ctx.volume_states.submit_holding(
        holds=[(body.server, name)], busy=CREATING,
        submit=lambda: ops.submit(api.ctx.engine, kind, body.server, name, **params))
    return json_response(record.to_json(), 202)


async def _check_clone(body: m.VolumeCreate, backend: StorageBackend, clones: bool) -> None:
    snapshot = body.from_snapshot
    assert snapshot is not None
    if body.size is not None or body.type == m.VolumeType.VOLUME:
        raise ApiProblem(422, "Unprocessable Content", "from_snapshot: a clone takes its "
                         "type and size from the snapshot (give neither)",
                         field="from_snapshot")
    if not clones:
        raise _conflict("No Clones", f"server {body.server} cannot clone a snapshot: its "
                        "driver does not publish clones", "no-clones")
    pool = backend.pool_of(validate_snapshot(snapshot).volume)
    if pool != backend.pool_of(body.name):
        raise _conflict("Wrong Pool", f"{body.name}: a clone is made in its snapshot's "
                        f"pool ({pool})", "wrong-pool")
    if not await backend.has_snapshot(snapshot):
        raise NotFound(f"snapshot {snapshot} does not exist on {body.server}")


async def revert_volume(api: Api, request: web.Request) -> web.Response:
    volume = _volume_path(request)
    body = await read_body(request, m.VolumeRevert)
    snapshot = str(validate_snapshot(f"{volume}@{body.snapshot}"))
    backend = await api.ctx.servers.backend(body.server)
    later = ops.later_snapshots(await backend.snapshots(volume), body.snapshot)
    servers = list(api.ctx.servers.entries)
    bases = [(s.name, sorted(await backend.pinned_by(s.name, servers)))
             for s in later if s.userrefs]  # only held snapshots are asked about
    bases = [(name, pins) for name, pins in bases if pins]
    plan = {"server": body.server, "volume": volume, "snapshot": snapshot,
            "destroys_snapshots": [s.name for s in later],
            "replication_bases": [name for name, _ in bases],
            "relationships": _relationships(api, body.server, volume)}
    if body.dry_run:
        return json_response(plan)
    if bases and not body.force:
        raise _conflict("Replication Base", f"reverting {volume} to {body.snapshot} would "
                        f"destroy {', '.join(n for n, _ in bases)}, the incremental base of "
                        f"replications to {', '.join(sorted({p for _, ps in bases for p in ps}))}"
                        "; give force to revert anyway (those need a full copy then)",
                        "replication-base", **plan)
    unpin = [[name, server] for name, pins in bases for server in pins]
    record = api.ctx.volume_states.submit_holding(
        holds=[(body.server, volume)], busy=REVERTING,
        submit=lambda: ops.submit(api.ctx.engine, ops.REVERT, body.server, volume,
                                  target=snapshot, snapshot=snapshot, unpin=unpin,
                                  destroys=plan["destroys_snapshots"], force=body.force))
    return json_response({**record.to_json(), "plan": plan}, 202)


async def extend_volume(api: Api, request: web.Request) -> web.Response:
    volume = _volume_path(request)
    body = await read_body(request, m.VolumeExtend)
    backend = await api.ctx.servers.backend(body.server)
    current = (await backend.volume(volume)).size
    if current is None:
        raise _conflict("Nothing To Extend", ops.no_quota(volume), "no-size")
    if body.size < current:
        raise _conflict("Would Shrink", ops.would_shrink(volume, body.size, current),
                        "would-shrink", current_size=current)
    record = api.ctx.volume_states.submit_holding(
        holds=[(body.server, volume)], busy=EXTENDING,
        submit=lambda: ops.submit(api.ctx.engine, ops.EXTEND, body.server, volume,
                                  size=body.size))
    return json_response(record.to_json(), 202)


async def delete_volume(api: Api, request: web.Request) -> web.Response:
    volume = _volume_path(request)
    q = parse_query(request.query, m.VolumeDeleteQuery)
    backend = await api.ctx.servers.backend(q.server)
    await backend.volume(volume)  # 404 now rather than a failed activity
    dependents = await backend.dependents(volume)
    relationships = _relationships(api, q.server, volume)
    if (dependents or relationships) and not q.force:
        said = [f"volumes {', '.join(dependents)}" if dependents else "",
                f"relationships {', '.join(relationships)}" if relationships else ""]
        raise _conflict("Volume Has Dependents", f"{volume} on {q.server} has dependents: "
                        f"{'; '.join(s for s in said if s)}; give force to delete them too "
                        "(a relationship then fails its cycles until it is changed)",
                        "has-dependents", dependents=dependents, relationships=relationships)
    clones = [d for d in dependents if not ops.within(volume, d)]
    unpin = await _pins(api, backend, [volume, *clones]) if q.force else []
    record = api.ctx.volume_states.submit_holding(
        holds=[(q.server, volume)], busy=DELETING,
        submit=lambda: ops.submit(api.ctx.engine, ops.DELETE, q.server, volume,
                                  total=1 + len(clones), force=q.force, clones=clones,
                                  dependents=dependents, unpin=unpin))
    return json_response({**record.to_json(), "dependents": dependents,
                          "relationships": relationships}, 202)


async def _pins(api: Api, backend: StorageBackend, roots: list[str]) -> list[list[str]]:
    """cerssd's pins (a replication's base) on the snapshots of ``roots`` and what is
    below them, as [snapshot, server] pairs: a forced delete releases them first, or
    ZFS would call the held snapshots busy. One listing per root; only held snapshots
    are asked whose pins they carry."""
    servers = list(api.ctx.servers.entries)
    pins: list[list[str]] = []
    for root in roots:
        listing = await backend.tree(root)
        for ds in listing.datasets:
            for snap in ds.snapshots:
                if snap.userrefs:
                    pins += [[snap.name, s] for s in
                             sorted(await backend.pinned_by(snap.name, servers))]
    return pins
