"""``StorageBackend``: what the flows need from one server's storage, and nothing more.

The flows own this protocol (zrepl's ``logic`` declares the ``Sender``/``Receiver`` it
needs in the same way); a backend implements it in its own package. Methods are named
for what a flow wants, not for a tool's flags: a stream is asked for by snapshot, base
and ``StreamOptions`` and handed back as a ready ``StreamEndpoint``; an incremental base
is *pinned* for a destination (ZFS: a hold) and *marked* so it outlives the snapshot
(ZFS: a bookmark). What a backend cannot do it says in ``capabilities``, and the
methods behind a missing capability are harmless no-ops (``pin`` without holds) or
answer "unknown" (``estimate`` returns None), so a flow reads capabilities only to
choose between paths, never to avoid a crash.

Names are validated by the backend before anything runs (``storage.names``); errors
are ``storage.errors`` types, and a link failure underneath is a
``transport.errors.LinkError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from ..transport.stream import StreamEndpoint
from .values import (
    Capabilities,
    PoolCapacity,
    ReceiveProperties,
    Snapshot,
    StreamOptions,
    TreeListing,
    Volume,
    VolumePage,
)


class StorageBackend(Protocol):
    server: str
    capabilities: Capabilities

    async def probe(self) -> Capabilities:
        """Find out (not assume) what this server's storage can do; sets ``capabilities``."""
        ...

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/servers`` shows of the backend (kind, version, capabilities)."""
        ...

    # Pools and volumes

    async def pools(self) -> list[str]: ...

    def pool_of(self, volume: str) -> str:
        """The pool ``volume`` lives in (validated; no command runs)."""
        ...

    async def volumes(self, roots: Sequence[str] | None = None, *, limit: int | None = None,
                      offset: int = 0) -> VolumePage: ...

    async def volume(self, name: str) -> Volume: ...

    async def exists(self, volume: str) -> bool: ...

    async def target_problem(self, volume: str) -> str | None:
        """Why a stream could not be received into a new ``volume`` here (its pool or
        its parent is missing), or None."""
        ...

    async def encrypted(self, volume: str) -> bool: ...

    async def set_readonly(self, volume: str, readonly: bool = True) -> None:
        """Fence (or lift the fence on) ``volume``: in force when this returns, or an
        error; ``Busy`` when a client keeps it from taking effect yet."""
        ...

    async def is_readonly(self, volume: str) -> bool: ...

    async def set_readonly_many(self, volumes: Sequence[str],
                                readonly: bool = True) -> dict[str, str]:
        """``set_readonly`` of each of ``volumes`` (a tree's fence or promotion) in as few
        commands as they fit in; returns why not, per volume where it is not in force
        (the others are done)."""
        ...

    async def set_user_property_many(self, volumes: Sequence[str], prop: str,
                                     value: str) -> None:
        """The user property ``prop`` set to ``value`` on each of ``volumes`` (a promoted
        tree's copies take the selecting property, which streams do not carry)."""
        ...

    async def mount_many(self, volumes: Sequence[str]) -> dict[str, str]:
        """Mount each of ``volumes`` that is a filesystem to be mounted (a promoted
        tree's copies, received unmounted), parents first; returns why not, per volume
        that did not mount."""
        ...

    async def replace_volume(self, volume: str, replacement: str) -> None:
        """Destroy ``volume`` and give ``replacement`` its name (an overwriting copy)."""
        ...

    async def destroy_volume(self, volume: str, *, force_unmount: bool = False) -> None: ...

    async def rename(self, old: str, new: str) -> None:
        """Give volume ``old`` the name ``new`` (its parent must exist)."""
        ...

    # Trees

    async def tree(self, root: str, *, selector: str | None = None,
                   snapshots: bool = True) -> TreeListing:
        """``root`` and every descendant filesystem and volume, each with its snapshots,
        from one listing (never a command per dataset); ``selector`` names a user
        property whose effective value each dataset reports. ``NotFound`` without root.
        ``snapshots=False`` leaves snapshots out (and unvisited: visiting them is what a
        listing of a tree with weeks of history costs)."""
        ...

    async def snapshot_facts(self, names: Sequence[str]) -> dict[str, Snapshot]:
        """The snapshots of ``names`` that exist, by name, from as few commands as the
        names fit in (never a listing of their volumes)."""
        ...

    async def snapshot_tree(self, root: str, label: str, members: Sequence[str]) -> None:
        """A snapshot ``label`` of each of ``members`` (``root`` or under it), all taken
        at one instant: one command naming them all (``multi_snapshot``), else a
        recursive snapshot of ``root`` whose snapshots of non-members are then destroyed.
        Idempotent: members that already have ``label`` are fine. Members that no longer
        exist (destroyed since the listing) are skipped; ``InvalidName`` for one outside
        ``root``."""
        ...

    async def create_parents(self, volume: str) -> None:
        """Create ``volume``'s missing ancestors below its pool as plain filesystems,
        left unmounted, so that a receive can create ``volume`` (a tree member whose
        parent is not a member). Existing ancestors are left as they are."""
        ...

    # Snapshots and marks

    async def snapshots(self, volume: str) -> list[Snapshot]:
        """Oldest first."""
        ...

    async def snapshot(self, name: str) -> Snapshot: ...

    async def has_snapshot(self, name: str) -> bool: ...

    async def create_snapshot(self, volume: str, label: str, *,
                              origin: str | None = None) -> Snapshot:
        """A snapshot ``label`` of ``volume``; ``origin`` records the identity (guid) of
        the source snapshot it copies (the generic path), read back as ``Snapshot.origin``."""
        ...

    async def destroy_snapshot(self, name: str, *, recursive: bool = False) -> None:
        """Destroy snapshot ``name``; ``recursive``: the snapshots of that label of every
        descendant too, all or none (ZFS refuses the whole when one is held)."""
        ...

    async def rollback(self, snapshot: str) -> None:
        """Back to ``snapshot``, destroying every later one and every change since."""
        ...

    async def bookmarks(self, volume: str) -> list[Snapshot]:
        """Marks that can serve as an incremental base; empty without ``bookmarks``."""
        ...

    async def mark_base(self, snapshot: Snapshot, for_server: str) -> None:
        """Keep ``snapshot`` usable as ``for_server``'s incremental base even after it
        is destroyed, and drop that server's older mark (no-op without bookmarks)."""
        ...

    def pin_tag(self, for_server: str) -> str:
        """The name of the pin that keeps a base alive for ``for_server``."""
        ...

    async def pin(self, snapshot: str, for_server: str) -> None:
        """Keep ``snapshot`` from being destroyed while it is ``for_server``'s base
        (no-op without holds)."""
        ...

    async def unpin(self, snapshot: str, for_server: str) -> None:
        """Drop that pin; a snapshot without it (or gone) is fine."""
        ...

    async def pin_many(self, snapshots: Sequence[str], for_server: str, *,
                       whole: str | None = None) -> None:
        """``pin`` each of ``snapshots`` in as few commands as they fit in; ``whole``
        (``root@label``) says they are exactly that label's snapshots of ``root`` and
        its descendants, which one recursive command may then serve. Pins already there
        are fine."""
        ...

    async def unpin_many(self, snapshots: Sequence[str], for_server: str, *,
                         whole: str | None = None) -> None:
        """``unpin`` each of ``snapshots`` as ``pin_many`` pins them."""
        ...

    async def pinned_by(self, snapshot: str, servers: Iterable[str]) -> frozenset[str]:
        """Which of ``servers`` pin ``snapshot`` now."""
        ...

    # Streams

    def send(self, snapshot: str, base: str | None = None, *, intermediates: bool = False,
             resume_token: str | None = None,
             options: StreamOptions = StreamOptions()) -> StreamEndpoint:
        """The sending end of a stream of ``snapshot`` (incremental from ``base``, a
        snapshot or a mark; with ``intermediates`` the snapshots between too)."""
        ...

    def receive(self, volume: str, *, resumable: bool = False,
                discard_changes: bool = False, unmounted: bool = False,
                properties: ReceiveProperties = ReceiveProperties()) -> StreamEndpoint:
        """The receiving end into ``volume``; ``resumable`` keeps a cut-off receive's
        state, ``discard_changes`` first drops changes made since the last snapshot,
        ``unmounted`` leaves a received filesystem unmounted (a relationship's default:
        nothing mounts over a slave's paths, and FUSE mounts run out near 1,000),
        ``properties`` excludes or overrides the stream's properties on the replica
        (``capabilities.receive_properties``, else applied right after: see there)."""
        ...

    @property
    def inline_limit(self) -> int:
        """The largest stream ``receive_inline`` takes (0: none; see there)."""
        ...

    async def receive_inline(self, volume: str, data: bytes, *, unmounted: bool = False,
                             properties: ReceiveProperties = ReceiveProperties()) -> None:
        """Receive a whole small stream (``data``, at most ``inline_limit`` bytes) into
        ``volume`` by one command, where a stream endpoint would cost a session of its
        own on the server (a tree's unchanged members send a few hundred bytes each)."""
        ...

    async def estimate(self, snapshot: str, base: str | None = None, *,
                       intermediates: bool = False, resume_token: str | None = None,
                       options: StreamOptions = StreamOptions()) -> int | None:
        """The stream's exact size, or None where the backend cannot say."""
        ...

    async def resume_token(self, volume: str) -> str | None:
        """The token a cut-off receive into ``volume`` left (a pending partial receive)."""
        ...

    async def stale_resume_token(self, token: str) -> str | None:
        """Why no send from this server can ever resume from ``token``, or None."""
        ...

    async def abort_receive(self, volume: str) -> None:
        """Discard a pending partial receive (no-op without resumable sends)."""
        ...

    # Volume operations (Cinder's create, clone, revert = ``rollback``, extend, delete =
    # ``destroy_volume``), each run by the flows as an activity.

    async def create_volume(self, volume: str, *, size: int | None = None) -> Volume:
        """A new empty volume: a filesystem, or with ``size`` a block volume of that many
        bytes (``BackendError`` where the driver has none: ``capabilities.zvols``).
        ``AlreadyExists`` when taken; its parent must exist."""
        ...

    async def clone_volume(self, snapshot: str, volume: str) -> Volume:
        """A new writable ``volume`` with ``snapshot``'s content (``capabilities.clones``)."""
        ...

    async def resize_volume(self, volume: str, size: int) -> None:
        """A block volume's size, a filesystem's quota, set to ``size`` bytes."""
        ...

    async def dependents(self, volume: str) -> list[str]:
        """What would be lost or broken with ``volume``: volumes cloned from its snapshots
        and volumes below it, by name (empty: nothing depends on it)."""
        ...

    async def capacity(self) -> list[PoolCapacity]:
        """Each pool's space (``PoolCapacity``), from one command per kind of fact."""
        ...

    # The generic path across drivers (``capabilities.snapshot_views``): a file-level
    # copy from a snapshot's read-only view into a writable volume, then a snapshot.

    async def snapshot_view(self, snapshot: str, *, for_server: str = "") -> str:
        """A path on the server where ``snapshot``'s files can be read (ZFS: under the
        mountpoint's ``.zfs/snapshot``, or a temporary read-only clone where there is no
        such directory; btrfs: the read-only snapshot itself); ``BackendError`` naming
        the reason where there is none (a block volume). ``for_server``: the destination
        it is read for, so that two destinations' copies never share (and release) one
        temporary view; one copy per destination runs at a time."""
        ...

    async def release_view(self, snapshot: str, *, for_server: str = "") -> None:
        """Drop what ``snapshot_view`` set up for ``snapshot`` and ``for_server``, if
        anything (the temporary clone); a view that is not there is fine."""
        ...

    async def volume_path(self, volume: str) -> str:
        """Where ``volume``'s files are written on the server (mounted first if it is a
        filesystem received unmounted); ``BackendError`` for a block volume."""
        ...
