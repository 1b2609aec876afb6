"""Which storage backend a server uses: its ``backend`` config key, mapped to a class.

A second backend is its own package plus its line in ``BACKENDS`` (and its name in
``BackendName``, for the API's schema); the config accepts exactly the names listed
here (an unknown one is a config error naming the key).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from typing import Literal, Protocol

from ..transport.runner import Runner
from .btrfs import BtrfsBackend
from .interface import StorageBackend
from .zfs import ZfsBackend

DEFAULT_BACKEND = "zfs"
#: The names ``BACKENDS`` maps: the values a server's ``backend`` can have, as the API's
#: schema lists them (tests/test_state_enums.py keeps the two the same).
BackendName = Literal["zfs", "btrfs"]


class BackendSettings(Protocol):
    """What of a server's configuration a backend reads (``config.ServerConfig``)."""

    @property
    def zfs_command(self) -> str: ...

    @property
    def stateless(self) -> bool: ...

    @property
    def root(self) -> str | None: ...

    @property
    def pool(self) -> str | None: ...

    @property
    def sudo(self) -> bool: ...


def _zfs(runner: Runner, cfg: BackendSettings) -> StorageBackend:
    # ``zpool`` beside an absolute ``.../zfs``: a non-root login's PATH (Debian's
    # /usr/local/bin:/usr/bin:/bin) has neither, and delegation needs no sudo to find them.
    # A command of another name is a wrapper an operator wrote: ``zpool`` from PATH then.
    zfs = cfg.zfs_command
    beside = zfs.startswith("/") and posixpath.basename(zfs) == "zfs"
    zpool = posixpath.join(posixpath.dirname(zfs), "zpool") if beside else "zpool"
    return ZfsBackend(runner, zfs=zfs, zpool=zpool, stateless=cfg.stateless, sudo=cfg.sudo)


def _btrfs(runner: Runner, cfg: BackendSettings) -> StorageBackend:
    assert cfg.root is not None  # the config requires it for btrfs
    return BtrfsBackend(runner, root=cfg.root, pool=cfg.pool)


BACKENDS: Mapping[str, Callable[[Runner, BackendSettings], StorageBackend]] = {
    "zfs": _zfs,
    "btrfs": _btrfs,
}


def make_backend(name: str, runner: Runner, cfg: BackendSettings) -> StorageBackend:
    """The ``name`` backend on the server ``runner`` reaches (config already checked)."""
    return BACKENDS[name](runner, cfg)
