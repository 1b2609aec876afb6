"""Control API for failover, failback and rejoining a fenced old master.

Kept apart from ``app.py`` so each file stays readable; the routes join the one table
that drives the router, the credential check and the OpenAPI document.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..replication.failover import FailoverRequest, submit_failover
from ..replication.rejoin import plan_rejoin, rejoin
from . import models as m
from .problems import ApiProblem
from .schema import read_body

if TYPE_CHECKING:
    from .app import ControlApi

def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def failover(api: ControlApi, request: web.Request) -> web.Response:
    from .app import relationship_name

    name = relationship_name(request)
    body = await read_body(request, m.FailoverCreate)
    api.ctx.servers.entry(body.to)  # 404 for a server not in the config
    record = await submit_failover(api.ctx.relationships, FailoverRequest(
        relationship=name, to=body.to, force=body.force))
    return _json(record.to_json(), 202)


async def rejoin_old_master(api: ControlApi, request: web.Request) -> web.Response:
    from .app import relationship_name

    name = relationship_name(request)
    body = await read_body(request, m.RejoinCreate)
    rels = api.ctx.relationships
    rt = rels.get(name)
    plan = await plan_rejoin(rels, rt, body.server)
    if body.dry_run:
        return _json(plan.to_json(done=False))
    if not body.rollback:
        raise ApiProblem(409, "Consent Needed", "rejoining rolls the old master back: "
                         f"{plan.to_json(done=False)['summary']}. Review the dry run, then "
                         "send dry_run=false with rollback=true", **plan.to_json(done=False))
    await rejoin(rels, rt, plan)
    return _json(plan.to_json(done=True))
