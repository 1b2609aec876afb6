"""Control API for a relationship's prune: ``POST /v1/relationships/{name}/prune``.

A dry run lists, per place (master, each slave, each object store), exactly what
retention would destroy now and why; without ``dry_run`` the same plan is carried out,
one prune activity per place, each given the names and guids listed (so it removes
that set and nothing else). Kept apart from ``app.py`` so each file stays readable.
"""

from __future__ import annotations

import time

from aiohttp import web

from ..replication.relationships.prune_now import carry_out, places_of, plan_places
from ..replication.relationships.runtime import check_no_failover
from . import models as m
from .problems import ApiProblem
from .routing import Api, json_response, relationship_name
from .schema import read_body


async def prune_relationship(api: Api, request: web.Request) -> web.Response:
    name = relationship_name(request)
    body = await read_body(request, m.RelationshipPrune)
    rels = api.ctx.relationships
    rt = rels.registry.get(name)
    known = places_of(rt)
    only = known if body.only is None else body.only
    for i, place in enumerate(only):
        if place not in known:
            raise ApiProblem(422, "Unprocessable Content", f"only[{i}]: {place!r} is not a "
                             f"place of {name} (places: {', '.join(known)})", field="only")
    if not body.dry_run:
        check_no_failover(rt)
    planned = await plan_places(rels.upkeep, rt, list(dict.fromkeys(only)), time.time())
    places = []
    for plan, manifests in planned:
        activity = None
        if not body.dry_run:
            plan, activity = carry_out(rels.upkeep, rt, plan, manifests)
        places.append(plan.to_json(activity))
    return json_response({"relationship": name, "dry_run": body.dry_run, "places": places})
