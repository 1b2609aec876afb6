"""The servers this daemon acts on, each with its transport, backend and capabilities.

Each server gets a transport (``LocalRunner`` or ``SshRunner``, by ``kind``) and a
storage backend on it (by ``backend``, ``storage.registry``). The capabilities it
publishes are the backend's probed ones plus the transport's own facts (connection-loss
reporting, direct copy): neither side is patched by the other.

A server that cannot be probed at start-up (a remote that is down) is not fatal:
it is reported unavailable with the reason, and probed again when it is next used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from .config import ServerConfig
from .links import Links
from .storage.errors import BackendError
from .storage.interface import StorageBackend
from .storage.registry import make_backend
from .storage.values import Capabilities
from .transport.errors import LinkError
from .transport.runner import LocalRunner, Runner
from .transport.ssh import SshRunner

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
    backend: StorageBackend
    transport: Runner
    probed: bool = False
    probe_error: str | None = None
    permanent_error: bool = False

    @property
    def capabilities(self) -> Capabilities:
        """What the server offers: its storage's, with its transport's facts."""
        facts = self.transport.facts
        return replace(self.backend.capabilities,
                       connection_loss_reporting=facts.connection_loss_reporting,
                       direct_copy=facts.direct_copy)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.config.name, "kind": self.config.kind,
                                "stateless": self.config.stateless}
        if self.config.kind == "ssh":
            data.update(host=self.config.host, port=self.config.port, user=self.config.user)
        data.update(self.backend.info())
        data["capabilities"] = self.capabilities.published()
        data["available"] = self.probed
        data["error"] = self.probe_error
        return data


def make_runner(cfg: ServerConfig, control_dir: Path, links: Links) -> Runner:
    if cfg.kind == "local":
        return LocalRunner(cfg.name)
    return SshRunner(cfg, control_dir, links=links)


BackendFactory = Callable[[ServerConfig, Runner], StorageBackend]


def configured_backend(cfg: ServerConfig, runner: Runner) -> StorageBackend:
    return make_backend(cfg.backend, runner, cfg)


class ServerRegistry:
    def __init__(self, servers: Mapping[str, ServerConfig], control_dir: Path, *,
                 backend_factory: BackendFactory = configured_backend) -> None:
        """``backend_factory`` is the registry's (``config.backend``); tests pass a fake."""
        self.links = Links([name for name, cfg in servers.items() if cfg.kind == "ssh"])
        self.entries: dict[str, ServerEntry] = {}
        for name, cfg in servers.items():
            runner = make_runner(cfg, control_dir, self.links)
            self.entries[name] = ServerEntry(cfg, backend_factory(cfg, runner), runner)

    async def probe(self, entry: ServerEntry) -> None:
        name = entry.config.name
        try:
            await entry.backend.probe()
        except LinkError as exc:
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
            entry.probed, entry.probe_error, entry.permanent_error = True, None, False
            log.info("capabilities probed", server=name,
                     capabilities=entry.capabilities.published(),
                     **{k: v for k, v in entry.backend.info().items()
                        if k.endswith("_version")})

    async def probe_all(self) -> None:
        for entry in self.entries.values():
            await self.probe(entry)

    def entry(self, name: str) -> ServerEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise UnknownServer(name)
        return entry

    async def backend(self, name: str) -> StorageBackend:
        """The server's backend, probing it again first if it was unavailable."""
        entry = self.entry(name)
        if not entry.probed:
            await self.probe(entry)
        if not entry.probed:
            raise ServerUnavailable(f"server {name} is unavailable: {entry.probe_error}",
                                    server=name, permanent=entry.permanent_error)
        return entry.backend

    def capabilities(self) -> dict[str, Capabilities]:
        return {name: e.capabilities for name, e in self.entries.items() if e.probed}

    async def close(self) -> None:
        for entry in self.entries.values():
            runner = entry.transport
            if isinstance(runner, SshRunner):
                with contextlib.suppress(OSError):
                    await runner.close()
