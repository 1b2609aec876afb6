"""The daemon's configuration: one TOML file parsed into frozen dataclasses.

Validation happens entirely here, before anything runs, so that an operator who
mistypes a key learns which key and why (``ConfigError`` carries the dotted key)
and the daemon exits with EX_CONFIG (78) instead of failing half-started.
"""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cluster.config import ClusterConfig, parse_cluster
from .logs import LogFormat
from .objectstore.config import StoreConfig, parse_store
from .parsing import ConfigError, parse_duration, reject_unknown
from .policies.binding import bind, check_prefixes
from .policies.spec import PolicySpec, parse_policy
from .replication.logic.spec import RelationshipSpec, overlapping, parse_relationship
from .storage.btrfs.layout import pool_name
from .storage.names import InvalidName, validate_object_name, validate_volume
from .storage.registry import BACKENDS, DEFAULT_BACKEND

DEFAULT_CONFIG_PATH = Path("/etc/cerssd/cerssd.toml")
EX_CONFIG = 78

#: A host, user or command name: one word, no whitespace or control characters (a newline
#: in a host name would split a command line in the logs and in ssh's own parsing).
_WORD = re.compile(r"[^\s\x00-\x1f\x7f]+")
_LOG_LEVELS = ("debug", "info", "warning", "error")
#: The keys each table accepts, named once so the parser and the operator guide's test
#: (tests/test_docs.py: every key is in docs/config.md) read the same list.
SECTIONS = {"daemon", "servers", "stores", "relationships", "snapshots", "cluster"}
DAEMON_KEYS = {
    "control_socket", "control_group", "state_dir", "metrics_listen", "log_level", "log_format",
    "activity_retention", "shutdown_timeout", "stall_timeout", "retry_max_interval",
    "retry_deadline", "max_concurrent_cycles",
}
SERVER_KEYS = {
    "kind", "backend", "host", "port", "user", "identity_file", "known_hosts",
    "zfs_command", "stateless", "cipher", "pools", "root", "pool", "sudo",
    "daemon", "daemon_socket", "daemon_server", "daemon_probe_interval",
}


@dataclass(frozen=True)
class MetricsListen:
    host: str
    port: int


@dataclass(frozen=True)
class DaemonConfig:
    control_socket: Path = Path("/run/cerssd/control.sock")
    control_group: str | None = None
    state_dir: Path = Path("/var/lib/cerssd")
    metrics_listen: MetricsListen | None = MetricsListen("127.0.0.1", 9811)
    log_level: str = "info"
    log_format: LogFormat = LogFormat.AUTO
    activity_retention: float = 7 * 86400.0
    shutdown_timeout: float = 30.0
    stall_timeout: float = 30.0
    retry_max_interval: float = 30.0
    retry_deadline: float | None = 3600.0
    #: Relationship cycles that may run at once (``replication/relationships/cycle_gate.py``): a few
    #: cores' worth of zfs commands and SSH round trips, and small enough that a herd
    #: of cycles cannot swamp a node.
    max_concurrent_cycles: int = 4

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite3"


class PeerMode(enum.Enum):
    """``daemon`` of a server: ``false`` (NO, the default: every server's work runs
    here, as it always has), ``true`` (YES: a peer daemon runs there, always delegated
    to) or ``"auto"`` (AUTO: delegated to while the server's probe finds one).

    Probing is not the default, though it costs one request per server: a daemon found
    on a server whose config (its stores, the slaves under this config's names, its
    ``daemon_server``) was never meant for delegated work would be handed work it fails.
    Saying ``"auto"`` is the operator's word that such a daemon is set up for it."""

    NO = "false"
    YES = "true"
    AUTO = "auto"


