"""``[cluster]``: the etcd members clustered managing daemons share (opt-in).

Without the table nothing changes: one daemon, its SQLite journal holding the roles.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..parsing import ConfigError, parse_duration, reject_unknown

CLUSTER_KEYS = {"etcd", "node", "lease_ttl", "prefix"}
#: An etcd client URL: scheme, host, port; no path (the gateway's paths are ours).
_ENDPOINT = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9a-fA-F:]+\](:[0-9]{1,5})?")
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_PREFIX = re.compile(r"/[A-Za-z0-9._/-]*/")
#: A lease shorter than this would expire under an ordinary GC pause or a slow disk.
MIN_TTL = 3
MAX_TTL = 600


@dataclass(frozen=True)
class ClusterConfig:
    etcd: tuple[str, ...]
    #: This manager's name in the cluster (shown as a relationship's leader).
    node: str
    #: Seconds: a dead leader's locks are taken over at most this long after it died.
    lease_ttl: int = 10
    #: Every key cerssd writes starts with this.
    prefix: str = "/cerssd/"


def parse_cluster(t: Mapping[str, Any]) -> ClusterConfig:
    reject_unknown(t, "cluster.", CLUSTER_KEYS)
    endpoints = t.get("etcd")
    if not isinstance(endpoints, list) or not endpoints \
            or not all(isinstance(e, str) for e in endpoints):
        raise ConfigError("cluster.etcd", 'must be a list of etcd client URLs such as '
                          '["http://10.0.0.1:2379", "http://10.0.0.2:2379"]')
    for e in endpoints:
        if not _ENDPOINT.fullmatch(e):
            raise ConfigError("cluster.etcd", f"{e!r} is not an etcd client URL "
                              "(http://HOST:PORT, no path)")
    node = t.get("node", socket.gethostname())
    if not isinstance(node, str) or not _NODE.fullmatch(node):
        raise ConfigError("cluster.node", "must be a name of letters, digits, '.', '_' or "
                          f"'-' (at most 63), not {node!r}")
    ttl = parse_duration(t.get("lease_ttl", 10), "cluster.lease_ttl")
    if ttl != int(ttl) or not MIN_TTL <= ttl <= MAX_TTL:
        raise ConfigError("cluster.lease_ttl", f"must be whole seconds from {MIN_TTL} to "
                          f"{MAX_TTL}, not {t.get('lease_ttl')!r}")
    prefix = t.get("prefix", "/cerssd/")
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ConfigError("cluster.prefix", "must start and end with '/' (letters, digits, "
                          f"'.', '_', '-' between), not {prefix!r}")
    return ClusterConfig(etcd=tuple(endpoints), node=node, lease_ttl=int(ttl), prefix=prefix)
