"""Control API for failover, failback and rejoining a fenced old master.

Kept apart from ``app.py`` so each file stays readable; the routes join the one table
that drives the router, the credential check and the OpenAPI document.
"""

from __future__ import annotations

from aiohttp import web

from ..activity import State, StatusCode
from ..replication.relationships.failover import FailoverRequest, submit_failover
from ..replication.relationships.rejoin import plan_rejoin, submit_rejoin
from ..replication.relationships.runtime import check_no_failover
from ..volume_states import REJOINING, rejoin_holds
from . import models as m
from .problems import ApiProblem
from .routing import Api, json_response, relationship_name
from .schema import read_body


async def failover(api: Api, request: web.Request) -> web.Response:
    name = relationship_name(request)
    body = await read_body(request, m.FailoverCreate)
    api.ctx.servers.entry(body.to)  # 404 for a server not in the config
    record = await submit_failover(api.ctx.relationships.failover, FailoverRequest(
        relationship=name, to=body.to, force=body.force, at=body.at))
    return json_response(record.to_json(), 202)


async def rejoin_old_master(api: Api, request: web.Request) -> web.Response:
    name = relationship_name(request)
    body = await read_body(request, m.RejoinCreate)
    rt = api.ctx.relationships.registry.get(name)
    plan = await plan_rejoin(api.ctx.servers, rt, body.server)
    if body.dry_run:
        return json_response(plan.to_json(done=False))
    if not body.rollback:
        raise ApiProblem(409, "Consent Needed", "rejoining rolls the old master back: "
                         f"{plan.to_json(done=False)['summary']}. Review the dry run, then "
                         "send dry_run=false with rollback=true", **plan.to_json(done=False))
    check_no_failover(rt)
    # An activity, so that on a stateful server it holds the volume it rolls back (409
    # while another activity does, and for others while it runs); the answer waits for it.
    record = api.ctx.volume_states.submit_holding(
        holds=rejoin_holds(plan.server, plan.volume), busy=REJOINING,
        submit=lambda: submit_rejoin(api.ctx.engine, rt, plan))
    activity = api.ctx.engine.get(record.id)
    await activity.done.wait()
    done = activity.snapshot()
    if done.state != State.SUCCEEDED:
        status = done.status
        message = status.message if status else str(done.state)
        code = status.code if status else StatusCode.ERROR
        raise ApiProblem(409 if code == StatusCode.CONFLICT else 502, "Rejoin Failed",
                         message, activity=record.id)
    return json_response({**plan.to_json(done=True), "activity": record.id})
