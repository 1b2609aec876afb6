"""The control API's requests and responses, as typed models (msgspec).

Each model is declared once and serves twice: ``schema.read_body``/``parse_query``
decode requests into the request models (types, required fields, unknown fields,
bounds), and ``openapi.py`` generates the served OpenAPI document from the same
models, so the document is what the daemon accepts and answers. Response models are
not used to encode (handlers build the JSON from the domain objects); the fuzz test
(tests/test_api_fuzz.py) checks every answer against them.

Names carry the daemon's grammar and length limits in the document (``pattern``,
``maxLength``); they are enforced by ``storage.names`` (``Check``), with full matches,
and a bad name answers 400 naming the field, as it did before the models.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from ..activity import DataRoute, LinkCondition, LinkHealth, State, Status, Usage
from ..links import LinkState
from ..objectstore.config import Compression
from ..replication.logic.plan import PlanMode, PlanPath, ReplicationPath
from ..replication.logic.roles import ReplicationStatus
from ..replication.logic.slave_status import RelationshipState, SlaveState
from ..replication.logic.tree_status import MemberState
from ..storage.names import (
    LABEL_PATTERN,
    MAX_LABEL_LENGTH,
    MAX_NAME_LENGTH,
    MAX_OBJECT_NAME_LENGTH,
    OBJECT_NAME_PATTERN,
    SNAPSHOT_PATTERN,
    VOLUME_PATTERN,
    validate_object_name,
    validate_snapshot,
    validate_snapshot_label,
    validate_volume,
)
from ..storage.registry import BackendName
from ..storage.values import Capabilities
from ..volume_states import VolumeState


@dataclass(frozen=True)
class Check:
    """Annotated metadata: the names validator a string field must pass (400 if not)."""

    validate: Callable[[str], object]


def doc(text: str) -> Meta:
    """A field's description in the OpenAPI document."""
    return Meta(description=text)


def _limits(pattern: str, max_length: int) -> dict[str, Any]:
    return {"pattern": pattern, "minLength": 1, "maxLength": max_length}


VolumeName = Annotated[str, Meta(
    description="a volume: pool[/dataset...]",
    extra_json_schema=_limits(VOLUME_PATTERN, MAX_NAME_LENGTH)), Check(validate_volume)]
SnapshotName = Annotated[str, Meta(
    description="a snapshot: pool/volume@label",
    extra_json_schema=_limits(SNAPSHOT_PATTERN, MAX_NAME_LENGTH)), Check(validate_snapshot)]
Label = Annotated[str, Meta(
    description=f"a snapshot's label (the part after @); with its volume at most "
    f"{MAX_NAME_LENGTH} characters",
    extra_json_schema=_limits(LABEL_PATTERN, MAX_LABEL_LENGTH)), Check(validate_snapshot_label)]
ServerName = Annotated[str, Meta(
    description="a server from the config",
    extra_json_schema=_limits(OBJECT_NAME_PATTERN, MAX_OBJECT_NAME_LENGTH)),
    Check(lambda n: validate_object_name(n, "server"))]
StoreName = Annotated[str, Meta(
    description="an object store from the config",
    extra_json_schema=_limits(OBJECT_NAME_PATTERN, MAX_OBJECT_NAME_LENGTH)),
    Check(lambda n: validate_object_name(n, "store"))]
RelationshipName = Annotated[str, Meta(
    description="a relationship",
    extra_json_schema=_limits(OBJECT_NAME_PATTERN, MAX_OBJECT_NAME_LENGTH)),
    Check(lambda n: validate_object_name(n, "relationship"))]
PolicyName = Annotated[str, Meta(
    description="a snapshot policy ([snapshots.NAME] in the config)",
    extra_json_schema=_limits(OBJECT_NAME_PATTERN, MAX_OBJECT_NAME_LENGTH)),
    Check(lambda n: validate_object_name(n, "snapshot policy"))]
ActivityId = Annotated[str, Meta(pattern="^[0-9a-f]+$", description="an activity's id")]
#: A duration: seconds, or a string such as "90s", "15m", "7d".
Duration = str | int
Grid = Annotated[list[str], doc('a retention grid, e.g. ["1h:all", "1d:1h"]')]
NonNegative = Annotated[int, Meta(ge=0)]
#: An offset into a listing: bounded, because it reaches SQLite, whose integers are 64-bit.
Offset = Annotated[int, Meta(ge=0, le=2**62)]
#: A Unix time in whole seconds, up to the end of the year 9999 (it reaches SQLite too).
UnixTime = Annotated[int, Meta(ge=0, le=253_402_300_799)]
Positive = Annotated[int, Meta(ge=1)]
#: The largest page one request may ask for: history lives in the journal and is read a
#: page at a time, so a page is always a small answer.
MAX_PAGE = 1000
#: The largest page of a volume listing (cerssctl volumes pages through all of them).
MAX_VOLUME_PAGE = 5000