@dataclass(frozen=True)
class ServerConfig:
    """A storage host: ``local`` runs commands here, ``ssh`` on a remote host."""

    name: str
    kind: str  # "local" | "ssh"
    host: str | None = None
    #: The storage backend (``storage.registry``): how volumes are kept on the server.
    backend: str = DEFAULT_BACKEND
    port: int = 22
    user: str = "root"
    identity_file: Path | None = None
    known_hosts: Path | None = None
    zfs_command: str = "zfs"
    stateless: bool = True
    cipher: str = "aes128-gcm@openssh.com"
    #: The pools (or datasets) whose volumes this daemon serves on the server: what
    #: ``GET /v1/volumes`` lists. Empty: those its relationships name (``volume_roots``).
    pools: tuple[str, ...] = ()
    #: btrfs: the subvolume under which volumes are subvolumes (docs/drivers.md).
    root: str | None = None
    #: btrfs: the pool's name (a volume name's first component); default: the root's
    #: last path component.
    pool: str | None = None
    #: ZFS: run ``zfs``/``zpool`` as ``sudo -n zfs ...`` (a non-root ``user`` whose
    #: sudoers line allows them; docs/least-privilege.md).
    sudo: bool = False
    #: Whether the server runs cerssd itself (a peer daemon, docs/peers.md): work whose
    #: data lives there (a backup of its volume, a send from it) is then delegated to that
    #: daemon, reached on ``daemon_socket`` through this server's SSH connection. ``AUTO``:
    #: only while the server's probe finds a daemon of this version answering there.
    daemon: PeerMode = PeerMode.NO
    daemon_socket: Path = Path("/run/cerssd/control.sock")
    #: The name the peer's own config gives this node's storage (its ``local`` server).
    daemon_server: str = "local"
    #: ``daemon = "auto"``: how often the peer daemon is probed again (it may stop, start
    #: or be upgraded while this daemon runs).
    daemon_probe_interval: float = 60.0


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    servers: Mapping[str, ServerConfig] = field(default_factory=dict)
    relationships: Mapping[str, RelationshipSpec] = field(default_factory=dict)
    stores: Mapping[str, StoreConfig] = field(default_factory=dict)
    source: Path | None = None
    #: Snapshot policies (``[snapshots.NAME]``).
    policies: Mapping[str, PolicySpec] = field(default_factory=dict)
    #: Clustered managing daemons sharing leadership and roles through etcd; None: the
    #: single daemon with its journal (the default).
    cluster: ClusterConfig | None = None


