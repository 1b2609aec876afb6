"""``btrfs send`` and ``btrfs receive`` as stream endpoints, and what wraps the receive.

**Send** is one ``btrfs send [-p BASE] SNAPSHOT`` (``--compressed-data`` where both ends
read protocol v2 streams). A range with the snapshots between (ZFS's ``-I``) is a chain
of ``btrfs send -p PREV NEXT`` run back to back into one pipe: ``btrfs receive`` reads
concatenated streams until the end of its input. The chain's members come from one
listing, done when the stream starts (``RangeSend``).

**Receive** (``RECEIVE_SCRIPT``, one ``sh`` on the server, arguments passed as ``$1``...
never spliced into the text) lands the stream in the volume's receive directory, then:

1. checks each received subvolume: complete (a received UUID is set only at the end of
   its stream), an incremental's parent is the destination's newest snapshot by guid
   (``btrfs receive`` would take a parent from anywhere on the filesystem, even another
   volume's copy), a full stream only into a volume that does not exist yet;
2. renames it ``leaf@label`` in its directory (a read-only subvolume may be renamed in
   place, never moved; the label is the one the stream names it by: the source's
   ``leaf@label``) and moves the directory into the snapshot tree;
3. makes the volume a writable snapshot of the newest one: a new volume is created; an
   existing one is swapped for it by two renames, nested subvolumes moved across, its
   read-only flag kept. A replica's volume takes no writes (it is read-only), so this
   drops nothing; what a client wrote to a writable one since is replaced, as
   ``zfs receive -F`` would roll it back.

On any failure (a cut stream, a refused parent) or SIGTERM, everything received in this
run is deleted before the script exits non-zero. A receive killed outright leaves its
partial subvolume in the receive directory, which the next receive into the volume, or
``abort_receive``, deletes first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ...transport.runner import Runner

#: Deletes what a receive left in its directory, restoring a volume caught mid-swap.
CLEAN = r'''
clean() {
  if [ -e "$stage/.old" ] && [ ! -e "$vol" ]; then mv "$stage/.old" "$vol"; fi
  for p in "$stage"/*/* "$stage/.volume" "$stage/.old"; do
    [ -e "$p" ] || continue
    btrfs subvolume delete "$p" >/dev/null 2>&1 || { echo "cerssd: cannot delete $p" >&2; }
  done
  for p in "$stage"/*; do [ -d "$p" ] && rmdir "$p" 2>/dev/null; done
}
'''

ABORT_SCRIPT = 'set -u; stage=$1; vol=$2\n' + CLEAN + '[ -d "$stage" ] && clean\nexit 0\n'

RECEIVE_SCRIPT = r'''
set -u
stage=$1 snapdir=$2 leaf=$3 vol=$4 root=$5 prefix=$6 entry=$7
''' + CLEAN + r'''
fail() { echo "cerssd: $*" >&2; clean; exit 1; }
trap 'clean; exit 143' TERM HUP INT
mkdir -p "$stage" "$snapdir" || exit 1
clean
n=0
while :; do
  d="$stage/$n"
  mkdir "$d" || fail "cannot make $d"
  out=$(btrfs receive -e "$d" 2>&1); rc=$?
  if [ -z "$(ls -A "$d")" ]; then
    # Nothing received: the end of the input after a stream (btrfs calls it an empty
    # stream, exit status 0 or 1 depending on how its input ended), else an error.
    rmdir "$d"
    if [ "$n" -gt 0 ]; then case $out in *"empty stream"*) break;; esac; fi
    printf '%s\n' "$out" >&2
    fail "the stream into $vol held no snapshot"
  fi
  if [ "$rc" -ne 0 ]; then
    printf '%s\n' "$out" >&2
    fail "the receive into $vol did not complete"
  fi
  n=$((n + 1))
done
last=
i=0
while [ "$i" -lt "$n" ]; do
  d="$stage/$i"; i=$((i + 1))
  name=$(ls "$d")
  case $name in *@*) ;; *) fail "unexpected subvolume $name in the stream";; esac
  p="$d/$name"; label=${name#*@}
  final="$snapdir/$leaf@$label"
  [ -e "$final" ] && fail "snapshot $vol@$label already exists"
  show=$(btrfs subvolume show "$p") || fail "cannot read $p"
  ruuid=$(printf '%s\n' "$show" | awk '$1 == "Received" {print $3}')
  puuid=$(printf '%s\n' "$show" | awk '$1 == "Parent" && $2 == "UUID:" {print $3}')
  case $ruuid in ''|-) fail "the receive of $name did not complete";; esac
  if [ "$puuid" = "-" ]; then
    if [ -e "$vol" ] || [ -n "$last" ]; then
      fail "destination $vol exists; a full stream is received only into a new volume"
    fi
  else
    pid=$(btrfs subvolume show -u "$puuid" "$root" | awk '
      $1 == "Received" {r = $3} $1 == "UUID:" {u = $2}
      END {print (r != "" && r != "-") ? r : u}')
    newest=$(btrfs subvolume list -a -c -u -R "$root" | awk -v pre="$prefix" '{
      for (i = 1; i < NF; i++) {
        if ($i == "cgen") c = $(i + 1); if ($i == "received_uuid") r = $(i + 1)
        if ($i == "uuid") u = $(i + 1); if ($i == "path") p = $(i + 1) }
      sub(/^<FS_TREE>\//, "", p)
      if (index(p, pre) == 1 && split(substr(p, length(pre) + 1), parts, "/") == 2 \
          && c + 0 >= best) {
        best = c + 0; g = (r != "-") ? r : u } }
      END {print g}')
    [ -n "$pid" ] && [ "$pid" = "$newest" ] || fail "the newest snapshot of $vol does not \
match the incremental source (destination modified or has snapshots after it)"
  fi
  if [ "$name" != "$entry@$label" ]; then
    mv -T "$p" "$d/$entry@$label" || fail "cannot rename $name"
  fi
  mv -T "$d" "$final" || fail "cannot move $name into place"
  last="$final/$entry@$label"
done
if [ -e "$vol" ]; then
  ro=$(btrfs property get -ts "$vol" ro)
  btrfs subvolume snapshot "$last" "$stage/.volume" >/dev/null || fail "cannot snapshot $last"
  [ "$ro" = "ro=true" ] && btrfs property set -ts "$vol" ro false
  for n in $(cd "$vol" && find . -mindepth 1 -xdev -inum 256 -prune -print); do
    rmdir "$stage/.volume/$n" 2>/dev/null
    mkdir -p "$(dirname "$stage/.volume/$n")" && mv "$vol/$n" "$stage/.volume/$n" \
      || fail "cannot carry $n over"
  done
  mv "$vol" "$stage/.old" && mv "$stage/.volume" "$vol" || fail "cannot swap $vol"
  # A read-only subvolume cannot move between directories: read-only once in place.
  [ "$ro" = "ro=true" ] && btrfs property set -ts "$vol" ro true
  btrfs subvolume delete "$stage/.old" >/dev/null
else
  btrfs subvolume snapshot "$last" "$vol" >/dev/null || fail "cannot create $vol"
fi
'''

RANGE_SCRIPT = r'''
c=$1 prev=$2; shift 2
for s do
  if [ "$c" = 1 ]; then btrfs send -q --compressed-data -p "$prev" "$s" || exit 1
  else btrfs send -q -p "$prev" "$s" || exit 1; fi
  prev=$s
done
'''


def send_argv(snapshot_path: str, base_path: str | None, compressed: bool) -> list[str]:
    return ["btrfs", "send", "-q", *(["--compressed-data"] if compressed else []),
            *(["-p", base_path] if base_path else []), snapshot_path]


def script(text: str, *args: str) -> list[str]:
    """``sh -c TEXT`` with ``args`` as its positional parameters (never in the text)."""
    return ["sh", "-c", text, "cerssd-btrfs", *args]


class ChainSource(Protocol):
    """What a range send asks of the backend (``BtrfsBackend``): the snapshots' paths
    from ``base`` to ``snapshot``, read when the stream starts."""

    async def chain_paths(self, base: str, snapshot: str) -> list[str]: ...


@dataclass(frozen=True)
class RangeSend:
    """The snapshots after ``base`` up to ``snapshot``, each sent on its predecessor:
    the chain is read from one listing when the stream starts (``send`` itself runs
    nothing)."""

    backend: ChainSource
    runner: Runner
    snapshot: str
    base: str
    compressed: bool

    async def spawn(self, *, stdin: int | None,
                    stdout: int | None) -> asyncio.subprocess.Process:
        paths = await self.backend.chain_paths(self.base, self.snapshot)
        return await self.runner.spawn(
            script(RANGE_SCRIPT, "1" if self.compressed else "0", *paths),
            stdin=stdin, stdout=stdout)


def chain(names: Sequence[str], base: str, snapshot: str) -> list[str]:
    """``base`` and the names after it up to ``snapshot`` (``names`` oldest first)."""
    if base not in names or snapshot not in names:
        missing = base if base not in names else snapshot
        raise LookupError(missing)
    start, end = names.index(base), names.index(snapshot)
    return list(names[start:end + 1])
