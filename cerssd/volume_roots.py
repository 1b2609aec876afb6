"""Which part of a server's storage this daemon serves: what ``GET /v1/volumes`` lists.

A storage node's pools are not all this daemon's business (a host may carry a system
pool, or pools another tool manages), and listing every dataset of every pool costs
time that grows with them. The operator's word comes first: a server's ``pools`` key
(pools or datasets, each listed with everything below it). Without it, the pools of
the volumes the relationships name on that server (as master or as slave, in their
current roles, from the config file and the API alike) and the snapshot policies'
volumes there: what the daemon works on.
A server with neither lists every pool, since nothing says which of them it serves.
"""

from __future__ import annotations

from collections.abc import Iterable

from .config import ServerConfig
from .policies.spec import PolicySpec
from .replication.logic.spec import RelationshipSpec
from .storage.names import pool_of


def volume_roots(server: ServerConfig, relationships: Iterable[RelationshipSpec],
                 policies: Iterable[PolicySpec] = ()) -> tuple[str, ...] | None:
    """The roots to list on ``server``, sorted; None means every pool."""
    if server.pools:
        return tuple(sorted(server.pools))
    pools = set()
    for spec in relationships:
        if spec.master == server.name:
            pools.add(pool_of(spec.volume))
        pools.update(pool_of(s.target_volume) for s in spec.slaves if s.server == server.name)
    pools.update(pool_of(p.volume) for p in policies if p.server == server.name)
    return tuple(sorted(pools)) or None


def within(roots: tuple[str, ...] | None, root: str) -> tuple[str, ...]:
    """The part of ``roots`` (None: every pool) at or below ``root``: a listing narrowed
    to one dataset's tree never reaches beyond what the daemon serves."""
    if roots is None or any(root == r or root.startswith(r + "/") for r in roots):
        return (root,)
    return tuple(r for r in roots if r.startswith(root + "/"))