class Request(Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """A request body: unknown fields are an error (a typo must not be ignored)."""


class Query(Struct, kw_only=True):
    """Query parameters: unknown ones are ignored, as HTTP clients expect."""


# -- request bodies ---------------------------------------------------------------------
class SnapshotCreate(Request):
    name: Annotated[Label, doc("the snapshot's name (the part after @)")]
    server: Annotated[ServerName, doc("server holding the volume")] = "local"


class VolumeType(enum.StrEnum):
    """A volume's kind: a filesystem (mounted files), or a block volume (ZFS: a zvol)."""

    FILESYSTEM = "filesystem"
    VOLUME = "volume"


#: A size in bytes: a positive whole number (bounded: it reaches ``zfs set``).
Size = Annotated[int, Meta(ge=1, le=2**62)]


class VolumeCreate(Request):
    name: Annotated[VolumeName, doc("the new volume: pool/name (its parent must exist)")]
    server: Annotated[ServerName, doc("server to create it on")] = "local"
    type: Annotated[VolumeType, doc("filesystem, or volume: a block volume of size bytes "
        "(ZFS: a zvol; 409 where the server has none)")] = VolumeType.FILESYSTEM
    size: Annotated[Size | None, doc("bytes: a block volume's size (required for one), a "
        "filesystem's quota")] = None
    from_snapshot: Annotated[SnapshotName | None, doc("clone this snapshot (pool/volume@label, "
        "in the same pool) instead of creating an empty volume")] = None


class VolumeRevert(Request):
    snapshot: Annotated[Label, doc("the snapshot's label to go back to: every later snapshot "
        "and every change since are destroyed")]
    server: Annotated[ServerName, doc("server holding the volume")] = "local"
    force: Annotated[bool, doc("revert even when a later snapshot is a replication base "
        "(cerssd's pins on it are released; the slave then needs a full copy)")] = False
    dry_run: Annotated[bool, doc("only say what would be destroyed")] = False


class VolumeExtend(Request):
    size: Annotated[Size, doc("the new size in bytes: a block volume's size, a filesystem's "
        "quota; never smaller than now (409 naming the current size)")]
    server: Annotated[ServerName, doc("server holding the volume")] = "local"


class ReplicationCreate(Request):
    snapshot: Annotated[SnapshotName, doc("pool/volume@name to replicate")]
    source: Annotated[ServerName, doc("server the snapshot is on")]
    destination: Annotated[ServerName, doc("server to replicate to")]
    target_volume: Annotated[VolumeName | None, doc("volume on the destination (default: the same "
        "name)")] = None
    force_full_copy: Annotated[bool, doc("send a full stream even when an incremental is "
        "possible")] = False
    overwrite: Annotated[bool, doc("with force_full_copy: replace an existing target (its "
        "snapshots are destroyed once the new copy is complete)")] = False
    intermediates: Annotated[bool, doc("carry intermediate snapshots (zfs send -I)")] = False
    bandwidth_limit: Annotated[NonNegative | None, doc("bytes per second, 0 or absent for no "
        "limit")] = None
    path: Annotated[ReplicationPath, doc("auto (native where one driver serves both ends, "
        "else generic), native (zfs send | zfs receive), or generic (a file copy with rsync "
        "from the snapshot's read-only view, then a snapshot recording its origin)")] = \
        ReplicationPath.AUTO
    mount: Annotated[bool, doc("mount a received filesystem (a relationship's replicas "
        "are received unmounted unless its mount says so)")] = True
    send_properties: Annotated[bool, doc("the stream carries the volume's properties (zfs "
        "send -p)")] = False
    receive_exclude: Annotated[list[str] | None, doc("properties the replica never takes "
        "from the stream")] = None
    receive_set: Annotated[dict[str, str] | None, doc("properties set on the replica as "
        "received")] = None
    parent: Annotated[ActivityId | None, doc(
        "set by a managing daemon that delegates the transfer (docs/peers.md): its own "
        "activity's id; a second request with the same parent while the first transfer "
        "runs answers that transfer (200) instead of starting another")] = None


#: The most members one delegated batch names: a request stays a few MiB.
MAX_BATCH = 10_000


class MemberStreamItem(Request):
    snapshot: Annotated[SnapshotName, doc("the member's new snapshot on the source")]
    base: Annotated[Label, doc("the label of the snapshot the target has (the stream is "
        "incremental from it)")]
    target_volume: Annotated[VolumeName, doc("the member's replica on the destination")]


class MemberStreamsCreate(Request):
    source: Annotated[ServerName, doc("this daemon's server holding the members")]
    destination: Annotated[ServerName, doc("server to stream to")]
    root: Annotated[VolumeName, doc("the tree's root on the source: its stream options "
        "(raw when encrypted) serve every member")]
    items: Annotated[list[MemberStreamItem], Meta(min_length=1, max_length=MAX_BATCH,
        description="the members to stream on, each from its base")]
    max_parallel: Annotated[int, Meta(ge=1, le=64, description="streams at once (a "
        "relationship's max_parallel)")] = 1
    mount: Annotated[bool, doc("mount what is received")] = False
    send_properties: Annotated[bool, doc("the streams carry properties (zfs send -p)")] = False
    receive_exclude: Annotated[list[str] | None, doc("properties the replicas never take "
        "from the stream")] = None
    receive_set: Annotated[dict[str, str] | None, doc("properties set on the replicas as "
        "received")] = None
    bandwidth_limit: Annotated[NonNegative | None, doc("bytes per second per stream, 0 or "
        "absent for no limit")] = None
    parent: Annotated[ActivityId | None, doc(
        "the delegating daemon's activity id (docs/peers.md): a second request with the "
        "same parent while the first batch runs answers that batch (200)")] = None


class MemberBackupItem(Request):
    snapshot: Annotated[SnapshotName, doc("the member's snapshot to back up")]
    base: Annotated[SnapshotName | None, doc("the snapshot the store has a backup of (an "
        "incremental from it), or null: a full backup")] = None
    base_guid: Annotated[str | None, doc("the base's guid (with base)")] = None
    remembered: Annotated[bool, doc("the base is the delegating daemon's memory: checked "
        "in the bucket first, and the member planned from its own listings if it fails")] \
        = False
    full: Annotated[bool, doc("a full backup whatever base there is (full_every)")] = False


class MemberBackupsCreate(Request):
    server: Annotated[ServerName, doc("this daemon's server holding the members")]
    store: Annotated[StoreName, doc("object store from this daemon's config")]
    root: Annotated[VolumeName, doc("the tree's root: its stream options serve every "
        "member")]
    items: Annotated[list[MemberBackupItem], Meta(min_length=1, max_length=MAX_BATCH,
        description="the members to back up")]
    max_parallel: Annotated[int, Meta(ge=1, le=64, description="uploads at once (a "
        "relationship's max_parallel): each holds a part buffer")] = 1
    parent: Annotated[ActivityId | None, doc(
        "the delegating daemon's activity id (docs/peers.md): a second request with the "
        "same parent while the first batch runs answers that batch (200)")] = None


class SlaveCreate(Request):
    server: Annotated[ServerName, doc("the slave's server")]
    target_volume: Annotated[VolumeName | None, doc("volume there (default: the master's volume "
        "name)")] = None
    bandwidth_limit: Annotated[Positive | None, doc("bytes per second")] = None
    path: Annotated[ReplicationPath, doc("auto, native or generic (see POST "
        "/v1/replications)")] = ReplicationPath.AUTO
    mount: Annotated[bool | None, doc("this slave's replicas mounted as received (default: "
        "the relationship's mount)")] = None
    receive_exclude: Annotated[list[str] | None, doc("properties this slave's replicas never "
        "take from the stream (default: the relationship's)")] = None
    receive_set: Annotated[dict[str, str] | None, doc("properties set on this slave's "
        "replicas as received (default: the relationship's)")] = None


class RelationshipCreate(Request):
    name: Annotated[RelationshipName, doc("the relationship's name")]
    volume: Annotated[VolumeName, doc("pool/volume on the master")]
    slaves: Annotated[list[ServerName | SlaveCreate], Meta(min_length=1, description="slaves: "
        "server names, or objects {server, target_volume, bandwidth_limit}")]
    master: Annotated[ServerName, doc("server holding the volume")] = "local"
    interval: Annotated[Duration | None, doc("time between cycles, e.g. 5m (or give cron)")] = None
    cron: Annotated[str | None, doc("a five-field cron schedule in UTC (or give interval)")] = None
    prefix: Annotated[str | None, doc("label prefix of the snapshots it makes (default "
        "cerssd-NAME-)")] = None
    retention: Annotated[Grid | None, doc('grid on the master (default ["1h:all", "1d:1h", '
        '"1w:1d"])')] = None
    slave_retention: Annotated[Grid | None, doc("grid on the slaves (default: retention)")] = None
    keep_min: Annotated[int | None, doc("the fewest of its own snapshots retention leaves on "
        "the master, whatever the grid says (at least 1, default 1)")] = None
    slave_keep_min: Annotated[int | None, doc("the same on each slave (default: keep_min)")] = None
    retry_deadline: Annotated[Duration | None, doc('give up a transfer after retrying this long, '
        'or "never" (default: daemon.retry_deadline)')] = None
    fanout: Annotated[bool, doc("feed slaves that need the same stream from one zfs send")] = True
    fanout_buffer: Annotated[Duration | None, doc("per-slave buffer before a slow slave is split "
        "off, e.g. 64MiB")] = None
    stores: Annotated[list[StoreName] | None, doc("object stores every cycle's snapshot is also "
        "backed up to")] = None
    recursive: Annotated[bool, doc("keep the volume and every descendant (a tree), including "
        "ones created later")] = False
    include: Annotated[list[str] | None, doc('tree members must match one of these glob '
        'patterns, relative to the volume ("db", "*/data"; "." is the root)')] = None
    exclude: Annotated[list[str] | None, doc("tree members matching one of these patterns "
        "(and what is below them) are left out")] = None
    property: Annotated[str | None, doc('a ZFS user property (module:name): datasets under '
        'the volume whose value is "on" or the relationship\'s name are members')] = None
    max_parallel: Annotated[Annotated[int, Meta(ge=1, le=64)] | None, doc(
        "a tree's member transfers to each slave at a time (default 4)")] = None
    member_metrics: Annotated[bool, doc("per-member metric series for a tree")] = False
    send_properties: Annotated[bool, doc("streams carry the volume's properties (zfs send "
        "-p)")] = False
    mount: Annotated[bool, doc("replicas mounted as received (default false: zfs receive "
        "-u)")] = False
    receive_exclude: Annotated[list[str] | None, doc('properties replicas never take from the '
        'stream (default ["mountpoint", "sharenfs", "sharesmb"])')] = None
    receive_set: Annotated[dict[str, str] | None, doc('properties set on replicas as received, '
        'such as {"canmount": "noauto"}')] = None


class FailoverCreate(Request):
    to: Annotated[ServerName, doc("the slave to promote (the home master for a failback)")]
    force: Annotated[bool, doc("allow an unplanned failover when the master does not answer: the "
        "slave is promoted at its last snapshot, later writes are lost")] = False
    at: Annotated[Label | None, doc("a tree's unplanned failover: the snapshot label to promote "
        "every member's copy at, where the copies disagree (copies ahead of it are rolled back "
        "to it, copies without it stay read-only)")] = None


class RejoinCreate(Request):
    server: Annotated[ServerName, doc("the fenced old master to make a slave again")]
    dry_run: Annotated[bool, doc("only say what the rollback would destroy")] = True
    rollback: Annotated[bool, doc("consent: roll the old master back to the shared snapshot, "
        "destroying later snapshots and changes")] = False


class BackupCreate(Request):
    snapshot: Annotated[SnapshotName, doc("pool/volume@name to back up")]
    store: Annotated[StoreName | None, doc("object store from the config (default: the only "
        "one)")] = None
    server: Annotated[ServerName,
        doc("server holding the snapshot (it streams directly)")] = "local"
    force_full: Annotated[bool, doc("a full stream even if an incremental is possible")] = False
    intermediates: Annotated[bool, doc("the snapshots between the store's newest backup and "
        "this one go to the store too (zfs send -I), as a relationship's backups do")] = False
    parent: Annotated[ActivityId | None, doc(
        "set by a managing daemon that delegates the backup (docs/peers.md): its own "
        "activity's id; a second request with the same parent while the first backup "
        "runs answers that backup (200) instead of starting another")] = None


class RestoreCreate(Request):
    snapshot: Annotated[SnapshotName, doc("pool/volume@name of the backed-up snapshot")]
    target_volume: Annotated[VolumeName, doc("volume to receive into (new, or a copy holding part "
        "of the chain)")]
    store: Annotated[StoreName | None, doc("object store from the config (default: the only "
        "one)")] = None
    server: Annotated[ServerName, doc("server to receive on (local or ssh)")] = "local"
    identity_file: Annotated[str | None, doc("absolute path, on the daemon's node, of the age "
        "identity that opens an encrypted backup (default: the store's age_identity_file)")
        ] = None
    parent: Annotated[ActivityId | None, doc(
        "set by a managing daemon that delegates the restore (docs/peers.md): its own "
        "activity's id; a second request with the same parent while the first restore "
        "runs answers that restore (200) instead of starting another")] = None


class BackupPrune(Request):
    volume: Annotated[VolumeName, doc("pool/volume whose backups to thin")]
    retention: Annotated[Grid, doc('grid, e.g. ["1d:all", "1w:1d", "30d:1w"]')]
    store: Annotated[StoreName | None, doc("object store from the config (default: the only "
        "one)")] = None
    dry_run: Annotated[bool, doc("only say what would be deleted")] = False
    keep_min: Annotated[int, doc("the fewest backups of the volume left, whatever the grid "
        "says (at least 1)")] = 1


class RelationshipPrune(Request):
    dry_run: Annotated[bool, doc("only say what would go, and why")] = False
    only: Annotated[list[str] | None, doc('the places to prune: "master", slave server names, '
        "store names (default: all of them)")] = None


class PolicyPrune(Request):
    dry_run: Annotated[bool, doc("only say what would go, and why")] = False


# -- query parameters -------------------------------------------------------------------
class ServerQuery(Query):
    server: Annotated[ServerName, doc("server name from the config")] = "local"


class VolumeDeleteQuery(ServerQuery):
    force: Annotated[bool, doc("delete even when clones, volumes below it or relationships "
        "depend on it: the volumes named in the 409 are destroyed too")] = False


class VolumesQuery(ServerQuery):
    root: Annotated[VolumeName | None, doc("only this dataset and those below it (within "
        "what is served)")] = None
    limit: Annotated[Annotated[int, Meta(ge=1, le=MAX_VOLUME_PAGE)],
                     doc(f"page size (at most {MAX_VOLUME_PAGE})")] = 100
    offset: Annotated[Offset, doc("volumes to skip")] = 0


class MembersQuery(Query):
    state: Annotated[MemberState | None, doc("only members in this state on some slave")] = None
    limit: Annotated[Annotated[int, Meta(ge=1, le=MAX_VOLUME_PAGE)],
                     doc(f"page size (at most {MAX_VOLUME_PAGE})")] = 100
    offset: Annotated[Offset, doc("members to skip")] = 0


class ActivitiesQuery(Query):
    state: Annotated[State | None, doc("only activities in this state")] = None
    kind: Annotated[str | None, doc("only activities of this kind")] = None
    volume: Annotated[str | None, doc("only activities on this volume")] = None
    relationship: Annotated[str | None, doc("only activities of this relationship")] = None
    since: Annotated[UnixTime | None, doc("only activities created at or after this Unix "
        "time")] = None
    until: Annotated[UnixTime | None, doc("only activities created before this Unix "
        "time")] = None
    limit: Annotated[Annotated[int, Meta(ge=1, le=MAX_PAGE)], doc("page size")] = 100
    offset: Annotated[Offset, doc("items to skip")] = 0


MAX_WAIT = 300


class WaitQuery(Query):
    wait: Annotated[NonNegative, doc("seconds to wait for the activity to finish (at most "
        "{MAX_WAIT}) before answering; 0 answers at once")] = 0


class BackupsQuery(Query):
    store: Annotated[StoreName | None, doc("object store (default: the only one)")] = None
    volume: Annotated[VolumeName | None, doc("only backups of this volume")] = None


#: Path parameters, by name in the route table's paths.
PATH_PARAMETERS: dict[str, Any] = {
    "volume": VolumeName, "label": Label, "name": RelationshipName, "id": ActivityId,
    "policy": PolicyName,
}


# -- responses --------------------------------------------------------------------------
class Reply(Struct, kw_only=True):
    """A response body. Fields may be added in later versions: clients ignore unknown
    ones (the schemas do not forbid them)."""


class Problem(Reply):
    """RFC 9457 problem document (application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    field: Annotated[str | None, doc("the request field at fault, when there is one")] = None
    code: Annotated[str | None, doc("a stable word for the kind of conflict")] = None


class Progress(Reply):
    done: int
    total: int
    unit: str
    estimated: bool
    text: Annotated[str, doc('"n of m"')]


class Activity(Reply):
    id: str
    kind: str
    volume: str | None
    source: str | None
    target: str | None
    created_at: float
    state: State
    started_at: float | None
    finished_at: float | None
    progress: Progress
    status: Status | None
    usage: Usage
    self_restarting: bool
    link: LinkHealth | None
    params: dict[str, Any]
    restarts: int
    node: Annotated[str | None, doc("the server whose peer cerssd runs the work "
                                    "(route delegated); null: this daemon")]
    route: Annotated[DataRoute, doc("how the data moves: local (this daemon's node is an "
                                    "end), relayed (through this daemon's node), delegated "
                                    "(run by the peer daemon on node)")]


class ActivityPage(Reply):
    items: list[Activity]
    total: int
    limit: int
    offset: int


class DaemonSettings(Reply):
    log_level: Literal["debug", "info", "warning", "error"]
    control_group: str | None
    activity_retention: float
    shutdown_timeout: float


class ClusterLeader(Reply):
    node: Annotated[str | None, doc("the manager that leads it; null: none now")]
    term: Annotated[int | None, doc("the leader lock's create revision in etcd: a new "
                                    "value is a new leader term (a takeover)")]
    lease_expires_at: Annotated[float | None, doc("when the leader's lease expires unless "
                                                  "renewed: another manager takes over then")]
    leading: Annotated[bool, doc("whether this daemon leads it")]


class ClusterStatus(Reply):
    node: Annotated[str, doc("this manager's name in the cluster")]
    etcd: list[str]
    etcd_reachable: Annotated[bool, doc("whether the last round with etcd succeeded")]
    last_error: str | None
    lease_ttl: int
    lease_expires_at: Annotated[float | None, doc("when this manager's lease expires "
                                                  "unless renewed; null: it holds none")]
    leaderships_taken: int
    leaderships_lost: int
    relationships: Annotated[dict[str, ClusterLeader], doc("who leads each relationship")]


class DaemonStatus(Reply):
    version: str
    pid: int
    started_at: float
    uptime_seconds: float
    config: str | None
    daemon: DaemonSettings
    activities: Annotated[dict[str, int], doc("activities by state")]
    servers: Annotated[dict[str, bool], doc("whether each server answered its probe")]
    cluster: Annotated[ClusterStatus | None, doc("clustered managers (``[cluster]``); "
                                                 "null: this daemon runs alone")]


class PeerDaemon(Reply):
    """A server's own cerssd as routing sees it (``daemon`` in its config)."""

    mode: Annotated[Literal["true", "auto"], doc(
        "the server's daemon setting: true (always delegated to) or auto (while probed)")]
    delegates: Annotated[bool, doc("work whose data lives there is delegated to it now")]
    version: Annotated[str | None, doc(
        "the cerssd version its socket answered with at the last probe (auto only)")]
    reason: Annotated[str | None, doc(
        "auto: why it is not delegated to (no socket, nobody listening, another version, "
        "our SSH user refused, not probed yet); null while it is")]
    probed_at: Annotated[float | None, doc("when it was last probed (auto only)")]


class Server(Reply):
    name: str
    kind: Literal["local", "ssh"]
    stateless: bool
    backend: Annotated[BackendName, doc("its storage backend (its backend key)")]
    zfs_version: str | None
    capabilities: list[str]
    available: bool
    error: str | None
    peer: Annotated[PeerDaemon | None, doc(
        "its own cerssd (docs/peers.md); null: none configured (daemon = false)")]
    host: Annotated[str | None, doc("ssh servers only")] = None
    port: Annotated[int | None, doc("ssh servers only")] = None
    user: Annotated[str | None, doc("ssh servers only")] = None


class Servers(Reply):
    items: list[Server]


class Links(Reply):
    items: list[LinkState]


class Volume(Reply):
    name: str
    type: str
    guid: str
    creation: int
    used: int
    referenced: int
    readonly: bool
    mounted: bool
    state: Annotated[VolumeState, doc("available, in-use, or busy (backing-up, replicating, "
        "restoring, failing-over, pruning, rejoining, creating, reverting, extending, "
        "deleting) on a stateful server")]
    size: Annotated[int | None, doc("what it may grow to in bytes: a zvol's volsize, a "
        "filesystem's quota; null without a quota")] = None


class Volumes(Reply):
    server: str
    roots: Annotated[list[str] | None, doc("the datasets listed with all below them: the "
        "server's pools key, else the pools its relationships name; null: every pool")]
    items: list[Volume]
    total: Annotated[int, doc("volumes in all, across pages")]
    limit: int
    offset: int


class ListedSnapshot(Reply):
    """A snapshot in a listing: the backend's facts and who holds it."""

    name: str
    volume: str
    label: str
    guid: str
    creation: int
    used: int
    referenced: int
    userrefs: int
    createtxg: int
    cerssd_holds: Annotated[list[str], doc("cerssd's hold tags on it (replication bases)")]
    foreign_holds: Annotated[int, doc("holds that are not cerssd's: retention cannot get "
        "past them")]


class Snapshots(Reply):
    server: str
    volume: str
    items: list[ListedSnapshot]


class RevertPlan(Reply):
    server: str
    volume: str
    snapshot: str
    destroys_snapshots: Annotated[list[str], doc("the later snapshots the revert destroys, "
        "oldest first")]
    replication_bases: Annotated[list[str], doc("those of them that are a replication's "
        "incremental base (cerssd pins them)")]
    relationships: Annotated[list[str], doc("relationships the volume takes part in")]


class RevertAccepted(Activity):
    plan: RevertPlan


class DeleteAccepted(Activity):
    dependents: Annotated[list[str], doc("volumes destroyed with it (below it, clones)")]
    relationships: Annotated[list[str], doc("relationships that used it (forced)")]


class PoolCapacity(Reply):
    pool: str
    total: Annotated[int, doc("the pool's size in bytes")]
    free: int
    allocated: int
    provisioned: Annotated[int, doc("what its volumes may grow to: zvol sizes, filesystem "
        "quotas, else what a filesystem uses")]
    thin_ratio: Annotated[float, doc("provisioned / total: above 1.0 the pool is "
        "overcommitted")]
    exact: Annotated[bool, doc("false where the tool prints rounded figures (zfs-fuse's "
        "zpool: three significant digits)")]


class ServerCapacity(Reply):
    pools: list[PoolCapacity]
    measured_at: Annotated[float | None, doc("Unix time of the figures (null: not yet)")]
    error: Annotated[str | None, doc("why the last measurement failed")]


@dataclass(frozen=True)
class ServerCapabilities(Capabilities):
    """The capability booleans and, beside them, the server's pools' space (measured at
    most every 30 s, and again after a volume operation on the server)."""

    capacity: ServerCapacity | None = None


class ReplicationAccepted(Activity):
    plan: Annotated[PlanMode, doc("full, incremental, or up-to-date (nothing to send)")]
    path: Annotated[PlanPath, doc("native (a stream of the driver's own) or generic (a "
        "file copy); the activity's params.plan says the same")]


class RelationshipLink(Reply):
    server: str
    state: LinkCondition


class RelationshipSlave(Reply):
    server: str
    target_volume: str
    state: SlaveState
    last_snapshot: str | None
    last_snapshot_created: float | None
    lag_seconds: float | None
    last_success_at: float | None
    last_cycle_bytes: int | None
    error: str | None
    activity: str | None
    progress: Progress | None
    link: RelationshipLink


class RelationshipBackup(Reply):
    store: str
    last_backup_guid: str | None
    backup: Activity | None
    link: LinkState | None


class SlaveSpec(Reply):
    server: str
    target_volume: str
    bandwidth_limit: int | None
    path: str
    mount: Annotated[bool, doc("replicas mounted as received (false: zfs receive -u)")]
    receive_exclude: Annotated[list[str], doc("properties replicas never take from the "
        "stream (zfs receive -x)")]
    receive_set: Annotated[dict[str, str], doc("properties set on replicas as received "
        "(zfs receive -o)")]


class TreeSlaveSummary(Reply):
    in_sync: int
    behind: int
    sending: int
    failing: int
    worst_lag_seconds: Annotated[float | None, doc("null while a member has no copy yet")]


class TreeSummary(Reply):
    members: int
    slaves: dict[str, TreeSlaveSummary]
    failing: Annotated[list[dict[str, Any]], doc("up to 20 failing members: member, "
        "server, error")]
    failing_total: int
    gone: Annotated[list[str], doc("members destroyed on the master (copies kept)")]
    renamed: dict[str, str]
    unmatched_patterns: list[str]


class HooksSpec(Reply):
    pre: Annotated[list[str] | None, doc("argv of the command run before the snapshot")]
    post: Annotated[list[str] | None, doc("argv of the command run after it (whenever pre "
        "ran)")]
    timeout: Annotated[float, doc("seconds each hook may run; then its process group is "
        "killed")]
    on_pre_failure: Annotated[Literal["skip", "continue"], doc("what a failing pre means "
        "for the snapshot")]


class HookRunReply(Reply):
    stage: Literal["pre", "post"]
    argv: list[str]
    exit_status: Annotated[int | None, doc("null: timed out or could not start")]
    output: Annotated[str, doc("the end of its combined stdout and stderr (at most 4 KiB)")]
    seconds: float
    timed_out: bool


class SnapshotHooks(Reply):
    label: Annotated[str | None, doc("the snapshot label the hooks ran around")]
    at: float
    outcome: Annotated[Literal["taken", "skipped"], doc("skipped: pre failed and "
        "on_pre_failure is skip, so no snapshot was made")]
    runs: list[HookRunReply]


class Relationship(Reply):
    name: str
    volume: str
    master: str
    slaves: list[RelationshipSlave]
    schedule: Annotated[str, doc('e.g. "every 5m" or "cron */5 * * * *"')]
    prefix: str
    retention: list[str]
    slave_retention: list[str]
    keep_min: int
    slave_keep_min: int
    retry_deadline: float | None
    fanout: bool
    fanout_buffer: int
    stores: list[str]
    send_properties: Annotated[bool, doc("streams carry the volume's properties (zfs send "
        "-p)")]
    origin: Annotated[Literal["config", "api"], doc("config or api")]
    state: RelationshipState
    replication_status: ReplicationStatus
    active_server: str
    home_master: str
    failover: dict[str, Any]
    activity: str | None
    link: LinkHealth | None
    cycles: int
    last_cycle_at: float | None
    next_cycle_at: float | None
    cycle_waiting_since: Annotated[float | None, doc(
        "since when a due cycle waits for its turn (daemon.max_concurrent_cycles); "
        "null when it does not")]
    newest_snapshot: str | None
    last_error: str | None
    backups: list[RelationshipBackup]
    recursive: bool | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    property: str | None = None
    max_parallel: int | None = None
    member_metrics: bool | None = None
    tree: Annotated[TreeSummary | None, doc("a tree relationship's members: how many, per "
        "slave how many in each state and the worst lag, the failing ones with reasons")] = None
    hooks: Annotated[HooksSpec | None, doc("commands run around each cycle's snapshot "
        "(config file only; docs/hooks.md)")] = None
    last_hooks: Annotated[SnapshotHooks | None, doc("the hooks around the last snapshot a "
        "cycle took or skipped")] = None
    skipped_cycles: Annotated[int, doc("cycles that made no snapshot because pre failed")] = 0
    snapshots: Annotated[str | None, doc("the snapshot policy whose snapshots it replicates "
        "(null: it makes its own)")] = None


class MemberSlave(Reply):
    server: str
    state: MemberState
    last_snapshot: str | None
    lag_seconds: float | None
    error: str | None


class Member(Reply):
    name: str
    relative: Annotated[str, doc('its name below the tree\'s root ("" for the root)')]
    guid: str
    newest_snapshot: str | None
    slaves: list[MemberSlave]


class Members(Reply):
    relationship: str
    items: list[Member]
    total: Annotated[int, doc("members in all (matching the filter), across pages")]


class Relationships(Reply):
    items: list[Relationship]


class RejoinPlan(Reply):
    server: str
    volume: str
    rejoined: bool
    base: str
    base_created: int
    destroys_snapshots: list[str]
    discards_changes_after: int
    summary: str
    activity: Annotated[str | None, doc("the rejoin activity that rolled back (not in a "
                                        "dry run)")] = None
    members: Annotated[int | None, doc("a tree: the members rolled back, each to the newest "
                                       "snapshot it shares with the master")] = None


class Store(Reply):
    name: str
    kind: Literal["s3"]
    endpoint: str | None
    bucket: str
    prefix: str
    region: str
    credentials: Annotated[Literal["file", "environment"],
                           doc("file or environment (never the credentials themselves)")]
    part_size: int
    concurrency: int
    compression: Compression
    storage_class: str | None
    retention: Annotated[list[str] | None, doc("the grid applied to a relationship's backups "
        "after each of them (null: none; backups stay until pruned)")]
    keep_min: Annotated[int, doc("the fewest of a relationship's backups per volume that "
        "retention leaves")]
    full_every: Annotated[int | None, doc("a relationship's every N-th backup is full (null: "
        "only the first)")]
    link: LinkState | None


class Stores(Reply):
    items: list[Store]


class BackupSummary(Reply):
    volume: str
    snapshot: str
    guid: str
    snapshot_created: int
    parent_guid: str | None
    parent_snapshot: str | None
    kind: Annotated[Literal["full", "incremental"], doc("full or incremental")]
    segments: list[str]
    parts: Annotated[int, doc("number of parts")]
    stream_size: int
    raw_size: int
    compression: str
    sha256: Annotated[str | None, doc(
        "the whole stream's sha256, in backups made before manifest format "
        "cerssd-backup/3 only (each part's digest is in the manifest)")] = None


class Backups(Reply):
    store: str
    items: list[BackupSummary]


class RestoreAccepted(Activity):
    chain: Annotated[list[str], doc("the snapshots restored, oldest first")]


class PruneVerdict(Reply):
    snapshot: str
    guid: str
    created: int
    age_seconds: int
    rule: Annotated[Literal["beyond-grid", "thinned"], doc("older than the grid's last "
        "tier, or another snapshot is kept for its interval")]
    tier: Annotated[str, doc('the tier that decided, e.g. "1d:1h"')]
    kept_instead: Annotated[str | None, doc("for thinned: the label kept for the interval")]
    reason: Annotated[str, doc("the same in words")]


class PrunePlan(Reply):
    store: str
    volume: str
    delete: list[str]
    keep: list[str]
    keep_min: int
    destroy: Annotated[list[PruneVerdict], doc("what goes, each with why")]


class PrunePlace(Reply):
    place: Literal["master", "slave", "store"]
    name: Annotated[str, doc("the server, or the object store")]
    volume: str
    retention: list[str]
    keep_min: int
    destroy: Annotated[list[PruneVerdict], doc("what goes (went), each with why")]
    kept: Annotated[int, doc("the relationship's own snapshots (backups) that stay")]
    blocked: Annotated[str | None, doc("why nothing is pruned there now")]
    activity: Annotated[str | None, doc("the prune activity (not in a dry run)")]


class RelationshipPruneResult(Reply):
    relationship: str
    dry_run: bool
    places: list[PrunePlace]


class PruneKept(Reply):
    snapshot: str
    guid: str
    created: int
    age_seconds: int
    rule: Annotated[Literal["not-ours", "newest", "base", "keep-min"], doc(
        "not the policy's label (never pruned), the newest snapshot, a relationship's "
        "slave or store base, or spared by keep_min; each one the grid would drop, "
        "except not-ours")]
    reason: Annotated[str, doc("the same in words")]


class PolicyPrunePlace(PrunePlace):
    keep: Annotated[list[PruneKept], doc("what stays although its label or the grid says "
        "otherwise, each with why (empty when blocked)")]


class PolicyPruneResult(Reply):
    policy: str
    dry_run: bool
    places: Annotated[list[PolicyPrunePlace], doc("one: the policy's server")]


class PruneAccepted(Activity):
    plan: PrunePlan


class PolicyRun(Reply):
    outcome: Annotated[Literal["snapshot", "skipped", "failed", "empty"], doc(
        "snapshot (taken and pruned), skipped (the pre hook failed), failed (retried with "
        "back-off), empty (a tree selecting nothing)")]
    at: float
    seconds: float
    label: str | None
    volumes: Annotated[int, doc("volumes snapshotted (a tree's members)")]
    destroyed: Annotated[int, doc("snapshots (a tree: labels) the grid dropped")]
    kept_held: Annotated[list[str], doc("snapshots the grid dropped that ZFS would not "
        "destroy (held): kept, never forced")]
    prune_skipped: Annotated[str | None, doc("why nothing was pruned this run")]
    error: str | None
    hooks: list[HookRunReply]


#: ``Policy.state``: its activity's ``State``, or ``stopped`` while it has none
#: (tests/test_state_enums.py keeps the list and ``State`` the same).
PolicyState = Literal["pending", "running", "suspended", "retrying", "cancelling",
                      "succeeded", "failed", "cancelled", "stopped"]


class Policy(Reply):
    name: str
    server: str
    volume: str
    schedule: Annotated[str, doc('e.g. "every 1h" or "cron 0 * * * *"')]
    prefix: str
    retention: list[str]
    recursive: bool
    include: list[str]
    exclude: list[str]
    property: str | None
    hooks: Annotated[HooksSpec | None, doc("commands run around each of its snapshots "
        "(docs/hooks.md)")]
    state: Annotated[PolicyState, doc("its activity's state (running, suspended...), or "
        "stopped")]
    activity: str | None
    runs: int
    failures: int
    skipped: int
    last_run_at: float | None
    next_run_at: float | None
    newest_snapshot: Annotated[str | None, doc("the label of the newest snapshot it made "
        "(since the daemon started)")]
    snapshots_kept: Annotated[int | None, doc("its snapshots (a tree: labels) on the "
        "server after the last prune; null until a run listed them")]
    last_error: str | None
    last_result: PolicyRun | None
    relationships: Annotated[list[str], doc("relationships replicating its snapshots")]


class Policies(Reply):
    items: list[Policy]


#: ``GET /v1/capabilities``: server name → its capabilities and capacity.
CapabilitiesByServer = dict[str, ServerCapabilities]
#: ``GET /v1/openapi.json``: an OpenAPI 3.1 document.
OpenApiDocument = dict[str, Any]
