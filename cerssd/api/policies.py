"""Control API for snapshot policies (``/v1/policies``): their state, run-now, and their
grid's prune now or its dry run (``POST /v1/policies/{name}/prune``, the relationships'
prune document: ``policies.prune``).

Policies are defined in the config file only (``[snapshots.NAME]``), so there is no
create or delete here; a reload adds, changes and removes them.
"""

from __future__ import annotations

import time

from aiohttp import web

from ..policies import guard
from ..policies import prune as policy_prune
from ..policies.registry import PolicyRegistry
from ..replication.relationships.prune_plan import Place, blocked_plan
from ..servers import ServerUnavailable
from ..storage.names import validate_object_name
from ..volume_states import VolumeBusy
from . import models as m
from .problems import ApiProblem
from .routing import Api, json_response
from .schema import read_body


def _policies(api: Api) -> PolicyRegistry:
    policies = api.ctx.policies
    if policies is None:  # an API built without them (tests): none configured
        raise ApiProblem(404, "Unknown Snapshot Policy", "no snapshot policy is configured")
    return policies


def policy_name(request: web.Request) -> str:
    """The policy named in the path, checked: a bad name is 400, not a lookup."""
    return validate_object_name(request.match_info["policy"], "snapshot policy")


async def list_policies(api: Api, request: web.Request) -> web.Response:
    policies = _policies(api)
    return json_response({"items": [policies.to_json(rt) for rt in policies.all()]})


async def show_policy(api: Api, request: web.Request) -> web.Response:
    name = policy_name(request)
    policies = _policies(api)
    return json_response(policies.to_json(policies.get(name)))


async def run_policy(api: Api, request: web.Request) -> web.Response:
    name = policy_name(request)
    policies = _policies(api)
    return json_response(policies.to_json(policies.run_now(name)), 202)


async def prune_policy(api: Api, request: web.Request) -> web.Response:
    """The policy's grid now, or (``dry_run``) what it would destroy and keep, and why:
    computed by the function its runs prune with (``policies.prune``)."""
    name = policy_name(request)
    body = await read_body(request, m.PolicyPrune)
    policies = _policies(api)
    rt = policies.get(name)
    spec = rt.spec
    engine = api.ctx.engine
    busy = ("a prune of its snapshots is under way"
            if policy_prune.prune_under_way(engine, name) else None)
    protection = guard.protection(policies.relationships, spec)
    try:
        backend = await api.ctx.servers.backend(spec.server)
    except ServerUnavailable as exc:
        plan = policy_prune.PolicyPlan(blocked_plan(
            Place.MASTER, spec.server, spec.volume, spec.retention, spec.keep_min,
            f"not listed: {exc}"))
    else:
        plan = await policy_prune.plan(spec, backend, protection, time.time(), busy=busy)
    activity = None
    if not body.dry_run and plan.target.verdicts:
        # checked again with nothing in between up to the submit: the listing took a while
        why = ("a prune of its snapshots is under way"
               if policy_prune.prune_under_way(engine, name) else None) \
            or guard.protection(policies.relationships, spec).hold_off
        if why is None and guard.protection(policies.relationships, spec) != protection:
            why = "a relationship's base changed while planning: ask again"
        try:
            record = None if why else policy_prune.carry_out(
                engine, api.ctx.volume_states, spec, plan)
        except VolumeBusy as exc:
            why = f"volume held: {exc}"
            record = None
        if why is not None:
            plan = policy_prune.PolicyPlan(blocked_plan(
                Place.MASTER, spec.server, spec.volume, spec.retention, spec.keep_min, why))
        elif record is not None:
            activity = record.id
            if spec.is_tree:
                rt.relist = True  # its labels known go out of date: the next run lists
    return json_response({"policy": name, "dry_run": body.dry_run,
                          "places": [plan.to_json(activity)]})
