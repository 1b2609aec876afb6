"""ZFS backend: the ``zfs`` and ``zpool`` command-line tools driven through a Runner.

It implements ``StorageBackend`` for zfs-fuse and OpenZFS, locally or over SSH (the
runner decides). The domain methods (``send``/``receive``, ``pin``, ``mark_base``,
``replace_volume``...) are built on ZFS-shaped ones (``send_argv``, ``hold``,
``create_bookmark``, ``rename``...), which stay public for tests and tools.

Every name is validated (``storage.names``) before a command is built, commands are
argv lists, and exact values are read with ``zfs get -Hp`` (which zfs-fuse and OpenZFS
both have), or ``zfs list -Hp`` where this zfs has it (zfs-fuse does not). What this
``zfs`` supports is probed from its own usage text at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from ...transport.runner import CommandFailed, Runner
from ...transport.stream import Endpoint
from ..errors import AlreadyExists, BackendError, Busy, NotFound, while_busy
from ..names import (
    validate_bookmark,
    validate_property,
    validate_property_value,
    validate_snapshot,
    validate_snapshot_label,
    validate_volume,
)
from ..tools import has_rsync
from ..values import (
    Capabilities,
    PoolCapacity,
    ReceiveProperties,
    Snapshot,
    StreamOptions,
    TreeListing,
    Volume,
    VolumePage,
)
from . import fence, tree, views, volume_ops
from .fuse import remount, tags_by_taking
from .names import (
    ORIGIN_PROP,
    check_origin,
    check_tag,
    hold_tag,
    mark_prefix,
    pool_of,
    send_flags,
)
from .probe import capabilities_from_usage, parse_usage
from .rows import snapshot_from, to_int, volume_from

_VOLUME_PROPS = "type,guid,creation,used,referenced,readonly,mounted,volsize,quota"
#: ``cerssd:origin`` (a user property) in the same listing: no command per snapshot.
_SNAPSHOT_PROPS = f"type,guid,creation,createtxg,used,referenced,userrefs,{ORIGIN_PROP}"


def _classify(exc: CommandFailed) -> BackendError:
    text = exc.stderr.strip() or str(exc)
    first = text.splitlines()[0] if text else str(exc)
    if "does not exist" in text or "no such pool" in text or "could not find" in text:
        return NotFound(first)
    # OpenZFS 2.1 says "bookmark exists" for a bookmark of that name (bench in the guest)
    if "already exists" in text or "bookmark exists" in text:
        return AlreadyExists(first)
    if "busy" in text or "is held" in text or "has dependent clones" in text:
        return Busy(first)
    return BackendError(first)


#: What ``zfs send -t`` says when a token's snapshot, or its incremental base, was
#: destroyed on the source or replaced by another of the same name (OpenZFS 2.x).
#: The largest stream ``receive_inline`` takes: passed as ``printf`` octal escapes (four
#: bytes each) in one argument, well within Linux's 128 KiB per argument. A tree member
#: that did not change sends ~600 bytes on zfs-fuse.
INLINE_MAX = 16 << 10

STALE_TOKEN = ("no longer exists", "no longer the same snapshot")


class ZfsBackend:
    """One server's ZFS, reached through ``runner`` (``LocalRunner`` or ``SshRunner``)."""

    def __init__(self, runner: Runner, *, zfs: str = "zfs", zpool: str = "zpool",
                 stateless: bool = True, sudo: bool = False) -> None:
        self.runner = runner
        self.server = runner.server
        # A non-root account runs them through ``sudo -n`` (never a password prompt:
        # a missing sudoers line fails at once, docs/least-privilege.md).
        prefix = ["sudo", "-n"] if sudo else []
        self._zfs = [*prefix, zfs]
        self._zpool = [*prefix, zpool]
        self._stateless = stateless
        self.capabilities = Capabilities()
        self.version = "unknown"
        #: Whether ``zfs holds`` works here; None until first tried.
        self._holds_listing: bool | None = None
        #: Whether ``zpool list`` takes ``-p`` (exact bytes); None until first tried.
        self.exact_pool_list: bool | None = None

    async def _run(self, *args: str, tool: Sequence[str] | None = None) -> str:
        try:
            return (await self.runner.run([*(tool or self._zfs), *args])).stdout
        except CommandFailed as exc:
            raise _classify(exc) from exc

    async def probe(self) -> Capabilities:
        """The server's commands, asked all at once: four commands one after another
        over SSH took 1.5-2 s per server at the demo's start (issue 13's ready time)."""
        usage, version, upgrade, rsync = await asyncio.gather(
            self.runner.run(self._zfs, check=False),
            self.runner.run([*self._zfs, "version"], check=False),
            self.runner.run([*self._zpool, "upgrade", "-v"], check=False),
            has_rsync(self.runner))
        parsed = parse_usage(usage.stderr + usage.stdout)
        if "snapshot" not in parsed.commands:
            said = (usage.stderr.strip().splitlines() or ["nothing"])[0][:200]
            raise BackendError(f"{shlex.join(self._zfs)} on {self.server} did not print its "
                               f"usage (it said: {said}); is ZFS installed, and for sudo, "
                               "is the sudoers line in place?")
        caps = capabilities_from_usage(parsed, stateless=self._stateless)
        if version.returncode == 0 and version.stdout.strip():
            # OpenZFS >= 0.8: userland and kernel module versions. A kernel module means
            # zvols (zfs-fuse, in userspace, has the command but not the device).
            self.version = version.stdout.split()[0]
            caps = replace(caps, zvols="kmod" in version.stdout, safe_send_holds=True)
        else:
            m = re.search(r"pool version (\d+)", upgrade.stdout)
            self.version = f"pool version {m.group(1)}" if m else "unknown"
        self.capabilities = replace(caps, file_copy=rsync)
        return self.capabilities

    @property
    def zpool(self) -> list[str]:
        """The ``zpool`` command (pool space for ``capacity``)."""
        return self._zpool

    def info(self) -> dict[str, Any]:
        return {"server": self.server, "backend": "zfs", "zfs_version": self.version,
                "capabilities": self.capabilities.published()}

    async def pools(self) -> list[str]:
        out = await self._run("list", "-H", "-o", "name", tool=self._zpool)
        return [line for line in out.splitlines() if line]

    async def _get_text(self, props: str, *names: str, depth: int | None = None,
                        recursive: bool = False, missing_ok: bool = False) -> str:
        """``zfs get -Hp -o name,property,value`` as printed; with ``missing_ok``, names
        that no longer exist (destroyed since they were listed) are left out."""
        opts = ["-Hp"] + (["-r"] if recursive else []) + (
            ["-d", str(depth)] if depth is not None else [])
        argv = [*self._zfs, "get", *opts, "-o", "name,property,value", props, *names]
        result = await self.runner.run(argv, check=False)
        if result.returncode != 0 and not (missing_ok and _only_missing(result.stderr)):
            raise _classify(CommandFailed(argv, result.returncode, result.stderr))
        return result.stdout

    async def _command(self, *args: str) -> tuple[int, str]:
        """A ``zfs`` command whose failure the caller sorts out: (exit status, stderr)."""
        result = await self.runner.run([*self._zfs, *args], check=False)
        return result.returncode, result.stderr

    async def _props(self, props: str, *names: str, depth: int | None = None,
                     recursive: bool = False, missing_ok: bool = False,
                     ) -> dict[str, dict[str, str]]:
        """``zfs get -Hp`` as {name: {property: value}}; with ``missing_ok``, names that
        no longer exist (destroyed since they were listed) are left out."""
        out = await self._get_text(props, *names, depth=depth, recursive=recursive,
                                   missing_ok=missing_ok)
        rows: dict[str, dict[str, str]] = defaultdict(dict)
        for line in out.splitlines():
            name, prop, value = line.split("\t", 2)
            rows[name][prop] = value
        return rows

    async def volumes(self, roots: Sequence[str] | None = None, *, limit: int | None = None,
                      offset: int = 0) -> VolumePage:
        """Filesystems and zvols under ``roots`` (every pool for None), one page of them.

        ``zfs list -t filesystem,volume`` never walks snapshots, where a ``zfs get`` over a
        pool visits every one of them (11 s for 1,000 volumes with 3,500 snapshots on
        zfs-fuse). A zfs with ``list -p`` gives every fact in that one command. zfs-fuse's
        ``list`` prints only rounded values (a guid as ``5.57E``), so there the listing
        gives the names and order, and one ``zfs get -Hp`` of the page's names (no
        ``-r``: snapshots stay unvisited) gives the values. A root that vanished since
        the caller chose it (a pool exported) is left out, not an error.
        """
        if roots is not None:
            roots = _outermost([validate_volume(r) for r in roots])
            if not roots:
                return VolumePage((), 0)
        scope = ["-r", *roots] if roots is not None else []
        end = None if limit is None else offset + limit
        if self.capabilities.parsable_list:
            out = await self._list("-Hp", "-o", f"name,{_VOLUME_PROPS}", *scope)
            lines = out.splitlines()
            page = [line.split("\t") for line in lines[offset:end]]
            return VolumePage(tuple(
                volume_from(f[0], dict(zip(_VOLUME_PROPS.split(","), f[1:], strict=True)))
                for f in page), len(lines))
        names = (await self._list("-H", "-o", "name", *scope)).splitlines()
        wanted = names[offset:end]
        rows = await self._props(_VOLUME_PROPS, *wanted, missing_ok=True) if wanted else {}
        return VolumePage(tuple(volume_from(n, rows[n]) for n in wanted
                                if "guid" in rows.get(n, {})), len(names))

    async def _list(self, *args: str) -> str:
        """``zfs list -t filesystem,volume ARGS``; roots that do not exist are skipped."""
        result = await self.runner.run(
            [*self._zfs, "list", "-t", "filesystem,volume", *args], check=False)
        if result.returncode != 0 and not _only_missing(result.stderr):
            raise _classify(CommandFailed([*self._zfs, "list", *args], result.returncode,
                                          result.stderr))
        return result.stdout

    async def volume(self, name: str) -> Volume:
        validate_volume(name)
        rows = await self._props(_VOLUME_PROPS, name)
        return volume_from(name, rows[name])

    async def snapshots(self, volume: str) -> list[Snapshot]:
        """Snapshots of ``volume`` oldest first (by creation txg: creation has 1 s steps)."""
        validate_volume(volume)
        rows = await self._props(_SNAPSHOT_PROPS, volume, depth=1)
        snaps = [snapshot_from(name, p) for name, p in rows.items()
                 if name.partition("@")[0] == volume and p.get("type") == "snapshot"]
        return sorted(snaps, key=lambda snap: snap.createtxg)

    async def bookmarks(self, volume: str) -> list[Snapshot]:
        """Bookmarks of ``volume`` oldest first; empty where this zfs has none."""
        validate_volume(volume)
        if not (self.capabilities.bookmarks and self.capabilities.typed_get):
            return []
        out = await self._run("get", "-Hp", "-t", "bookmark", "-d", "1", "-o",
                              "name,property,value", "guid,createtxg,creation", volume)
        rows: dict[str, dict[str, str]] = defaultdict(dict)
        for line in out.splitlines():
            name, prop, value = line.split("\t", 2)
            rows[name][prop] = value
        marks = [(to_int(p.get("createtxg")), Snapshot(
            name=name, volume=volume, label=name.partition("#")[2], guid=p["guid"],
            creation=to_int(p.get("creation")), used=0, referenced=0, userrefs=0))
            for name, p in rows.items() if name.startswith(volume + "#")]
        return [mark for _, mark in sorted(marks, key=lambda pair: pair[0])]

    async def create_bookmark(self, snapshot: str, bookmark: str) -> None:
        validate_snapshot(snapshot)
        validate_bookmark(bookmark)
        with contextlib.suppress(AlreadyExists):
            await self._run("bookmark", snapshot, bookmark)

    async def destroy_bookmark(self, bookmark: str) -> None:
        validate_bookmark(bookmark)
        with contextlib.suppress(NotFound):
            await self._run("destroy", bookmark)

    async def encrypted(self, volume: str) -> bool:
        """Whether ``volume`` is an encrypted dataset (OpenZFS native encryption)."""
        validate_volume(volume)
        if not self.capabilities.encryption:
            return False
        out = await self._run("get", "-Hp", "-o", "value", "encryption", volume)
        return out.strip() not in ("", "-", "off")

    async def snapshot(self, name: str) -> Snapshot:
        """One snapshot's facts: a ``zfs get`` of that name alone, never a listing of the
        volume's snapshots (each one listed costs zfs-fuse about 1 ms of CPU, and a
        cycle's checks would pay that for every snapshot retention keeps)."""
        validate_snapshot(name)
        try:
            rows = await self._props(_SNAPSHOT_PROPS, name)
        except NotFound:
            rows = {}
        if rows.get(name, {}).get("type") != "snapshot":
            raise NotFound(f"snapshot {name} does not exist on {self.server}")
        return snapshot_from(name, rows[name])

    async def create_snapshot(self, volume: str, label: str, *,
                              origin: str | None = None) -> Snapshot:
        """``zfs snapshot``; ``origin`` is set by the same command (``-o``, which zfs-fuse
        and OpenZFS both take), so a copy's snapshot never exists without it."""
        validate_volume(volume)
        validate_snapshot_label(label)
        props = ["-o", f"{ORIGIN_PROP}={check_origin(origin)}"] if origin else []
        await self._run("snapshot", *props, f"{volume}@{label}")
        return await self.snapshot(f"{volume}@{label}")

    async def destroy_snapshot(self, name: str, *, recursive: bool = False) -> None:
        validate_snapshot(name)
        await self._run("destroy", *(["-r"] if recursive else []), name)

    async def has_snapshot(self, name: str) -> bool:
        """Whether snapshot ``name`` exists: one ``zfs get`` of it, not a listing."""
        validate_snapshot(name)
        return await self._dataset_exists(name)

    async def exists(self, volume: str) -> bool:
        validate_volume(volume)
        return await self._dataset_exists(volume)

    async def _dataset_exists(self, name: str) -> bool:
        """One ``zfs get`` of a validated dataset or snapshot name."""
        try:
            await self._run("get", "-H", "-o", "value", "type", name)
        except NotFound:
            return False
        return True

    def send_argv(self, snapshot: str, base: str | None = None, *,
                  intermediates: bool = False, resume_token: str | None = None,
                  estimate: bool = False, flags: str = "") -> list[str]:
        """``zfs send`` for a full or incremental stream, or to resume from a token.

        ``base`` may be a snapshot or a bookmark (``vol#mark``: only with ``-i``).
        ``flags`` are extra single-letter send options such as ``w`` (raw) or ``c``.
        """
        if not re.fullmatch(r"[wcLep]*", flags):
            raise BackendError(f"unsupported send flags {flags!r}")
        options = [f"-{flags}"] if flags else []
        if estimate:
            options.append("-nvP")
        if resume_token is not None:  # the token carries the stream's own options
            if not re.fullmatch(r"[0-9a-f-]+", resume_token):
                raise BackendError("malformed receive_resume_token")
            return [*self._zfs, "send", *(["-nvP"] if estimate else []), "-t", resume_token]
        validate_snapshot(snapshot)
        argv = [*self._zfs, "send", *options]
        if base is not None and "#" in base:
            validate_bookmark(base)
            argv += ["-i", base]
        elif base is not None:
            validate_snapshot(base)
            argv += ["-I" if intermediates else "-i", base]
        return [*argv, snapshot]

    def receive_argv(self, target_volume: str, *, resumable: bool = False) -> list[str]:
        """``-s`` keeps a partial receive's state so it can resume (where supported)."""
        validate_volume(target_volume)
        return [*self._zfs, "receive", *(["-s"] if resumable else []), target_volume]

    async def size_estimate(self, snapshot: str, base: str | None = None, *,
                            intermediates: bool = False, resume_token: str | None = None,
                            flags: str = "") -> int | None:
        """Exact stream size from ``zfs send -nvP``, or None where this zfs cannot say."""
        if not self.capabilities.size_estimate:
            return None
        out = await self.runner.run(self.send_argv(
            snapshot, base, intermediates=intermediates, resume_token=resume_token,
            estimate=True, flags=flags), check=False)
        for line in (out.stdout + out.stderr).splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0] == "size" and fields[1].isdigit():
                return int(fields[1])
        return None

    async def resume_token(self, volume: str) -> str | None:
        """The token a cut-off resumable receive left on ``volume``, if any."""
        if not self.capabilities.resumable_send:
            return None
        try:
            out = await self._run("get", "-Hp", "-o", "value", "receive_resume_token", volume)
        except NotFound:
            return None
        token = out.strip()
        return None if token in ("", "-") else token

    async def stale_resume_token(self, token: str) -> str | None:
        """Why ``token`` can never resume a send from this (source) server, or None.

        A dry run of ``zfs send -t`` looks up the snapshot the token was cut from, and
        its incremental base, by guid: once either is destroyed here (or replaced by a
        snapshot of the same name) it says so, and no retry will ever change that. Any
        other failure (the link, a busy pool) is not taken as a verdict on the token.
        """
        out = await self.runner.run(self.send_argv("", resume_token=token, estimate=True),
                                    check=False)
        if out.returncode == 0:
            return None
        text = out.stderr + out.stdout
        if any(phrase in text for phrase in STALE_TOKEN):
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            return next((line for line in lines if any(p in line for p in STALE_TOKEN)),
                        lines[-1])
        return None

    async def abort_receive(self, volume: str) -> None:
        """Discard a partial resumable receive (``zfs receive -A``)."""
        validate_volume(volume)
        if self.capabilities.resumable_send:
            try:
                await self._run("receive", "-A", volume)
            except BackendError as exc:
                if "does not have any resumable receive state" not in str(exc):
                    raise  # nothing to abort is what was asked for

    async def hold(self, tag: str, snapshot: str) -> None:
        validate_snapshot(snapshot)
        try:
            await self._run("hold", check_tag(tag), snapshot)
        except BackendError as exc:
            if "tag already exists" not in str(exc):
                raise

    async def release(self, tag: str, snapshot: str) -> None:
        """Release ``tag``; a snapshot without that hold (or gone) is fine."""
        validate_snapshot(snapshot)
        try:
            await self._run("release", check_tag(tag), snapshot)
        except NotFound:
            pass
        except BackendError as exc:
            if "no such tag" not in str(exc):
                raise

    async def held_tags(self, snapshot: str, tags: Iterable[str]) -> frozenset[str]:
        """Which of ``tags`` hold ``snapshot`` now.

        ``zfs holds`` answers where it works. zfs-fuse's fails (it wants a Python helper
        it does not ship), so there each tag is asked by taking it: "tag already exists"
        means it was there, and a hold that was not there is released again at once.
        """
        validate_snapshot(snapshot)
        wanted = frozenset(check_tag(t) for t in tags)
        if self._holds_listing is not False:
            result = await self.runner.run([*self._zfs, "holds", "-H", snapshot], check=False)
            self._holds_listing = result.returncode == 0
            if self._holds_listing:
                found = {line.split("\t")[1] for line in result.stdout.splitlines()
                         if line.count("\t") >= 2}
                return wanted & found
        return await tags_by_taking(self._run, self.release, snapshot, wanted)

    async def rename(self, old: str, new: str) -> None:
        """Rename a volume; unmounted for the rename, since zfs-fuse calls a mounted one busy."""
        validate_volume(old)
        validate_volume(new)
        unmounted = (await self.runner.run([*self._zfs, "unmount", old], check=False)
                     ).returncode == 0
        await self._run("rename", old, new)
        if unmounted:
            await self.runner.run([*self._zfs, "mount", new], check=False)

    async def set_readonly(self, volume: str, readonly: bool = True) -> None:
        """Set ``readonly`` and make sure it is in force, not just recorded.

        OpenZFS remounts a filesystem when the property changes. zfs-fuse does not:
        the mount keeps its ``rw``/``ro`` option, which overrides the property
        (``zfs get`` shows it with source ``temporary``) and lets writes through. So
        when the effective value still differs, the filesystem is mounted again
        with the matching option. A fence that cannot be made real is an error,
        never a silent success.
        """
        validate_volume(volume)
        await self._run("set", f"readonly={'on' if readonly else 'off'}", volume)
        if await self.is_readonly(volume) == readonly:
            return
        await remount(self._run, volume, "ro" if readonly else "rw")
        if await self.is_readonly(volume) != readonly:
            raise BackendError(f"{volume} on {self.server} is still "
                               f"{'writable' if readonly else 'read-only'} after a remount")

    async def is_readonly(self, volume: str) -> bool:
        validate_volume(volume)
        return (await self._run("get", "-H", "-o", "value", "readonly", volume)).strip() == "on"

    async def rollback(self, snapshot: str) -> None:
        """Roll the volume back to ``snapshot``, destroying every later snapshot (``-r``).

        Callers ask the operator first: what it destroys cannot be brought back.
        """
        validate_snapshot(snapshot)
        await self._run("rollback", "-r", snapshot)

    async def destroy_volume(self, volume: str, *, force_unmount: bool = False) -> None:
        validate_volume(volume)
        if "/" not in volume:
            raise BackendError(f"refusing to destroy the root dataset of pool {volume}")
        await self._run("destroy", "-r", *(["-f"] if force_unmount else []), volume)


    # The domain side (``StorageBackend``), built on the ZFS-shaped methods above.

    def pool_of(self, volume: str) -> str:
        return pool_of(volume)

    async def target_problem(self, volume: str) -> str | None:
        """A receive creates the last component only: its pool and parent must exist."""
        pool = pool_of(volume)
        if pool not in await self.pools():
            return f"pool {pool} does not exist on {self.server}"
        parent = volume.rpartition("/")[0]
        if parent and not await self.exists(parent):
            return (f"{parent} does not exist on {self.server}; create the parent dataset "
                    "first")
        return None

    async def replace_volume(self, volume: str, replacement: str) -> None:
        """Destroy ``volume``, then rename ``replacement`` to it; each step retried while
        ZFS calls the dataset busy (a receive just ended, a client closing a file)."""
        async for attempt in while_busy():
            with attempt:
                await self.destroy_volume(volume, force_unmount=True)
        async for attempt in while_busy():
            with attempt:
                await self.rename(replacement, volume)

    def pin_tag(self, for_server: str) -> str:
        return hold_tag(for_server)

    async def pin(self, snapshot: str, for_server: str) -> None:
        if self.capabilities.holds:
            await self.hold(hold_tag(for_server), snapshot)

    async def unpin(self, snapshot: str, for_server: str) -> None:
        if self.capabilities.holds:
            await self.release(hold_tag(for_server), snapshot)

    async def pin_many(self, snapshots: Sequence[str], for_server: str, *,
                       whole: str | None = None) -> None:
        if self.capabilities.holds:
            await tree.hold_many(self, "hold", hold_tag(for_server), snapshots, whole)

    async def unpin_many(self, snapshots: Sequence[str], for_server: str, *,
                         whole: str | None = None) -> None:
        if self.capabilities.holds:
            await tree.hold_many(self, "release", hold_tag(for_server), snapshots, whole)

    async def pinned_by(self, snapshot: str, servers: Iterable[str]) -> frozenset[str]:
        by_tag = {hold_tag(s): s for s in servers}
        return frozenset(by_tag[t] for t in await self.held_tags(snapshot, by_tag))

    async def mark_base(self, snapshot: Snapshot, for_server: str) -> None:
        """A bookmark of the new common snapshot for this destination; older ones go.

        If the snapshot is destroyed on the source after all, the bookmark still serves
        as the base of the next incremental (same guid), so no full resend is needed.
        """
        if not self.capabilities.bookmarks:
            return
        prefix = mark_prefix(for_server)
        await self.create_bookmark(snapshot.name,
                                   f"{snapshot.volume}#{prefix}{snapshot.label}")
        for mark in await self.bookmarks(snapshot.volume):
            if mark.label.startswith(prefix) and mark.guid != snapshot.guid:
                await self.destroy_bookmark(mark.name)

    def send(self, snapshot: str, base: str | None = None, *, intermediates: bool = False,
             resume_token: str | None = None,
             options: StreamOptions = StreamOptions()) -> Endpoint:
        return Endpoint(self.runner, self.send_argv(
            snapshot, base, intermediates=intermediates, resume_token=resume_token,
            flags=send_flags(options)))

    def receive(self, volume: str, *, resumable: bool = False,
                discard_changes: bool = False, unmounted: bool = False,
                properties: ReceiveProperties = ReceiveProperties()) -> Endpoint:
        return Endpoint(self.runner, self.receive_command(
            volume, resumable=resumable, discard_changes=discard_changes,
            unmounted=unmounted, properties=properties))

    def receive_command(self, volume: str, *, resumable: bool = False,
                        discard_changes: bool = False, unmounted: bool = False,
                        properties: ReceiveProperties = ReceiveProperties()) -> list[str]:
        """``zfs receive`` with its flags, and ``properties`` given to it (``-x``/``-o``).

        A zfs whose receive lacks ``-o``/``-x`` (zfs-fuse 0.7) gets, when the caller asks
        (``apply_after``), one ``sh -c`` running the receive with ``-u`` and then
        ``zfs inherit`` of each excluded and ``zfs set`` of each overridden property, then
        the mount if one was wanted: nothing is mounted (or shared) before the properties
        are right, and no daemon restart can fall between the receive and them. The
        window left: the received values are in force, unmounted, until the last
        ``zfs set`` ends, where something else (``zfs mount -a``) could mount it.
        """
        argv = self.receive_argv(volume, resumable=resumable)
        for name in properties.exclude:
            validate_property(name)
        for name, value in properties.override:
            validate_property(name)
            validate_property_value(value)
        native = self.capabilities.receive_properties
        after = bool(properties) and not native and properties.apply_after
        flags = (["-F"] if discard_changes else []) + (["-u"] if unmounted or after else [])
        if native:
            for name in properties.exclude:
                flags += ["-x", name]
            for name, value in properties.override:
                flags += ["-o", f"{name}={value}"]
        at = len(self._zfs) + 1  # after "zfs receive"
        argv[at:at] = flags
        if not after:
            return argv
        steps = [shlex.join(argv)]
        # Shares first: zfs-fuse shares a dataset whose mountpoint changes even while it
        # is unmounted, so an inherited mountpoint before sharenfs would export the copy.
        excluded = sorted(properties.exclude, key=lambda n: not n.startswith("share"))
        steps += [shlex.join([*self._zfs, "inherit", name, volume]) for name in excluded]
        steps += [shlex.join([*self._zfs, "set", f"{name}={value}", volume])
                  for name, value in properties.override]
        if not unmounted:  # as a receive would have: a replica that cannot mount is fine
            steps.append(f"{{ {shlex.join([*self._zfs, 'mount', volume])} || true; }}")
        return ["sh", "-c", " && ".join(steps)]

    @property
    def inline_limit(self) -> int:
        """Small streams go inline only where a stream would open a session of its own
        (over SSH); locally a ``zfs receive`` costs the same either way."""
        return INLINE_MAX if self.runner.facts.stream_sessions else 0

    async def receive_inline(self, volume: str, data: bytes, *, unmounted: bool = False,
                             properties: ReceiveProperties = ReceiveProperties()) -> None:
        """``printf`` the stream into ``zfs receive``, one command on the server's shell
        (POSIX ``printf`` writes any byte, NUL included, from a ``\\ooo`` escape)."""
        if len(data) > INLINE_MAX:
            raise BackendError(f"a stream of {len(data)} bytes is too large to pass inline")
        argv = self.receive_command(volume, unmounted=unmounted, properties=properties)
        escaped = "".join(f"\\{byte:03o}" for byte in data)
        await self._run("-c", f"printf '{escaped}' | {shlex.join(argv)}", tool=["sh"])

    async def tree(self, root: str, *, selector: str | None = None,
                   snapshots: bool = True) -> TreeListing:
        """One ``zfs get -r`` of the whole tree, snapshots included, or its datasets
        alone (``tree.py``)."""
        if not snapshots:
            return await tree.list_datasets(self, root, selector)
        return await tree.list_tree(self, root, selector)

    async def snapshot_facts(self, names: Sequence[str]) -> dict[str, Snapshot]:
        """``zfs get -Hp`` of the names alone, as many per command as fit (``tree.py``)."""
        return await tree.snapshot_facts(self, names)

    async def snapshot_tree(self, root: str, label: str, members: Sequence[str]) -> None:
        """One ``zfs snapshot`` naming every member, or ``-r`` then the non-members'
        snapshots destroyed (``tree.py``)."""
        await tree.snapshot_tree(self, root, label, members)

    async def create_parents(self, volume: str) -> None:
        """Missing ancestors as ``canmount=off`` filesystems (``tree.py``)."""
        await tree.create_parents(self, volume)

    async def set_readonly_many(self, volumes: Sequence[str],
                                readonly: bool = True) -> dict[str, str]:
        """One ``zfs set`` naming them all, one ``zfs get`` to check (``fence.py``)."""
        return await fence.set_readonly_many(self, volumes, readonly, self.set_readonly)

    async def set_user_property_many(self, volumes: Sequence[str], prop: str,
                                     value: str) -> None:
        await fence.set_user_property_many(self, volumes, prop, value)

    async def mount_many(self, volumes: Sequence[str]) -> dict[str, str]:
        return await fence.mount_many(self, volumes)

    async def estimate(self, snapshot: str, base: str | None = None, *,
                       intermediates: bool = False, resume_token: str | None = None,
                       options: StreamOptions = StreamOptions()) -> int | None:
        return await self.size_estimate(snapshot, base, intermediates=intermediates,
                                        resume_token=resume_token, flags=send_flags(options))

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
        return await views.snapshot_view(self, snapshot, for_server)

    async def release_view(self, snapshot: str, *, for_server: str = "") -> None:
        await views.release_view(self, snapshot, for_server)

    async def volume_path(self, volume: str) -> str:
        return await views.volume_path(self, volume)


def _only_missing(stderr: str) -> bool:
    """Whether every complaint in ``stderr`` is about a dataset that does not exist."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return bool(lines) and all("does not exist" in line for line in lines)


def _outermost(roots: list[str]) -> list[str]:
    """``roots`` without duplicates or roots inside another (listed with it already)."""
    kept: list[str] = []
    for root in sorted(set(roots)):
        if not any(root.startswith(k + "/") for k in kept):
            kept.append(root)
    return kept
