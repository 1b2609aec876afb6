"""Snapshot policies on real zfs-fuse: snapshots made and pruned on schedule, trees
snapshotted atomically, and a relationship replicating a policy's snapshots over SSH.

A real daemon and real pools; what the policy did is read back with ``zfs`` itself.
Waits are polls on what the daemon reports or ZFS shows, never sleeps.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from cerssd.cli.client import CliError

from .conftest import (
    SLOW,
    DaemonProcess,
    SshServer,
    post_json,
    raw_request,
    wait_until,
    write_file,
    zfs,
)
from .test_cli import ctl
from .test_relationships import metric


def policy_config(name: str, volume: str, **keys: str) -> str:
    rows = "".join(f"{k} = {v}\n" for k, v in keys.items())
    return f'[snapshots.{name}]\nvolume = "{volume}"\n{rows}'


def show(d: DaemonProcess, name: str) -> dict[str, Any]:
    result: dict[str, Any] = d.api("GET", f"/v1/policies/{name}")
    return result


def labels(volume: str) -> list[str]:
    out = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-d", "1", volume).stdout
    return [line.partition("@")[2] for line in out.split()]


def ran(d: DaemonProcess, name: str, runs: int) -> dict[str, Any] | None:
    """The policy once it has run ``runs`` times (None before, or while unknown: a
    reload has not defined it yet)."""
    try:
        p = show(d, name)
    except CliError:
        return None
    return p if p["runs"] >= runs else None


def test_a_policy_snapshots_and_prunes_its_own_on_schedule(
        start_daemon: Any, make_pool: Any) -> None:
    pool = make_pool()
    vol = f"{pool}/data"
    zfs("create", vol)
    # the operator's snapshot and another tool's (a prefix that is not the policy's)
    zfs("snapshot", f"{vol}@manual")
    zfs("snapshot", f"{vol}@cerssd-other-1")
    d = start_daemon(extra=policy_config("fast", vol, interval='"1s"',
                                         retention='["3s:all"]'))
    first = wait_until(lambda: ran(d, "fast", 1), SLOW, what="the first run")
    label = first["newest_snapshot"]
    assert label is not None and label.startswith("cerssd-fast-")
    assert label in labels(vol)

    def pruned() -> dict[str, Any] | None:
        p = show(d, "fast")
        return p if p["runs"] >= 5 and label not in labels(vol) else None
    p = wait_until(pruned, SLOW, interval=0.2, what="runs on schedule pruning the first")
    now = time.time()
    left = labels(vol)
    assert "manual" in left and "cerssd-other-1" in left, left
    ours = [x for x in left if x.startswith("cerssd-fast-")]
    assert ours, left
    for x in ours:  # the grid keeps 3 s (and the newest): nothing much older is left
        created = int(zfs("get", "-Hp", "-o", "value", "creation", f"{vol}@{x}").stdout)
        assert now - created < 3 + 2 + 30, (x, now - created)  # grid + a run's slack
    assert p["failures"] == 0 and p["state"] == "running"
    assert p["last_result"]["outcome"] == "snapshot"
    assert p["schedule"] == "every 1s" and p["snapshots_kept"] >= 1
    acts = d.api("GET", "/v1/activities?kind=snapshot-policy")["items"]
    assert [a["state"] for a in acts] == ["running"] and acts[0]["params"]["policy"] == "fast"
    text = raw_request(d.socket_path, "GET", "/metrics").body
    runs = metric(text, "cerssd_policy_runs_total", policy="fast")
    assert runs is not None and runs >= 5
    assert metric(text, "cerssd_policy_failures_total", policy="fast") == 0
    assert (metric(text, "cerssd_policy_last_run_timestamp_seconds", policy="fast") or 0) \
        > now - 60
    assert (metric(text, "cerssd_policy_snapshots_kept", policy="fast") or 0) >= 1

    # cerssctl and the API's answers to bad input
    out = ctl(d, "policy", "list")
    assert out.returncode == 0 and "fast" in out.stdout and "every 1s" in out.stdout, out
    out = ctl(d, "policy", "show", "fast")
    assert out.returncode == 0 and "cerssd-fast-" in out.stdout, out
    out = ctl(d, "policy", "run", "nope")
    assert out.returncode == 1 and "no snapshot policy nope" in out.stderr, out
    for method, path, status in (("GET", "/v1/policies/nope", 404),
                                 ("POST", "/v1/policies/nope/run", 404),
                                 ("GET", "/v1/policies/bad%20name", 400),
                                 ("POST", "/v1/policies/-x/run", 400)):
        r = raw_request(d.socket_path, method, path)
        assert r.status == status, (path, r.body)
        assert r.content_type.startswith("application/problem+json"), r.content_type
    r = raw_request(d.socket_path, "POST", "/v1/policies/fast/run")
    assert r.status == 202 and r.body["name"] == "fast"
    # suspended: run-now is refused (409); cancelled: stopped, and run-now starts it again
    activity = show(d, "fast")["activity"]
    assert raw_request(d.socket_path, "POST", f"/v1/activities/{activity}/suspend").status \
        == 200
    r = raw_request(d.socket_path, "POST", "/v1/policies/fast/run")
    assert r.status == 409 and "suspended" in r.body["detail"], r.body
    assert raw_request(d.socket_path, "POST", f"/v1/activities/{activity}/cancel").status \
        == 202
    wait_until(lambda: show(d, "fast")["state"] == "stopped", SLOW, what="stopped")
    before = show(d, "fast")["runs"]
    assert raw_request(d.socket_path, "POST", "/v1/policies/fast/run").status == 202
    again = wait_until(lambda: ran(d, "fast", before + 1), SLOW, what="a run after restart")
    assert again["activity"] != activity and again["state"] == "running"

    # a reload removes it (its snapshots stay) and adds another
    kept = labels(vol)
    d.config_path.write_text(d.config_path.read_text().replace(
        "[snapshots.fast]", "[snapshots.slow]").replace('"1s"', '"1h"'))
    d.proc.send_signal(signal.SIGHUP)
    slow = wait_until(lambda: ran(d, "slow", 1), SLOW, what="the reloaded policy's run")
    assert slow["prefix"] == "cerssd-slow-"
    assert [p["name"] for p in d.api("GET", "/v1/policies")["items"]] == ["slow"]
    assert set(x for x in kept if x.startswith("cerssd-fast-")) <= set(labels(vol))


def test_keep_min_holds_a_policys_snapshots_its_grid_would_drop(
        start_daemon: Any, make_pool: Any) -> None:
    """A 1 s grid would leave only the newest; keep_min = 3 keeps three, runs after runs."""
    pool = make_pool()
    vol = f"{pool}/data"
    zfs("create", vol)
    d = start_daemon(extra=policy_config("few", vol, interval='"1s"', retention='["1s:all"]',
                                         keep_min="3"))
    wait_until(lambda: ran(d, "few", 6), SLOW, interval=0.2, what="six runs")
    ours = [x for x in labels(vol) if x.startswith("cerssd-few-")]
    assert len(ours) == 3, ours
    assert show(d, "few")["keep_min"] == 3


def test_a_tree_policy_snapshots_every_member_at_once_and_prunes_by_label(
        start_daemon: Any, make_pool: Any) -> None:
    pool = make_pool()
    root = f"{pool}/tree"
    for name in ("", "/a", "/a/x", "/b", "/tmp"):
        zfs("create", root + name)
    d = start_daemon(extra=policy_config("tree", root, interval='"1h"', recursive="true",
                                         exclude='["tmp"]', retention='["2s:all"]'))
    first = wait_until(lambda: ran(d, "tree", 1), SLOW, what="the first run")
    one = first["newest_snapshot"]
    members = [root, f"{root}/a", f"{root}/a/x", f"{root}/b"]
    txgs = {m: zfs("get", "-Hp", "-o", "value", "createtxg", f"{m}@{one}").stdout.strip()
            for m in members}
    assert len(set(txgs.values())) == 1, txgs  # one instant for the whole tree
    assert one not in labels(f"{root}/tmp")
    assert first["last_result"]["volumes"] == 4
    # older than the grid's 2 s, the first label goes from every member at the next run
    wait_until(lambda: time.time() - first["last_run_at"] > 3, 10, interval=0.2,
               what="the first snapshot to age past the grid")
    assert raw_request(d.socket_path, "POST", "/v1/policies/tree/run").status == 202
    second = wait_until(lambda: ran(d, "tree", 2), SLOW, what="the second run")
    two = second["newest_snapshot"]
    assert two != one
    for m in members:
        assert labels(m) == [two], (m, labels(m))
    assert second["last_result"]["destroyed"] == 1 and second["snapshots_kept"] == 1


def test_a_relationship_replicates_a_policys_snapshots_over_ssh(
        start_daemon: Any, make_pool: Any, sshd: SshServer) -> None:
    """The policy's grid (1 s) would drop every snapshot but the newest; the slave's
    base is kept all the same until the slave has the next one."""
    src, dst = make_pool(), make_pool()
    vol = f"{src}/data"
    zfs("create", vol)
    write_file(f"/{vol}/f", 1)
    config = ('[servers.local]\nkind = "local"\n' + sshd.config("remote")
              + policy_config("hourly", vol, interval='"1h"', retention='["1s:all"]')
              + f'[relationships.web]\nvolume = "{vol}"\nsnapshots = "hourly"\n'
              'slave_retention = ["1h:all"]\n'
              f'slaves = [{{server = "remote", target_volume = "{dst}/copy"}}]\n')
    d = start_daemon(extra=config)

    def slave_at(label: str | None) -> dict[str, Any] | None:
        r = d.api("GET", "/v1/relationships/web")
        s = r["slaves"][0]
        last = s["last_snapshot"]
        if s["state"] == "in-sync" and last and (label is None or last.endswith("@" + label)):
            return r
        return None
    r = wait_until(lambda: slave_at(None), SLOW, interval=0.2, what="the slave in sync")
    p1 = show(d, "hourly")
    one = p1["newest_snapshot"]
    assert r["snapshots"] == "hourly" and r["schedule"] == "after each run of policy hourly"
    assert r["slaves"][0]["last_snapshot"] == f"{dst}/copy@{one}"
    assert p1["relationships"] == ["web"]
    # the first run could not know the slave's base yet: it pruned nothing
    assert "relationship web" in (p1["last_result"]["prune_skipped"] or ""), p1
    # the relationship made no snapshot of its own
    assert labels(vol) == [one] and labels(f"{dst}/copy") == [one]

    def run_after(runs: int, label: str) -> str:
        """A run (now) once ``label`` is older than the grid; its label once the slave
        has it: the policy's run is followed by the relationship's cycle."""
        created = int(zfs("get", "-Hp", "-o", "value", "creation", f"{vol}@{label}").stdout)
        wait_until(lambda: time.time() > created + 2.5, 10, interval=0.2,
                   what=f"{label} to age past the grid")
        write_file(f"/{vol}/g{runs}", 1)
        assert raw_request(d.socket_path, "POST", "/v1/policies/hourly/run").status == 202
        new = wait_until(lambda: ran(d, "hourly", runs), SLOW, what=f"run {runs}")
        wait_until(lambda: slave_at(new["newest_snapshot"]), SLOW, interval=0.2,
                   what=f"the slave at run {runs}'s snapshot")
        # what it spared it knew to spare (the slave's base), not found held by ZFS
        assert new["last_result"]["prune_skipped"] is None, new
        assert new["last_result"]["kept_held"] == [], new
        label_made: str = new["newest_snapshot"]
        return label_made
    two = run_after(2, one)
    # older than the grid, but the slave's base when run 2 pruned: kept
    assert labels(vol) == [one, two]
    three = run_after(3, two)
    # run 3 pruned: "one" is no slave's base any more, "two" is (the newest is kept)
    assert labels(vol) == [two, three]
    assert labels(f"{dst}/copy") == [one, two, three]  # slave_retention keeps an hour


def test_a_tree_relationship_follows_a_tree_policy(start_daemon: Any, make_pool: Any) -> None:
    src, dst = make_pool(), make_pool()
    root = f"{src}/tree"
    for name in ("", "/a", "/a/x", "/b"):
        zfs("create", root + name)
    config = ('[servers.local]\nkind = "local"\n[servers.lab1]\nkind = "local"\n'
              + policy_config("tree", root, interval='"1h"', recursive="true")
              + f'[relationships.cinder]\nvolume = "{root}"\nrecursive = true\n'
              f'snapshots = "tree"\nslaves = [{{server = "lab1", target_volume = '
              f'"{dst}/copy"}}]\n')
    d = start_daemon(extra=config)

    def in_sync_at(label: str) -> bool:
        tree = d.api("GET", "/v1/relationships/cinder")["tree"]
        return tree is not None and tree["members"] == 4 \
            and tree["slaves"]["lab1"]["in_sync"] == 4 \
            and all(label in labels(f"{dst}/copy{m}") for m in ("", "/a", "/a/x", "/b"))
    one = wait_until(lambda: ran(d, "tree", 1), SLOW, what="the first run")["newest_snapshot"]
    wait_until(lambda: in_sync_at(one), SLOW, interval=0.2, what="the copy at the first")
    assert master_labels_only(root, "cerssd-tree-")
    assert raw_request(d.socket_path, "POST", "/v1/policies/tree/run").status == 202
    two = wait_until(lambda: ran(d, "tree", 2), SLOW, what="the second run")["newest_snapshot"]
    wait_until(lambda: in_sync_at(two), SLOW, interval=0.2, what="the copy at the second")
    assert master_labels_only(root, "cerssd-tree-")


def master_labels_only(root: str, prefix: str) -> bool:
    """Every snapshot in the master's tree is the policy's (the relationship made none)."""
    out = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", root).stdout.split()
    return bool(out) and all(n.partition("@")[2].startswith(prefix) for n in out)


def test_a_reload_reschedules_a_policy_in_place(start_daemon: Any, make_pool: Any) -> None:
    pool = make_pool()
    vol = f"{pool}/data"
    zfs("create", vol)
    d = start_daemon(extra=policy_config("p", vol, interval='"1h"'))
    first = wait_until(lambda: ran(d, "p", 1), SLOW, what="the first run")
    assert first["next_run_at"] > time.time() + 600  # an hour's wait ahead
    d.config_path.write_text(d.config_path.read_text().replace('"1h"', '"1s"'))
    d.proc.send_signal(signal.SIGHUP)
    # the same activity, woken for its new schedule: runs follow without a run-now
    later = wait_until(lambda: ran(d, "p", 3), SLOW, what="runs on the new schedule")
    assert later["activity"] == first["activity"] and later["schedule"] == "every 1s"
    assert "config reloaded" in d.log()


def test_a_failing_run_is_reported_and_retried(start_daemon: Any, make_pool: Any) -> None:
    pool = make_pool()
    vol = f"{pool}/later"
    d = start_daemon(extra=policy_config("p", vol, interval='"1h"'))

    def failed() -> dict[str, Any] | None:
        p = show(d, "p")
        return p if p["failures"] >= 1 else None
    p = wait_until(failed, SLOW, what="a failed run")
    assert p["runs"] == 0 and p["state"] == "running"
    assert vol in (p["last_error"] or ""), p["last_error"]
    assert p["last_result"]["outcome"] == "failed"
    text = raw_request(d.socket_path, "GET", "/metrics").body
    assert (metric(text, "cerssd_policy_failures_total", policy="p") or 0) >= 1
    zfs("create", vol)  # the next try (back-off: seconds) succeeds without a run-now
    done = wait_until(lambda: ran(d, "p", 1), SLOW, what="the retried run")
    assert done["last_error"] is None and done["last_result"]["outcome"] == "snapshot"
    assert labels(vol) == [done["newest_snapshot"]]


def test_a_restarted_daemon_keeps_a_policys_schedule_and_counts(
        start_daemon: Any, make_pool: Any) -> None:
    pool = make_pool()
    vol = f"{pool}/data"
    zfs("create", vol)
    d = start_daemon(extra=policy_config("p", vol, interval='"1h"'))
    before = wait_until(lambda: ran(d, "p", 1), SLOW, what="the first run")
    assert d.stop() == 0
    d2 = start_daemon(config_path=d.config_path)

    def restored() -> dict[str, Any] | None:
        p = show(d2, "p")
        return p if p["next_run_at"] is not None else None
    after = wait_until(restored, SLOW, what="the restarted policy waiting for its tick")
    # the same activity, restarted by the engine; no catch-up run: the hour is not up
    assert after["activity"] == before["activity"] and after["runs"] == 1
    assert after["last_run_at"] == before["last_run_at"]
    assert after["next_run_at"] > time.time() + 600
    assert after["last_result"]["label"] == before["newest_snapshot"]
    assert labels(vol) == [before["newest_snapshot"]]


def test_a_policys_hooks_run_around_its_snapshot_and_a_failing_pre_skips_it(
        start_daemon: Any, make_pool: Any, tmp_path: Any) -> None:
    from .test_hooks import script
    pool = make_pool()
    root = f"{pool}/tree"
    for name in ("", "/a", "/b"):
        zfs("create", root + name)
    flag, log = tmp_path / "fail", tmp_path / "hooks.log"
    pre = script(tmp_path, "pre", f'test -e {flag} && {{ echo busy >&2; exit 1; }}\n'
                 f'echo "pre $CERSSD_VOLUME_COUNT $CERSSD_SNAPSHOT_LABEL $CERSSD_SERVER" '
                 f'>> {log}\n')
    post = script(tmp_path, "post", f'echo "post $CERSSD_SNAPSHOT_LABEL" >> {log}\n')
    d = start_daemon(extra=policy_config(
        "tree", root, interval='"1h"', recursive="true",
        hooks=f'{{ pre = ["{pre}"], post = ["{post}"] }}'))
    first = wait_until(lambda: ran(d, "tree", 1), SLOW, what="the first run")
    label = first["newest_snapshot"]
    assert log.read_text().splitlines() == [f"pre 3 {label} local", f"post {label}"]
    result = first["last_result"]
    assert result["outcome"] == "snapshot"
    assert [(h["stage"], h["exit_status"]) for h in result["hooks"]] == [("pre", 0),
                                                                         ("post", 0)]
    assert first["hooks"]["pre"] == [pre]
    flag.touch()
    assert raw_request(d.socket_path, "POST", "/v1/policies/tree/run").status == 202
    second = wait_until(lambda: ran(d, "tree", 2), SLOW, what="the skipped run")
    result = second["last_result"]
    assert result["outcome"] == "skipped" and result["label"] is None, result
    assert result["hooks"][0]["exit_status"] == 1 and "busy" in result["hooks"][0]["output"]
    assert second["skipped"] == 1 and second["failures"] == 0 and second["last_error"] is None
    for m in (root, f"{root}/a", f"{root}/b"):
        assert labels(m) == [label], m  # no snapshot this run
    text = raw_request(d.socket_path, "GET", "/metrics").body
    assert metric(text, "cerssd_policy_skipped_runs_total", policy="tree") == 1


@pytest.mark.parametrize("tree", [False, True])
def test_a_run_resumed_after_its_snapshot_runs_no_hook_again(
        start_daemon: Any, make_pool: Any, tmp_path: Any, tree: bool) -> None:
    """The daemon is killed while ``post`` runs (the snapshot is made, the run not yet
    recorded): the restarted run uses that snapshot, and neither hook runs again."""
    from .test_hooks import script
    from .test_relationship_hooks import kill_in_post
    pool = make_pool()
    root = f"{pool}/v"
    for name in ("", "/a") if tree else ("",):
        zfs("create", root + name)
    pres, post_pid, release = tmp_path / "pres", tmp_path / "post.pid", tmp_path / "release"
    pre = script(tmp_path, "pre", f"echo $CERSSD_SNAPSHOT_LABEL >> {pres}\n")
    post = script(tmp_path, "post", f"echo $$ > {post_pid}\n"
                  f"while [ ! -e {release} ]; do sleep 0.1; done\n")
    d = start_daemon(extra=policy_config(
        "p", root, interval='"1h"', **({"recursive": "true"} if tree else {}),
        hooks=f'{{ pre = ["{pre}"], post = ["{post}"], timeout = "5m" }}'))
    wait_until(lambda: post_pid.exists() and post_pid.read_text().strip(), SLOW,
               what="the post hook to run")
    label = pres.read_text().strip()
    kill_in_post(d, post_pid, release)
    d2 = start_daemon(config_path=d.config_path)
    done = wait_until(lambda: ran(d2, "p", 1), SLOW, what="the resumed run")
    assert done["newest_snapshot"] == label and done["last_result"]["hooks"] == []
    assert pres.read_text().split() == [label] and not post_pid.exists()
    for name in ("", "/a") if tree else ("",):
        assert labels(root + name) == [label]


def test_a_policys_dry_run_lists_exactly_what_its_prune_then_removes(
        start_daemon: Any, make_pool: Any) -> None:
    """Five snapshots within a minute under ``1h:all``; then ``1d:1h`` with keep_min 4:
    the dry run (API and cerssctl) lists what goes with why, and keeps the snapshots the
    policy did not make and the one keep_min spares, with why; the prune that follows
    removes exactly that list."""
    from .test_pruning import hourly_doomed
    from .test_pruning import labels as oldest_first
    pool = make_pool()
    vol = f"{pool}/data"
    zfs("create", vol)
    foreign = ["manual", "cerssd-hourly-keep"]  # the second has the prefix, not a time
    for label in foreign:
        zfs("snapshot", f"{vol}@{label}")
    d = start_daemon(extra=policy_config("hourly", vol, interval='"1h"',
                                         retention='["1h:all"]'))
    wait_until(lambda: ran(d, "hourly", 1), SLOW, what="the first run")
    for n in range(2, 6):
        assert raw_request(d.socket_path, "POST", "/v1/policies/hourly/run").status == 202
        wait_until(lambda n=n: ran(d, "hourly", n), SLOW, what=f"run {n}")
    made = [x for x in oldest_first(vol) if x not in foreign]
    assert len(made) == 5, labels(vol)
    d.config_path.write_text(d.config_path.read_text().replace(
        'retention = ["1h:all"]', 'retention = ["1d:1h"]\nkeep_min = 4'))
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: show(d, "hourly")["keep_min"] == 4, SLOW, what="the reload")
    # worked out here: the grid's thinning, then keep_min 4 sparing the newest of those
    by_grid = hourly_doomed(made, vol)
    short = 4 - (len(made) - len(by_grid))
    expected, spared = by_grid[:len(by_grid) - short], by_grid[len(by_grid) - short:]
    assert expected and spared, (made, by_grid)  # five in at most two hours

    dry = post_json(d, "/v1/policies/hourly/prune", {"dry_run": True})
    assert dry.status == 200, dry.body
    assert dry.body["policy"] == "hourly" and dry.body["dry_run"] is True
    (place,) = dry.body["places"]
    assert place["name"] == "local" and place["volume"] == vol and place["keep_min"] == 4
    assert place["blocked"] is None and place["activity"] is None
    assert place["retention"] == ["1d:1h"] and place["kept"] == 4
    assert [v["snapshot"] for v in place["destroy"]] == [f"{vol}@{x}" for x in expected]
    assert all(v["rule"] == "thinned" and v["kept_instead"] in made for v in place["destroy"])
    keep = {k["snapshot"].partition("@")[2]: k for k in place["keep"]}
    for label in foreign:
        assert keep[label]["rule"] == "not-ours", keep
        assert keep[label]["reason"].startswith("not cerssd's"), keep[label]
    for label in spared:
        assert keep[label]["rule"] == "keep-min" and "keep_min 4" in keep[label]["reason"]
    assert set(keep) <= {*foreign, *spared, made[-1]}  # the newest: when its hour has another
    from .test_docs import SOCKET, assert_same_shape, examples
    documented = examples()[f"curl --unix-socket {SOCKET} -H 'Content-Type: application/json' "
                            "-d '{\"dry_run\": true}' http://localhost/v1/policies/hourly/prune"]
    assert_same_shape(documented, dry.body)  # docs/api.md shows every field served
    shown = ctl(d, "policy", "prune", "hourly", "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert "would destroy" in shown.stdout and "not-ours" in shown.stdout
    assert "keep-min" in shown.stdout and all(x in shown.stdout for x in expected)
    before = labels(vol)
    assert sorted(before) == sorted([*foreign, *made])  # a dry run destroys nothing

    real = post_json(d, "/v1/policies/hourly/prune", {})
    assert real.status == 200 and real.body["dry_run"] is False, real.body
    (done,) = real.body["places"]
    assert [v["snapshot"] for v in done["destroy"]] == [v["snapshot"]
                                                         for v in place["destroy"]]
    assert d.wait_done(done["activity"])["state"] == "succeeded"
    gone = [x for x in before if x not in labels(vol)]
    assert sorted(gone) == sorted(expected) and set(labels(vol)) <= set(before)
    assert set(spared) <= set(labels(vol)) and set(foreign) <= set(labels(vol))
    again = post_json(d, "/v1/policies/hourly/prune", {"dry_run": True})
    assert again.body["places"][0]["destroy"] == [], again.body  # nothing left to take

    # bad input: problem documents, and cerssctl's message
    for path, body, status in (("/v1/policies/nope/prune", {"dry_run": True}, 404),
                               ("/v1/policies/bad%20name/prune", {"dry_run": True}, 400),
                               ("/v1/policies/hourly/prune", {"dry_runs": True}, 422)):
        r = post_json(d, path, body)
        assert r.status == status, (path, r.status, r.body)
        assert r.content_type.startswith("application/problem+json"), r.content_type
    out = ctl(d, "policy", "prune", "nope", "--dry-run")
    assert out.returncode == 1 and "no snapshot policy nope" in out.stderr, out


def test_a_relationship_backs_up_a_policys_snapshots_to_a_bucket(
        start_daemon: Any, make_pool: Any, s3_server: Any, s3_bucket: str,
        tmp_path: Any) -> None:
    """One set of snapshots for local recovery, a standby and the bucket: the backups
    are of the policy's snapshots (the relationship takes none), the second one an
    incremental, restored with the master's guids."""
    from .test_backups import digest, guid, listed, restore_ok, store_section, write
    from .test_pruning import manifests
    from .test_relationships import LOCAL_SLAVES, relationship_config
    master, standby, restored = make_pool(), make_pool(), make_pool()
    vol = f"{master}/data"
    zfs("create", vol)
    write(f"/{vol}/f", 3)
    config = (LOCAL_SLAVES + store_section(s3_server, s3_bucket, tmp_path / "s3.key")
              + policy_config("hourly", vol, interval='"1h"')
              + relationship_config("web", vol, {"a": f"{standby}/data"},
                                    extra='snapshots = "hourly"\nstores = ["s3"]')
              .replace('interval = "1h"\n', ""))
    d = start_daemon(extra=config)

    def backed_up(label: str) -> dict[str, Any] | None:
        """The relationship once its store and slave are at the policy's ``label``."""
        r = d.api("GET", "/v1/relationships/web")
        items = listed(d, vol)
        ok = (items and items[-1]["snapshot"] == f"{vol}@{label}"
              and r["backups"][0]["last_backup_guid"] == guid(f"{vol}@{label}")
              and r["slaves"][0]["state"] == "in-sync"
              and (r["slaves"][0]["last_snapshot"] or "").endswith(f"@{label}"))
        return r if ok else None
    one = wait_until(lambda: ran(d, "hourly", 1), SLOW, what="the first run")["newest_snapshot"]
    r = wait_until(lambda: backed_up(one), SLOW, interval=0.2, what="the first backup")
    assert r["snapshots"] == "hourly"
    (first,) = listed(d, vol)
    assert first["kind"] == "full" and first["snapshot"] == f"{vol}@{one}"
    assert one.startswith("cerssd-hourly-") and manifests(s3_server.client(), s3_bucket,
                                                          vol) == [one]
    assert labels(vol) == [one]  # the relationship made no snapshot of its own

    write(f"/{vol}/g", 1)
    assert raw_request(d.socket_path, "POST", "/v1/policies/hourly/run").status == 202
    two = wait_until(lambda: ran(d, "hourly", 2), SLOW, what="the second run")[
        "newest_snapshot"]
    assert two != one
    wait_until(lambda: backed_up(two), SLOW, interval=0.2, what="the second backup")
    items = listed(d, vol)
    assert [(m["kind"], m["snapshot"]) for m in items] == [
        ("full", f"{vol}@{one}"), ("incremental", f"{vol}@{two}")]
    assert items[1]["parent_guid"] == guid(f"{vol}@{one}")
    assert manifests(s3_server.client(), s3_bucket, vol) == sorted([one, two])
    assert labels(vol) == [one, two]
    backups = [a for a in d.api("GET", "/v1/activities?kind=backup&limit=100")["items"]
               if a["params"].get("relationship") == "web"]
    assert len(backups) == 2 and all(a["state"] == "succeeded" for a in backups), backups

    # the relationship's own prune leaves the master to the policy, and says where to look
    dry = post_json(d, "/v1/relationships/web/prune", {"dry_run": True, "only": ["master"]})
    assert "cerssctl policy prune hourly --dry-run" in dry.body["places"][0]["blocked"], dry.body

    restore_ok(d, f"{vol}@{two}", f"{restored}/copy")
    for label in (one, two):
        assert guid(f"{restored}/copy@{label}") == guid(f"{vol}@{label}")
    for name in ("f", "g"):
        assert digest(f"/{restored}/copy/{name}") == digest(f"/{vol}/{name}")


