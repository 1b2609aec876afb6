"""Benchmark: an age-encrypted backup against the same backup unencrypted (issue 17).

The requirement: "age-encrypted backup of 1 GiB vs the unencrypted one in the same run
(report the ratio; target ≥ 0.8×) and peak RSS still ≤ 150 MiB."

One real ``cerssd`` daemon, set up as bench/s3_backup.py sets it up (the demo's config:
the local server, two SSH standbys connected before anything is timed, metrics served,
SeaweedFS on this machine), with four stores in one bucket, each under its own prefix:

* ``plain``: ``compression = "none"``; ``age``: the same plus ``age_recipients`` (a key
  made for the run): the random data's 1 GiB stream, where encryption is all the extra
  work there is;
* ``zstd`` and ``zstd_age``: ``compression = "zstd"`` without and with age, on the
  text-like data (log lines, as in bench/s3_backup.py): compressed, then encrypted.

Each round backs up both pairs (``force_full``, the bucket emptied after every round);
within a pair the two alternate which goes first from round to round. MB/s is of the raw
``zfs send`` stream; a ratio is unencrypted seconds / encrypted seconds per round (the
median, with the rounds' min-max). Peak RSS is the daemon's ``VmHWM``, reset before each
backup (bench/s3_backup.py's ``RssSampler``): ``age`` is a process of its own, so it is
in the tree's sum, not the daemon's peak. After the timed rounds one encrypted backup is
restored through the daemon with the identity file and checked (the guid), so the figures
are of backups that restore.

The choice of the ``age`` binary over the ``pyrage`` binding is measured too
(``--tools``): each encrypts the same random bytes from a file in /dev/shm to /dev/null,
alternating, and reports seconds and peak RSS (GNU time's ``%M``; pyrage only if it is
installed: it is not a dependency of cerssd).

Run as root from the repository, with the venv's python::

    .venv/bin/python bench/age_backup.py               # 1 GiB, 1 warm-up + 3 runs
    .venv/bin/python bench/age_backup.py --quick       # 64 MiB, 1 run
    .venv/bin/python bench/age_backup.py --tools       # age binary vs pyrage only
"""  # noqa: RUF002  (the requirement is quoted as written)

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import s3_backup as s3b
from common import (
    MIB,
    BenchError,
    bench_main,
    check_received,
    command_line,
    destroy_volume,
    load_average,
    machine,
    median,
    rate,
    run,
    say,
    utc_now,
)

PAIRS = (("plain", "age", "rand"), ("zstd", "zstd_age", "text"))
TARGET_RATIO = 0.8
TARGET_RSS_MIB = 150.0


def store_sections(setup_dir: Path, weed: Any, bucket: str, args: argparse.Namespace) -> str:
    """The four stores; the age key is made here, beside the daemon's config."""
    key_file = setup_dir / "s3.key"
    key_file.write_text(f'access_key_id = "{weed.s3.access_key}"\n'
                        f'secret_access_key = "{weed.s3.secret_key}"\n')
    key_file.chmod(0o600)
    identity = setup_dir / "backup.agekey"
    run(["age-keygen", "-o", str(identity)])
    recipient = run(["age-keygen", "-y", str(identity)]).stdout.strip()
    args.identity = identity
    age = f'age_recipients = ["{recipient}"]\n'
    stores = {"plain": 'compression = "none"\n', "age": 'compression = "none"\n' + age,
              "zstd": 'compression = "zstd"\n', "zstd_age": 'compression = "zstd"\n' + age}
    return "".join(
        f'\n[stores.{name}]\nendpoint = "{weed.s3.endpoint}"\nbucket = "{bucket}"\n'
        f'prefix = "cerssd-{name}/"\ncredentials_file = "{key_file}"\n{options}'
        for name, options in stores.items())


def backup(setup: s3b.Setup, results: s3b.Results, store: str, snapshot: str,
           stream_bytes: int) -> None:
    def action() -> s3b.Measure:
        measure, record = s3b.cerssd_backup(setup, snapshot, store, stream_bytes)
        want = "age" if store.endswith("age") else "none"
        if record["params"].get("encryption") != want:
            raise BenchError(f"store {store}: the backup's encryption is "
                             f"{record['params'].get('encryption')!r}, not {want!r}")
        return measure

    s3b.timed(setup, results, store, False, action)


def one_round(setup: s3b.Setup, results: s3b.Results, index: int) -> None:
    data = setup.data
    assert data is not None
    for plain, encrypted, which in PAIRS:
        snapshot = data.rand if which == "rand" else data.text
        size = data.rand_bytes if which == "rand" else data.text_bytes
        order = (plain, encrypted) if index % 2 == 0 else (encrypted, plain)
        for store in order:
            backup(setup, results, store, snapshot, size)
    s3b.empty_bucket(setup)


def restore_check(setup: s3b.Setup, args: argparse.Namespace) -> str:
    """Back up the random data encrypted once more and restore it with the identity."""
    data = setup.data
    assert data is not None
    s3b.cerssd_backup(setup, data.rand, "age", data.rand_bytes)
    target = f"{setup.target_pool}/age_restore"
    measure, _ = s3b.cerssd_activity(setup, "/v1/restores", {
        "snapshot": data.rand, "store": "age", "target_volume": target,
        "identity_file": str(args.identity)})
    check_received(data.rand, target)
    destroy_volume(target)
    s3b.empty_bucket(setup)
    return (f"restored with `age -d` in the pipeline: {measure.seconds:.2f} s "
            f"({rate(data.rand_bytes, measure.seconds)}), daemon peak RSS "
            f"{measure.peak_mib:.1f} MiB; guid checked")


