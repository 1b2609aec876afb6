"""``FakeBackend``: an in-memory ``StorageBackend`` for fast flow tests (no root, no ZFS).

Volumes, snapshots, pins and marks live in dicts. Streams are real processes, so that a
flow's stream goes through the real pipeline (``transfer``, fan-out, cancel, stall):
``send`` writes what the stream carries (the snapshots, the base's guid) to a file and
hands out ``cat FILE``; ``receive`` hands out a ``cat`` into an inbox file that is
renamed into place only once the stream ended (a killed receive leaves nothing). The
next call on the backend takes in what arrived, as a receive would have: a stream onto
a target that is not at its base, or a full stream onto an existing volume, is refused
then and remembered in ``refused``.

``hooks`` lets a test step in before a named method runs (to fail it, or to wait).
The contract suite (tests/test_storage_contract.py) holds this backend to the same
behaviour as ZFS.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cerssd.storage.errors import AlreadyExists, BackendError, Busy, NotFound
from cerssd.storage.names import (
    InvalidName,
    validate_bookmark,
    validate_snapshot,
    validate_snapshot_label,
    validate_user_property,
    validate_volume,
)
from cerssd.storage.values import (
    Capabilities,
    PoolCapacity,
    ReceiveProperties,
    Snapshot,
    StreamOptions,
    TreeDataset,
    TreeListing,
    Volume,
    VolumePage,
)
from cerssd.transport.runner import LocalRunner
from cerssd.transport.stream import Endpoint

#: What the fake can do: ZFS's feature set less what needs a resumable receive or an
#: exact size (those stay with the zfs-fuse and OpenZFS tiers).
FAKE_CAPABILITIES = Capabilities(
    stateless_snapshots=True, incremental_send=True, bookmarks=True, holds=True,
    self_restarting=True, safe_send_holds=True, parsable_list=True, typed_get=True,
    multi_snapshot=True, clones=True)
#: The fake's one size for every pool (``capacity``).
FAKE_POOL_SIZE = 1 << 30

_txg = itertools.count(1)


@dataclass
class FakeVolume:
    name: str
    guid: str
    creation: int
    snapshots: list[Snapshot] = field(default_factory=list)
    bookmarks: list[Snapshot] = field(default_factory=list)
    pins: dict[str, set[str]] = field(default_factory=dict)
    readonly: bool = False
    #: Written to since the last snapshot (an incremental receive would be refused).
    changed: bool = False
    mounted: bool = True
    #: User properties set on this volume itself (``tree`` works out inheritance).
    props: dict[str, str] = field(default_factory=dict)
    #: "filesystem" or "volume" (a block volume, only where ``capabilities.zvols``).
    type: str = "filesystem"
    #: A block volume's size, a filesystem's quota (None: no quota).
    size: int | None = None
    #: The snapshot a clone was made from.
    origin: str | None = None


def _guid() -> str:
    return str(secrets.randbits(63))


class FakeBackend:
    def __init__(self, server: str, workdir: Path, *, pools: Iterable[str] = ("tank",),
                 capabilities: Capabilities = FAKE_CAPABILITIES) -> None:
        self.server = server
        self.capabilities = Capabilities()
        self._probed = capabilities
        self._pools = set(pools)
        self.vols: dict[str, FakeVolume] = {p: FakeVolume(p, _guid(), int(time.time()))
                                            for p in self._pools}
        self._dir = workdir / f"fake-{server}-{uuid.uuid4().hex[:6]}"
        (self._dir / "streams").mkdir(parents=True)
        (self._dir / "inbox").mkdir()
        self._pending: dict[Path, tuple[str, bool, bool]] = {}
        self.refused: list[str] = []
        #: method name -> awaited before the method runs (raise to fail it).
        self.hooks: dict[str, Callable[[], Awaitable[None]]] = {}
        self.calls: list[str] = []
        #: Senders keep the stream open after the data (see ``stalling``).
        self.stall_sends = False

    # Test set-up helpers (not part of the protocol)

    def add_volume(self, name: str) -> FakeVolume:
        validate_volume(name)
        if self.pool_of(name) not in self._pools:
            raise NotFound(f"no such pool {self.pool_of(name)}")
        if name in self.vols:
            raise AlreadyExists(f"{name} already exists")
        vol = FakeVolume(name, _guid(), int(time.time()))
        self.vols[name] = vol
        return vol

    def set_property(self, volume: str, prop: str, value: str) -> None:
        """``zfs set prop=value volume`` (a user property, inherited below)."""
        self._vol(volume).props[validate_user_property(prop)] = value

    def write(self, volume: str) -> None:
        """A client wrote to ``volume`` (refused when it is read-only)."""
        vol = self._vol(volume)
        if vol.readonly:
            raise BackendError(f"{volume} is read-only")
        vol.changed = True

    async def _enter(self, method: str) -> None:
        self.calls.append(method)
        self._take_in()
        hook = self.hooks.get(method)
        if hook is not None:
            await hook()

    def _vol(self, name: str) -> FakeVolume:
        validate_volume(name)
        vol = self.vols.get(name)
        if vol is None:
            raise NotFound(f"dataset {name} does not exist on {self.server}")
        return vol

    # StorageBackend

    async def probe(self) -> Capabilities:
        await self._enter("probe")
        self.capabilities = self._probed
        return self.capabilities

    def info(self) -> dict[str, Any]:
        return {"server": self.server, "backend": "fake",
                "capabilities": self.capabilities.published()}

    async def pools(self) -> list[str]:
        await self._enter("pools")
        return sorted(self._pools)

    def pool_of(self, volume: str) -> str:
        return validate_volume(volume).partition("/")[0]

    async def volumes(self, roots: Sequence[str] | None = None, *, limit: int | None = None,
                      offset: int = 0) -> VolumePage:
        await self._enter("volumes")
        names = sorted(n for n in self.vols if roots is None or any(
            n == validate_volume(r) or n.startswith(r + "/") for r in roots))
        end = None if limit is None else offset + limit
        return VolumePage(tuple(self._volume(n) for n in names[offset:end]), len(names))

    def _volume(self, name: str) -> Volume:
        vol = self.vols[name]
        return Volume(name=name, type=vol.type, guid=vol.guid, creation=vol.creation,
                      used=0, referenced=0, readonly=vol.readonly,
                      mounted=vol.mounted and vol.type == "filesystem", size=vol.size)

    async def volume(self, name: str) -> Volume:
        await self._enter("volume")
        self._vol(name)
        return self._volume(name)

    async def exists(self, volume: str) -> bool:
        await self._enter("exists")
        validate_volume(volume)
        return volume in self.vols

    async def target_problem(self, volume: str) -> str | None:
        await self._enter("target_problem")
        pool = self.pool_of(volume)
        if pool not in self._pools:
            return f"pool {pool} does not exist on {self.server}"
        parent = volume.rpartition("/")[0]
        if parent and parent not in self.vols:
            return f"{parent} does not exist on {self.server}; create the parent dataset first"
        return None

    async def encrypted(self, volume: str) -> bool:
        await self._enter("encrypted")
        self._vol(volume)
        return False

    async def set_readonly(self, volume: str, readonly: bool = True) -> None:
        await self._enter("set_readonly")
        self._vol(volume).readonly = readonly

    async def is_readonly(self, volume: str) -> bool:
        await self._enter("is_readonly")
        return self._vol(volume).readonly

    async def set_readonly_many(self, volumes: Sequence[str],
                                readonly: bool = True) -> dict[str, str]:
        await self._enter("set_readonly_many")
        problems = {}
        for volume in volumes:
            try:
                self._vol(volume).readonly = readonly
            except NotFound as exc:
                problems[volume] = str(exc)
        return problems

    async def set_user_property_many(self, volumes: Sequence[str], prop: str,
                                     value: str) -> None:
        await self._enter("set_user_property_many")
        for volume in volumes:
            self._vol(volume).props[prop] = value

    async def mount_many(self, volumes: Sequence[str]) -> dict[str, str]:
        await self._enter("mount_many")
        for volume in volumes:
            self._vol(volume).mounted = True
        return {}

    async def replace_volume(self, volume: str, replacement: str) -> None:
        await self._enter("replace_volume")
        await self.destroy_volume(volume, force_unmount=True)
        vol = self.vols.pop(self._vol(replacement).name)
        vol.name = volume
        vol.snapshots = [replace(s, name=f"{volume}@{s.label}", volume=volume)
                         for s in vol.snapshots]
        vol.pins = {f"{volume}@{k.partition('@')[2]}": v for k, v in vol.pins.items()}
        self.vols[volume] = vol

    async def rename(self, old: str, new: str) -> None:
        await self._enter("rename")
        validate_volume(new)
        if new in self.vols:
            raise AlreadyExists(f"{new} exists")
        for name in sorted(n for n in self.vols if n == old or n.startswith(old + "/")):
            vol = self.vols.pop(name)
            moved = new + name[len(old):]
            vol.name = moved
            vol.snapshots = [replace(s, name=f"{moved}@{s.label}", volume=moved)
                             for s in vol.snapshots]
            vol.pins = {f"{moved}@{k.partition('@')[2]}": v for k, v in vol.pins.items()}
            self.vols[moved] = vol

    async def destroy_volume(self, volume: str, *, force_unmount: bool = False) -> None:
        await self._enter("destroy_volume")
        if "/" not in validate_volume(volume):
            raise BackendError(f"refusing to destroy the root dataset of pool {volume}")
        self._vol(volume)
        doomed = [n for n in self.vols if n == volume or n.startswith(volume + "/")]
        if any(self.vols[n].pins.get(s.name) for n in doomed for s in self.vols[n].snapshots):
            raise Busy(f"a snapshot of {volume} is held")
        clones = sorted(n for n, v in self.vols.items() if n not in doomed and v.origin
                        and v.origin.partition("@")[0] in doomed)
        if clones:
            raise Busy(f"cannot destroy '{volume}': filesystem has dependent clones "
                       f"({', '.join(clones)})")
        for name in doomed:
            del self.vols[name]

    async def snapshots(self, volume: str) -> list[Snapshot]:
        await self._enter("snapshots")
        vol = self._vol(volume)
        return [self._counted(vol, s) for s in vol.snapshots]

    @staticmethod
    def _counted(vol: FakeVolume, snap: Snapshot) -> Snapshot:
        return replace(snap, userrefs=len(vol.pins.get(snap.name, ())))

    async def snapshot(self, name: str) -> Snapshot:
        await self._enter("snapshot")
        snap = validate_snapshot(name)
        vol = self._vol(snap.volume)
        for s in vol.snapshots:
            if s.name == name:
                return self._counted(vol, s)
        raise NotFound(f"snapshot {name} does not exist on {self.server}")

    async def has_snapshot(self, name: str) -> bool:
        await self._enter("has_snapshot")
        snap = validate_snapshot(name)
        vol = self.vols.get(snap.volume)
        return vol is not None and any(s.name == name for s in vol.snapshots)

    async def create_snapshot(self, volume: str, label: str, *,
                              origin: str | None = None) -> Snapshot:
        await self._enter("create_snapshot")
        validate_snapshot_label(label)
        vol = self._vol(volume)
        name = f"{volume}@{label}"
        if any(s.name == name for s in vol.snapshots):
            raise AlreadyExists(f"dataset already exists: {name}")
        snap = Snapshot(name=name, volume=volume, label=label, guid=_guid(),
                        creation=int(time.time()), used=0, referenced=1 << 20, userrefs=0,
                        createtxg=next(_txg), origin=origin or "")
        vol.snapshots.append(snap)
        vol.changed = False
        return snap

    async def destroy_snapshot(self, name: str, *, recursive: bool = False) -> None:
        await self._enter("destroy_snapshot")
        snap = validate_snapshot(name)
        if recursive:
            doomed = [f"{v}@{snap.snapshot}" for v in self.vols if _in_tree(snap.volume, v)
                      and any(s.label == snap.snapshot for s in self.vols[v].snapshots)]
            if not any(d == name for d in doomed):
                raise NotFound(f"could not find any snapshots to destroy; {name}")
            if any(self.vols[d.partition("@")[0]].pins.get(d) for d in doomed):
                raise Busy(f"cannot destroy snapshots of {name}: dataset is busy")
            for d in doomed:
                vol = self.vols[d.partition("@")[0]]
                vol.snapshots = [s for s in vol.snapshots if s.name != d]
            return
        vol = self._vol(snap.volume)
        if not any(s.name == name for s in vol.snapshots):
            raise NotFound(f"could not find any snapshots to destroy; {name} does not exist")
        if vol.pins.get(name):
            raise Busy(f"cannot destroy snapshot {name}: dataset is busy (it is held)")
        vol.snapshots = [s for s in vol.snapshots if s.name != name]
        vol.pins.pop(name, None)

    async def rollback(self, snapshot: str) -> None:
        await self._enter("rollback")
        snap = validate_snapshot(snapshot)
        vol = self._vol(snap.volume)
        at = next((i for i, s in enumerate(vol.snapshots) if s.name == snapshot), None)
        if at is None:
            raise NotFound(f"{snapshot} does not exist")
        later = vol.snapshots[at + 1:]
        if any(vol.pins.get(s.name) for s in later):
            raise Busy("a later snapshot is held")
        vol.snapshots = vol.snapshots[:at + 1]
        vol.changed = False

    async def bookmarks(self, volume: str) -> list[Snapshot]:
        await self._enter("bookmarks")
        vol = self._vol(volume)
        return list(vol.bookmarks) if self.capabilities.bookmarks else []

    async def mark_base(self, snapshot: Snapshot, for_server: str) -> None:
        await self._enter("mark_base")
        if not self.capabilities.bookmarks:
            return
        vol = self._vol(snapshot.volume)
        prefix = f"fake-{for_server}-"
        name = f"{snapshot.volume}#{prefix}{snapshot.label}"
        validate_bookmark(name)
        vol.bookmarks = [m for m in vol.bookmarks if not m.label.startswith(prefix)]
        vol.bookmarks.append(replace(snapshot, name=name, label=name.partition("#")[2],
                                     used=0, referenced=0, userrefs=0))

    def pin_tag(self, for_server: str) -> str:
        return f"fake:{for_server}"

    async def pin(self, snapshot: str, for_server: str) -> None:
        await self._enter("pin")
        if not self.capabilities.holds:
            return
        snap = validate_snapshot(snapshot)
        vol = self._vol(snap.volume)
        if not any(s.name == snapshot for s in vol.snapshots):
            raise NotFound(f"{snapshot} does not exist")
        vol.pins.setdefault(snapshot, set()).add(for_server)

    async def unpin(self, snapshot: str, for_server: str) -> None:
        await self._enter("unpin")
        snap = validate_snapshot(snapshot)
        vol = self.vols.get(snap.volume)
        if vol is not None:
            vol.pins.get(snapshot, set()).discard(for_server)

    async def pin_many(self, snapshots: Sequence[str], for_server: str, *,
                       whole: str | None = None) -> None:
        await self._enter("pin_many")
        for name in snapshots:
            with contextlib.suppress(NotFound):
                await self.pin(name, for_server)

    async def unpin_many(self, snapshots: Sequence[str], for_server: str, *,
                         whole: str | None = None) -> None:
        await self._enter("unpin_many")
        for name in snapshots:
            await self.unpin(name, for_server)

    async def pinned_by(self, snapshot: str, servers: Iterable[str]) -> frozenset[str]:
        await self._enter("pinned_by")
        snap = validate_snapshot(snapshot)
        vol = self._vol(snap.volume)
        return frozenset(vol.pins.get(snapshot, set()) & set(servers))

    # Streams

    def send(self, snapshot: str, base: str | None = None, *, intermediates: bool = False,
             resume_token: str | None = None,
             options: StreamOptions = StreamOptions()) -> Endpoint:
        self.calls.append("send")
        self._take_in()
        if resume_token is not None:
            raise BackendError("the fake backend cannot resume a send")
        snap = validate_snapshot(snapshot)
        vol = self._vol(snap.volume)
        index = {s.name: i for i, s in enumerate(vol.snapshots)}
        if snapshot not in index:
            raise NotFound(f"{snapshot} does not exist")
        sent = [vol.snapshots[index[snapshot]]]
        base_guid = None
        if base is not None:
            if "#" in base:
                mark = next((m for m in vol.bookmarks if m.name == base), None)
                if mark is None:
                    raise NotFound(f"{base} does not exist")
                base_guid = mark.guid
            else:
                if base not in index:
                    raise NotFound(f"{base} does not exist")
                base_guid = vol.snapshots[index[base]].guid
                if intermediates:
                    sent = vol.snapshots[index[base] + 1:index[snapshot] + 1]
        path = self._dir / "streams" / f"{uuid.uuid4().hex}.json"
        path.write_text(json.dumps({
            "base_guid": base_guid, "options": str(options),
            "snapshots": [{"label": s.label, "guid": s.guid, "creation": s.creation,
                           "referenced": s.referenced} for s in sent]}))
        endpoint = Endpoint(LocalRunner(self.server), ["cat", str(path)])
        return stalling(endpoint) if self.stall_sends else endpoint

    #: Streams always take the stream path here (the fake's are small JSON files).
    inline_limit = 0

    async def receive_inline(self, volume: str, data: bytes, *, unmounted: bool = False,
                             properties: ReceiveProperties = ReceiveProperties()) -> None:
        raise BackendError("the fake backend receives streams only through receive()")

    def receive(self, volume: str, *, resumable: bool = False,
                discard_changes: bool = False, unmounted: bool = False,
                properties: ReceiveProperties = ReceiveProperties()) -> Endpoint:
        self.calls.append("receive")
        validate_volume(volume)
        path = self._dir / "inbox" / f"{uuid.uuid4().hex}.json"
        self._pending[path] = (volume, discard_changes, unmounted)
        return Endpoint(LocalRunner(self.server),
                        ["sh", "-c", 'cat > "$0.part" && mv "$0.part" "$0"', str(path)])

    def _take_in(self) -> None:
        """Apply every stream that arrived completely since the last call."""
        for path, (volume, discard, unmounted) in list(self._pending.items()):
            if not path.exists():
                if not path.with_name(path.name + ".part").exists():
                    continue  # not started yet
                continue  # still arriving, or cut off: nothing received
            del self._pending[path]
            stream = json.loads(path.read_text())
            path.unlink()
            problem = self._apply(volume, stream, discard, unmounted)
            if problem is not None:
                self.refused.append(problem)

    def _apply(self, volume: str, stream: dict[str, Any], discard: bool,
               unmounted: bool) -> str | None:
        vol = self.vols.get(volume)
        if stream["base_guid"] is None:
            if vol is not None:
                return f"destination {volume} exists"
            parent = volume.rpartition("/")[0]
            if parent not in self.vols:
                return f"parent of {volume} does not exist"
            vol = self.add_volume(volume)
            vol.mounted = not unmounted
        else:
            if vol is None or not vol.snapshots:
                return f"{volume} has no base for an incremental stream"
            if vol.snapshots[-1].guid != stream["base_guid"]:
                return f"destination {volume} has snapshots after the base"
            if vol.changed and not discard:
                return f"destination {volume} has been modified since the most recent snapshot"
        for s in stream["snapshots"]:
            vol.snapshots.append(Snapshot(
                name=f"{volume}@{s['label']}", volume=volume, label=s["label"],
                guid=s["guid"], creation=s["creation"], used=0, referenced=s["referenced"],
                userrefs=0, createtxg=next(_txg)))
        vol.changed = False
        return None

    # Trees

    async def tree(self, root: str, *, selector: str | None = None,
                   snapshots: bool = True) -> TreeListing:
        await self._enter("tree" if snapshots else "tree_datasets")
        self._vol(root)
        if selector is not None:
            validate_user_property(selector)
        names = sorted((n for n in self.vols if _in_tree(root, n)),
                       key=lambda n: tuple(n.split("/")))
        return TreeListing(root=root, datasets=tuple(
            TreeDataset(name=n, type="filesystem", guid=self.vols[n].guid,
                        selector=self._effective(n, selector) if selector else None,
                        snapshots=tuple(self._counted(self.vols[n], s)
                                        for s in self.vols[n].snapshots) if snapshots else ())
            for n in names))

    async def snapshot_facts(self, names: Sequence[str]) -> dict[str, Snapshot]:
        await self._enter("snapshot_facts")
        found = {}
        for name in names:
            snap = validate_snapshot(name)
            vol = self.vols.get(snap.volume)
            if vol is None:
                continue
            for s in vol.snapshots:
                if s.name == name:
                    found[name] = self._counted(vol, s)
        return found

    def _effective(self, name: str, prop: str) -> str | None:
        """The property's value set on ``name`` or inherited from its nearest ancestor."""
        while True:
            vol = self.vols.get(name)
            if vol is not None and prop in vol.props:
                return vol.props[prop]
            if "/" not in name:
                return None
            name = name.rpartition("/")[0]

    async def snapshot_tree(self, root: str, label: str, members: Sequence[str]) -> None:
        """Every member lacking ``label`` gets it at one txg; gone members are skipped."""
        await self._enter("snapshot_tree")
        validate_volume(root)
        validate_snapshot_label(label)
        for member in members:
            validate_snapshot(f"{validate_volume(member)}@{label}")
            if not _in_tree(root, member):
                raise InvalidName(f"{member} is not in the tree of {root}")
        txg, now = next(_txg), int(time.time())
        for member in sorted(set(members)):
            vol = self.vols.get(member)
            name = f"{member}@{label}"
            if vol is None or any(s.name == name for s in vol.snapshots):
                continue
            vol.snapshots.append(Snapshot(
                name=name, volume=member, label=label, guid=_guid(), creation=now, used=0,
                referenced=1 << 20, userrefs=0, createtxg=txg))
            vol.changed = False

    async def create_parents(self, volume: str) -> None:
        await self._enter("create_parents")
        parts = validate_volume(volume).split("/")
        if parts[0] not in self._pools:
            raise NotFound(f"no such pool {parts[0]}")
        for depth in range(2, len(parts)):
            ancestor = "/".join(parts[:depth])
            if ancestor not in self.vols:
                self.add_volume(ancestor).mounted = False

    async def estimate(self, snapshot: str, base: str | None = None, *,
                       intermediates: bool = False, resume_token: str | None = None,
                       options: StreamOptions = StreamOptions()) -> int | None:
        await self._enter("estimate")
        return None

    async def resume_token(self, volume: str) -> str | None:
        await self._enter("resume_token")
        return None

    async def stale_resume_token(self, token: str) -> str | None:
        await self._enter("stale_resume_token")
        return "the fake backend keeps no partial receives"

    async def abort_receive(self, volume: str) -> None:
        await self._enter("abort_receive")
        validate_volume(volume)

    # Volume operations

    async def create_volume(self, volume: str, *, size: int | None = None) -> Volume:
        await self._enter("create_volume")
        if "/" not in validate_volume(volume):
            raise InvalidName(f"{volume!r} is a pool: a volume is pool/name")
        if size is not None and not self.capabilities.zvols:
            raise BackendError(f"server {self.server} has no block volumes (zvols)")
        if size is not None and size < 1:
            raise BackendError(f"a size is a positive number of bytes, not {size!r}")
        if volume.rpartition("/")[0] not in self.vols:
            raise NotFound(f"cannot create '{volume}': parent does not exist")
        vol = self.add_volume(volume)
        if size is not None:
            vol.type, vol.size = "volume", size
        return self._volume(volume)

    async def clone_volume(self, snapshot: str, volume: str) -> Volume:
        await self._enter("clone_volume")
        snap = validate_snapshot(snapshot)
        origin = self._vol(snap.volume)
        if not any(s.name == snapshot for s in origin.snapshots):
            raise NotFound(f"cannot open '{snapshot}': dataset does not exist")
        if volume.rpartition("/")[0] not in self.vols:
            raise NotFound(f"cannot create '{volume}': parent does not exist")
        vol = self.add_volume(volume)
        vol.type, vol.size, vol.origin = origin.type, origin.size, snapshot
        return self._volume(volume)

    async def resize_volume(self, volume: str, size: int) -> None:
        await self._enter("resize_volume")
        if size < 1:
            raise BackendError(f"a size is a positive number of bytes, not {size!r}")
        self._vol(volume).size = size

    async def dependents(self, volume: str) -> list[str]:
        await self._enter("dependents")
        self._vol(volume)
        doomed = {n for n in self.vols if _in_tree(volume, n)}
        found = sorted((n for n in doomed if n != volume), key=lambda n: tuple(n.split("/")))
        while clones := sorted(n for n, v in self.vols.items() if n not in doomed
                               and v.origin and v.origin.partition("@")[0] in doomed):
            for clone in clones:
                subtree = sorted((n for n in self.vols if _in_tree(clone, n)
                                  and n not in doomed), key=lambda n: tuple(n.split("/")))
                doomed.update(subtree)
                found.extend(subtree)
        return found

    async def capacity(self) -> list[PoolCapacity]:
        await self._enter("capacity")
        result = []
        for pool in sorted(self._pools):
            names = [n for n in self.vols if _in_tree(pool, n)]
            allocated = sum(s.referenced for n in names for s in self.vols[n].snapshots)
            provisioned = sum(self.vols[n].size or 0 for n in names)
            result.append(PoolCapacity(pool=pool, total=FAKE_POOL_SIZE,
                                       free=FAKE_POOL_SIZE - allocated, allocated=allocated,
                                       provisioned=provisioned))
        return result


    # The generic path: a directory per volume and per snapshot under the work dir.

    async def snapshot_view(self, snapshot: str, *, for_server: str = "") -> str:
        await self._enter("snapshot_view")
        snap = validate_snapshot(snapshot)
        if not any(s.name == snapshot for s in self._vol(snap.volume).snapshots):
            raise NotFound(f"snapshot {snapshot} does not exist on {self.server}")
        path = self._dir / "views" / snapshot.replace("/", "_")
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    async def release_view(self, snapshot: str, *, for_server: str = "") -> None:
        await self._enter("release_view")

    async def volume_path(self, volume: str) -> str:
        await self._enter("volume_path")
        self._vol(volume)
        path = self._dir / "volumes" / volume.replace("/", "_")
        path.mkdir(parents=True, exist_ok=True)
        return str(path)


def _in_tree(root: str, name: str) -> bool:
    return name == root or name.startswith(root + "/")


def stalling(endpoint: Endpoint) -> Endpoint:
    """The same stream, but its sender never ends after the data (until killed): a
    transfer that stays mid-stream for as long as a test needs (cancel, suspend)."""
    return Endpoint(endpoint.runner, ["sh", "-c", 'cat "$0" && exec sleep 3600',
                                      *endpoint.argv[1:]])