def load_config(path: Path) -> Config:
    """Read and validate ``path``; raises ConfigError naming the offending key."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("(file)", f"{path} is not valid TOML: {exc}") from exc
    return parse_config(data, source=path)


def streams_directly(server: ServerConfig) -> bool:
    """Whether ``server`` can stream to an object store itself, read off its config: what
    its transport will publish as ``direct_copy`` (``TransportFacts``), for the checks made
    while parsing, before any transport exists (the flows read the capability itself).

    Only the node this daemon runs on can: a remote server's stream would pass through
    this daemon, the controller the design keeps out of the data path (a remote that
    runs cerssd itself is asked to do it instead: ``ServerRegistry.delegates``).
    """
    return server.kind == "local"


def may_delegate(server: ServerConfig) -> bool:
    """Whether work whose data lives on ``server`` may run there, as its own cerssd's
    activity with this daemon's as its parent (docs/peers.md): always with ``daemon =
    true``, with ``"auto"`` while a probe finds the daemon (``ServerRegistry.delegates``
    says whether it does now; the config alone cannot)."""
    return server.kind == "ssh" and server.daemon != PeerMode.NO


def stores_problem(master: ServerConfig, tree: bool) -> str | None:
    """Why a relationship with this master cannot copy to object stores, or None.

    A local master streams to the bucket itself; a peer master's own cerssd does, each
    cycle's backup delegated to it (a tree's as one batch of its members: docs/peers.md).
    A plain remote's stream would pass through this daemon. ``tree`` is kept for the
    callers: both forms are served alike now.
    """
    if streams_directly(master) or may_delegate(master):
        return None
    kind = "tree relationship" if tree else "relationship"
    return (f"a {kind} copies to object stores only from a local master or one "
            "that runs cerssd itself (daemon = true or \"auto\", docs/peers.md)")


def parse_config(data: Mapping[str, Any], source: Path | None = None) -> Config:
    reject_unknown(data, "", SECTIONS)
    daemon = _parse_daemon(_table(data, "daemon"))
    servers_raw = _table(data, "servers")
    servers = {name: _parse_server(name, _table(servers_raw, name, "servers."))
               for name in servers_raw}
    if not servers:
        servers = {"local": ServerConfig(name="local", kind="local")}
    stores_raw = _table(data, "stores")
    stores = {name: parse_store(name, _table(stores_raw, name, "stores."), servers=servers)
              for name in stores_raw}
    policies_raw = _table(data, "snapshots")
    policies = {name: parse_policy(name, _table(policies_raw, name, "snapshots."),
                                   servers=servers) for name in policies_raw}
    rels_raw = _table(data, "relationships")
    relationships = {
        name: bind(parse_relationship(name, _table(rels_raw, name, "relationships."),
                                      servers=servers, stores=stores,
                                      drivers={n: s.backend for n, s in servers.items()}),
                   policies, f"relationships.{name}")
        for name in rels_raw}
    check_prefixes(policies, relationships)
    for name, spec in relationships.items():
        if (other := overlapping(spec, [r for r in relationships.values()
                                        if r.name < name])) is not None:
            raise ConfigError(f"relationships.{name}.volume", f"its datasets overlap those of "
                              f"relationship {other} (same master, same slave server)")
        if spec.stores and (problem := stores_problem(servers[spec.master],
                                                      spec.is_tree)) is not None:
            raise ConfigError(f"relationships.{name}.stores", problem)
    cluster = parse_cluster(_table(data, "cluster")) if "cluster" in data else None
    for name, spec in relationships.items():
        if spec.auto_failover is not None and cluster is None:
            raise ConfigError(f"relationships.{name}.auto_failover", "needs clustered "
                              "managers ([cluster] with etcd): a lone daemon cannot tell "
                              "its own isolation from the master's death")
    return Config(daemon=daemon, servers=servers, relationships=relationships, stores=stores,
                  source=source, policies=policies, cluster=cluster)


def _parse_daemon(t: Mapping[str, Any]) -> DaemonConfig:
    reject_unknown(t, "daemon.", DAEMON_KEYS)
    d = DaemonConfig()
    level = _str(t, "log_level", "daemon.", d.log_level).lower()
    if level not in _LOG_LEVELS:
        raise ConfigError("daemon.log_level", f"must be one of {', '.join(_LOG_LEVELS)}")
    return DaemonConfig(
        control_socket=_path(t, "control_socket", "daemon.", d.control_socket),
        control_group=_str(t, "control_group", "daemon.", None) or None,
        state_dir=_path(t, "state_dir", "daemon.", d.state_dir),
        metrics_listen=_metrics_listen(t.get("metrics_listen", "127.0.0.1:9811")),
        log_level=level,
        log_format=_log_format(t),
        activity_retention=parse_duration(
            t.get("activity_retention", d.activity_retention), "daemon.activity_retention"),
        shutdown_timeout=parse_duration(
            t.get("shutdown_timeout", d.shutdown_timeout), "daemon.shutdown_timeout"),
        stall_timeout=parse_duration(t.get("stall_timeout", d.stall_timeout),
                                     "daemon.stall_timeout"),
        retry_max_interval=parse_duration(t.get("retry_max_interval", d.retry_max_interval),
                                          "daemon.retry_max_interval"),
        retry_deadline=_optional_duration(t.get("retry_deadline", d.retry_deadline),
                                          "daemon.retry_deadline"),
        max_concurrent_cycles=_count(t, "max_concurrent_cycles", "daemon.",
                                     d.max_concurrent_cycles, high=1000),
    )


def _log_format(t: Mapping[str, Any]) -> LogFormat:
    text = _str(t, "log_format", "daemon.", LogFormat.AUTO.value).lower()
    try:
        return LogFormat(text)
    except ValueError:
        raise ConfigError("daemon.log_format", "must be one of "
                          + ", ".join(f.value for f in LogFormat)) from None


def _count(t: Mapping[str, Any], name: str, prefix: str, default: int, *, high: int) -> int:
    """A whole number from 1 to ``high`` (true/false are not numbers here)."""
    value = t.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ConfigError(prefix + name, f"must be a whole number from 1 to {high}")
    return value


def _optional_duration(value: Any, key: str) -> float | None:
    """A duration, or "never" for no limit."""
    if value is None or value == "never":
        return None
    return parse_duration(value, key)


def _metrics_listen(value: Any) -> MetricsListen | None:
    key = "daemon.metrics_listen"
    if value is False or value == "off":
        return None
    if not isinstance(value, str):
        raise ConfigError(key, 'must be "HOST:PORT" or "off"')
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(key, f'must be "HOST:PORT" or "off", not {value!r}')
    return MetricsListen(host.strip("[]"), int(port))


def _parse_server(name: str, t: Mapping[str, Any]) -> ServerConfig:
    prefix = f"servers.{name}."
    try:
        validate_object_name(name, "server")
    except InvalidName as exc:
        raise ConfigError(f"servers.{name}", str(exc)) from None
    reject_unknown(t, prefix, SERVER_KEYS)
    kind = _str(t, "kind", prefix, "local" if name == "local" else "ssh")
    if kind not in ("local", "ssh"):
        raise ConfigError(prefix + "kind", 'must be "local" or "ssh"')
    port = t.get("port", 22)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(prefix + "port", "must be an integer between 1 and 65535")
    stateless = t.get("stateless", True)
    if not isinstance(stateless, bool):
        raise ConfigError(prefix + "stateless", "must be true or false")
    backend = _str(t, "backend", prefix, DEFAULT_BACKEND)
    if backend not in BACKENDS:
        raise ConfigError(prefix + "backend", f"must be one of {', '.join(sorted(BACKENDS))}, "
                          f"not {backend!r}")
    server = ServerConfig(
        name=name, kind=kind, backend=backend, host=_str(t, "host", prefix, None), port=port,
        user=_str(t, "user", prefix, "root"),
        identity_file=_path(t, "identity_file", prefix, None),
        known_hosts=_path(t, "known_hosts", prefix, None),
        zfs_command=_str(t, "zfs_command", prefix, "zfs"), stateless=stateless,
        cipher=_str(t, "cipher", prefix, "aes128-gcm@openssh.com"),
        pools=_pools(t, prefix),
        root=_str(t, "root", prefix, None), pool=_str(t, "pool", prefix, None),
        sudo=_sudo(t.get("sudo", False), prefix + "sudo"),
        daemon=_peer_mode(t.get("daemon", False), prefix + "daemon"),
        daemon_socket=_path(t, "daemon_socket", prefix, Path("/run/cerssd/control.sock")),
        daemon_server=_str(t, "daemon_server", prefix, "local"),
        daemon_probe_interval=_probe_interval(t.get("daemon_probe_interval", "1m"),
                                              prefix + "daemon_probe_interval"),
    )
    _check_backend_keys(server, prefix)
    _check_daemon_keys(server, prefix)
    for word in ("host", "user", "zfs_command"):
        value = getattr(server, word)
        if value is not None and not _WORD.fullmatch(value):
            raise ConfigError(prefix + word, f"must be a non-empty word without spaces or "
                              f"control characters, not {value!r}")
    if not re.fullmatch(r"[a-z0-9@.,-]+", server.cipher):
        raise ConfigError(prefix + "cipher", "must be an OpenSSH cipher name such as "
                          "aes128-gcm@openssh.com")
    if kind == "ssh":
        for required in ("host", "known_hosts"):
            if getattr(server, required) is None:
                raise ConfigError(prefix + required,
                                  "is required for an ssh server (host keys are always checked)")
    return server


def _check_daemon_keys(server: ServerConfig, prefix: str) -> None:
    """A peer daemon is reached through the server's SSH connection: only an ssh server
    can be one, and the name it gives its own storage must be a valid server name."""
    if server.daemon != PeerMode.NO and server.kind != "ssh":
        raise ConfigError(prefix + "daemon", "only an ssh server can be a peer daemon "
                          "(this daemon does the local server's work itself)")
    try:
        validate_object_name(server.daemon_server, "server")
    except InvalidName as exc:
        raise ConfigError(prefix + "daemon_server", str(exc)) from None


def _peer_mode(value: Any, key: str) -> PeerMode:
    if isinstance(value, bool):
        return PeerMode.YES if value else PeerMode.NO
    if value == "auto":
        return PeerMode.AUTO
    raise ConfigError(key, f'must be true, false or "auto", not {value!r}')


def _probe_interval(value: Any, key: str) -> float:
    """At least a second: each probe is a request to the peer over its SSH link."""
    seconds = parse_duration(value, key)
    if seconds < 1:
        raise ConfigError(key, "must be at least 1s")
    return seconds


def _sudo(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, "must be true or false")
    return value


def _check_backend_keys(server: ServerConfig, prefix: str) -> None:
    """``root`` and ``pool`` belong to btrfs, which needs ``root``: an absolute path of
    plain components (it is passed to btrfs, and over SSH to a shell, as one word)."""
    if server.sudo and server.backend != "zfs":
        raise ConfigError(prefix + "sudo", f"is a ZFS setting; the {server.backend} driver "
                          "runs as the server's user")
    if server.backend != "btrfs":
        for key in ("root", "pool"):
            if getattr(server, key) is not None:
                raise ConfigError(prefix + key, f"is a btrfs setting; this server's backend "
                                  f"is {server.backend}")
        return
    if server.root is None:
        raise ConfigError(prefix + "root", 'is required for backend = "btrfs": the '
                          'subvolume volumes live under, such as "/srv/volumes"')
    if not re.fullmatch(r"(/[A-Za-z0-9_:-][A-Za-z0-9_.:-]*)+/?", server.root):
        raise ConfigError(prefix + "root", "must be an absolute path of letters, digits and "
                          f"_ . : - (no component starting with '.'), not {server.root!r}")
    try:
        pool_name(server.root, server.pool)
    except InvalidName as exc:
        raise ConfigError(prefix + ("pool" if server.pool else "root"), str(exc)) from None


def _pools(t: Mapping[str, Any], prefix: str) -> tuple[str, ...]:
    value = t.get("pools")
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise ConfigError(prefix + "pools", 'must be a non-empty list of pool or dataset '
                          'names, such as ["tank"]')
    for name in value:
        try:
            validate_volume(name)
        except InvalidName as exc:
            raise ConfigError(prefix + "pools", str(exc)) from exc
    if len(set(value)) != len(value):
        raise ConfigError(prefix + "pools", "names a pool twice")
    return tuple(value)


def _table(data: Mapping[str, Any], key: str, prefix: str = "") -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(prefix + key, "must be a table")
    return value


def _str(t: Mapping[str, Any], key: str, prefix: str, default: Any) -> Any:
    value = t.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(prefix + key, "must be a string")
    return value


def _path(t: Mapping[str, Any], key: str, prefix: str, default: Path | None) -> Any:
    value = _str(t, key, prefix, None)
    if value is None:
        return default
    path = Path(value)
    if not path.is_absolute():
        raise ConfigError(prefix + key, f"must be an absolute path, not {value!r}")
    return path
