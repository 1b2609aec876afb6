"""The ``cerssd`` daemon: set up, serve, reload on SIGHUP, shut down cleanly on SIGTERM.

Lifecycle (after aiohttp's web_runner): ``setup`` builds everything and binds
the listeners, ``serve`` waits for a stop signal while housekeeping runs,
``shutdown`` stops accepting work, checkpoints or cancels activities within the
configured timeout, closes the journal and removes the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import grp
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import structlog
from aiohttp import web

from . import __version__, snapshots, volumes
from .api.app import build_app, scrape
from .api.context import ApiContext
from .capacity import CapacityCache
from .children import watch_children_by_pidfd
from .cluster.etcd import EtcdClient
from .cluster.member import ClusterMember
from .config import DEFAULT_CONFIG_PATH, EX_CONFIG, Config, load_config
from .engine import ActivityEngine
from .heap import RESETTLE_SECONDS, settle
from .journal import Journal, JournalError, JournalTooNew
from .logs import LogFormat, configure_logging
from .memory import tune_malloc
from .metrics import Metrics
from .objectstore.stores import Stores
from .parsing import ConfigError, MissingSecret
from .policies.registry import PolicyRegistry
from .reload import ConfigReloader
from .replication.flows import (
    backup,
    bucket_prune,
    member_backups,
    member_streams,
    replicate,
    restore,
    snapshot_prune,
)
from .replication.relationships.cycle_gate import CycleGate
from .replication.relationships.manager import RelationshipManager
from .replication.retry import RetryPolicy
from .replication.stream.groups import FanoutGroups
from .sdnotify import Notifier, watchdog_interval
from .servers import BackendFactory, ServerRegistry, configured_backend
from .volume_roots import volume_roots
from .volume_states import VolumeStates

log = structlog.get_logger("cerssd.daemon")

#: Seconds an in-flight request (a long poll, say) gets to finish at shutdown.
REQUEST_GRACE = 2.0
#: Seconds the SSH and object-store connections get to close at shutdown.
CLOSE_GRACE = 5.0
#: Seconds past ``shutdown_timeout`` after which the process ends whatever still runs:
#: more than the graces above together, less than the unit's TimeoutStopSec margin (15 s).
EXIT_GRACE = 10.0

#: Keys a reload cannot change in a running daemon (listeners, journal, retry policy).
#: Read once at start: a reload warns about a change to them and keeps the old value.
#: The retry settings are built into the running activities' retry policy.
RESTART_KEYS = ("control_socket", "state_dir", "metrics_listen", "stall_timeout",
                "retry_max_interval", "retry_deadline", "log_format")


class StartupError(Exception):
    pass


class Daemon:
    def __init__(self, config: Config, *,
                 backend_factory: BackendFactory = configured_backend) -> None:
        """``backend_factory`` builds each server's storage backend: the registry's for
        its ``backend`` key; the fast flow tests pass an in-memory fake."""
        self.config = config
        self._backend_factory = backend_factory
        self.notifier = Notifier()
        self.stopping = asyncio.Event()
        self._runners: list[web.AppRunner] = []
        self._lock_file: IO[str] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: One reload at a time: a SIGHUP during one is applied after it.
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()

    async def setup(self) -> None:
        d = self.config.daemon
        d.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_state_dir(d.state_dir)
        self.journal = Journal(d.journal_path)
        self.engine = ActivityEngine(self.journal, retention=d.activity_retention)
        self.servers = ServerRegistry(self.config.servers, d.control_socket.parent / "ssh",
                                      backend_factory=self._backend_factory)
        await self.servers.probe_all()
        snapshots.register(self.engine, self.servers)
        volumes.register(self.engine, self.servers)
        policy = RetryPolicy(stall_timeout=d.stall_timeout or None,
                                       max_interval=d.retry_max_interval,
                                       deadline=d.retry_deadline)
        groups = FanoutGroups()
        replicate.register(self.engine, self.servers, policy, groups)
        member_streams.register(self.engine, self.servers, policy)
        snapshot_prune.register(self.engine, self.servers)
        self.stores = Stores(self.config.stores, self.servers.links)
        backup.register(self.engine, self.servers, self.stores, policy, groups)
        restore.register(self.engine, self.servers, self.stores, policy)
        member_backups.register(self.engine, self.servers, self.stores, policy)
        bucket_prune.register(self.engine, self.stores, policy)
        # Built before the recovery (the relationship flows are handed it), filled after.
        self.volume_states = VolumeStates(self.engine, self.servers)
        self.cycle_gate = CycleGate(d.max_concurrent_cycles)
        self.cluster = self._cluster_member()
        self.relationships = RelationshipManager.build(
            self.engine, self.servers, self.journal, volume_states=self.volume_states,
            groups=groups, stores=self.stores, policy=policy, gate=self.cycle_gate,
            policy_labels=self._policy_labels, leadership=self.cluster)
        self.relationships.registry.load(self.config.relationships)
        if self.cluster is not None:
            self.cluster.step_down = self.relationships.registry.step_down
            self.cluster.on_lead = self.relationships.registry.lead_here
        self.policies = PolicyRegistry(self.engine, self.servers,
                                       self.relationships.registry,
                                       max_backoff=d.retry_max_interval)
        self.policies.load(self.config.policies)
        self.capacity = CapacityCache(self.servers, self.engine, served=self._served)
        self.capacity.start()
        self.metrics = Metrics(self.engine, self.servers, self.relationships.view, groups,
                               capacity=self.capacity, policies=self.policies,
                               cluster=self.cluster, auto=self.relationships.auto)
        self.reloader = ConfigReloader(self.engine, self.servers, self.stores,
                                       self.relationships.registry, self.policies)
        started = time.time()
        self.engine.recover()
        # Before anything submits: holds of the activities that came back, then the flows.
        self.volume_states.rebuild(self.engine.activities())
        self.relationships.start()
        if self.cluster is not None:  # leads nothing until etcd answers: never blocks start
            self.cluster.start()
            self.relationships.auto.start()
        self.policies.start()
        if self.stores.stores:  # a crash may have left uploads behind: clean up, unhurried
            self._tasks.append(asyncio.create_task(self.stores.abort_orphans(
                started, spare=backup.delegated_uploads(self.engine.activities()))))
        await self._serve_control_socket(d.control_socket)
        if d.metrics_listen is not None:
            await self._serve_metrics(d.metrics_listen.host, d.metrics_listen.port)

    def _cluster_member(self) -> ClusterMember | None:
        """With ``[cluster]``: this daemon as one of several managers sharing leadership
        and roles through etcd (``cluster/member.py``); None: it runs alone."""
        c = self.config.cluster
        if c is None:
            return None
        log.info("clustered: relationships are led through etcd", node=c.node,
                 etcd=list(c.etcd), lease_ttl=c.lease_ttl)
        return ClusterMember(c, EtcdClient(c.etcd),
                             lambda: list(self.relationships.registry.runtimes))

    def _policy_labels(self, name: str) -> Mapping[str, float] | None:
        """A policy's labels on its server, for the trees that replicate them."""
        rt = self.policies.runtimes.get(name)
        return rt.labels if rt is not None else None

    def _served(self, server: str) -> tuple[str, ...] | None:
        """The pools and datasets the daemon serves on ``server`` (``volume_roots``)."""
        return volume_roots(self.servers.entry(server).config,
                            (rt.spec for rt in self.relationships.registry.all()),
                            (rt.spec for rt in self.policies.all()))

    def _lock_state_dir(self, state_dir: Path) -> None:
        self._lock_file = open(state_dir / "cerssd.lock", "w")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartupError(f"another cerssd is using {state_dir}") from None

    async def _serve_control_socket(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            if _socket_is_live(path):
                raise StartupError(f"another daemon is listening on {path}")
            path.unlink()
        app = build_app(ApiContext(self.engine, self.servers, self.metrics,
                                   lambda: self.config, self.relationships, self.stores,
                                   volume_states=self.volume_states, capacity=self.capacity,
                                   policies=self.policies, cluster=self.cluster))
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=REQUEST_GRACE)
        await runner.setup()
        old_umask = os.umask(0o117)  # the socket is born 0660, never briefly world-writable
        try:
            await web.UnixSite(runner, str(path)).start()
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o660)
        group = self.config.daemon.control_group
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                log.warning("control group does not exist; socket left root-only", group=group)
            else:
                os.chown(path, -1, gid)
                closed = closed_to_group(path.parent, gid)
                if closed is not None:
                    log.warning("the control group cannot reach the socket: a directory "
                                "above it does not let its members through", group=group,
                                directory=str(closed), mode=f"{closed.stat().st_mode & 0o7777:04o}")
        self._runners.append(runner)
        log.info("control socket listening", path=str(path))

    async def _serve_metrics(self, host: str, port: int) -> None:
        async def metrics(request: web.Request) -> web.Response:
            return await scrape(self.metrics, self.capacity)

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=REQUEST_GRACE)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(f"cannot listen for metrics on {host}:{port}: {exc}") from exc
        self._runners.append(runner)
        log.info("metrics listening", address=f"{host}:{port}")

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        self._tasks.append(asyncio.create_task(self.servers.watch_peers()))
        self._tasks.append(asyncio.create_task(self._resettle()))
        if (interval := watchdog_interval()) is not None:
            self._tasks.append(asyncio.create_task(self._watchdog(interval)))
        # Start-up's objects live as long as the daemon: out of every later collection.
        frozen = settle()
        self.notifier.notify(ready=1, status="serving")
        log.info("cerssd ready", version=__version__, pid=os.getpid(),
                 heap_settled_ms=round(frozen * 1000, 1))
        await self.stopping.wait()

    async def _housekeeping(self) -> None:
        while True:
            pruned = await self.engine.prune()
            if pruned:
                log.info("pruned finished activities", count=pruned)
            await asyncio.sleep(min(60.0, max(1.0, self.engine.retention / 10)))

    async def _resettle(self) -> None:
        """Free what became garbage among frozen objects (heap.py), once an hour."""
        while True:
            await asyncio.sleep(RESETTLE_SECONDS)
            log.debug("heap settled", ms=round(settle() * 1000, 1))

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.notify(watchdog=1)
            await asyncio.sleep(interval)

    def reload(self) -> None:
        """SIGHUP: re-read the config and put it in force (``reload.py``)."""
        task = asyncio.get_running_loop().create_task(self.reload_config())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload_config(self) -> None:
        """Re-read the config; a bad file (or one that cannot be put in force: a removed
        server still named) is logged with its key and the old config kept whole."""
        async with self._reload_lock:
            path = self.config.source or DEFAULT_CONFIG_PATH
            self.notifier.notify(reloading=1, status="reloading config")
            try:
                new = load_config(path)
                diff = self.reloader.check(self.config, new)
            except ConfigError as exc:
                log.error("config reload failed; keeping the running config", key=exc.key,
                          problem=exc.problem, path=str(path))
                self.notifier.notify(ready=1, status=f"serving (reload failed: {exc})")
                return
            unchanged = [k for k in RESTART_KEYS
                         if getattr(new.daemon, k) != getattr(self.config.daemon, k)]
            if unchanged:
                log.warning("some changes take effect only after a restart", keys=unchanged)
            configure_logging(new.daemon.log_level, fmt=self.config.daemon.log_format)
            self.engine.retention = new.daemon.activity_retention
            self.cycle_gate.limit = new.daemon.max_concurrent_cycles
            old, self.config = self.config, _keep_restart_keys(new, self.config)
            try:
                await self.reloader.apply(diff, old, new)
            except Exception:  # a bug, not a bad file: say so loudly, keep serving
                log.exception("config reload not fully applied; restart cerssd to apply it",
                              path=str(path), **diff.to_json())
                self.notifier.notify(ready=1, status="serving (reload not fully applied)")
                return
            settle()  # the reload's objects are long-lived too (heap.py)
            log.info("config reloaded", path=str(path), **diff.to_json())
            self.notifier.notify(ready=1, status="serving")

    async def shutdown(self) -> None:
        self.notifier.notify(stopping=1, status="shutting down")
        log.info("shutting down")
        for task in self._tasks:
            task.cancel()
        if self.cluster is not None:
            await self.relationships.auto.close()
        for runner in self._runners:
            await runner.cleanup()  # stop accepting requests first
        await self.engine.shutdown(self.config.daemon.shutdown_timeout)
        if self.cluster is not None:  # our streams have stopped: the locks go back now,
            await self.cluster.close()  # and another manager takes over at once
        await self.capacity.close()
        try:
            await asyncio.wait_for(asyncio.gather(self.servers.close(), self.stores.close(),
                                                  self.reloader.close()), CLOSE_GRACE)
        except TimeoutError:
            log.warning("connections did not close in time; leaving them",
                        seconds=CLOSE_GRACE)
        with contextlib.suppress(FileNotFoundError):
            self.config.daemon.control_socket.unlink()
        log.info("stopped")


