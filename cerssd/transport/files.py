"""Where a file-level copy (rsync, the generic path across drivers) reads or writes.

The copy runs on the daemon's node with at most one end remote; a remote end is reached
through the server's own SSH settings and stream multiplexer (``SshRunner.rsync_shell``).
The transport knows those; the replication layer gets a ``FileEnd`` and never looks
at a runner's type.
"""

from __future__ import annotations

from dataclasses import dataclass

from .runner import Runner
from .ssh import SshRunner


@dataclass(frozen=True)
class FileEnd:
    """A directory on a server: ``host`` None for this machine, else rsync's ``shell``
    (its ``-e``) reaches it."""

    path: str
    host: str | None = None
    shell: str | None = None

    @property
    def remote(self) -> bool:
        return self.host is not None

    def spec(self) -> str:
        path = self.path.rstrip("/") + "/"  # the directory's contents, not the directory
        if self.host is None:
            return path
        return f"[{self.host}]:{path}" if ":" in self.host else f"{self.host}:{path}"


def file_end(runner: Runner, path: str) -> FileEnd:
    """``path`` on the server ``runner`` reaches."""
    if isinstance(runner, SshRunner):
        return FileEnd(path, runner.cfg.host or "", runner.rsync_shell())
    return FileEnd(path)