def report_rows(results: s3b.Results, data: s3b.Data) -> list[str]:
    rows = ["| data | unencrypted | age | ratio (min-max) | daemon peak RSS, age | met |",
            "| --- | --- | --- | --- | --- | --- |"]
    for plain, encrypted, which in PAIRS:
        size = data.rand_bytes if which == "rand" else data.text_bytes
        per_round = [a.seconds / b.seconds for a, b in
                     zip(results.runs[plain], results.runs[encrypted], strict=True)]
        ratio = median(per_round)
        peak = max(results.peak(plain), results.peak(encrypted))
        met = ratio >= TARGET_RATIO and peak <= TARGET_RSS_MIB
        label = "random, none" if which == "rand" else "text, zstd"
        rows.append(
            f"| {label} ({size / 1e6:.0f} MB) | {rate(size, results.seconds(plain))} | "
            f"{rate(size, results.seconds(encrypted))} | {ratio:.2f}x "
            f"({min(per_round):.2f}-{max(per_round):.2f}) | "
            f"{results.peak(encrypted):.1f} MiB (unencrypted {results.peak(plain):.1f}) | "
            f"{'yes' if met else 'NO'} |")
    return rows


def benchmark(args: argparse.Namespace) -> str:
    started, t0, load_before = utc_now(), time.monotonic(), load_average()
    s3b.store_sections = store_sections  # the daemon gets this benchmark's four stores
    results, warm = s3b.Results(), s3b.Results()
    with s3b.environment(args) as setup:
        setup.data = s3b.make_data(setup, args.size_mib)
        rounds = [warm] * args.warmup + [results] * args.runs
        for index, into in enumerate(rounds):
            say(f"round {index + 1}/{len(rounds)}{' (warm-up)' if into is warm else ''}; "
                f"load {load_average()}")
            one_round(setup, into, index)
        restored = restore_check(setup, args)
        setup.daemon.check_alive()
        m = machine()
        lines = [
            f"### Age-encrypted backup ({utc_now():%Y-%m-%d}, `{command_line()}`)", "",
            f"Machine: {m['cpu']}, {m['nproc']} cores; kernel {m['kernel']}, {m['zfs_fuse']}. "
            f"Started {started:%H:%M} UTC, {time.monotonic() - t0:.0f} s; load average "
            f"before {load_before}, after {load_average()}. {args.runs} timed rounds after "
            f"{args.warmup} warm-up, order alternating. Target: ratio ≥ {TARGET_RATIO}x, "
            f"daemon peak RSS ≤ {TARGET_RSS_MIB:.0f} MiB.", "",
            *report_rows(results, setup.data), "",
            "Seconds per round: " + "; ".join(
                f"{store} " + ", ".join(f"{x.seconds:.2f}" for x in results.runs[store])
                for pair in PAIRS for store in pair[:2]) + ".",
            f"The encrypted store's {restored}."]
        return "\n".join(lines)


# -- age binary or pyrage ----------------------------------------------------------------

def tools(args: argparse.Namespace) -> str:
    """Encrypt the same random bytes with each, alternating; seconds and peak RSS."""
    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="cerssd-age-", dir="/dev/shm"))
    try:
        data, identity = work / "data", work / "key"
        with open(data, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        run(["age-keygen", "-o", str(identity)])
        recipient = run(["age-keygen", "-y", str(identity)]).stdout.strip()
        methods = {"age binary": ["age", "-e", "-r", recipient, "-o", "/dev/null", str(data)],
                   "pyrage encrypt_io": [sys.executable, "-c", PYRAGE, recipient, str(data)]}
        if subprocess.run([sys.executable, "-c", "import pyrage"],
                          capture_output=True).returncode != 0:
            del methods["pyrage encrypt_io"]
        times: dict[str, list[float]] = {k: [] for k in methods}
        peaks: dict[str, float] = dict.fromkeys(methods, 0.0)
        names = list(methods)
        for i in range(args.runs):
            for name in names if i % 2 == 0 else names[::-1]:
                t = time.monotonic()
                done = run(["/usr/bin/time", "-f", "%M", *methods[name]])
                times[name].append(time.monotonic() - t)
                peaks[name] = max(peaks[name], int(done.stderr.split()[-1]) / 1024)
        rows = [f"### age: binary or binding ({utc_now():%Y-%m-%d}, `{command_line()}`, "
                f"load {load_average()})", "", "| tool | seconds (median) | MB/s | peak RSS |",
                "| --- | --- | --- | --- |"]
        for name in methods:
            rows.append(f"| {name} | {median(times[name]):.2f} | "
                        f"{rate(size, median(times[name]))} | {peaks[name]:.1f} MiB |")
        rows.append("\n(peak RSS: the process's maximum resident set, GNU time's %M; "
                    "pyrage's includes the Python interpreter it runs in.)")
        return "\n".join(rows)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


PYRAGE = r"""
import sys, pyrage
r = pyrage.x25519.Recipient.from_str(sys.argv[1])
with open(sys.argv[2], "rb") as f, open("/dev/null", "wb") as o:
    pyrage.encrypt_io(f, o, [r])
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="age_backup.py", description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1GiB", help="stream size (default 1GiB)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="64 MiB, 1 run, no warm-up")
    p.add_argument("--tools", action="store_true", help="only: age binary vs pyrage")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--daemon-log", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.runs, args.warmup = "64MiB", 1, 0
    args.size_mib = s3b.parse_size(args.size)
    # what bench/s3_backup.py's environment reads
    args.daemon_env, args.profile, args.perf = {}, None, None
    args.part_size = args.concurrency = args.zstd_level = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return bench_main("age_backup.py", lambda: tools(args) if args.tools
                      else benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
