"""Volume state, stateless vs stateful (``cerssd.volume_states``).

The registry's logic is tested with a real engine and journal and stand-in work the
test finishes; the behaviour through the daemon on real zfs-fuse: on a stateless
server (the default) a backup and two replications of one volume run at the same time
and the volume's state never turns busy; on a server configured ``stateless = false``
the first replication holds the volume (``replicating``), a second action gets 409
naming it, also across a daemon restart, and succeeds once the first has ended.

The replications those tests look at are suspended mid-stream once they move bytes, so
they stay alive (and holding) for as long as the checks take, whatever the machine's
load: a volume's state is listed by one host-wide ``zfs get``, which a busy zfs-fuse can
take longer to answer than a bandwidth-limited replication takes to end.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cerssd.activity import ActivityRecord, State
from cerssd.engine import ActivityContext, ActivityEngine
from cerssd.journal import Journal
from cerssd.replication.flows.backup import BackupRequest
from cerssd.replication.flows.replicate import ReplicationRequest
from cerssd.replication.flows.restore import RestoreRequest
from cerssd.replication.logic.spec import SlaveSpec
from cerssd.storage.values import Capabilities, Volume
from cerssd.volume_states import (
    AVAILABLE,
    IN_USE,
    PARAM,
    REPLICATING,
    VolumeBusy,
    VolumeStates,
    backup_holds,
    cycle_holds,
    idle_state,
    replication_holds,
    restore_holds,
)

from .conftest import (
    SLOW,
    DaemonProcess,
    post_json,
    raw_request,
    wait_until,
    write_file,
    zfs,
)
from .conftest import replicate as replicate_between
from .seaweed import WeedServer
from .test_backups import store_section
from .test_cli import ctl

MiB = 1 << 20
PROBLEM = "application/problem+json"
BUSY = {"backing-up", "replicating", "restoring", "failing-over"}


# -- the registry, with a real engine and journal ----------------------------------------
class Held:
    """Work that runs until the test releases it."""

    def __init__(self) -> None:
        self.go = asyncio.Event()

    async def run(self, ctx: ActivityContext) -> None:
        await self.go.wait()

    async def rollback(self, ctx: ActivityContext) -> None:
        pass


@dataclass
class FakeServers:
    """The one thing VolumeStates asks a ServerRegistry: each server's capabilities."""

    stateless: dict[str, bool]

    def entry(self, name: str) -> Any:
        caps = Capabilities(stateless_snapshots=self.stateless[name])
        return SimpleNamespace(backend=SimpleNamespace(capabilities=caps))


@pytest.fixture
async def world(tmp_path: Path,
                ) -> AsyncIterator[tuple[ActivityEngine, VolumeStates, list[Held]]]:
    engine, works = _engine(tmp_path)
    states = VolumeStates(engine, FakeServers({"zfs": True, "lvm": False,
                                               "lvm2": False}))  # type: ignore[arg-type]
    yield engine, states, works
    await engine.shutdown(5)  # stops what a test left running, closes the journal


def _engine(tmp_path: Path) -> tuple[ActivityEngine, list[Held]]:
    engine = ActivityEngine(Journal(tmp_path / "journal.sqlite3"))
    works: list[Held] = []

    def factory(record: ActivityRecord) -> Held:
        works.append(Held())
        return works[-1]

    engine.register("x", factory)
    return engine, works


def _submit(engine: ActivityEngine, **kw: Any) -> Any:
    return lambda: engine.submit("x", volume="p/v", self_restarting=True, **kw)


async def _finish(engine: ActivityEngine, work: Held, activity_id: str) -> None:
    work.go.set()
    await engine.wait(activity_id, 5)


async def test_stateless_server_never_holds(world: Any) -> None:
    engine, states, _ = world
    holds = [("zfs", "p/v"), ("zfs", "q/v")]
    first = states.submit_holding(holds=holds, busy=REPLICATING, submit=_submit(engine))
    second = states.submit_holding(holds=holds, busy=REPLICATING, submit=_submit(engine))
    assert first.id != second.id and states.holds() == []
    assert PARAM not in engine.get(first.id).record.params
    vol = Volume("p/v", "filesystem", "1", 0, 0, 0, readonly=False, mounted=True)
    assert states.state_of("zfs", vol) == IN_USE


