"""What is in a bucket: the complete backups (those with a manifest), per volume."""

from __future__ import annotations

import structlog

from .client import ObjectStore
from .layout import MANIFEST, Manifest, ManifestInvalid, decode

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
    found.sort(key=lambda m: (m.snapshot_created, m.created_at))
    return found


def newest_common(catalog: list[Manifest], source_guids: dict[str, int],
                  before: int) -> Manifest | None:
    """The newest backed-up snapshot the source still has (by guid), older than ``before``.

    ``source_guids`` maps the source's snapshot guids to their creation times.
    """
    candidates = [m for m in catalog
                  if m.guid in source_guids and source_guids[m.guid] <= before]
    return max(candidates, key=lambda m: source_guids[m.guid], default=None)
