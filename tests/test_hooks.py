"""Snapshot hooks with real commands: parsing, ordering, failure policies, timeouts that
kill the whole process group, the environment, bounded output (``cerssd.hooks``)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cerssd.config import parse_config
from cerssd.hooks import (
    MAX_VOLUMES_ENV,
    OUTPUT_LIMIT,
    Hooks,
    PreFailure,
    SnapshotSkipped,
    around_snapshot,
    parse_hooks,
)
from cerssd.parsing import ConfigError

from .conftest import wait_until

MYSQL_LOCK = str(Path(__file__).resolve().parent.parent / "etc" / "hooks" / "mysql-lock")


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def gone(pid: int) -> bool:
    """The process no longer runs (exited, or a zombie waiting for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


class Taker:
    """A take() that records when it ran and what the hooks had left behind by then."""

    def __init__(self, marker: Path | None = None, fail: bool = False) -> None:
        self.calls = 0
        self.marker = marker
        self.fail = fail
        self.saw: str | None = None

    async def __call__(self) -> str:
        self.calls += 1
        if self.marker is not None:
            self.saw = self.marker.read_text() if self.marker.exists() else None
        if self.fail:
            raise RuntimeError("zfs snapshot failed")
        return "tank/db@snap"


# -- parsing ---------------------------------------------------------------------------

def test_parse_full_table() -> None:
    h = parse_hooks({"pre": ["/bin/true", "a"], "post": ["true"], "timeout": "5s",
                     "on_pre_failure": "continue"}, "relationships.db.hooks")
    assert h == Hooks(pre=("/bin/true", "a"), post=("true",), timeout=5.0,
                      on_pre_failure=PreFailure.CONTINUE)
    assert parse_hooks(None, "k") is None
    assert parse_hooks({"post": ["/bin/true"]}, "k") == Hooks(post=("/bin/true",))


@pytest.mark.parametrize(("table", "key", "words"), [
    ({"pre": "fsfreeze --freeze /srv"}, "k.hooks.pre", '["/bin/sh", "-c", '),
    ({"pre": ["/nonexistent/fsfreeze", "-f", "/"]}, "k.hooks.pre", "does not exist"),
    ({"pre": ["no-such-command-cerssd"]}, "k.hooks.pre", "not found on the daemon's PATH"),
    ({"pre": ["./freeze.sh"]}, "k.hooks.pre", "absolute path"),
    ({"pre": []}, "k.hooks.pre", "non-empty list"),
    ({"pre": ["/bin/true", 3]}, "k.hooks.pre", "non-empty list"),
    ({"pre": ["/bin/true"], "timeout": "2h"}, "k.hooks.timeout", "at most 3600s"),
    ({"pre": ["/bin/true"], "timeout": 0}, "k.hooks.timeout", "more than 0"),
    ({"pre": ["/bin/true"], "timeout": "soon"}, "k.hooks.timeout", "duration"),
    ({"pre": ["/bin/true"], "on_pre_failure": "ignore"}, "k.hooks.on_pre_failure", "skip"),
    ({"pre": ["/bin/true"], "pre_timeout": 3}, "k.hooks.pre_timeout", "unknown key"),
    ({"timeout": 3}, "k.hooks", "neither pre nor post"),
    (["/bin/true"], "k.hooks", "must be a table"),
])
def test_bad_tables_name_the_key(table: Any, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_hooks(table, "k.hooks")
    assert info.value.key == key and words in info.value.problem, info.value


def test_a_string_command_suggests_a_shell_of_its_own() -> None:
    with pytest.raises(ConfigError) as info:
        parse_hooks({"pre": "sync; sleep 1"}, "k")
    assert "['/bin/sh', '-c', 'sync; sleep 1']" in info.value.problem.replace('"', "'")


# -- running ---------------------------------------------------------------------------

async def test_pre_then_take_then_post_in_order(tmp_path: Path) -> None:
    log = tmp_path / "order"
    pre = script(tmp_path, "pre", f'echo pre >> {log}\n')
    post = script(tmp_path, "post", f'echo post >> {log}\n')
    take = Taker(marker=log)
    result, runs = await around_snapshot(Hooks(pre=(pre,), post=(post,)),
                                         volumes=["tank/db"], label="L", take=take)
    assert result == "tank/db@snap" and take.saw == "pre\n"
    assert log.read_text() == "pre\npost\n"
    assert [(r.stage, r.exit_status, r.ok) for r in runs] == [("pre", 0, True),
                                                                ("post", 0, True)]
    assert runs[0].to_json()["argv"] == [pre]


async def test_no_hooks_just_takes() -> None:
    take = Taker()
    assert await around_snapshot(None, volumes=["a/b"], label="L", take=take) == \
        ("tank/db@snap", ())


async def test_failing_pre_skips_and_still_runs_post(tmp_path: Path) -> None:
    post_ran = tmp_path / "post-ran"
    hooks = parse_hooks({"pre": ["/bin/sh", "-c", "echo cannot freeze >&2; exit 3"],
                         "post": ["/usr/bin/touch", str(post_ran)]}, "k")
    take = Taker()
    with pytest.raises(SnapshotSkipped) as info:
        await around_snapshot(hooks, volumes=["a/b"], label="L", take=take)
    assert take.calls == 0 and post_ran.exists()
    pre, post = info.value.runs
    assert (pre.stage, pre.exit_status, pre.output) == ("pre", 3, "cannot freeze\n")
    assert post.stage == "post" and post.ok
    assert "pre hook /bin/sh exited 3: cannot freeze" in str(info.value)


async def test_failing_pre_with_continue_takes_the_snapshot() -> None:
    hooks = Hooks(pre=("/bin/false",), post=("/bin/true",),
                  on_pre_failure=PreFailure.CONTINUE)
    take = Taker()
    result, runs = await around_snapshot(hooks, volumes=["a/b"], label="L", take=take)
    assert take.calls == 1 and result == "tank/db@snap"
    assert [(r.stage, r.exit_status) for r in runs] == [("pre", 1), ("post", 0)]


async def test_failing_post_is_recorded_and_the_snapshot_stands() -> None:
    result, runs = await around_snapshot(Hooks(pre=("/bin/true",), post=("/bin/false",)),
                                         volumes=["a/b"], label="L", take=Taker())
    assert result == "tank/db@snap" and runs[1].exit_status == 1 and not runs[1].ok


async def test_post_runs_when_take_raises(tmp_path: Path) -> None:
    post_ran = tmp_path / "post-ran"
    hooks = Hooks(pre=("/bin/true",), post=("/usr/bin/touch", str(post_ran)))
    with pytest.raises(RuntimeError, match="zfs snapshot failed"):
        await around_snapshot(hooks, volumes=["a/b"], label="L", take=Taker(fail=True))
    assert post_ran.exists()


async def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    """The hook sleeps past its timeout and has a grandchild that ignores SIGTERM: both
    go (SIGTERM, then SIGKILL to the group), and the snapshot is skipped."""
    pids = tmp_path / "pids"
    pre = script(tmp_path, "slow", f"""
(trap '' TERM; echo $(exec sh -c 'echo $PPID') >> {pids}; exec sleep 300) &
echo $$ >> {pids}
echo started
sleep 300
""")
    post_ran = tmp_path / "post-ran"
    hooks = Hooks(pre=(pre,), post=("/usr/bin/touch", str(post_ran)), timeout=1.0)
    started = time.monotonic()
    with pytest.raises(SnapshotSkipped) as info:
        await around_snapshot(hooks, volumes=["a/b"], label="L", take=Taker())
    took = time.monotonic() - started
    pre_run = info.value.runs[0]
    assert pre_run.timed_out and pre_run.exit_status is None and "started" in pre_run.output
    assert "timed out" in str(info.value)
    assert 1.0 <= took < 10, took
    assert post_ran.exists()
    started_pids = [int(x) for x in pids.read_text().split()]
    assert len(started_pids) == 2
    for pid in started_pids:
        wait_until(lambda p=pid: gone(p), 10, what=f"process {pid} of the hook to die")


async def test_a_child_left_by_a_finished_hook_is_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pre = script(tmp_path, "leaves", f"sleep 300 &\necho $! > {pids}\nexit 0\n")
    started = time.monotonic()
    _, runs = await around_snapshot(Hooks(pre=(pre,)), volumes=["a/b"], label="L",
                                    take=Taker())
    assert runs[0].ok and time.monotonic() - started < 5
    pid = int(pids.read_text())
    wait_until(lambda: gone(pid), 10, what="the hook's background child to die")


async def test_a_detached_helper_survives_until_post(tmp_path: Path) -> None:
    """The documented lock-holder pattern: ``setsid`` and its output elsewhere; the
    helper holds until ``post`` tells it to go (docs/hooks.md)."""
    pidfile, release = tmp_path / "holder.pid", tmp_path / "release"
    holder = script(tmp_path, "holder", f"echo $$ > {pidfile}\n"
                    f"while [ ! -e {release} ]; do sleep 0.05; done\n")
    pre = script(tmp_path, "pre", f"/usr/bin/setsid {holder} </dev/null >/dev/null 2>&1 &\n"
                 f"while [ ! -s {pidfile} ]; do sleep 0.05; done\n")
    post = script(tmp_path, "post", f"touch {release}\n")
    seen: dict[str, bool] = {}

    async def take() -> None:
        pid = int(pidfile.read_text())
        seen["alive"] = not gone(pid)

    await around_snapshot(Hooks(pre=(pre,), post=(post,)), volumes=["a/b"], label="L",
                          take=take)
    assert seen["alive"]
    pid = int(pidfile.read_text())
    try:
        wait_until(lambda: gone(pid), 10, what="the holder to end after post")
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


async def test_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA")
    monkeypatch.setenv("DB_PASSWORD", "hunter2")
    monkeypatch.setenv("CERSSD_STAGE", "forged")
    monkeypatch.setenv("CERSSD_TEST_KEEP", "kept?")
    monkeypatch.setenv("LANG_FOR_HOOK", "C.UTF-8")
    hooks = Hooks(pre=("/usr/bin/env",), post=("/usr/bin/env",))
    _, runs = await around_snapshot(hooks, volumes=["tank/db", "tank/db/wal"],
                                    label="cerssd-db-1", take=Taker(), server="db1")
    for run in runs:
        env = dict(line.split("=", 1) for line in run.output.splitlines())
        assert env["CERSSD_STAGE"] == run.stage
        assert env["CERSSD_VOLUMES"] == "tank/db tank/db/wal"
        assert env["CERSSD_VOLUME"] == "tank/db" and env["CERSSD_VOLUME_COUNT"] == "2"
        assert env["CERSSD_SNAPSHOT_LABEL"] == "cerssd-db-1" and env["CERSSD_SERVER"] == "db1"
        assert env["LANG_FOR_HOOK"] == "C.UTF-8" and "PATH" in env
        assert not {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "DB_PASSWORD",
                    "CERSSD_TEST_KEEP"} & env.keys()
        assert "very-secret" not in run.output and "hunter2" not in run.output


async def test_a_long_volume_list_goes_to_a_file(tmp_path: Path) -> None:
    volumes = [f"tank/tree/member-{i:05d}-{'x' * 40}" for i in range(2000)]
    assert sum(len(v) + 1 for v in volumes) > MAX_VOLUMES_ENV
    copy = tmp_path / "copy"
    pre = script(tmp_path, "pre", f'cp "$CERSSD_VOLUMES_FILE" {copy}\n'
                 'echo "count=$CERSSD_VOLUME_COUNT vols=${CERSSD_VOLUMES-unset}"\n')
    _, runs = await around_snapshot(Hooks(pre=(pre,)), volumes=volumes, label="L",
                                    take=Taker())
    assert runs[0].ok, runs[0]
    assert runs[0].output == "count=2000 vols=unset\n"
    assert copy.read_text().splitlines() == volumes


async def test_output_is_bounded_to_its_tail() -> None:
    hooks = Hooks(pre=("/bin/sh", "-c", "seq 1 100000; echo last line >&2"))
    _, runs = await around_snapshot(hooks, volumes=["a/b"], label="L", take=Taker())
    out = runs[0].output
    assert out.endswith("100000\nlast line\n")
    assert out.startswith("[") and "bytes before this dropped]" in out
    assert len(out.split("\n", 1)[1].encode()) == OUTPUT_LIMIT


async def test_a_command_gone_since_parsing_fails_the_pre(tmp_path: Path) -> None:
    pre = Path(script(tmp_path, "pre", "exit 0\n"))
    hooks = parse_hooks({"pre": [str(pre)]}, "k")
    pre.unlink()
    with pytest.raises(SnapshotSkipped) as info:
        await around_snapshot(hooks, volumes=["a/b"], label="L", take=Taker())
    run = info.value.runs[0]
    assert run.exit_status is None and not run.timed_out
    assert "could not start" in run.output and "could not start" in str(info.value)


async def test_cancelled_during_pre_kills_it_and_runs_post(tmp_path: Path) -> None:
    pidfile, post_ran = tmp_path / "pid", tmp_path / "post-ran"
    pre = script(tmp_path, "pre", f"echo $$ > {pidfile}\nexec sleep 300\n")
    hooks = Hooks(pre=(pre,), post=("/usr/bin/touch", str(post_ran)), timeout=600)
    task = asyncio.create_task(around_snapshot(hooks, volumes=["a/b"], label="L",
                                               take=Taker()))
    for _ in range(1000):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.01)
    pid = int(pidfile.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gone(pid) and post_ran.exists()


def test_a_file_without_execute_permission(tmp_path: Path) -> None:
    plain = tmp_path / "freeze"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        parse_hooks({"post": [str(plain)]}, "k.hooks")
    assert info.value.key == "k.hooks.post" and "is not executable" in info.value.problem


def test_check_is_not_fooled_by_a_directory(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    d.chmod(d.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(ConfigError, match="does not exist"):
        parse_hooks({"pre": [str(d)]}, "k")


async def test_the_mysql_lock_hook_holds_one_session_across_the_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """etc/hooks/mysql-lock (docs/hooks.md) with a stand-in for the ``mysql`` client
    that logs the statements it is given: the lock is taken before the snapshot and
    released after it, by one session that outlives the pre hook."""
    statements = tmp_path / "statements"
    client = script(tmp_path, "mysql", f"""echo "session $$" >> {statements}
while IFS= read -r line; do
    echo "$line" >> {statements}
    [ "$line" != 'SELECT "locked";' ] || echo locked
done
echo quit >> {statements}
""")
    monkeypatch.setenv("LOCK_MYSQL", client)
    monkeypatch.setenv("LOCK_DIR", str(tmp_path / "lock"))
    hooks = parse_hooks({"pre": [MYSQL_LOCK, "pre"], "post": [MYSQL_LOCK, "post"],
                         "timeout": "20s"}, "k")

    async def take() -> list[str]:
        lines = statements.read_text().splitlines()
        return [*lines, "alive" if not gone(int(lines[0].split()[1])) else "gone"]

    held, runs = await around_snapshot(hooks, volumes=["tank/mysql"], label="L", take=take)
    # at the snapshot the session that took the lock still runs (it outlived pre)
    assert held[1:] == ["FLUSH TABLES WITH READ LOCK;", 'SELECT "locked";', "alive"]
    held.pop()
    session = int(held[0].split()[1])
    assert gone(session)  # post waited for it to end
    assert statements.read_text().splitlines() == [*held, "UNLOCK TABLES;", "quit"]
    assert runs[0].output.startswith("lock held by session") and runs[1].output == \
        "unlocked\n"
    assert [r.exit_status for r in runs] == [0, 0]


def test_the_examples_in_docs_hooks_md_parse() -> None:
    """Each ```toml block of docs/hooks.md is valid; commands this machine lacks (the
    MySQL client, the installed lock script) are swapped for /bin/true, and only those."""
    docs = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"
    absent = {"/usr/local/sbin/cerssd-mysql-lock", "/usr/bin/mysql"}
    servers = {"local": {}, "standby1": {"host": "192.0.2.2",
                                         "known_hosts": "/etc/cerssd/known_hosts"}}
    blocks = re.findall(r"^```toml\n(.*?)^```$", docs.read_text(), re.S | re.M)
    for body in blocks:
        data = tomllib.loads(body)
        for table in (data.get("relationships") or {"": data}).values():
            for stage in ("pre", "post"):
                argv = table["hooks"].get(stage)
                if argv and argv[0] in absent:
                    argv[0] = "/bin/true"
        if "relationships" in data:
            parse_config({"servers": servers, **data})
        else:
            assert parse_hooks(data["hooks"], "hooks") is not None
    assert len(blocks) >= 6