def test_a_tree_policys_dry_run_is_its_prune_member_by_member(
        start_daemon: Any, make_pool: Any) -> None:
    """A tree: each doomed label listed on every member, a member's foreign snapshot
    kept with why; the prune removes exactly that, and the policy's next run knows."""
    from .test_pruning import hourly_doomed
    from .test_pruning import labels as oldest_first
    pool = make_pool()
    root = f"{pool}/tree"
    members = [root, f"{root}/a", f"{root}/b"]
    for name in members:
        zfs("create", name)
    d = start_daemon(extra=policy_config("t", root, interval='"1h"', recursive="true",
                                         retention='["1h:all"]'))
    wait_until(lambda: ran(d, "t", 1), SLOW, what="the first run")
    zfs("snapshot", f"{root}/a@manual")
    for n in range(2, 5):
        assert raw_request(d.socket_path, "POST", "/v1/policies/t/run").status == 202
        wait_until(lambda n=n: ran(d, "t", n), SLOW, what=f"run {n}")
    made = oldest_first(root)
    assert len(made) == 4, made
    d.config_path.write_text(d.config_path.read_text().replace(
        'retention = ["1h:all"]', 'retention = ["1d:1h"]'))
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: show(d, "t")["retention"] == ["1d:1h"], SLOW, what="the reload")
    expected = hourly_doomed(made, root)  # keep_min 1: the newest is never in it
    assert expected, made  # four in at most two hours

    dry = post_json(d, "/v1/policies/t/prune", {"dry_run": True})
    assert dry.status == 200, dry.body
    (place,) = dry.body["places"]
    assert place["volume"] == root and place["blocked"] is None
    assert sorted(v["snapshot"] for v in place["destroy"]) == sorted(
        f"{m}@{x}" for m in members for x in expected)
    assert [(k["snapshot"], k["rule"]) for k in place["keep"]
            if k["rule"] == "not-ours"] == [(f"{root}/a@manual", "not-ours")]
    before = {m: labels(m) for m in members}
    real = post_json(d, "/v1/policies/t/prune", {})
    (done,) = real.body["places"]
    assert sorted(v["snapshot"] for v in done["destroy"]) == sorted(
        v["snapshot"] for v in place["destroy"])
    assert d.wait_done(done["activity"])["state"] == "succeeded"
    for m in members:
        gone = [x for x in before[m] if x not in labels(m)]
        assert sorted(gone) == sorted(expected), (m, gone)
    assert "manual" in labels(f"{root}/a")
    # the next run goes on from there: it counts what is left on the members
    assert raw_request(d.socket_path, "POST", "/v1/policies/t/run").status == 202
    after = wait_until(lambda: ran(d, "t", 5), SLOW, what="the run after the prune")
    assert after["last_result"]["outcome"] == "snapshot" and after["failures"] == 0, after
    assert after["snapshots_kept"] == len(labels(root)), (after, labels(root))
    for m in members:
        assert [x for x in labels(m) if x != "manual"] == labels(root), m
