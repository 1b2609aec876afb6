"""How the daemon learns that a child process (zfs, ssh, a stream stage) has exited.

Python 3.11's asyncio watches each child with a thread of its own
(``ThreadedChildWatcher``): every ``create_subprocess_exec`` starts a thread, and the event
loop waits for that thread to start. A tree cycle runs several commands per member (a
1,000-member tree: thousands per cycle), and profiling the daemon during such a cycle
(bench/RESULTS.md, tree scale) showed about a sixth of the event loop's time spent
starting those threads, time during which no API request is answered. A pidfd (Linux
5.3+) instead makes a child's exit one more readable file descriptor on the loop: no
thread, no wait. Python 3.12 chooses it by itself; on 3.11 the daemon installs it.
"""

from __future__ import annotations

import asyncio
import os
import sys


def pidfd_supported() -> bool:
    """Whether this kernel and Python can watch a child through a pidfd."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # an old kernel, or seccomp forbids it
        return False
    return True


def watch_children_by_pidfd(loop: asyncio.AbstractEventLoop) -> asyncio.AbstractChildWatcher | None:
    """On Python < 3.12, watch ``loop``'s children by pidfd instead of a thread each.

    Returns the watcher installed (close it when the loop ends), or None where Python
    already does this (3.12+) or the kernel cannot (then the threaded default stays).
    """
    if sys.version_info >= (3, 12) or not pidfd_supported():
        return None
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(loop)
    asyncio.set_child_watcher(watcher)
    return watcher
