"""What is in a bucket: the complete backups (those with a manifest), per volume."""

from __future__ import annotations

from collections.abc import Collection, Mapping

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
    prefix = store.config.prefix + (f"{volume}/" if volume else "")
    found: list[Manifest] = []
    async for item in store.list_objects(prefix):
        if not item.key.endswith("/" + MANIFEST):
            continue
        try:
            manifest = decode(await store.get_bytes(item.key), item.key)
        except ManifestInvalid as exc:
            log.warning("ignoring an invalid manifest", store=store.name, error=str(exc))
            continue
        if volume is None or manifest.volume == volume:
            found.append(manifest)
    # Creation times have 1 s steps: within a second the txg orders them (and a parent
    # still comes before its child in manifests that lack it).
    depth = _depths(found)
    found.sort(key=lambda m: (m.snapshot_created, m.snapshot_txg, depth[m.guid]))
    return found


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