def _keep_restart_keys(new: Config, running: Config) -> Config:
    from dataclasses import replace

    kept = {k: getattr(running.daemon, k) for k in RESTART_KEYS}
    return replace(new, daemon=replace(new.daemon, **kept))


def closed_to_group(directory: Path, gid: int) -> Path | None:
    """The first directory from ``directory`` up to ``/`` that a member of group ``gid``
    (neither its owner nor root) may not pass through, or None. A socket that is 0660 for
    the control group is no use behind a 0750 root:root directory (systemd's
    ``RuntimeDirectoryMode=0750`` did exactly that)."""
    for d in (directory, *directory.parents):
        mode = d.stat()
        if not (mode.st_mode & stat.S_IXOTH
                or (mode.st_gid == gid and mode.st_mode & stat.S_IXGRP)):
            return d
    return None


def _socket_is_live(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


async def run(config: Config) -> int:
    watcher = watch_children_by_pidfd(asyncio.get_running_loop())
    try:
        return await _run(config)
    finally:
        if watcher is not None:
            watcher.close()


async def _run(config: Config) -> int:
    daemon = Daemon(config)
    try:
        await daemon.setup()
    except JournalTooNew as exc:
        # Not a failure a restart can mend (systemd's RestartPreventExitStatus=78): a
        # downgraded package must not restart every few seconds for ever.
        log.error("cannot start", error=str(exc))
        daemon.notifier.notify(status=f"cannot start: {exc}")
        return EX_CONFIG
    except (StartupError, JournalError) as exc:
        log.error("cannot start", error=str(exc))
        return 1
    try:
        await daemon.serve()
    finally:
        exit_by(config.daemon.shutdown_timeout + EXIT_GRACE)
        await daemon.shutdown()
    return 0


def exit_by(seconds: float) -> threading.Timer:
    """Make sure the process ends within ``seconds`` of a stop request.

    The shutdown itself is bounded (activities by ``shutdown_timeout``, requests by
    ``REQUEST_GRACE``), but asyncio's close waits without limit for its executor's
    threads and the interpreter for every other thread: a thread blocked on a pipe or a
    lock would keep a stopped daemon alive for ever. This timer ends it instead, saying so.
    """
    def give_up() -> None:
        log.error("threads still running after shutdown; exiting anyway",
                  threads=[t.name for t in threading.enumerate()
                           if t is not threading.current_thread()])
        os._exit(1)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    return timer


def _missing_secrets(config: Config) -> list[MissingSecret]:
    """Every store's credentials read now; those not on this node yet returned, a
    credentials file that is there but wrong (unreadable, not TOML) raised."""
    missing = []
    for store in config.stores.values():
        try:
            store.load_credentials()
        except MissingSecret as exc:
            missing.append(exc)
    return missing


def parser() -> argparse.ArgumentParser:
    """The command line; a function of its own so that the man page, cerssd(8), is
    generated from it (make man)."""
    parser = argparse.ArgumentParser(
        prog="cerssd",
        description="The cerssd replication daemon: keeps ZFS volumes replicated to other "
                    "servers over SSH and backed up to object stores, controlled through "
                    "cerssctl. Reloads its configuration on SIGHUP, stops cleanly on SIGTERM.",
        epilog="Exit status 78 (EX_CONFIG) means an invalid configuration; see "
               "docs/config.md.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"configuration file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration and exit: 0 if it is valid (secrets "
                             "not on this node yet are warnings), 78 if not")
    parser.add_argument("--log-format", type=LogFormat, choices=list(LogFormat),
                        metavar="{" + ",".join(f.value for f in LogFormat) + "}",
                        help="override daemon.log_format: auto (journal under systemd, "
                             "human lines on a terminal, JSON otherwise), json, console, "
                             "journal")
    parser.add_argument("--version", action="version", version=f"cerssd {__version__}")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        config = load_config(args.config)
        missing = _missing_secrets(config)
    except ConfigError as exc:
        print(f"cerssd: invalid configuration: {exc}", file=sys.stderr)
        sys.exit(EX_CONFIG)
    if args.check_config:
        for secret in missing:
            print(f"cerssd: warning: secret missing: {secret}", file=sys.stderr)
        print(f"cerssd: {args.config} is valid" + (
            f"; cerssd will not start until the {len(missing)} missing secret(s) above are "
            "in place" if missing else ""))
        return
    if missing:  # the daemon itself needs them: a config error, named
        print(f"cerssd: invalid configuration: {missing[0]}", file=sys.stderr)
        sys.exit(EX_CONFIG)
    if args.log_format is not None:
        from dataclasses import replace

        config = replace(config, daemon=replace(config.daemon, log_format=args.log_format))
    configure_logging(config.daemon.log_level, fmt=config.daemon.log_format)
    tune_malloc()
    sys.exit(asyncio.run(run(config)))
