"""The servers this daemon acts on, each with its backend and probed capabilities."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from .backends.base import BackendError, Capabilities
from .backends.runner import LocalRunner
from .backends.zfs import ZfsBackend
from .config import ServerConfig

log = structlog.get_logger("cerssd.servers")


class UnknownServer(KeyError):
    pass


class ServerUnavailable(BackendError):
    pass


@dataclass
class ServerEntry:
    config: ServerConfig
    backend: ZfsBackend | None
    probe_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.config.name, "kind": self.config.kind,
                                "stateless": self.config.stateless}
        if self.config.kind == "ssh":
            data.update(host=self.config.host, port=self.config.port, user=self.config.user)
        if self.backend is not None:
            data.update(self.backend.info())
        data["available"] = self.probe_error is None and self.backend is not None
        data["error"] = self.probe_error
        return data


class ServerRegistry:
    def __init__(self, servers: Mapping[str, ServerConfig]) -> None:
        self.entries: dict[str, ServerEntry] = {}
        for name, cfg in servers.items():
            if cfg.kind == "local":
                backend = ZfsBackend(LocalRunner(name), zfs=cfg.zfs_command,
                                     stateless=cfg.stateless)
                self.entries[name] = ServerEntry(cfg, backend)
            else:
                self.entries[name] = ServerEntry(
                    cfg, None, "ssh servers are not supported by this version of cerssd")

    async def probe_all(self) -> None:
        for entry in self.entries.values():
            if entry.backend is None:
                continue
            try:
                caps = await entry.backend.probe()
            except (BackendError, OSError) as exc:
                entry.probe_error = f"capability probe failed: {exc}"
                log.error("capability probe failed", server=entry.config.name, error=str(exc))
            else:
                entry.probe_error = None
                log.info("capabilities probed", server=entry.config.name,
                         capabilities=caps.published(), zfs_version=entry.backend.version)

    def backend(self, name: str) -> ZfsBackend:
        entry = self.entries.get(name)
        if entry is None:
            raise UnknownServer(name)
        if entry.backend is None or entry.probe_error:
            raise ServerUnavailable(f"server {name} is unavailable: {entry.probe_error}")
        return entry.backend

    def capabilities(self) -> dict[str, Capabilities]:
        return {name: e.backend.capabilities for name, e in self.entries.items()
                if e.backend is not None}
