"""The filters between a stream and a store: compression, then age encryption.

    zfs send | [zstd|lz4] | [age -e -r ...] | upload          (a backup)
    download | [age -d -i ID] | [zstd -d|lz4 -d] | zfs receive (a restore)

Each filter is its own process joined to the next by a pipe the kernel moves the bytes
through: the daemon reads only the last one's output (or writes only the first one's
input), so a filter costs it no memory and runs on another core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from ...objectstore.config import StoreConfig
from ...objectstore.privacy import decrypt_argv
from .transfer import STREAM_PIPE, FdSet

COMPRESSORS = {"zstd": ["zstd", "-q", "-c", "-T0"], "lz4": ["lz4", "-q", "-c"]}
DECOMPRESSORS = {"zstd": ["zstd", "-d", "-q", "-c"], "lz4": ["lz4", "-d", "-q", "-c"]}
#: zstd -1: on log-like data it compressed as well as -3 here at ~25% less CPU, and a
#: backup on a busy node is CPU-bound (bench/RESULTS.md).
DEFAULT_LEVEL = {"zstd": 1, "lz4": 1}


def compressor_argv(compression: str, level: int | None) -> list[str] | None:
    if compression == "none":
        return None
    return [*COMPRESSORS[compression], f"-{level or DEFAULT_LEVEL[compression]}"]


def backup_filters(cfg: StoreConfig) -> list[tuple[str, list[str]]]:
    """(name, argv) of each filter a store's streams pass on their way in, in order."""
    found = []
    if (compress := compressor_argv(cfg.compression, cfg.compression_level)) is not None:
        found.append(("compressor", compress))
    if (encrypt := cfg.privacy.encrypt_argv()) is not None:
        found.append(("age encryption", encrypt))
    return found


def restore_filters(compression: str, identity: Path | None) -> list[tuple[str, list[str]]]:
    """(name, argv) of each filter a stored stream passes on its way out, in order."""
    found = []
    if identity is not None:
        found.append(("age decryption", decrypt_argv(identity)))
    if compression != "none":
        found.append(("decompressor", DECOMPRESSORS[compression]))
    return found


async def spawn_chain(argvs: Sequence[Sequence[str]], stdin: int, stdout: int,
                      fds: FdSet) -> list[asyncio.subprocess.Process]:
    """Start ``argvs`` as a pipeline from ``stdin`` to ``stdout`` (both belong to ``fds``
    and are closed here once the processes hold them); the caller stops the processes
    returned. If one cannot be started, those already started are killed and reaped."""
    procs: list[asyncio.subprocess.Process] = []
    source = stdin
    for i, argv in enumerate(argvs):
        last = i == len(argvs) - 1
        nxt_r, nxt_w = (-1, stdout) if last else fds.pipe(STREAM_PIPE)
        try:
            procs.append(await asyncio.create_subprocess_exec(
                *argv, stdin=source, stdout=nxt_w, stderr=asyncio.subprocess.PIPE))
        except BaseException:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
            raise
        fds.close(source, nxt_w)
        source = nxt_r
    return procs
