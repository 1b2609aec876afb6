"""What this ``zfs`` can do, read off its own usage text (never assumed from a version).

zfs-fuse and every OpenZFS release print their commands and flags when run without
arguments; the flags of ``send``, ``receive``, ``list`` and ``get``, the arguments of
``snapshot`` and the presence of ``bookmark``, ``hold`` and ``load-key`` give the
capabilities.

``snapshot`` taking several datasets at once (all in one transaction) shows as a repeated
last argument: OpenZFS prints ``<filesystem|volume>@<snap> ...``, zfs-fuse 0.7 prints
``<filesystem@snapname|volume@snapname>`` and refuses a second one ("too many arguments").
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from ..values import Capabilities


@dataclass(frozen=True)
class ZfsUsage:
    """The facts read off ``zfs``'s usage text: commands and the flags of a few of them."""

    commands: frozenset[str]
    send_line: str
    receive_line: str
    list_flags: str
    get_line: str
    snapshot_line: str = ""


def parse_usage(text: str) -> ZfsUsage:
    commands: set[str] = set()
    lines: dict[str, list[str]] = defaultdict(list)
    current: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not raw.startswith(("\t", " ")) or not line:
            current = None
            continue
        m = re.match(r"^([a-z][a-z-]*)\b", line)
        if m:
            current = m.group(1)
            commands.add(current)
            lines[current].append(line)
        elif current is not None:  # a continuation line of the command above
            lines[current][-1] += " " + line
    list_line = " ".join(lines.get("list", []))
    m = re.search(r"list \[-([A-Za-z]+)\]", list_line)
    return ZfsUsage(
        commands=frozenset(commands),
        send_line=" ".join(lines.get("send", [])),
        receive_line=" ".join(lines.get("receive", []) + lines.get("recv", [])),
        list_flags=m.group(1) if m else "",
        get_line=" ".join(lines.get("get", [])),
        snapshot_line=" ".join(lines.get("snapshot", [])),
    )


def capabilities_from_usage(usage: ZfsUsage, *, stateless: bool) -> Capabilities:
    send_flags = "".join(re.findall(r"send \[-([A-Za-z]+)\]", usage.send_line))
    return Capabilities(
        stateless_snapshots=stateless,
        # zfs-fuse "-[iI]", OpenZFS 2.1 "-[i|I]", later "-i|-I": any way of offering both
        incremental_send=bool(re.search(r"\[iI\]|i\|-?I|I\|-?i", usage.send_line)),
        resumable_send="-t" in usage.send_line and "receive_resume_token" in usage.send_line,
        bookmarks="bookmark" in usage.commands,
        holds="hold" in usage.commands and "release" in usage.commands,
        size_estimate="n" in send_flags and "P" in send_flags,
        raw_send="w" in send_flags,
        compressed_send="c" in send_flags,
        self_restarting=True,
        parsable_list="p" in usage.list_flags,
        typed_get="-t" in usage.get_line,
        encryption="load-key" in usage.commands,
        # "...@<snap> ...": the snapshot argument may be repeated
        multi_snapshot=re.search(r"@\S*\s+\.\.\.", usage.snapshot_line) is not None,
        # zfs-fuse and every OpenZFS print "clone [-p] ... <snapshot> <filesystem|volume>"
        clones="clone" in usage.commands,
        # a view is ``.zfs/snapshot`` (OpenZFS) or a temporary clone (zfs-fuse: views.py)
        snapshot_views="clone" in usage.commands,
        # every ZFS's compression detects zero blocks (with compression set, not ``off``)
        holes_from_zeros=True,
        # OpenZFS "receive [-FhMnsuv] [-o <property>=<value>] ... [-x <property>] ...";
        # zfs-fuse 0.7 "receive [-vnF] ..." (it takes -u all the same, unprinted)
        receive_properties=re.search(r"\[-o\s", usage.receive_line) is not None
        and re.search(r"\[-x\s", usage.receive_line) is not None,
    )
