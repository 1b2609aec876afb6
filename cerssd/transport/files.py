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


#: Seconds of slack before the base snapshot's creation: mtimes and creation times are
#: whole seconds on some filesystems (zfs-fuse), and a snapshot's second is shared by
#: the writes just before it.
QUICK_CHECK_SLACK = 2


async def distrust_recent_mtimes(runner: Runner, path: str, since: int) -> None:
    """Make rsync's quick check compare the contents of files changed near ``since``.

    The quick check skips a file whose size and mtime match. Where timestamps are whole
    seconds (zfs-fuse: tests/test_generic_btrfs.py found it), a file rewritten at the
    same size in the second its base snapshot was taken keeps its mtime, and would be
    skipped: a replica silently different from its snapshot. Every file in the copy
    modified since ``since`` minus the slack gets mtime 0, so rsync looks at it (the
    delta algorithm moves only what differs) and sets its true mtime again. One
    ``find`` on the destination; files older than that are as safe as rsync makes them.
    """
    await runner.run(["find", path, "-xdev", "-type", "f",
                      "-newermt", f"@{since - QUICK_CHECK_SLACK}",
                      "-exec", "touch", "-c", "-m", "-d", "@0", "{}", "+"])


#: A file keeps its holes on the copy (rsync's ``--sparse``) when at least this much of
#: its size is not allocated: smaller gaps are below a filesystem block or two.
SPARSE_MIN_HOLE = 64 * 1024


@dataclass(frozen=True)
class TreeSurvey:
    """What one metadata walk of a tree tells a copy before it starts."""

    #: Bytes of its regular files: what rsync sends into an empty directory (its
    #: "total transferred file size"); None if the walk failed.
    size: int | None
    #: A file has ``SPARSE_MIN_HOLE`` bytes or more unallocated (or the walk failed).
    sparse: bool


# One line out: "SIZE SPARSE", or "error" when find failed (the sum would be short).
# A file of several hard links counts once, as rsync -H sends it once.
_SURVEY_SCRIPT = (
    '{ find "$1" -xdev -type f -printf "%s %b %n %i\\n" || echo error; } | '
    "awk -v min=\"$2\" '$1 == \"error\" {failed = 1; next} "
    "$3 > 1 && seen[$4]++ {next} "
    "{size += $1} $1 - $2 * 512 >= min {sparse = 1} "
    "END {if (failed) print \"error\"; else printf \"%.0f %d\\n\", size, sparse}'")


async def survey_tree(runner: Runner, path: str) -> TreeSurvey:
    """The size of the tree under ``path`` (its filesystem only) and whether it has holes
    to keep: one ``find`` on the server that holds it, metadata only.

    The size is m of a first copy's n of m without rsync's dry run, a second walk of the
    tree and a second session to the other end. Holes: rsync's ``--sparse`` keeps them,
    but writes every file 1 KiB at a time (about a sixth more time on a 1 GiB copy here,
    bench/RESULTS.md), so a copy asks for it only where a file has ``SPARSE_MIN_HOLE``
    bytes or more unallocated. A compressed file also has fewer blocks than bytes: a
    false alarm costs only speed. So does a walk that fails: the answer is then sparse,
    never a hole filled with zeros, and no size.
    """
    result = await runner.run(["sh", "-c", _SURVEY_SCRIPT, "cerssd-survey", path,
                               str(SPARSE_MIN_HOLE)], check=False)
    fields = result.stdout.split()
    if result.returncode != 0 or len(fields) != 2 or not all(f.isdigit() for f in fields):
        return TreeSurvey(size=None, sparse=True)
    return TreeSurvey(size=int(fields[0]), sparse=fields[1] == "1")
