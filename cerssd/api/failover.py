"""Control API for failover, failback and rejoining a fenced old master.

Kept apart from ``app.py`` so each file stays readable; the routes join the one table
that drives the router, the credential check and the OpenAPI document.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..replication.failover import FailoverRequest, submit_failover
from ..replication.rejoin import plan_rejoin, rejoin
from .problems import ApiProblem
from .schema import Body, Field

if TYPE_CHECKING:
    from .app import ControlApi

FAILOVER = Body({
    "to": Field(str, "the slave to promote (the home master for a failback)",
                required=True),
    "force": Field(bool, "allow an unplanned failover when the master does not answer: "
                   "the slave is promoted at its last snapshot, later writes are lost",
                   default=False),
})
REJOIN = Body({
    "server": Field(str, "the fenced old master to make a slave again", required=True),
    "dry_run": Field(bool, "only say what the rollback would destroy", default=True),
    "rollback": Field(bool, "consent: roll the old master back to the shared snapshot, "
                      "destroying later snapshots and changes", default=False),
})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def failover(api: ControlApi, request: web.Request) -> web.Response:
    from .app import read_body

    body = FAILOVER.parse(await read_body(request))
    api.ctx.servers.entry(body["to"])  # 404 for a server not in the config
    record = await submit_failover(api.ctx.relationships, FailoverRequest(
        relationship=request.match_info["name"], to=body["to"], force=body["force"]))
    return _json(record.to_json(), 202)


async def rejoin_old_master(api: ControlApi, request: web.Request) -> web.Response:
    from .app import read_body

    body = REJOIN.parse(await read_body(request))
    rels = api.ctx.relationships
    rt = rels.get(request.match_info["name"])
    plan = await plan_rejoin(rels, rt, body["server"])
    if body["dry_run"]:
        return _json(plan.to_json(done=False))
    if not body["rollback"]:
        raise ApiProblem(409, "Consent Needed", "rejoining rolls the old master back: "
                         f"{plan.to_json(done=False)['summary']}. Review the dry run, then "
                         "send dry_run=false with rollback=true", **plan.to_json(done=False))
    await rejoin(rels, rt, plan)
    return _json(plan.to_json(done=True))
