"""A whole daemon in this process, on fake storage: the fast tier's flow tests.

``FakeCluster`` runs the real ``Daemon`` (engine, journal, flows, relationships, the
HTTP API on a Unix socket) with every server's backend a ``FakeBackend``; only the
storage is fake. Tests talk to it through the API, as an operator would, and look at
the fakes' state directly.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from cerssd.config import ServerConfig, parse_config
from cerssd.daemon import Daemon
from cerssd.storage.interface import StorageBackend
from cerssd.transport.runner import Runner

from .storage import FakeBackend


class FakeCluster:
    def __init__(self, servers: list[str], *, relationships: dict[str, Any] | None = None,
                 daemon: dict[str, Any] | None = None) -> None:
        # A short path: a Unix socket's name has room for ~100 bytes only.
        self.root = Path(tempfile.mkdtemp(prefix="cerssd-fake-"))
        self.fakes: dict[str, FakeBackend] = {}
        self.config = parse_config({
            "daemon": {"control_socket": str(self.root / "control.sock"),
                       "state_dir": str(self.root / "state"), "metrics_listen": "off",
                       **(daemon or {})},
            "servers": {name: {"kind": "local"} for name in servers},
            "relationships": relationships or {},
        })
        self.daemon = Daemon(self.config, backend_factory=self._backend)
        self._session: aiohttp.ClientSession | None = None

    def _backend(self, cfg: ServerConfig, runner: Runner) -> StorageBackend:
        fake = FakeBackend(cfg.name, self.root)
        self.fakes[cfg.name] = fake
        return fake

    async def __aenter__(self) -> FakeCluster:
        await self.daemon.setup()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.config.daemon.control_socket)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        await self.daemon.shutdown()
        shutil.rmtree(self.root, ignore_errors=True)

    async def api(self, method: str, path: str,
                  body: dict[str, Any] | None = None) -> tuple[int, Any]:
        assert self._session is not None
        async with self._session.request(method, f"http://cerssd{path}", json=body) as r:
            return r.status, await r.json(content_type=None)

    async def done(self, activity_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """The activity once it ended (the engine's own wait; a generous limit)."""
        await self.daemon.engine.wait(activity_id, timeout)
        status, body = await self.api("GET", f"/v1/activities/{activity_id}")
        assert status == 200, body
        return dict(body)

    async def until(self, predicate: Callable[[], Any], timeout: float = 30.0,
                    what: str = "condition") -> Any:
        """Poll ``predicate`` (an event would do where there is one to wait on)."""
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.02)
        return value

    async def until_true(self, check: Callable[[], Awaitable[bool]], timeout: float = 30.0,
                         what: str = "condition") -> None:
        """Poll an async ``check`` (one that asks the fakes) until it holds."""
        deadline = time.monotonic() + timeout
        while not await check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.02)
