"""The object stores this daemon writes to: one open client each, and their links.

At start-up every store's multipart uploads are listed and those no running backup
owns are aborted: a crash mid-upload leaves parts that cost storage and are never
part of a backup (no manifest), and S3 keeps them until someone aborts them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping

import structlog

from ..links import Links
from .client import ObjectStore, StoreError, quiet_botocore
from .config import StoreConfig

log = structlog.get_logger("cerssd.objectstore")


class UnknownStore(KeyError):
    pass


class Stores:
    def __init__(self, configs: Mapping[str, StoreConfig], links: Links) -> None:
        quiet_botocore()
        self.links = links
        self.stores = {name: ObjectStore(cfg, links) for name, cfg in configs.items()}
        for name in self.stores:
            links.add(name)

    # -- a reload's changes (``reload.py``) ----------------------------------------------
    def add(self, config: StoreConfig) -> None:
        """A store a reload added: its client opens when first used."""
        self.stores[config.name] = ObjectStore(config, self.links)
        self.links.add(config.name)

    def replace(self, config: StoreConfig) -> ObjectStore:
        """A store a reload changed: new work gets a new client; the old one is returned,
        for its caller to close once its work has ended. ``stores`` is changed in place:
        the relationship registry reads its names from it."""
        old = self.stores[config.name]
        self.stores[config.name] = ObjectStore(config, self.links)
        return old

    def remove(self, name: str) -> ObjectStore:
        self.links.remove(name)
        return self.stores.pop(name)

    def get(self, name: str) -> ObjectStore:
        store = self.stores.get(name)
        if store is None:
            raise UnknownStore(name)
        return store

    def all(self) -> list[ObjectStore]:
        return list(self.stores.values())

    async def abort_orphans(self, started_before: float, spare: Collection[str] = ()) -> None:
        """Abort unfinished multipart uploads under each prefix begun before ``started_before``.

        Called with the daemon's start time: an upload begun earlier belongs to no live
        backup of this daemon (a backup restarted from the journal aborts its own and
        begins a new one), so it can only be left over. Except under ``spare`` (key
        beginnings after the store's prefix, ``volume/label.``): the backups a peer
        daemon runs for this daemon's delegated activities, whose uploads are live.
        """
        for store in self.stores.values():
            try:
                uploads = await store.multipart_uploads(store.config.prefix)
                for key, upload_id, initiated in uploads:
                    rest = key[len(store.config.prefix):]
                    if initiated >= started_before or rest.startswith(tuple(spare)):
                        continue
                    await store.abort(key, upload_id)
                    log.warning("aborted an orphaned multipart upload", store=store.name,
                                key=key, upload_id=upload_id)
            except StoreError as exc:
                log.error("could not look for orphaned uploads", store=store.name,
                          error=str(exc))

    async def close(self) -> None:
        for store in self.stores.values():
            with contextlib.suppress(Exception):
                await store.close()
