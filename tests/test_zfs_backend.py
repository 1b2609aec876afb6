"""The ZFS backend against real zfs-fuse: probing, listing, snapshots, name safety."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cerssd.storage.errors import AlreadyExists, Busy, NotFound
from cerssd.storage.names import InvalidName
from cerssd.storage.zfs import ZfsBackend
from cerssd.storage.zfs.probe import capabilities_from_usage, parse_usage
from cerssd.transport.runner import LocalRunner

from .conftest import zfs

# The send/receive/bookmark lines of OpenZFS 2.1's `zfs` usage text (from its manual).
OPENZFS_USAGE = """usage: zfs command args ...
where 'command' is one of the following:

\tsnapshot [-r] [-o property=value] ... <filesystem|volume>@<snap> ...
\tlist [-Hp] [-r|-d max] [-o property[,...]] [-s property]...
\t    [-S property]... [-t type[,...]] [filesystem|volume|snapshot] ...
\tget [-rHp] [-d max] [-o "all" | field[,...]]
\t    [-t type[,...]] [-s source[,...]]
\t    <"all" | property[,...]> [filesystem|volume|snapshot|bookmark] ...
\tsend [-DLPbcehnpsvw] [-R [-X dataset[,dataset]...]] [[-I|-i] <snapshot>] <snapshot>
\tsend [-DnvPLecw] [-i snapshot|bookmark] <filesystem|volume|snapshot>
\tsend [-DnvPe] -t <receive_resume_token>
\tsend [-Pnv] --saved filesystem
\treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ...
\t    <filesystem|volume|snapshot>
\treceive -A <filesystem|volume>
\thold [-r] <tag> <snapshot> ...
\tholds [-rHp] <snapshot> ...
\trelease [-r] <tag> <snapshot> ...
\tbookmark <snapshot|bookmark> <newbookmark>
\tload-key [-rn] [-L <keylocation>] <-a | filesystem|volume>
"""


def test_usage_parsing_openzfs_sample() -> None:
    caps = capabilities_from_usage(parse_usage(OPENZFS_USAGE), stateless=True)
    assert caps.resumable_send and caps.bookmarks and caps.size_estimate
    assert caps.raw_send and caps.compressed_send and caps.holds and caps.incremental_send
    assert caps.parsable_list and caps.typed_get and caps.encryption


@pytest.fixture
def backend(zfs_fuse: None) -> ZfsBackend:
    return ZfsBackend(LocalRunner("local"))


async def test_probe_on_zfs_fuse(backend: ZfsBackend) -> None:
    caps = await backend.probe()
    assert caps.published() == ["stateless_snapshots", "incremental_send", "holds",
                                "self_restarting", "clones", "snapshot_views",
                                "file_copy", "holes_from_zeros"]
    assert not (caps.resumable_send or caps.bookmarks or caps.size_estimate or caps.raw_send
                or caps.parsable_list or caps.typed_get)
    assert backend.version == "pool version 23"


async def test_stateful_server_does_not_publish_stateless(zfs_fuse: None) -> None:
    caps = await ZfsBackend(LocalRunner("legacy"), stateless=False).probe()
    assert not caps.stateless_snapshots and caps.incremental_send


async def test_probe_of_missing_zfs_is_a_clear_error() -> None:
    from cerssd.storage.errors import BackendError

    backend = ZfsBackend(LocalRunner("x"), zfs="/bin/true")
    with pytest.raises(BackendError, match="did not print its usage"):
        await backend.probe()


async def test_volumes_and_snapshots_listing(backend: ZfsBackend, pool: str) -> None:
    zfs("create", f"{pool}/a")
    for label in ("one", "two", "a-late", "0-later"):  # same second; names out of order
        zfs("snapshot", f"{pool}/a@{label}")
    vols = {v.name: v for v in (await backend.volumes([pool])).items}
    assert {f"{pool}", f"{pool}/a"} <= set(vols)
    assert vols[f"{pool}/a"].type == "filesystem" and vols[f"{pool}/a"].guid.isdigit()
    snaps = await backend.snapshots(f"{pool}/a")
    assert [s.label for s in snaps] == ["one", "two", "a-late", "0-later"]
    guid = zfs("get", "-Hp", "-o", "value", "guid", f"{pool}/a@one").stdout.strip()
    assert snaps[0].guid == guid and snaps[0].creation > 1_600_000_000


async def test_volume_listing_pages_roots_and_states(backend: ZfsBackend, pool: str,
                                                    make_pool: Any) -> None:
    other = make_pool()
    zfs("create", f"{other}/not-listed")
    zfs("create", f"{pool}/a")
    zfs("create", f"{pool}/a/ro")
    await backend.set_readonly(f"{pool}/a/ro")  # in force (zfs-fuse remounts it)
    zfs("create", "-o", "canmount=off", f"{pool}/b")
    for label in ("s1", "s2"):
        zfs("snapshot", "-r", f"{pool}@{label}")
    everything = await backend.volumes([pool, f"{pool}/a", "nosuchpool"])
    names = [v.name for v in everything.items]
    assert names == [pool, f"{pool}/a", f"{pool}/a/ro", f"{pool}/b"] and everything.total == 4
    assert not any(n.startswith(other) or "@" in n for n in names)
    by_name = {v.name: v for v in everything.items}
    assert by_name[f"{pool}/a"].mounted and not by_name[f"{pool}/a"].readonly
    assert by_name[f"{pool}/a/ro"].readonly and not by_name[f"{pool}/b"].mounted
    guid = zfs("get", "-Hp", "-o", "value", "guid", f"{pool}/b").stdout.strip()
    assert by_name[f"{pool}/b"].guid == guid
    page = await backend.volumes([pool], limit=2, offset=1)
    assert [v.name for v in page.items] == names[1:3] and page.total == 4
    past = await backend.volumes([pool], limit=2, offset=10)
    assert past.items == () and past.total == 4
    assert (await backend.volumes([])).total == 0
    assert f"{other}/not-listed" in {v.name for v in (await backend.volumes()).items}


async def test_create_and_destroy_snapshot(backend: ZfsBackend, pool: str) -> None:
    zfs("create", f"{pool}/b")
    snap = await backend.create_snapshot(f"{pool}/b", "s1")
    assert snap.name == f"{pool}/b@s1" and snap.guid.isdigit()
    with pytest.raises(AlreadyExists):
        await backend.create_snapshot(f"{pool}/b", "s1")
    await backend.destroy_snapshot(f"{pool}/b@s1")
    assert await backend.snapshots(f"{pool}/b") == []
    with pytest.raises(NotFound):
        await backend.destroy_snapshot(f"{pool}/b@s1")
    with pytest.raises(NotFound):
        await backend.snapshots(f"{pool}/nope")


async def test_held_snapshot_is_busy(backend: ZfsBackend, pool: str) -> None:
    zfs("create", f"{pool}/c")
    zfs("snapshot", f"{pool}/c@kept")
    zfs("hold", "keep", f"{pool}/c@kept")
    try:
        with pytest.raises(Busy):
            await backend.destroy_snapshot(f"{pool}/c@kept")
        assert [s.userrefs for s in await backend.snapshots(f"{pool}/c")] == [1]
    finally:
        zfs("release", "keep", f"{pool}/c@kept")


@pytest.mark.parametrize("label", ["a;touch {marker}", "$(touch {marker})", "a b", "a\nb",
                                   "`touch {marker}`"])
async def test_hostile_names_never_reach_zfs(backend: ZfsBackend, pool: str, tmp_path: Path,
                                             label: str) -> None:
    marker = tmp_path / "x"
    bad = label.format(marker=marker)
    with pytest.raises(InvalidName):
        await backend.create_snapshot(f"{pool}", bad)
    with pytest.raises(InvalidName):
        await backend.snapshots(f"{pool}/{bad}")
    with pytest.raises(InvalidName):
        await backend.destroy_snapshot(f"{pool}@{bad}")
    assert not marker.exists()
    assert os.listdir(tmp_path) == []


class RecordingRunner:
    """Answers like an OpenZFS 2.x server would; records every command."""

    server = "openzfs"

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.commands: list[list[str]] = []

    async def run(self, argv: Any, *, check: bool = True) -> Any:
        from cerssd.transport.runner import CommandResult

        self.commands.append(list(argv))
        key = " ".join(argv[:2])
        return CommandResult(0, self.answers.get(key, ""), "")

    async def spawn(self, argv: Any, *, stdin: Any, stdout: Any) -> Any:
        raise AssertionError("not used")


async def test_openzfs_paths_build_the_documented_commands() -> None:
    # `zfs send -nvP` output format from the OpenZFS manual (zfs-send.8)
    runner = RecordingRunner({
        "zfs": OPENZFS_USAGE,
        "zfs send": "incremental\ttank/a@s1\ttank/a@s2\t1234567\nsize\t1234567\n",
        "zfs get": "1-f3e4d5c6b-c0-789c636064000310\n",
        "zfs version": "zfs-2.1.11-1\nzfs-kmod-2.1.11-1\n",
    })
    backend = ZfsBackend(runner)  # type: ignore[arg-type]
    caps = await backend.probe()
    assert caps.zvols and caps.bookmarks and caps.resumable_send and caps.encryption
    assert backend.version == "zfs-2.1.11-1"
    assert await backend.size_estimate("tank/a@s2", "tank/a@s1") == 1234567
    assert runner.commands[-1] == ["zfs", "send", "-nvP", "-i", "tank/a@s1", "tank/a@s2"]
    token = await backend.resume_token("tank/b")
    assert token == "1-f3e4d5c6b-c0-789c636064000310"
    assert runner.commands[-1] == ["zfs", "get", "-Hp", "-o", "value",
                                   "receive_resume_token", "tank/b"]
    assert backend.send_argv("tank/a@s2", resume_token=token) == ["zfs", "send", "-t", token]
    assert backend.receive_argv("tank/b", resumable=True) == ["zfs", "receive", "-s", "tank/b"]
    await backend.abort_receive("tank/b")
    assert runner.commands[-1] == ["zfs", "receive", "-A", "tank/b"]
    assert backend.send_argv("tank/a@s3", "tank/a#cerssd-b-s2", intermediates=True,
                             flags="w") == ["zfs", "send", "-w", "-i", "tank/a#cerssd-b-s2",
                                            "tank/a@s3"]
    from cerssd.storage.errors import BackendError

    with pytest.raises(BackendError, match="malformed"):
        backend.send_argv("tank/a@s2", resume_token="1-x; rm -rf /")
    with pytest.raises(BackendError, match="unsupported send flags"):
        backend.send_argv("tank/a@s2", flags="R")


@pytest.mark.parametrize(("rc", "stderr", "stale"), [
    (0, "", None),
    # OpenZFS 2.1's words (libzfs_sendrecv.c) when the token's snapshot or base is gone
    (255, "cannot resume send: 'tank/a@s2' used in the initial send no longer exists\n",
     "cannot resume send: 'tank/a@s2' used in the initial send no longer exists"),
    (255, "cannot resume send: incremental source 0x1a2b no longer exists\n",
     "cannot resume send: incremental source 0x1a2b no longer exists"),
    (255, "cannot resume send: 'tank/a@s2' is no longer the same snapshot used in the "
          "initial send\n",
     "cannot resume send: 'tank/a@s2' is no longer the same snapshot used in the "
     "initial send"),
    (1, "cannot open 'tank/a': dataset is busy\n", None),  # no verdict on the token
])
async def test_a_stale_resume_token_is_told_from_other_failures(
        rc: int, stderr: str, stale: str | None) -> None:
    from cerssd.transport.runner import CommandResult

    token = "1-f3e4d5c6b-c0-789c636064000310"
    runner = RecordingRunner({})
    answer = CommandResult(rc, "", stderr)

    async def run(argv: Any, *, check: bool = True) -> Any:
        runner.commands.append(list(argv))
        return answer

    runner.run = run  # type: ignore[method-assign]
    backend = ZfsBackend(runner)  # type: ignore[arg-type]
    assert await backend.stale_resume_token(token) == stale
    assert runner.commands == [["zfs", "send", "-nvP", "-t", token]]


async def test_zfs_fuse_never_asks_for_tokens_or_estimates(backend: ZfsBackend) -> None:
    await backend.probe()
    assert await backend.size_estimate("tank/a@s2") is None
    assert await backend.resume_token("tank/a") is None
    assert backend.receive_argv("tank/b", resumable=False) == ["zfs", "receive", "tank/b"]


@pytest.mark.parametrize("send", [
    "send [-vR] [-[iI] snapshot] <snapshot>",  # zfs-fuse 0.7
    "send [-DnPpRvLecwhb] [-[i|I] snapshot] <snapshot>",  # OpenZFS 2.1 (the guest's)
    "send [-DLPbcehnpsVvw] [-i|-I snapshot]",  # later OpenZFS
    "send [-DLPbcehnpsvw] [-R [-X dataset[,dataset]...]] [[-I|-i] <snapshot>] <snapshot>",
])
def test_incremental_send_is_seen_however_the_usage_spells_it(send: str) -> None:
    usage = parse_usage(f"usage: zfs command args ...\n\t{send}\n")
    assert capabilities_from_usage(usage, stateless=True).incremental_send


def test_a_send_without_incrementals_is_not_taken_for_one() -> None:
    usage = parse_usage("usage: zfs command args ...\n\tsend [-v] <snapshot>\n")
    assert not capabilities_from_usage(usage, stateless=True).incremental_send


def test_a_bookmark_of_that_name_counts_as_already_there() -> None:
    """OpenZFS 2.1 refuses a second bookmark of a name with "bookmark exists": the mark a
    second full copy of one snapshot (to another target) asks for is already there."""
    from cerssd.storage.zfs.backend import _classify
    from cerssd.transport.runner import CommandFailed

    failed = CommandFailed(["zfs", "bookmark", "p/v@s", "p/v#m"], 1,
                           "cannot create bookmark 'p/v#m': bookmark exists\n")
    assert isinstance(_classify(failed), AlreadyExists)
