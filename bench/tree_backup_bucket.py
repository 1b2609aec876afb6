#!/usr/bin/env python3
"""Benchmark: what a tree's backup asks of the bucket per cycle, against listing it.

A tree's backup keeps one chain per member, two keys per backup (stream and manifest),
so the bucket's keys grow with members x history. ``relationships/tree_backup.py``
lists the bucket once per daemon start and store (``catalog.newest_in_tree``: one
listing under the root's prefix) and afterwards asks one ``HEAD`` per member and cycle
(the remembered base's manifest). This measures, on SeaweedFS, in the same run, rounds
interleaved (the order rotates each round):

* **one listing**: ``newest_in_tree`` over the whole tree (the baseline);
* **per member listings**: ``backed_up_guids`` of each member (what planning every member
  from its own listing each cycle would cost, as a single volume's backup plans);
* **steady HEADs**: one ``head_object`` of each member's newest manifest, ``--parallel``
  at once (a steady cycle's bucket requests).

The bucket is filled with ``--members`` x ``--backups`` empty backups (a stream key and
a manifest key each; listing reads keys only). Each method's answer is checked. Run as
root from the repository::

    .venv/bin/python bench/tree_backup_bucket.py --members 200 --backups 50 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import REPO, announced_stack, bench_main, load_average, machine, say, utc_now

sys.path.insert(0, str(REPO))
from cerssd.objectstore import catalog
from cerssd.objectstore.client import ObjectStore
from cerssd.objectstore.config import StoreConfig
from cerssd.objectstore.layout import manifest_key
from tests.seaweed import WeedServer

ROOT = "tank/root"


def guid(member: int, backup: int) -> str:
    return str(10 ** 17 + member * 10 ** 6 + backup)


def volume(member: int) -> str:
    return f"{ROOT}/m{member:04d}"


def fill(weed: WeedServer, bucket: str, members: int, backups: int) -> int:
    client = weed.client()
    keys = []
    for m in range(members):
        for b in range(backups):
            mkey = manifest_key("cerssd/", volume(m), f"cerssd-t-{b:06d}", guid(m, b))
            keys += [mkey.rpartition("/")[0] + "/stream-000000", mkey]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b""), keys))
    return len(keys)


async def measure(store: ObjectStore, members: int, backups: int, rounds: int,
                  parallel: int) -> dict[str, list[float]]:
    positions = {volume(m): {guid(m, b): b for b in range(backups)} for m in range(members)}
    newest = {volume(m): guid(m, backups - 1) for m in range(members)}

    async def one_listing() -> None:
        assert await catalog.newest_in_tree(store, ROOT, positions) == newest

    async def per_member() -> None:
        for m in range(members):
            found = await catalog.backed_up_guids(store, volume(m))
            assert len(found) == backups

    async def heads() -> None:
        limit = asyncio.Semaphore(parallel)

        async def head(m: int) -> None:
            async with limit:
                await store.head(manifest_key("cerssd/", volume(m),
                                              f"cerssd-t-{backups - 1:06d}",
                                              guid(m, backups - 1)))
        await asyncio.gather(*(head(m) for m in range(members)))

    methods: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("one listing", one_listing), ("per member listings", per_member),
        ("steady HEADs", heads)]
    times: dict[str, list[float]] = {name: [] for name, _ in methods}
    for r in range(rounds):
        for name, method in methods[r % len(methods):] + methods[:r % len(methods)]:
            began = time.monotonic()
            await method()
            times[name].append(time.monotonic() - began)
            say(f"round {r + 1}: {name} {times[name][-1]:.2f} s")
    return times


def body(args: argparse.Namespace) -> str:
    with announced_stack() as stack:
        root = Path(tempfile.mkdtemp(prefix="cerssd-bench-weed-"))
        weed = WeedServer(root)
        stack.callback(weed.stop)
        s3 = weed.start()
        bucket = weed.create_bucket()
        began = time.monotonic()
        keys = fill(weed, bucket, args.members, args.backups)
        say(f"{keys} keys put in {time.monotonic() - began:.1f} s")
        key_file = root / "s3.key"
        key_file.write_text(f'access_key_id = "{s3.access_key}"\n'
                            f'secret_access_key = "{s3.secret_key}"\n')
        key_file.chmod(0o600)
        store = ObjectStore(StoreConfig(name="s3", bucket=bucket, endpoint=s3.endpoint,
                                        region=s3.region, credentials_file=key_file))
        load = load_average()

        async def run() -> dict[str, list[float]]:
            try:
                return await measure(store, args.members, args.backups, args.rounds,
                                     args.parallel)
            finally:
                with contextlib.suppress(Exception):
                    await store.close()
        times = asyncio.run(run())
    base = times["one listing"]
    lines = [f"# Tree backup: bucket requests per cycle ({utc_now():%Y-%m-%d %H:%M} UTC)",
             "machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()),
             f"load average before: {load}, after: {load_average()}",
             f"{args.members} members x {args.backups} backups = {keys} keys; "
             f"{args.rounds} rounds, interleaved", "",
             "| method | seconds (min-max) | vs one listing (min-max) |", "| --- | --- | --- |"]
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        lines.append(f"| {name} | {min(values):.2f}-{max(values):.2f} | "
                     f"{sum(ratios) / len(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--backups", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=4, help="HEADs at once")
    args = parser.parse_args()
    return bench_main("tree_backup_bucket", lambda: body(args))


if __name__ == "__main__":
    sys.exit(main())
