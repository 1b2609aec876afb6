"""What is in a bucket: the complete backups (those with a manifest), per volume."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import structlog

from ..storage.values import Snapshot
from .client import ObjectStore
from .layout import MANIFEST, Manifest, ManifestInvalid, decode, manifest_guid, parse_manifest_key

log = structlog.get_logger("cerssd.objectstore")


async def backups(store: ObjectStore, volume: str | None = None) -> list[Manifest]:
    """Every complete backup under the store's prefix (of ``volume``), oldest first.

    A manifest that does not parse is logged and left out: it names nothing that
    could be restored, and one bad object must not hide the others.
    """
    if volume is None:
        found = await _manifests(store, store.config.prefix, lambda key: True)
        return ordered(found)
    by_volume = await backups_under(store, volume, subtree=False)
    return by_volume.get(volume, [])


async def backups_under(store: ObjectStore, root: str, *, subtree: bool,
                        label_ok: Callable[[str], bool] = lambda label: True,
                        guids: Collection[str] | None = None,
                        ) -> dict[str, list[Manifest]]:
    """The complete backups of ``root`` (and with ``subtree`` of every volume below it)
    whose label ``label_ok`` accepts (and guid is in ``guids``), per volume, oldest first:
    one listing, and a GET only of the manifests asked for (volume, label and guid are in
    the key). A listing or a GET that fails raises: a caller deciding what to delete
    never sees half a bucket.
    A manifest whose content does not match its key is left out (logged), like one
    that does not parse: it is not what its place in the bucket says it is."""
    prefix = store.config.prefix

    def wanted(key: str) -> bool:
        parsed = parse_manifest_key(prefix, key)
        if parsed is None:
            return False
        volume, label, guid = parsed
        inside = volume == root or (subtree and volume.startswith(root + "/"))
        return inside and label_ok(label) and (guids is None or guid in guids)
    grouped: dict[str, list[Manifest]] = {}
    for m in await _manifests(store, f"{prefix}{root}/", wanted):
        grouped.setdefault(m.volume, []).append(m)
    return {volume: ordered(found) for volume, found in grouped.items()}


async def _manifests(store: ObjectStore, under: str,
                     wanted: Callable[[str], bool]) -> list[Manifest]:
    keys = [item.key async for item in store.list_objects(under)
            if item.key.endswith("/" + MANIFEST) and wanted(item.key)]
    found: list[Manifest] = []
    for key in keys:
        try:
            manifest = decode(await store.get_bytes(key), key)
        except ManifestInvalid as exc:
            log.warning("ignoring an invalid manifest", store=store.name, error=str(exc))
            continue
        if parse_manifest_key(store.config.prefix, key) != (
                manifest.volume, manifest.label, manifest.guid):
            log.warning("ignoring a manifest not where its content says", store=store.name,
                        key=key, snapshot=manifest.snapshot)
            continue
        found.append(manifest)
    return found


def ordered(found: list[Manifest]) -> list[Manifest]:
    """Oldest first. Creation times have 1 s steps: within a second the txg orders them
    (and a parent still comes before its child in manifests that lack it)."""
    depth = _depths(found)
    return sorted(found, key=lambda m: (m.snapshot_created, m.snapshot_txg, depth[m.guid]))


def _depths(backups: list[Manifest]) -> dict[str, int]:
    by_guid = {m.guid: m for m in backups}
    depths: dict[str, int] = {}
    for m in backups:
        n, seen, parent = 0, {m.guid}, m.parent_guid
        while parent is not None and parent in by_guid and parent not in seen:
            seen.add(parent)
            n += 1
            parent = by_guid[parent].parent_guid
        depths[m.guid] = n
    return depths


async def backed_up_guids(store: ObjectStore, volume: str) -> set[str]:
    """Guids of the snapshots of ``volume`` with a complete backup: one listing, no GETs
    (the guid is part of every manifest's key, docs/backups.md)."""
    prefix = store.config.prefix
    guids = set()
    async for item in store.list_objects(f"{prefix}{volume}/"):
        if (guid := manifest_guid(prefix, volume, item.key)) is not None:
            guids.add(guid)
    return guids


def newest_backed_up(guids: Collection[str], source: list[Snapshot],
                     target_guid: str) -> Snapshot | None:
    """The source's newest snapshot before the target that has a backup (by guid).

    ``source`` is the source's snapshot list, oldest first by creation txg: positions,
    not creation times (1 s steps), say which of two snapshots is newer.
    """
    upto = next((i for i, s in enumerate(source) if s.guid == target_guid), len(source))
    return next((s for s in reversed(source[:upto]) if s.guid in guids), None)


async def newest_in_tree(store: ObjectStore, root: str,
                         positions: Mapping[str, Mapping[str, int]]) -> dict[str, str]:
    """Per volume of a tree, the guid of its newest snapshot with a complete backup.

    ``positions``: per volume, its snapshots' guids -> position (oldest first) on the
    source; only those count (a backup of a snapshot the source no longer has is no
    base). One listing of the root's prefix serves every member, keys only (the guid
    is in every manifest's key), and nothing but the best so far per volume is kept.
    """
    prefix = store.config.prefix
    best: dict[str, tuple[int, str]] = {}
    async for item in store.list_objects(f"{prefix}{root}/"):
        parsed = parse_manifest_key(prefix, item.key)
        if parsed is None:
            continue
        volume, _, guid = parsed
        at = positions.get(volume, {}).get(guid)
        if at is not None and (volume not in best or at > best[volume][0]):
            best[volume] = (at, guid)
    return {volume: guid for volume, (_, guid) in best.items()}