async def test_stateful_server_holds_refuses_then_releases(world: Any) -> None:
    engine, states, works = world
    first = states.submit_holding(holds=[("lvm", "p/v"), ("lvm2", "p/t")], busy=REPLICATING,
                                  submit=_submit(engine))
    assert first.params[PARAM] == {"state": "replicating",
                                   "volumes": [["lvm", "p/v"], ["lvm2", "p/t"]]}
    vol = Volume("p/v", "filesystem", "1", 0, 0, 0, readonly=False, mounted=True)
    assert states.state_of("lvm", vol) == REPLICATING
    assert states.state_of("zfs", vol) == IN_USE  # the hold is per server
    before = len(engine.activities())
    with pytest.raises(VolumeBusy) as busy:
        states.submit_holding(holds=[("lvm", "p/v")], busy="backing-up",
                              submit=_submit(engine))
    assert busy.value.hold.activity_id == first.id and busy.value.hold.kind == "x"
    assert "a backup must wait" in str(busy.value)
    with pytest.raises(VolumeBusy):  # the target is held too
        states.check([("zfs", "p/v"), ("lvm2", "p/t")], "a snapshot")
    assert len(engine.activities()) == before  # nothing was submitted
    assert states.check([("zfs", "p/v"), ("lvm", "other")], "a snapshot") == [("lvm", "other")]

    await _finish(engine, works[0], first.id)
    assert states.holds() == [] and states.state_of("lvm", vol) == IN_USE
    again = states.submit_holding(holds=[("lvm", "p/v")], busy="backing-up",
                                  submit=_submit(engine))
    assert states.holder("lvm", "p/v").activity_id == again.id  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        states.submit_holding(holds=[], busy=IN_USE, submit=_submit(engine))


async def test_a_failed_or_cancelled_activity_releases_too(world: Any) -> None:
    engine, states, _ = world
    first = states.submit_holding(holds=[("lvm", "p/v")], busy=REPLICATING,
                                  submit=_submit(engine))
    await asyncio.sleep(0)  # let it start running
    await engine.cancel(first.id)
    await engine.wait(first.id, 5)
    assert engine.get(first.id).record.state == State.CANCELLED
    assert states.holder("lvm", "p/v") is None


async def test_preempt_passes_the_holds_to_the_new_activity(world: Any) -> None:
    engine, states, works = world
    transfer = states.submit_holding(holds=[("lvm", "p/v"), ("lvm2", "p/t")],
                                     busy=REPLICATING, submit=_submit(engine))
    failover = states.submit_holding(holds=[("lvm", "p/v")], busy="failing-over",
                                     preempt=[transfer.id], submit=_submit(engine))
    assert states.holder("lvm", "p/v").activity_id == failover.id  # type: ignore[union-attr]
    await _finish(engine, works[0], transfer.id)  # the old holder's end frees only its own
    assert states.holder("lvm", "p/v").state == "failing-over"  # type: ignore[union-attr]
    assert states.holder("lvm2", "p/t") is None


async def test_holds_come_back_with_the_activities_after_a_restart(tmp_path: Path) -> None:
    engine, _ = _engine(tmp_path)
    servers = FakeServers({"lvm": False})
    states = VolumeStates(engine, servers)  # type: ignore[arg-type]
    kept = states.submit_holding(holds=[("lvm", "p/v")], busy=REPLICATING,
                                 submit=_submit(engine))
    lost = states.submit_holding(holds=[("lvm", "p/w")], busy=REPLICATING,
                                 submit=lambda: engine.submit("x", volume="p/w"))
    await asyncio.sleep(0)
    await engine.shutdown(5)  # as on SIGTERM: the self-restarting one is checkpointed
    assert engine.get(lost.id).record.state == State.CANCELLED

    engine2, _ = _engine(tmp_path)
    restarted = engine2.recover()
    assert [r.id for r in restarted] == [kept.id]
    states2 = VolumeStates(engine2, servers)  # type: ignore[arg-type]
    assert states2.rebuild(engine2.activities()) == 1
    hold = states2.holder("lvm", "p/v")
    assert hold is not None and (hold.activity_id, hold.state) == (kept.id, REPLICATING)
    assert states2.holder("lvm", "p/w") is None
    await asyncio.sleep(0)  # running: a never-started task cannot be waited for
    await engine2.cancel(kept.id)
    await engine2.wait(kept.id, 5)
    assert states2.holds() == []
    engine2.journal.close()


