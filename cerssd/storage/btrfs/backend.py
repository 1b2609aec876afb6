"""btrfs backend: subvolumes under a configured root, driven by ``btrfs`` through a Runner.

Volumes are subvolumes, snapshots read-only snapshot subvolumes in a tree beside them,
names mapped to paths by ``layout``; every fact comes from one listing of the server's
subvolumes (``listing``), never a command per snapshot. Streams are ``btrfs send`` and a
checked ``btrfs receive`` (``streams``).

What btrfs lacks is published as absent (``probe``) and the methods behind it are the
protocol's no-ops: no holds (``pin`` does nothing; retention on a server without holds
keeps the common base by its own rules), no bookmarks, no resumable receive, no size
estimate (flows show n of m as an estimate), no raw send, no block volumes.
Compressed streams (``--compressed-data``) where this ``btrfs send`` has the flag and
the kernel sends protocol v2.

User properties (a tree's selector, a promoted copy's property) are extended attributes
``user.<property>`` on a subvolume's root directory, inherited down the volume names as
ZFS's are: read for a whole tree by one ``getfattr``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from ...transport.runner import CommandFailed, Runner
from ...transport.stream import Endpoint, StreamEndpoint
from ..errors import AlreadyExists, BackendError, Busy, NotFound
from ..names import InvalidName, validate_snapshot_label, validate_user_property
from ..names import pool_of as first_component
from ..tools import has_rsync
from ..values import (
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
from . import volume_ops
from .layout import Layout, check_snapshot, check_volume, pool_name
from .listing import LIST_SCRIPT, Listing, parse_rows, snapshot_of, sort_listing, volume_of
from .streams import (
    ABORT_SCRIPT,
    RECEIVE_SCRIPT,
    RangeSend,
    chain,
    script,
    send_argv,
)


def classify(exc: CommandFailed) -> BackendError:
    text = exc.stderr.strip() or str(exc)
    first = text.splitlines()[0] if text else str(exc)
    if "No such file or directory" in text or "does not exist" in text:
        return NotFound(first)
    if "File exists" in text or "already exists" in text:
        return AlreadyExists(first)
    if "busy" in text.lower() or "Directory not empty" in text:
        return Busy(first)
    return BackendError(first)


class BtrfsBackend:
    """One server's btrfs root, reached through ``runner`` (local or SSH)."""

    def __init__(self, runner: Runner, *, root: str, pool: str | None = None) -> None:
        self.runner = runner
        self.server = runner.server
        if not re.fullmatch(r"(/[A-Za-z0-9_:-][A-Za-z0-9_.:-]*)+/?", root):
            raise BackendError(f"servers.{self.server}.root must be an absolute path of "
                               f"letters, digits and _ . / : -, not {root!r}")
        root = posixpath.normpath(root)
        self.layout = Layout(root=root, pool=pool_name(root, pool))
        self.capabilities = Capabilities()
        self.version = "unknown"

    # Commands

    async def _run(self, *argv: str) -> str:
        try:
            return (await self.runner.run(list(argv))).stdout
        except CommandFailed as exc:
            raise classify(exc) from exc

    async def _sh(self, text: str, *args: str) -> str:
        return await self._run(*script(text, *args))

    async def probe(self) -> Capabilities:
        """Checks the root is a btrfs subvolume (naming the server and key if not) and
        reads what this ``btrfs`` and kernel send."""
        root = self.layout.root
        key = f"servers.{self.server}.root"
        fs = await self.runner.run(["stat", "-f", "-c", "%T", root], check=False)
        if fs.returncode != 0:
            raise BackendError(f"{key}: {root} does not exist on {self.server}")
        if fs.stdout.strip() != "btrfs":
            raise BackendError(f"{key}: {root} on {self.server} is on {fs.stdout.strip()}, "
                               "not btrfs")
        show = await self.runner.run(["btrfs", "subvolume", "show", root], check=False)
        if show.returncode != 0:
            raise BackendError(f"{key}: {root} on {self.server} is not a btrfs subvolume "
                               f"({show.stderr.strip() or 'btrfs subvolume show failed'}); "
                               "create it with btrfs subvolume create")
        first = show.stdout.splitlines()[0].strip() if show.stdout else "/"
        fs_path = "" if first == "/" or first.startswith("<FS_TREE>") else first
        self.layout = Layout(root=root, pool=self.layout.pool, fs_path=fs_path)
        version = await self.runner.run(["btrfs", "--version"], check=False)
        self.version = version.stdout.strip() or "unknown"
        helptext = await self.runner.run(["btrfs", "send", "--help"], check=False)
        proto = await self.runner.run(
            ["cat", "/sys/fs/btrfs/features/send_stream_version"], check=False)
        compressed = "--compressed-data" in helptext.stdout + helptext.stderr and \
            proto.stdout.strip().isdigit() and int(proto.stdout.strip()) >= 2
        self.capabilities = Capabilities(
            stateless_snapshots=True, incremental_send=True, compressed_send=compressed,
            self_restarting=True, safe_send_holds=True, parsable_list=True,
            typed_get=True, clones=True, snapshot_views=True,
            file_copy=await has_rsync(self.runner))
        return self.capabilities

    def info(self) -> dict[str, Any]:
        return {"server": self.server, "backend": "btrfs", "zfs_version": None,
                "btrfs_version": self.version,
                "root": self.layout.root, "pool": self.layout.pool,
                "capabilities": self.capabilities.published()}

    async def listing(self) -> Listing:
        """Every volume and snapshot under the root: one command."""
        rows = parse_rows(await self._sh(LIST_SCRIPT, self.layout.root), self.layout.fs_relative)
        return sort_listing(self.layout, rows)

    async def _listing_with_times(self) -> Listing:
        """``listing`` with a full receive's creation time filled in (one ``stat``)."""
        listing = await self.listing()
        missing = [(vol, i) for vol, snaps in listing.snapshots.items()
                   for i, (_, row) in enumerate(snaps) if row.otime is None]
        if missing:
            paths = [self.layout.snapshot_path(listing.snapshots[v][i][0]) for v, i in missing]
            out = await self._run("stat", "-c", "%Z", *paths)
            for (vol, i), line in zip(missing, out.split(), strict=True):
                name, row = listing.snapshots[vol][i]
                listing.snapshots[vol][i] = (name, replace(row, otime=int(line)))
        return listing

    # Pools and volumes

    async def pools(self) -> list[str]:
        return [self.layout.pool]

    def pool_of(self, volume: str) -> str:
        return first_component(check_volume(volume))

    async def volumes(self, roots: Sequence[str] | None = None, *, limit: int | None = None,
                      offset: int = 0) -> VolumePage:
        listing = await self.listing()
        if roots is not None:
            wanted = [check_volume(r) for r in roots]
            names = [n for n in listing.volumes
                     if any(n == r or n.startswith(r + "/") for r in wanted)]
        else:
            names = list(listing.volumes)
        end = None if limit is None else offset + limit
        return VolumePage(tuple(volume_of(n, listing.volumes[n]) for n in names[offset:end]),
                          len(names))

    async def volume(self, name: str) -> Volume:
        check_volume(name)
        listing = await self.listing()
        if name not in listing.volumes:
            raise NotFound(f"volume {name} does not exist on {self.server}")
        return volume_of(name, listing.volumes[name])

    async def exists(self, volume: str) -> bool:
        if self.pool_of(volume) != self.layout.pool:
            return False
        path = self.layout.volume_path(volume)
        result = await self.runner.run(["stat", "-c", "%i", path], check=False)
        return result.returncode == 0 and result.stdout.strip() == "256"

    async def target_problem(self, volume: str) -> str | None:
        pool = self.pool_of(volume)
        if pool != self.layout.pool:
            return f"pool {pool} does not exist on {self.server} (its pool is {self.layout.pool})"
        parent = volume.rpartition("/")[0]
        if parent and not await self.exists(parent):
            return f"{parent} does not exist on {self.server}; create the parent volume first"
        return None

    async def encrypted(self, volume: str) -> bool:
        check_volume(volume)
        return False

    async def set_readonly(self, volume: str, readonly: bool = True) -> None:
        await self._run("btrfs", "property", "set", "-ts", self.layout.volume_path(volume),
                        "ro", "true" if readonly else "false")

    async def is_readonly(self, volume: str) -> bool:
        out = await self._run("btrfs", "property", "get", "-ts",
                              self.layout.volume_path(volume), "ro")
        return out.strip() == "ro=true"

    async def set_readonly_many(self, volumes: Sequence[str],
                                readonly: bool = True) -> dict[str, str]:
        """One ``sh`` setting each in turn; returns why not, per volume that failed."""
        paths = [self.layout.volume_path(v) for v in volumes]
        if not paths:
            return {}
        out = await self._sh('v=$1; shift; for p do btrfs property set -ts "$p" ro "$v" '
                             '>/dev/null 2>&1 || echo "$p"; done',
                             "true" if readonly else "false", *paths)
        failed = set(out.split())
        return {v: f"could not set ro on {p}" for v, p in zip(volumes, paths, strict=True)
                if p in failed}

    async def set_user_property_many(self, volumes: Sequence[str], prop: str,
                                     value: str) -> None:
        validate_user_property(prop)
        if volumes:
            await self._sh('n=$1 v=$2; shift 2; for p do setfattr -n "$n" -v "$v" "$p" '
                           '|| exit 1; done', f"user.{prop}", value,
                           *(self.layout.volume_path(v) for v in volumes))

    async def set_user_property(self, volume: str, prop: str, value: str) -> None:
        await self.set_user_property_many([volume], prop, value)

    async def mount_many(self, volumes: Sequence[str]) -> dict[str, str]:
        """Nothing to mount: a subvolume is reachable wherever its filesystem is."""
        for v in volumes:
            check_volume(v)
        return {}

    async def replace_volume(self, volume: str, replacement: str) -> None:
        """Destroy ``volume`` (and its snapshots), then rename ``replacement`` to it."""
        check_volume(replacement)
        if await self.exists(volume):
            await self.destroy_volume(volume, force_unmount=True)
        await self.rename(replacement, volume)

    async def destroy_volume(self, volume: str, *, force_unmount: bool = False) -> None:
        """The subvolume, the subvolumes nested in it, and all their snapshots."""
        check_volume(volume)
        if "/" not in volume:
            raise BackendError(f"refusing to destroy the root subvolume of pool {volume}")
        listing = await self.listing()
        if volume not in listing.volumes:
            raise NotFound(f"volume {volume} does not exist on {self.server}")
        doomed = [v for v in listing.volumes if v == volume or v.startswith(volume + "/")]
        snaps = [self.layout.snapshot_path(name) for v in doomed
                 for name, _ in listing.snapshot_rows(v)]
        if snaps:
            await self.delete_snapshots(snaps)
        # Deepest first: a subvolume with another inside cannot be deleted.
        await self._run("btrfs", "subvolume", "delete",
                        *(self.layout.volume_path(v) for v in sorted(doomed, reverse=True)))

    async def rename(self, old: str, new: str) -> None:
        """The volume and its snapshots (and the snapshot directories of volumes nested
        in it) move to the new name."""
        check_volume(new)
        if self.pool_of(new) != self.layout.pool:
            raise BackendError(f"{new} is not in pool {self.layout.pool}")
        listing = await self.listing()
        if old not in listing.volumes:
            raise NotFound(f"volume {old} does not exist on {self.server}")
        if new in listing.volumes:
            raise AlreadyExists(f"volume {new} already exists on {self.server}")
        moves = [(self.layout.volume_path(old), self.layout.volume_path(new))]
        moves += [(posixpath.dirname(self.layout.snapshot_path(name)), posixpath.dirname(
                   self.layout.snapshot_path(f"{new}@{name.partition('@')[2]}")))
                  for name, _ in listing.snapshot_rows(old)]
        nested = posixpath.join(self.layout.snapshot_dir(old),
                                self.layout.relative(old).rpartition("/")[2] or ".")
        if "/" in old:
            moves.append((nested, posixpath.join(self.layout.snapshot_dir(new),
                                                 self.layout.relative(new).rpartition("/")[2])))
        await self._sh('mkdir -p "$1"; shift; while [ $# -gt 1 ]; do '
                       'if [ -e "$1" ]; then mv -T "$1" "$2" || exit 1; fi; shift 2; done',
                       self.layout.snapshot_dir(new), *(p for pair in moves for p in pair))

    # Trees

    async def tree(self, root: str, *, selector: str | None = None,
                   snapshots: bool = True) -> TreeListing:
        check_volume(root)
        if selector is not None:
            validate_user_property(selector)
        listing = await (self._listing_with_times() if snapshots else self.listing())
        names = [n for n in listing.volumes if n == root or n.startswith(root + "/")]
        if root not in names:
            raise NotFound(f"volume {root} does not exist on {self.server}")
        names.sort(key=lambda n: n.split("/"))
        values = await self._selector_values(root, names, selector) if selector else {}
        return TreeListing(root, tuple(TreeDataset(
            name=n, type="filesystem", guid=listing.volumes[n].uuid, selector=values.get(n),
            snapshots=tuple(snapshot_of(s, r) for s, r in listing.snapshot_rows(n))
            if snapshots else ()) for n in names))

    async def _selector_values(self, root: str, names: list[str],
                               prop: str) -> dict[str, str]:
        """Each name's effective value: its own xattr, else the nearest ancestor's (the
        ancestors above ``root`` asked in the same ``getfattr``)."""
        ancestors = []
        parent = root.rpartition("/")[0]
        while parent:
            ancestors.append(parent)
            parent = parent.rpartition("/")[0]
        asked = ancestors + names
        by_path = {self.layout.volume_path(n): n for n in asked}
        result = await self.runner.run(
            ["getfattr", "--absolute-names", "-e", "text", "-n", f"user.{prop}", *by_path],
            check=False)
        own: dict[str, str] = {}
        current = None
        for line in result.stdout.splitlines():
            if line.startswith("# file: "):
                current = by_path.get(line[len("# file: "):])
            elif current and line.startswith(f"user.{prop}="):
                value = line.split("=", 1)[1]
                own[current] = value[1:-1] if value.startswith('"') else value
        effective: dict[str, str] = {}
        for name in sorted(asked, key=lambda n: n.count("/")):
            parent = name.rpartition("/")[0]
            if name in own:
                effective[name] = own[name]
            elif parent in effective:
                effective[name] = effective[parent]
        return {n: effective[n] for n in names if n in effective}

    async def snapshot_facts(self, names: Sequence[str]) -> dict[str, Snapshot]:
        for n in names:
            check_snapshot(n)
        if not names:
            return {}
        listing = await self._listing_with_times()
        found = {}
        for name in names:
            for listed, row in listing.snapshot_rows(name.partition("@")[0]):
                if listed == name:
                    found[name] = snapshot_of(listed, row)
        return found

    async def snapshot_tree(self, root: str, label: str, members: Sequence[str]) -> None:
        """btrfs has no multi-subvolume atomic snapshot: each member is snapshotted in
        turn, in one command (an instant per member, not one for all; documented)."""
        check_volume(root)
        validate_snapshot_label(label)
        for m in members:
            check_volume(m)
            if m != root and not m.startswith(root + "/"):
                raise InvalidName(f"{m!r} is not {root} or under it")
        if not members:
            return
        args = []
        for m in members:
            path = self.layout.snapshot_path(f"{m}@{label}")
            args += [self.layout.volume_path(m), posixpath.dirname(path), path]
        await self._sh('while [ $# -gt 2 ]; do if [ -d "$1" ] && [ ! -e "$3" ]; then '
                       'mkdir -p "$2" && btrfs subvolume snapshot -r "$1" "$3" >/dev/null '
                       '|| exit 1; fi; shift 3; done', *args)

    async def create_parents(self, volume: str) -> None:
        check_volume(volume)
        pool, _, rel = volume.partition("/")
        if pool != self.layout.pool:
            raise NotFound(f"pool {pool} does not exist on {self.server}")
        parts = rel.split("/")[:-1]
        paths = [self.layout.volume_path("/".join([pool, *parts[:i + 1]]))
                 for i in range(len(parts))]
        if paths:
            await self._sh('for p do [ -e "$p" ] || btrfs subvolume create "$p" >/dev/null '
                           '|| exit 1; done', *paths)

    # Snapshots

    async def snapshots(self, volume: str) -> list[Snapshot]:
        check_volume(volume)
        listing = await self._listing_with_times()
        if volume not in listing.volumes:
            raise NotFound(f"volume {volume} does not exist on {self.server}")
        return [snapshot_of(n, r) for n, r in listing.snapshot_rows(volume)]

    async def snapshot(self, name: str) -> Snapshot:
        found = await self.snapshot_facts([name])
        if name not in found:
            raise NotFound(f"snapshot {name} does not exist on {self.server}")
        return found[name]

    async def has_snapshot(self, name: str) -> bool:
        if self.pool_of(check_snapshot(name).volume) != self.layout.pool:
            return False
        result = await self.runner.run(["stat", "-c", "%i", self.layout.snapshot_path(name)],
                                       check=False)
        return result.returncode == 0 and result.stdout.strip() == "256"

    async def create_snapshot(self, volume: str, label: str, *,
                              origin: str | None = None) -> Snapshot:
        """A read-only snapshot; ``origin`` (a source snapshot's guid, the generic path)
        is set as ``user.cerssd.origin`` on the volume first, so the snapshot carries it."""
        check_volume(volume)
        validate_snapshot_label(label)
        path = self.layout.snapshot_path(f"{volume}@{label}")
        if origin is not None and not re.fullmatch(r"[0-9A-Za-z-]{1,64}", origin):
            raise InvalidName(f"{origin!r} is not a snapshot guid")
        if not await self.exists(volume):
            raise NotFound(f"volume {volume} does not exist on {self.server}")
        await self._sh('[ -e "$3" ] && { echo "snapshot $3 already exists" >&2; exit 1; }; '
                       '[ -z "$4" ] || setfattr -n user.cerssd.origin -v "$4" "$1" || exit 1; '
                       'mkdir -p "$2" && btrfs subvolume snapshot -r "$1" "$3" >/dev/null',
                       self.layout.volume_path(volume), posixpath.dirname(path),
                       path, origin or "")
        return await self.snapshot(f"{volume}@{label}")

    async def destroy_snapshot(self, name: str, *, recursive: bool = False) -> None:
        snap = check_snapshot(name)
        paths = [self.layout.snapshot_path(name)]
        if recursive:
            listing = await self.listing()
            paths = [self.layout.snapshot_path(n) for v in listing.volumes
                     if v == snap.volume or v.startswith(snap.volume + "/")
                     for n, _ in listing.snapshot_rows(v) if n.partition("@")[2] == snap.snapshot]
            if not paths:
                raise NotFound(f"snapshot {name} does not exist on {self.server}")
        try:
            await self.delete_snapshots(paths)
        except BackendError as exc:
            if "Not a Btrfs subvolume" in str(exc) or "cannot access" in str(exc) \
                    or isinstance(exc, NotFound):
                raise NotFound(f"snapshot {name} does not exist on {self.server}") from exc
            raise

    async def delete_snapshots(self, paths: Sequence[str]) -> None:
        """The snapshot subvolumes at ``paths`` and their directories, one command."""
        await self._run("btrfs", "subvolume", "delete", *paths)
        await self._run("rmdir", *(posixpath.dirname(p) for p in paths))

    async def rollback(self, snapshot: str) -> None:
        await volume_ops.rollback(self, snapshot)

    async def bookmarks(self, volume: str) -> list[Snapshot]:
        check_volume(volume)
        return []

    async def mark_base(self, snapshot: Snapshot, for_server: str) -> None:
        return None

    def pin_tag(self, for_server: str) -> str:
        return f"cerssd:{for_server}"

    async def pin(self, snapshot: str, for_server: str) -> None:
        check_snapshot(snapshot)

    async def unpin(self, snapshot: str, for_server: str) -> None:
        check_snapshot(snapshot)

    async def pin_many(self, snapshots: Sequence[str], for_server: str, *,
                       whole: str | None = None) -> None:
        return None

    async def unpin_many(self, snapshots: Sequence[str], for_server: str, *,
                         whole: str | None = None) -> None:
        return None

    async def pinned_by(self, snapshot: str, servers: Iterable[str]) -> frozenset[str]:
        return frozenset()

    # Streams

    def send(self, snapshot: str, base: str | None = None, *, intermediates: bool = False,
             resume_token: str | None = None,
             options: StreamOptions = StreamOptions()) -> StreamEndpoint:
        if resume_token is not None:
            raise BackendError("btrfs cannot resume a send")
        if options.raw:
            raise BackendError("btrfs has no raw send")
        path = self.layout.snapshot_path(snapshot)
        compressed = options.compressed and self.capabilities.compressed_send
        if base is None:
            return Endpoint(self.runner, send_argv(path, None, compressed))
        if "#" in base:
            raise BackendError("btrfs has no bookmarks to send from")
        base_path = self.layout.snapshot_path(base)
        if intermediates and check_snapshot(base).volume == check_snapshot(snapshot).volume:
            return RangeSend(self, self.runner, snapshot, base, compressed)
        return Endpoint(self.runner, send_argv(path, base_path, compressed))

    async def chain_paths(self, base: str, snapshot: str) -> list[str]:
        """The paths of ``base`` and every snapshot after it up to ``snapshot``."""
        volume = check_snapshot(snapshot).volume
        names = [n for n, _ in (await self.listing()).snapshot_rows(volume)]
        try:
            return [self.layout.snapshot_path(n) for n in chain(names, base, snapshot)]
        except LookupError as exc:
            raise NotFound(f"snapshot {exc.args[0]} does not exist on {self.server}") from exc

    def receive(self, volume: str, *, resumable: bool = False,
                discard_changes: bool = False, unmounted: bool = False,
                properties: ReceiveProperties = ReceiveProperties()) -> Endpoint:
        """The checked receive (``streams.RECEIVE_SCRIPT``); ``unmounted`` changes
        nothing (no per-volume mounts), ``resumable`` is never granted (no tokens).
        A btrfs stream carries no properties, so ``properties.exclude`` holds as it is;
        there is nothing to set, so an ``override`` is refused (the config refuses a
        ``receive_set`` for a btrfs slave before it gets here)."""
        if properties.override:
            raise BackendError(f"btrfs on {self.server} has no properties to set on a "
                               f"receive ({', '.join(n for n, _ in properties.override)})")
        layout = self.layout
        leaf = layout.relative(volume).rpartition("/")[2]
        prefix = layout.fs_relative(posixpath.join(layout.snapshot_dir(volume), leaf + "@"))
        return Endpoint(self.runner, script(
            RECEIVE_SCRIPT, layout.stage_dir(volume), layout.snapshot_dir(volume), leaf,
            layout.volume_path(volume), layout.root, prefix, volume.rpartition("/")[2]))

    @property
    def inline_limit(self) -> int:
        return 0

    async def receive_inline(self, volume: str, data: bytes, *, unmounted: bool = False,
                             properties: ReceiveProperties = ReceiveProperties()) -> None:
        raise BackendError("btrfs takes no inline streams (inline_limit is 0)")

    async def estimate(self, snapshot: str, base: str | None = None, *,
                       intermediates: bool = False, resume_token: str | None = None,
                       options: StreamOptions = StreamOptions()) -> int | None:
        return None

    async def resume_token(self, volume: str) -> str | None:
        return None

    async def stale_resume_token(self, token: str) -> str | None:
        return "btrfs cannot resume a send"

    async def abort_receive(self, volume: str) -> None:
        """Delete what a cut-off receive into ``volume`` left in its receive directory."""
        await self._sh(ABORT_SCRIPT, self.layout.stage_dir(volume),
                       self.layout.volume_path(volume))

    # Volume operations and the generic path (``volume_ops``)

    async def create_volume(self, volume: str, *, size: int | None = None) -> Volume:
        return await volume_ops.create_volume(self, volume, size)

    async def clone_volume(self, snapshot: str, volume: str) -> Volume:
        return await volume_ops.clone_volume(self, snapshot, volume)

    async def resize_volume(self, volume: str, size: int) -> None:
        await volume_ops.resize_volume(self, volume, size)

    async def dependents(self, volume: str) -> list[str]:
        return await volume_ops.dependents(self, volume)

    async def capacity(self) -> list[PoolCapacity]:
        return await volume_ops.capacity(self)

    async def snapshot_view(self, snapshot: str, *, for_server: str = "") -> str:
        """The read-only snapshot itself: nothing to set up, nothing to release."""
        if not await self.has_snapshot(snapshot):
            raise NotFound(f"snapshot {snapshot} does not exist on {self.server}")
        return self.layout.snapshot_path(snapshot)

    async def release_view(self, snapshot: str, *, for_server: str = "") -> None:
        return None

    async def volume_path(self, volume: str) -> str:
        if not await self.exists(volume):
            raise NotFound(f"volume {volume} does not exist on {self.server}")
        return self.layout.volume_path(volume)

