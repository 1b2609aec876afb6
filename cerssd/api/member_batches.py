"""Control API for the batches a managing daemon delegates for a tree whose master this
daemon's node is (docs/peers.md): ``POST /v1/member-streams`` (its members streamed on
to a slave) and ``POST /v1/member-backups`` (its members backed up to a store), each
one activity for many members (``flows.member_streams``, ``flows.member_backups``).
"""

from __future__ import annotations

from aiohttp import web

from ..parsing import ConfigError
from ..replication.flows.member_backups import MemberBackupItem, submit_member_backups
from ..replication.flows.member_streams import (
    MemberStream,
    MemberStreamsRequest,
    submit_member_streams,
)
from ..replication.logic.receive import parse_receive
from . import models as m
from .peers import child_of
from .problems import ApiProblem
from .routing import Api, json_response
from .schema import read_body


def _local(api: Api, server: str, field: str) -> None:
    """The batch's source is this daemon's own storage: its node sends the bytes."""
    if api.ctx.servers.entry(server).config.kind != "local":
        raise ApiProblem(422, "Unprocessable Content", f"{field}: {server} is not this "
                         "daemon's local server; a batch runs where its members are",
                         field=field)


async def create_member_streams(api: Api, request: web.Request) -> web.Response:
    body = await read_body(request, m.MemberStreamsCreate)
    if body.parent is not None and (running := child_of(
            api.ctx.engine, "member-streams", body.parent)) is not None:
        return json_response(running.to_json(), 200)  # a delegating daemon asked again
    _local(api, body.source, "source")
    table = {k: v for k, v in (("receive_exclude", body.receive_exclude),
                               ("receive_set", body.receive_set)) if v is not None}
    try:
        props = parse_receive(table, "").properties
    except ConfigError as exc:
        raise ApiProblem(422, "Unprocessable Content", f"{exc.key}: {exc.problem}",
                         field=exc.key.split("[")[0].split(".")[0]) from exc
    await api.ctx.servers.backend(body.source)
    await api.ctx.servers.backend(body.destination)
    req = MemberStreamsRequest(
        source=body.source, destination=body.destination, root=body.root,
        items=tuple(MemberStream(i.snapshot, i.base, i.target_volume) for i in body.items),
        max_parallel=body.max_parallel, unmounted=not body.mount,
        send_properties=body.send_properties, receive_exclude=props.exclude,
        receive_set=props.override, bandwidth_limit=body.bandwidth_limit or None)
    with api.ctx.engine.submitting(**({"peer_parent": body.parent} if body.parent else {})):
        record = submit_member_streams(api.ctx.engine, req)
    return json_response(record.to_json(), 202)


async def create_member_backups(api: Api, request: web.Request) -> web.Response:
    body = await read_body(request, m.MemberBackupsCreate)
    if body.parent is not None and (running := child_of(
            api.ctx.engine, "member-backups", body.parent)) is not None:
        return json_response(running.to_json(), 200)  # a delegating daemon asked again
    _local(api, body.server, "server")
    stores = api.ctx.stores
    if stores is None or body.store not in stores.stores:
        raise ApiProblem(404, "Unknown Store", f"object store {body.store} is not in this "
                         "daemon's config (docs/peers.md: the peer needs it too)",
                         code="no-such-store")
    for n, item in enumerate(body.items):
        if (item.base is None) != (item.base_guid is None):
            raise ApiProblem(422, "Unprocessable Content", f"items[{n}]: base and base_guid "
                             "go together", field="items")
    await api.ctx.servers.backend(body.server)
    items = [MemberBackupItem(i.snapshot, i.base, i.base_guid, i.remembered, i.full)
             for i in body.items]
    with api.ctx.engine.submitting(**({"peer_parent": body.parent} if body.parent else {})):
        record = submit_member_backups(api.ctx.engine, server=body.server, store=body.store,
                                       root=body.root, items=items,
                                       max_parallel=body.max_parallel)
    return json_response(record.to_json(), 202)
