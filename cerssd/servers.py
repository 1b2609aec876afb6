"""The servers this daemon acts on, each with its backend and probed capabilities.

A server that cannot be probed at start-up (a remote that is down) is not fatal:
it is reported unavailable with the reason, and probed again when it is next used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from .backends.base import BackendError, Capabilities
from .backends.runner import LocalRunner, Runner
from .backends.ssh import SshError, SshRunner
from .backends.zfs import ZfsBackend
from .config import ServerConfig, streams_directly
from .links import Links

log = structlog.get_logger("cerssd.servers")


class UnknownServer(KeyError):
    pass


class ServerUnavailable(BackendError):
    def __init__(self, message: str, *, server: str = "", permanent: bool = False) -> None:
        super().__init__(message)
        self.server = server
        self.permanent = permanent


@dataclass
class ServerEntry:
    config: ServerConfig
    backend: ZfsBackend
    probed: bool = False
    probe_error: str | None = None
    permanent_error: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.config.name, "kind": self.config.kind,
                                "stateless": self.config.stateless}
        if self.config.kind == "ssh":
            data.update(host=self.config.host, port=self.config.port, user=self.config.user)
        data.update(self.backend.info())
        data["available"] = self.probed
        data["error"] = self.probe_error
        return data


def make_runner(cfg: ServerConfig, control_dir: Path, links: Links) -> Runner:
    if cfg.kind == "local":
        return LocalRunner(cfg.name)
    return SshRunner(cfg, control_dir, links=links)


class ServerRegistry:
    def __init__(self, servers: Mapping[str, ServerConfig], control_dir: Path) -> None:
        self.links = Links([name for name, cfg in servers.items() if cfg.kind == "ssh"])
        self.entries: dict[str, ServerEntry] = {
            name: ServerEntry(cfg, ZfsBackend(make_runner(cfg, control_dir, self.links),
                                              zfs=cfg.zfs_command, stateless=cfg.stateless))
            for name, cfg in servers.items()}

    async def probe(self, entry: ServerEntry) -> None:
        name = entry.config.name
        try:
            caps = await entry.backend.probe()
        except SshError as exc:
            self.links.lost(name, str(exc))
            entry.probed, entry.probe_error = False, str(exc)
            entry.permanent_error = exc.permanent
            log.error("server unavailable", server=name, error=str(exc),
                      permanent=exc.permanent)
        except (BackendError, OSError) as exc:
            entry.probed, entry.probe_error = False, f"capability probe failed: {exc}"
            entry.permanent_error = False
            log.error("capability probe failed", server=name, error=str(exc))
        else:
            # A remote's link is watched (keepalives, stall watchdog) and its loss reported
            # while retries go on; a local server has no link to lose.
            # A local server streams to object stores itself (no controller in the path).
            caps = replace(caps, connection_loss_reporting=entry.config.kind == "ssh",
                           direct_copy=streams_directly(entry.config))
            entry.backend.capabilities = caps
            entry.probed, entry.probe_error, entry.permanent_error = True, None, False
            log.info("capabilities probed", server=name, capabilities=caps.published(),
                     zfs_version=entry.backend.version)

    async def probe_all(self) -> None:
        for entry in self.entries.values():
            await self.probe(entry)

    def entry(self, name: str) -> ServerEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise UnknownServer(name)
        return entry

    async def backend(self, name: str) -> ZfsBackend:
        """The server's backend, probing it again first if it was unavailable."""
        entry = self.entry(name)
        if not entry.probed:
            await self.probe(entry)
        if not entry.probed:
            raise ServerUnavailable(f"server {name} is unavailable: {entry.probe_error}",
                                    server=name, permanent=entry.permanent_error)
        return entry.backend

    def capabilities(self) -> dict[str, Capabilities]:
        return {name: e.backend.capabilities for name, e in self.entries.items() if e.probed}

    async def close(self) -> None:
        for entry in self.entries.values():
            runner = entry.backend.runner
            if isinstance(runner, SshRunner):
                with contextlib.suppress(OSError):
                    await runner.close()
