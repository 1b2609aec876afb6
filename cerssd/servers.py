"""The servers this daemon acts on, each with its transport, backend and capabilities.

Each server gets a transport (``LocalRunner`` or ``SshRunner``, by ``kind``) and a
storage backend on it (by ``backend``, ``storage.registry``). The capabilities it
publishes are the backend's probed ones plus the transport's own facts (connection-loss
reporting, direct copy): neither side is patched by the other.

A server that cannot be probed at start-up (a remote that is down) is not fatal:
it is reported unavailable with the reason, and probed again when it is next used.

A server with ``daemon = "auto"`` is also asked, over the SSH connection its probe
holds, whether a cerssd of this version answers on its control socket (``PeerFact``):
its work is delegated while one does (``delegates``), and relayed otherwise. The
answer is asked again every ``daemon_probe_interval`` (``watch_peers``), so a peer
daemon that stops, starts or is upgraded changes the route of the work submitted after.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from .config import PeerMode, ServerConfig, may_delegate
from .links import Links
from .peers.client import PeerClient, PeerError, PeerVersionMismatch
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


@dataclass(frozen=True)
class PeerFact:
    """What the last probe of a ``daemon = "auto"`` server's cerssd found: whether its
    work is delegated to it, the version that answered, or why it is not used."""

    delegates: bool
    version: str | None
    reason: str | None
    at: float


@dataclass
class ServerEntry:
    config: ServerConfig
    backend: StorageBackend
    transport: Runner
    probed: bool = False
    probe_error: str | None = None
    permanent_error: bool = False
    #: ``daemon = "auto"``: the last peer probe's answer (None: not probed yet).
    peer_fact: PeerFact | None = None

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
        data["peer"] = self._peer_json()
        return data

    def _peer_json(self) -> dict[str, Any] | None:
        """The server's peer daemon as routing sees it (null: none is configured)."""
        cfg = self.config
        if not may_delegate(cfg):
            return None
        fact = self.peer_fact
        if cfg.daemon == PeerMode.YES:
            return {"mode": "true", "delegates": True, "version": None, "reason": None,
                    "probed_at": None}
        return {"mode": "auto", "delegates": fact is not None and fact.delegates,
                "version": fact.version if fact else None,
                "reason": fact.reason if fact else "not probed yet",
                "probed_at": fact.at if fact else None}


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
        self.control_dir = control_dir
        self._backend_factory = backend_factory
        #: Rebuilt entries per server (a reload changed it): each generation gets its own
        #: SSH control directory, so closing the old one's stream multiplexer
        #: (``ssh -O exit``) never cuts the new one's streams.
        self._generations: dict[str, int] = {}
        self.entries: dict[str, ServerEntry] = {}
        self._peers: dict[str, PeerClient] = {}
        for cfg in servers.values():
            self.entries[cfg.name] = self._build(cfg)

    def _build(self, cfg: ServerConfig) -> ServerEntry:
        generation = self._generations.get(cfg.name, 0)
        control_dir = self.control_dir if generation == 0 else self.control_dir / str(generation)
        runner = make_runner(cfg, control_dir, self.links)
        return ServerEntry(cfg, self._backend_factory(cfg, runner), runner)

    def drivers(self) -> dict[str, str]:
        """Each server's storage driver by name (what a relationship's checks read)."""
        return {name: entry.config.backend for name, entry in self.entries.items()}

    # -- a reload's changes (``reload.py``) ----------------------------------------------
    def add(self, cfg: ServerConfig) -> None:
        """A server a reload added: usable at once (probed when first used)."""
        if cfg.kind == "ssh":
            self.links.add(cfg.name)
        self.entries[cfg.name] = self._build(cfg)

    def replace(self, cfg: ServerConfig) -> ServerEntry:
        """A server a reload changed: new work gets a new backend and connection; the
        old entry is returned, for its caller to close once its work has ended."""
        old = self.entries[cfg.name]
        self._generations[cfg.name] = self._generations.get(cfg.name, 0) + 1
        if cfg.kind == "ssh":
            self.links.add(cfg.name)
        elif old.config.kind == "ssh":
            self.links.remove(cfg.name)
        self.entries[cfg.name] = self._build(cfg)
        return old

    def remove(self, name: str) -> ServerEntry:
        """A server a reload removed: unknown to new work from now on; the old entry is
        returned, for its caller to close once its work has ended."""
        self.links.remove(name)
        return self.entries.pop(name)

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
            if entry.config.daemon == PeerMode.AUTO and may_delegate(entry.config):
                await self.probe_peer(entry)

    async def probe_peer(self, entry: ServerEntry) -> PeerFact:
        """Ask the server's control socket, through its SSH connection, for its cerssd
        version (``PeerClient.check_version``): a daemon of this version that lets our
        SSH user in is delegated to; anything else (no socket, nobody listening, another
        version, our user refused, the link down) is not, and the fact says why."""
        name = entry.config.name
        before = entry.peer_fact
        try:
            version = await self.peer(name).check_version()
        except (PeerError, LinkError, OSError, ValueError) as exc:
            theirs = exc.theirs if isinstance(exc, PeerVersionMismatch) else None
            fact = PeerFact(False, theirs, str(exc), time.time())
        else:
            fact = PeerFact(True, version, None, time.time())
        if self.entries.get(name) is entry:  # not replaced by a reload meanwhile
            entry.peer_fact = fact
        if before is None or before.delegates != fact.delegates:
            log.info("peer daemon probed", server=name, delegates=fact.delegates,
                     version=fact.version, reason=fact.reason)
        return fact

    async def watch_peers(self) -> None:
        """Probe each ``daemon = "auto"`` server's cerssd again once its last answer is
        ``daemon_probe_interval`` old (for the daemon's life). A server that is
        unavailable is probed whole when next used, its peer with it."""
        while True:
            now = time.time()
            due = [e for e in self.entries.values()
                   if e.config.daemon == PeerMode.AUTO and e.probed
                   and may_delegate(e.config)
                   and (e.peer_fact is None
                        or now - e.peer_fact.at >= e.config.daemon_probe_interval)]
            for entry, result in zip(due, await asyncio.gather(
                    *(self.probe_peer(e) for e in due), return_exceptions=True), strict=True):
                if isinstance(result, Exception):  # e.g. removed by a reload meanwhile
                    log.warning("peer daemon probe failed", server=entry.config.name,
                                error=str(result))
            await asyncio.sleep(1.0)

    async def probe_all(self) -> None:
        """Every server at once: each waits on its own SSH round trips, and one after
        another they added up to seconds of start-up at three servers (issue 13)."""
        await asyncio.gather(*(self.probe(entry) for entry in self.entries.values()))

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

    def delegates(self, name: str) -> bool:
        """Whether work whose data lives on server ``name`` is delegated to its cerssd
        now: ``daemon = true``, or ``"auto"`` and its last probe found the daemon."""
        entry = self.entry(name)
        cfg = entry.config
        if not may_delegate(cfg):
            return False
        if cfg.daemon == PeerMode.YES:
            return True
        return entry.peer_fact is not None and entry.peer_fact.delegates

    def why_not_delegated(self, name: str) -> str:
        """For a message: why server ``name``'s work is not delegated to a peer daemon."""
        entry = self.entry(name)
        if not may_delegate(entry.config):
            return "it is not configured as a peer daemon (daemon = true or \"auto\")"
        fact = entry.peer_fact
        return f"its peer daemon was not found: {fact.reason if fact else 'not probed yet'}"

    def peer(self, name: str) -> PeerClient:
        """The control API of the cerssd on server ``name`` (``daemon = true`` or
        ``"auto"``), reached through the server's own SSH connection
        (``peers/client.py``)."""
        entry = self.entry(name)
        runner = entry.transport
        if not may_delegate(entry.config) or not isinstance(runner, SshRunner):
            raise ServerUnavailable(f"server {name} is not a peer daemon (daemon = true)",
                                    server=name, permanent=True)
        peer = self._peers.get(name)
        if peer is None or peer.runner is not runner:  # new, or rebuilt by a reload
            peer = self._peers[name] = PeerClient(runner, entry.config.daemon_socket)
        return peer

    def capabilities(self) -> dict[str, Capabilities]:
        return {name: e.capabilities for name, e in self.entries.items() if e.probed}

    async def close(self) -> None:
        for entry in self.entries.values():
            await close_entry(entry)

    async def close_retired(self, entry: ServerEntry) -> None:
        """Close an entry a reload replaced or removed, once its work has ended: its
        stream multiplexer too, unless a server in use shares it (same host, port and
        user in the same control directory: one ``ssh -O exit`` would cut its streams)."""
        runner = entry.transport
        shared = isinstance(runner, SshRunner) and any(
            isinstance(e.transport, SshRunner) and e.transport.mux_key == runner.mux_key
            for e in self.entries.values())
        await close_entry(entry, exit_mux=not shared)


async def close_entry(entry: ServerEntry, *, exit_mux: bool = True) -> None:
    """Close the server's SSH connection and stream multiplexer (a local one has none)."""
    runner = entry.transport
    if isinstance(runner, SshRunner):
        with contextlib.suppress(OSError):
            await runner.close(exit_mux=exit_mux)
