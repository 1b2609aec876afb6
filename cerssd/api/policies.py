"""Control API for snapshot policies (``/v1/policies``): their state, and run-now.

Policies are defined in the config file only (``[snapshots.NAME]``), so there is no
create or delete here; a reload adds, changes and removes them.
"""

from __future__ import annotations

from aiohttp import web

from ..policies.registry import PolicyRegistry
from ..storage.names import validate_object_name
from .problems import ApiProblem
from .routing import Api, json_response


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
