"""What the control API's handlers act on: the daemon's parts, passed in once.

Its own module so that every handler module (``app``, ``backups``, ``failover``) can
name it without importing the module that wires the routes together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..capacity import CapacityCache
from ..cluster.member import ClusterMember
from ..config import Config
from ..engine import ActivityEngine
from ..metrics import Metrics
from ..objectstore.stores import Stores
from ..policies.registry import PolicyRegistry
from ..replication.relationships.manager import RelationshipManager
from ..servers import ServerRegistry
from ..volume_states import VolumeStates


@dataclass
class ApiContext:
    engine: ActivityEngine
    servers: ServerRegistry
    metrics: Metrics
    config: Callable[[], Config]
    relationships: RelationshipManager
    stores: Stores | None = None
    started_at: float = field(default_factory=time.time)
    volume_states: VolumeStates = field(kw_only=True)
    capacity: CapacityCache | None = field(default=None, kw_only=True)
    #: Snapshot policies (None in tests that build the API without them).
    policies: PolicyRegistry | None = field(default=None, kw_only=True)
    #: This daemon as a clustered manager (None: it runs alone).
    cluster: ClusterMember | None = field(default=None, kw_only=True)