async def test_holds_are_in_the_activitys_first_journal_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No journaled version of a holding activity lacks its holds: a daemon killed right
    after the submit (before any later write) restarts the activity still holding."""
    engine, _ = _engine(tmp_path)
    states = VolumeStates(engine, FakeServers({"lvm": False, "zfs": True}))  # type: ignore[arg-type]
    written: list[ActivityRecord] = []
    save = engine.journal.save
    monkeypatch.setattr(engine.journal, "save", lambda r: (written.append(r), save(r))[1])
    held = states.submit_holding(holds=[("lvm", "p/v"), ("zfs", "q/v")], busy=REPLICATING,
                                 submit=_submit(engine))
    free = states.submit_holding(holds=[("zfs", "p/v")], busy=REPLICATING,
                                 submit=_submit(engine))
    versions = [r.params for r in written if r.id == held.id]
    assert versions and all(p[PARAM] == {"state": "replicating", "volumes": [["lvm", "p/v"]]}
                            for p in versions), versions
    assert held.params[PARAM] == versions[0][PARAM]
    assert all(PARAM not in r.params for r in written if r.id == free.id)
    # What a daemon starting on the journal as it is now finds.
    engine2, _ = _engine(tmp_path)
    engine2.recover()
    states2 = VolumeStates(engine2, FakeServers({"lvm": False}))  # type: ignore[arg-type]
    assert states2.rebuild(engine2.activities()) == 1
    assert states2.holder("lvm", "p/v").activity_id == held.id  # type: ignore[union-attr]
    await engine2.shutdown(5)
    await engine.shutdown(5)


async def test_a_cycle_admits_one_start_per_stateful_volume_fairly(world: Any) -> None:
    engine, states, _ = world
    spec: Any = SimpleNamespace(volume="p/v", master="lvm", slaves=(
        SlaveSpec("zfs", "a/v"), SlaveSpec("lvm2", "b/v")))
    holds = lambda member: cycle_holds(spec, member)  # noqa: E731
    assert states.admit(["zfs", "lvm2"], holds, "r") == ["zfs"]  # both need the master
    assert states.admit(["zfs", "lvm2"], holds, "r") == ["lvm2"]  # who waited goes first
    assert states.admit(["zfs", "lvm2"], holds, "r") == ["zfs"]
    other = states.submit_holding(holds=[("lvm2", "b/v")], busy="restoring",
                                  submit=_submit(engine))
    assert states.admit(["zfs", "lvm2"], holds, "r") == ["zfs"]  # b/v is held
    assert other.id
    assert states.admit(["x", "y"], lambda m: [("zfs", "p/v")], "s") == ["x", "y"]
    assert cycle_holds(spec, "s3") == [("lvm", "p/v")]  # a store's backup: the master only


def test_which_volumes_each_action_holds() -> None:
    rep = ReplicationRequest(snapshot="p/v@s", source="a", destination="b",
                             target_volume="q/t")
    assert replication_holds(rep) == [("a", "p/v"), ("b", "q/t")]
    assert backup_holds(BackupRequest(snapshot="p/v@s", server="a", store="s3")) == \
        [("a", "p/v")]
    assert restore_holds(RestoreRequest(store="s3", snapshot="p/v@s", server="b",
                                        target_volume="q/r")) == [("b", "q/r")]


@pytest.mark.parametrize(("kind", "readonly", "mounted", "state"), [
    ("filesystem", False, True, IN_USE),
    ("filesystem", True, True, AVAILABLE),  # a replica, a fenced old master
    ("filesystem", False, False, AVAILABLE),  # unmounted: no client can be using it
    ("volume", False, False, IN_USE),  # a writable zvol has no mount, only a device
    ("volume", True, False, AVAILABLE),
])
def test_idle_state(kind: str, readonly: bool, mounted: bool, state: str) -> None:
    assert idle_state(Volume("p/v", kind, "1", 0, 0, 0, readonly=readonly,
                             mounted=mounted)) == state


# -- through the daemon, on real zfs-fuse -----------------------------------------------
def listed_states(d: DaemonProcess, server: str, root: str) -> dict[str, str]:
    """Each volume's state as listed, of the tree under ``root`` only: the tests share
    zfs-fuse with others, and a busy zfs-fuse is slow to list much."""
    r = raw_request(d.socket_path, "GET", f"/v1/volumes?server={server}&root={root}",
                    timeout=SLOW)
    assert r.status == 200, r.body
    return {v["name"]: v["state"] for v in r.body["items"]}


def volume_state(d: DaemonProcess, server: str, volume: str) -> str:
    return listed_states(d, server, volume)[volume]


def activity(d: DaemonProcess, activity_id: str) -> dict[str, Any]:
    result: dict[str, Any] = d.api("GET", f"/v1/activities/{activity_id}")
    return result


def moving(a: dict[str, Any]) -> bool:
    return bool(a["state"] == "running" and a["usage"]["bytes_read"] > 0)


def suspend_mid_stream(d: DaemonProcess, activity_id: str) -> dict[str, Any]:
    """Once the replication moves bytes, suspend it: it then stays alive, mid-stream and
    (on a stateful server) holding its volumes for as long as a test needs, however slow
    the machine, instead of for the ~12 s its bandwidth limit would give it."""
    d.wait_activity(activity_id, moving, timeout=SLOW, what="the replication moving bytes")
    assert d.api("POST", f"/v1/activities/{activity_id}/suspend")["state"] == "suspended"
    return mid_stream(d, activity_id)


def mid_stream(d: DaemonProcess, activity_id: str) -> dict[str, Any]:
    a = activity(d, activity_id)
    assert a["state"] == "suspended", a
    assert 0 < a["progress"]["done"] < a["progress"]["total"], a["progress"]
    return a


def succeeded(d: DaemonProcess, activity_id: str) -> None:
    done = d.wait_done(activity_id)
    assert done["state"] == "succeeded", done["status"]


@pytest.fixture
def volume(make_pool: Any) -> tuple[str, str]:
    """A source pool with ``data`` (12 MiB, snapshot ``s1``), and a pool to replicate to."""
    src, dst = make_pool(), make_pool()
    zfs("create", f"{src}/data")
    write_file(f"/{src}/data/f", 12)
    zfs("snapshot", f"{src}/data@s1")
    return src, dst


def test_stateless_backup_and_two_replications_of_one_volume_run_at_once(
        start_daemon: Any, volume: tuple[str, str], s3_server: WeedServer, s3_bucket: str,
        tmp_path: Path) -> None:
    src, dst = volume
    d = start_daemon(extra=store_section(s3_server, s3_bucket, tmp_path / "s3.key"))
    assert d.api("GET", "/v1/capabilities")["local"]["stateless_snapshots"]
    seen: set[str] = set()

    def state() -> str:
        seen.add(volume_state(d, "local", f"{src}/data"))
        return next(iter(seen))

    assert state() == IN_USE
    # Two replications of one volume, each suspended mid-stream once it moves bytes: both
    # are alive (their sends blocked, not ended) for as long as the backup takes, so the
    # three overlap by construction, not by a race against the bandwidth limit.
    ids = []
    for target in ("a", "b"):
        r = replicate_between(d, f"{src}/data@s1", "local", "local", f"{dst}/{target}",
                              bandwidth_limit=MiB)
        assert r.status == 202, r.body
        assert PARAM not in r.body["params"]
        ids.append(r.body["id"])
        suspend_mid_stream(d, ids[-1])
    b = post_json(d, "/v1/backups", {"snapshot": f"{src}/data@s1"})
    assert b.status == 202, b.body  # not refused: the server has stateless_snapshots
    assert state() == IN_USE  # while all three are alive
    succeeded(d, b.body["id"])
    # The backup began and ended while both replications were mid-stream.
    for i in ids:
        mid_stream(d, i)
    for i in ids:
        assert d.api("POST", f"/v1/activities/{i}/resume")["state"] == "running"
    for i in ids:
        succeeded(d, i)
    assert state() and seen == {IN_USE}, seen  # never a busy state, before, during, after
    for target in ("a", "b"):
        assert zfs("get", "-H", "-o", "value", "guid", f"{dst}/{target}@s1").stdout == \
            zfs("get", "-H", "-o", "value", "guid", f"{src}/data@s1").stdout


STATEFUL = '[servers.local]\nkind = "local"\n[servers.lab]\nkind = "local"\nstateless = false\n'


def test_stateful_second_action_gets_409_naming_the_first_until_it_ends(
        start_daemon: Any, volume: tuple[str, str]) -> None:
    src, dst = volume
    d = start_daemon(extra=STATEFUL)
    caps = d.api("GET", "/v1/capabilities")
    assert not caps["lab"]["stateless_snapshots"] and caps["local"]["stateless_snapshots"]
    assert volume_state(d, "lab", f"{src}/data") == IN_USE

    first = replicate_between(d, f"{src}/data@s1", "lab", "lab", f"{dst}/a",
                              bandwidth_limit=MiB)
    assert first.status == 202, first.body
    first_id = first.body["id"]
    assert first.body["params"][PARAM] == {
        "state": "replicating", "volumes": [["lab", f"{src}/data"], ["lab", f"{dst}/a"]]}
    # Suspended mid-stream, it holds the volume until the test resumes it: the checks
    # below cannot race its end, however long a busy machine takes to answer them.
    suspend_mid_stream(d, first_id)
    assert volume_state(d, "lab", f"{src}/data") == REPLICATING
    listed = ctl(d, "volumes", "--server", "lab", "--root", src)
    assert listed.returncode == 0, listed.stderr
    table = listed.stdout
    assert re.search(rf"^\W*{src}/data\W+filesystem\W+replicating\W", table, re.M), table
    # The same zfs seen through the stateless server: its state is not touched.
    assert volume_state(d, "local", f"{src}/data") == IN_USE

    def refused(r: Any) -> None:
        assert r.status == 409, r.body
        assert r.content_type.startswith(PROBLEM)
        assert r.body["title"] == "Volume Busy" and r.body["code"] == "volume-busy"
        assert r.body["activity"] == {"id": first_id, "kind": "replicate"}, r.body
        assert r.body["state"] == "replicating" and first_id in r.body["detail"]
        assert (r.body["server"], r.body["volume"]) == ("lab", f"{src}/data")

    second = lambda: replicate_between(  # noqa: E731
        d, f"{src}/data@s1", "lab", "lab", f"{dst}/b")
    refused(second())
    refused(post_json(d, f"/v1/volumes/{src}/data/snapshots", {"name": "x", "server": "lab"}))
    # Not a conflict on the stateless server, though it is the very same dataset.
    ok = replicate_between(d, f"{src}/data@s1", "local", "local", f"{dst}/c")
    assert ok.status == 202, ok.body
    succeeded(d, ok.body["id"])

    # A daemon restart while held: the self-restarting replication comes back holding
    # (and suspended, as it was when the daemon stopped).
    mid_stream(d, first_id)
    assert d.stop() == 0
    d = start_daemon(config_path=d.config_path)
    back = mid_stream(d, first_id)
    assert back["restarts"] == 1, back
    assert volume_state(d, "lab", f"{src}/data") == REPLICATING
    refused(second())
    assert "volume holds restored" in d.log()

    assert d.api("POST", f"/v1/activities/{first_id}/resume")["state"] == "running"
    succeeded(d, first_id)
    again = second()  # accepted: the first's end released its holds
    assert again.status == 202, again.body
    succeeded(d, again.body["id"])
    # Both released: the source in use as before; the new replica read-only (as replicas
    # are left), so available.
    readonly = zfs("get", "-H", "-o", "value", "readonly", f"{dst}/b").stdout.strip()
    assert listed_states(d, "lab", src)[f"{src}/data"] == IN_USE
    assert listed_states(d, "lab", dst)[f"{dst}/b"] == (AVAILABLE if readonly == "on"
                                                        else IN_USE)


def test_stateful_master_serves_its_slaves_one_transfer_at_a_time(
        start_daemon: Any, make_pool: Any) -> None:
    master, a, b = make_pool(), make_pool(), make_pool()
    zfs("create", f"{master}/data")
    write_file(f"/{master}/data/f", 2)
    config = ('[servers.local]\nkind = "local"\n[servers.lab]\nkind = "local"\n'
              'stateless = false\n[servers.a]\nkind = "local"\n[servers.b]\nkind = "local"\n'
              f'[relationships.web]\nvolume = "{master}/data"\nmaster = "lab"\n'
              'interval = "1h"\n'
              f'slaves = [{{server = "a", target_volume = "{a}/data", '
              f'bandwidth_limit = {MiB}}}, {{server = "b", target_volume = "{b}/data", '
              f'bandwidth_limit = {MiB}}}]\n')
    d = start_daemon(extra=config)

    def transfers() -> list[dict[str, Any]]:
        items = d.api("GET", "/v1/activities?kind=replicate&limit=1000")["items"]
        return sorted((t for t in items if t["params"].get("relationship") == "web"),
                      key=lambda t: t["created_at"])

    def cycle_done(n: int) -> list[dict[str, Any]] | None:
        ts = transfers()
        ok = len(ts) == n and all(t["state"] == "succeeded" for t in ts)
        return ts if ok else None

    first = wait_until(lambda: cycle_done(1), SLOW, what="the first cycle's one transfer")
    assert "skipped this round: volume held on a stateful server" in d.log()
    for n in (2, 3):
        r = raw_request(d.socket_path, "POST", "/v1/relationships/web/sync-now")
        assert r.status == 202, r.body
        wait_until(lambda n=n: cycle_done(n), SLOW, what=f"cycle {n}'s one transfer")
    ts = transfers()
    # One slave per cycle, taking turns; never two transfers from the master at once.
    served = [t["params"]["destination"] for t in ts]
    assert served[0] == first[0]["params"]["destination"] and set(served) == {"a", "b"}
    assert served[0] != served[1] and served[1] != served[2], served
    for earlier, later in itertools.pairwise(ts):
        assert earlier["finished_at"] <= later["started_at"]
