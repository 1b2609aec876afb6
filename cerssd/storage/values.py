"""The values a storage backend answers with: capabilities, volumes, snapshots, and the
options of a stream.

Flows read ``Capabilities`` to choose a path (incremental or full, stateless or
busy-state locking); backends never special-case their callers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class Capabilities:
    """Stable API names (DESIGN.md, "Capabilities"); probed at start-up, not assumed."""

    stateless_snapshots: bool = False
    incremental_send: bool = False
    resumable_send: bool = False
    bookmarks: bool = False
    holds: bool = False
    size_estimate: bool = False
    raw_send: bool = False
    compressed_send: bool = False
    direct_copy: bool = False
    self_restarting: bool = False
    connection_loss_reporting: bool = False
    parsable_list: bool = False
    typed_get: bool = False
    zvols: bool = False
    encryption: bool = False
    #: A ``zfs send -I`` killed mid-stream leaves no hold behind: its temporary holds die
    #: with the process (OpenZFS ties them to its /dev/zfs descriptor). zfs-fuse's stay
    #: for ever, so there a range of snapshots is sent as a chain of ``-i`` steps.
    safe_send_holds: bool = False
    #: One ``snapshot`` command may name several datasets (taken together, atomically).
    #: Without it a tree's snapshot is ``snapshot -r`` on the root, which is atomic too
    #: but covers every descendant.
    multi_snapshot: bool = False
    #: A writable volume can be made from a snapshot (ZFS clone, btrfs writable snapshot).
    clones: bool = False
    #: A snapshot's files can be read through a path on the server (``snapshot_view``):
    #: what the generic path across drivers copies from.
    snapshot_views: bool = False
    #: ``rsync`` runs on the server (``storage.tools``): the generic path copies files
    #: with it at both ends, so it serves only between servers that both have it.
    file_copy: bool = False
    #: Runs of zeros written to a volume are stored as holes by the storage itself (ZFS:
    #: any compression but ``off`` detects zero blocks). The generic path then copies
    #: files with whole writes instead of rsync's ``--sparse``, whose 1 KiB writes made a
    #: copy onto zfs-fuse 1.7x slower (bench/RESULTS.md).
    holes_from_zeros: bool = False
    #: ``receive`` takes ``-o property=value`` and ``-x property`` (OpenZFS 0.8 on);
    #: without it (zfs-fuse 0.7) they are applied by ``zfs set``/``zfs inherit`` in the
    #: same command, right after the receive (``ReceiveProperties``).
    receive_properties: bool = False

    def to_json(self) -> dict[str, bool]:
        return asdict(self)

    def published(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]


@dataclass(frozen=True)
class Volume:
    name: str
    type: str
    guid: str
    creation: int
    used: int
    referenced: int
    #: Whether clients could write to it: read-only (a replica, a fenced master) or, for a
    #: filesystem, not mounted, means not (``volume_states.idle_state``).
    readonly: bool = False
    mounted: bool = False
    #: What it may grow to, in bytes: a block volume's size, a filesystem's quota; None
    #: for a filesystem without a quota (no limit but the pool's). ``extend`` grows it.
    size: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VolumePage:
    """One page of a volume listing: ``items`` from ``offset`` on, of ``total`` in all."""

    items: tuple[Volume, ...]
    total: int


@dataclass(frozen=True)
class Snapshot:
    """A snapshot is identified by name *and* guid: names can be reused, guids cannot.

    Bookmarks (``volume#label``) use the same shape: they keep a snapshot's guid and
    creation txg, enough to serve as an incremental base after the snapshot is gone.
    """

    name: str
    volume: str
    label: str
    guid: str
    creation: int
    used: int
    referenced: int
    userrefs: int
    #: Orders snapshots made within the same second (creation has 1 s steps).
    createtxg: int = 0
    #: The identity (guid) of the source snapshot this one is a file-level copy of, for a
    #: snapshot the generic path made (``create_snapshot(origin=...)``); "" otherwise.
    #: The planner matches it like a guid (``identities``).
    origin: str = ""

    @property
    def identities(self) -> frozenset[str]:
        """What identifies this snapshot across servers: its guid, and the origin it
        records (a generic copy matches its source by that, like a guid)."""
        return frozenset(x for x in (self.guid, self.origin) if x)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PoolCapacity:
    """One pool's space in bytes, as a scheduler reads it (Cinder's reported stats,
    filter scheduling): ``provisioned`` is what the volumes in it may grow to (a block
    volume's size, a filesystem's quota, else what it uses)."""

    pool: str
    total: int
    free: int
    allocated: int
    provisioned: int
    #: False where the tool prints the pool's figures rounded (zfs-fuse's ``zpool list``
    #: has no ``-p``: three significant digits, "504M"), True for exact bytes.
    exact: bool = True

    @property
    def thin_ratio(self) -> float:
        """Provisioned over total: above 1.0 the pool is overcommitted."""
        return self.provisioned / self.total if self.total else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "thin_ratio": round(self.thin_ratio, 4)}


@dataclass(frozen=True)
class StreamOptions:
    """How a stream carries its blocks, chosen by the flow from both ends' capabilities.

    Two slaves' streams are the same stream only with the same options (``StreamKey``);
    a backend turns them into its own command (for ZFS: send flags).
    """

    #: Encrypted data as it is on disk: the key never leaves the source.
    raw: bool = False
    #: Large, embedded and compressed blocks kept as they are on disk.
    compressed: bool = False
    #: The volume's properties travel with the stream (``zfs send -p``), to be received
    #: as the replica's "received" values (``ReceiveProperties`` filters them).
    properties: bool = False

    def __str__(self) -> str:
        kind = "raw" if self.raw else "compressed" if self.compressed else "plain"
        return f"{kind}+properties" if self.properties else kind


@dataclass(frozen=True)
class ReceiveProperties:
    """What a receive does to the properties of the volume it writes (a relationship's
    ``receive_exclude`` and ``receive_set``, checked by ``logic.receive``).

    ``exclude``: properties whose value in the stream (if it carries any) never takes
    effect: the replica keeps its inherited or default value (``zfs receive -x``).
    ``override``: properties set on the replica, whatever the stream says
    (``zfs receive -o``). ``apply_after``: where the receive cannot take them (no
    ``receive_properties``), set them by ``zfs set``/``zfs inherit`` in the same command
    right after it. Local values outlive later receives, so a flow asks for that only
    when the receive creates the volume (a full copy), never once per incremental.
    """

    exclude: tuple[str, ...] = ()
    override: tuple[tuple[str, str], ...] = ()
    apply_after: bool = True

    def __bool__(self) -> bool:
        return bool(self.exclude or self.override)

    def to_json(self) -> dict[str, Any]:
        return {"exclude": list(self.exclude), "set": dict(self.override),
                "apply_after": self.apply_after}

    @classmethod
    def from_json(cls, data: Any) -> ReceiveProperties:
        if not isinstance(data, dict):
            return cls()
        return cls(tuple(data.get("exclude", ())),
                   tuple((str(k), str(v)) for k, v in dict(data.get("set", {})).items()),
                   bool(data.get("apply_after", True)))


@dataclass(frozen=True)
class TreeDataset:
    """One filesystem or volume of a tree listing, with its snapshots (oldest first)."""

    name: str
    type: str
    guid: str
    #: The selecting user property's effective value ("on", "off", a name; inherited
    #: values count), or None when no property was asked for or it is unset ("-").
    selector: str | None
    snapshots: tuple[Snapshot, ...]


@dataclass(frozen=True)
class TreeListing:
    """A dataset tree as one listing saw it: the root and every descendant, parents
    before children. A tree relationship's cycle reads each server's tree once."""

    root: str
    datasets: tuple[TreeDataset, ...]

    def get(self, name: str) -> TreeDataset | None:
        """One dataset by name: a dict built once per listing (a cycle asks for every
        member, so a scan per ask would grow with the square of the tree)."""
        return self._by_name.get(name)

    @cached_property
    def _by_name(self) -> dict[str, TreeDataset]:
        return {d.name: d for d in self.datasets}

    def newest(self, name: str, prefix: str) -> Snapshot | None:
        """The newest snapshot of dataset ``name`` whose label starts with ``prefix``."""
        ds = self.get(name)
        return next((s for s in reversed(ds.snapshots) if s.label.startswith(prefix)),
                    None) if ds else None
