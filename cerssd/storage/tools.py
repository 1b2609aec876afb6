"""Tools a driver's work needs beside the driver's own commands, probed with it.

The generic path (``flows.generic``) copies files with ``rsync`` at both ends: a server
without it publishes ``file_copy`` absent, and the planner refuses or skips that path
naming the server, before any work, instead of failing in the middle of a copy.
"""

from __future__ import annotations

from ..transport.runner import Runner


async def has_rsync(runner: Runner) -> bool:
    """Whether ``rsync`` runs on the runner's server."""
    try:
        result = await runner.run(["rsync", "--version"], check=False)
    except OSError:  # a local server without it: nothing to execute
        return False
    return result.returncode == 0
