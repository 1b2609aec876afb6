"""Keep the cyclic garbage collector from pausing the event loop for tens of milliseconds.

Why (issue 13, item 1, measured with ``bench/history.py`` and a gc callback in the
daemon): CPython's full (generation 2) collection walks every container object the
process holds, and the daemon holds a great many that never die: its modules,
botocore's service models, asyncssh, aiohttp, pydantic's schemas, the config. One full
collection took 90-280 ms on this machine while 50 relationships cycled, once every
30-40 s, all of it on the event loop: every API request that arrived meanwhile waited
for it, which was the p99 of ``GET /v1/activities`` (88-95 ms on a quiet machine
against a p50 of 4 ms).

``settle`` collects once and then moves everything that survived into the permanent
generation (``gc.freeze``), which later collections do not walk: they see only what
was made since. It runs when the daemon is ready and after a reload (what a reload
built is as long-lived as what start-up built; what it replaced is unfrozen first, so
cycles among the old objects are still collected then). Objects in the permanent
generation are still freed by reference counting as usual; only a reference cycle
among them waits for the next ``settle``: a link's old SSH connection after a
reconnect, say. So the daemon settles again every ``RESETTLE_SECONDS`` as well: one
full collection an hour instead of one every half minute, and frozen garbage lives an
hour at most.
"""

from __future__ import annotations

import gc
import time

#: Seconds between two settles of a running daemon (see above).
RESETTLE_SECONDS = 3600.0


def settle() -> float:
    """Collect everything, then freeze what is left; returns the seconds it took."""
    started = time.monotonic()
    gc.unfreeze()  # what a reload replaced may now be garbage in a cycle
    gc.collect()
    gc.freeze()
    return time.monotonic() - started
