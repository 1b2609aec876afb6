"""Where a volume and its snapshots live under a btrfs server's ``root``.

A btrfs server has one *pool*: the subvolume ``root`` (``root = "/srv/volumes"``), named
by ``pool`` in the config or else by the root's last path component (``volumes``). A
volume name is the pool followed by the path below the root, exactly as ZFS spells a
dataset:

    volumes           -> /srv/volumes                (the root subvolume itself)
    volumes/a/b       -> /srv/volumes/a/b            (a subvolume, nested in a if a is one)
    volumes/a/b@s1    -> /srv/volumes/.cerssd-snapshots/a/b@s1/b@s1  (read-only snapshot)
    volumes@s1        -> /srv/volumes/.cerssd-snapshots/@s1/volumes@s1

**Snapshots** are read-only snapshot subvolumes in one tree beside the volumes, each in a
directory named as the ZFS snapshot is (``@`` cannot occur in a component, so ``a@s1``, a
snapshot of ``volumes/a``, never meets ``a/``, the directory of ``volumes/a/b``'s). The
directory is what names it: a read-only subvolume cannot be moved to another directory
(its ``..`` would change), but a directory holding one can, which is how a received
snapshot is put in place, and how a volume's snapshots follow a rename. Not
inside the volume: there clients would see them, a snapshot of the volume would carry
empty placeholders of the older ones, and replacing the volume (a receive, a rollback)
would have to carry them over. In one tree the listing of a server's snapshots is one
``btrfs subvolume list`` whose paths map to names by text alone, and a stream's
subvolume name (the source's ``leaf@label``) already says its label.

**Receives** land in ``.cerssd-receiving/<path>@/<n>`` first, one directory per stream
(``btrfs receive`` creates the subvolume in a directory, under the name the stream
carries), and each directory is moved into the snapshot tree only once complete and
checked: what a cut-off receive leaves there is never taken for a snapshot, and is
deleted by the next receive or ``abort_receive``.

Both directories' names start with ``.cerssd-``: a volume component may not (``names``).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from ..names import InvalidName, SnapshotName, validate_snapshot, validate_volume

SNAPSHOTS_DIR = ".cerssd-snapshots"
RECEIVING_DIR = ".cerssd-receiving"
RESERVED_PREFIX = ".cerssd-"
#: btrfs allows 255 bytes per path component; a snapshot's entry is ``leaf@label``.
MAX_ENTRY = 255


def check_volume(name: str) -> str:
    """``name`` if it is a volume name this driver can map (``names.validate_volume`` and
    no component reserved for the snapshot and receive trees)."""
    validate_volume(name)
    if any(part.startswith(RESERVED_PREFIX) for part in name.split("/")[1:]):
        raise InvalidName(f"{name!r}: components starting with {RESERVED_PREFIX!r} are "
                          "reserved on btrfs (the snapshot and receive directories)")
    return name


def check_snapshot(name: str) -> SnapshotName:
    snap = validate_snapshot(name)
    check_volume(snap.volume)
    if len(f"{snap.volume.rpartition('/')[2]}@{snap.snapshot}") > MAX_ENTRY:
        raise InvalidName(f"{name!r}: its snapshot entry would exceed btrfs's {MAX_ENTRY} "
                          "bytes per path component")
    return snap


@dataclass(frozen=True)
class Layout:
    """The mapping for one server: ``root`` (absolute, as configured), ``pool`` (the
    name's first component) and ``fs_path`` (the root's path below the filesystem's top
    level, as ``btrfs subvolume list`` prints paths; "" when the root is the top level).
    """

    root: str
    pool: str
    fs_path: str = ""

    def relative(self, volume: str) -> str:
        """The volume's path below the root ("" for the pool itself)."""
        check_volume(volume)
        pool, _, rel = volume.partition("/")
        if pool != self.pool:
            raise InvalidName(f"{volume!r} is not in pool {self.pool}")
        return rel

    def volume_path(self, volume: str) -> str:
        rel = self.relative(volume)
        return posixpath.join(self.root, rel) if rel else self.root

    def snapshot_dir(self, volume: str) -> str:
        """The directory holding ``volume``'s snapshot directories (``leaf@label``)."""
        rel = self.relative(volume)
        return posixpath.join(self.root, SNAPSHOTS_DIR, posixpath.dirname(rel))

    def snapshot_path(self, name: str) -> str:
        """The snapshot subvolume: ``leaf@label`` in its own directory ``rel@label``."""
        snap = check_snapshot(name)
        rel = self.relative(snap.volume)
        leaf = snap.volume.rpartition("/")[2]
        return posixpath.join(self.root, SNAPSHOTS_DIR, f"{rel}@{snap.snapshot}",
                              f"{leaf}@{snap.snapshot}")

    def stage_dir(self, volume: str) -> str:
        """Where a receive into ``volume`` lands before it is checked."""
        return posixpath.join(self.root, RECEIVING_DIR, self.relative(volume) + "@")

    def fs_relative(self, path: str) -> str:
        """An absolute path under the root as ``btrfs subvolume list`` prints it."""
        below = posixpath.relpath(path, self.root)
        below = "" if below == "." else below
        return posixpath.join(self.fs_path, below) if self.fs_path else below

    def name_of(self, listed: str) -> tuple[str, str] | None:
        """A listed path (relative to the top level) as ("volume"|"snapshot", name), or
        None for one outside the root or in the receive tree."""
        if self.fs_path:
            if listed == self.fs_path:
                return "volume", self.pool
            if not listed.startswith(self.fs_path + "/"):
                return None
            rel = listed[len(self.fs_path) + 1:]
        else:
            rel = listed
        if rel.startswith(SNAPSHOTS_DIR + "/"):
            rest = rel[len(SNAPSHOTS_DIR) + 1:]
            folder, slash, entry = rest.rpartition("/")
            head, _, leaf_dir = folder.rpartition("/")
            leaf, at, label = leaf_dir.partition("@")
            if not slash or not at or "@" not in entry:
                return None
            volume = "/".join(part for part in (self.pool, head, leaf) if part)
            return "snapshot", f"{volume}@{label}"
        if rel.startswith(RESERVED_PREFIX) or "/" + RESERVED_PREFIX in rel:
            return None
        return "volume", f"{self.pool}/{rel}" if rel else self.pool


def pool_name(root: str, pool: str | None) -> str:
    """The pool's name: the configured one, else the root's last component."""
    name = pool or posixpath.basename(root.rstrip("/"))
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.:-]*", name):
        raise InvalidName(f"{name!r} cannot name a pool: set pool = \"NAME\" (a letter, "
                          "then letters, digits and _ - : .)")
    return validate_volume(name)
