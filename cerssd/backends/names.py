"""Validation of ZFS dataset and snapshot names, done before any command runs.

Names are checked against a strict subset of what ZFS accepts (letters, digits
and ``_ - : .``; no spaces), so that nothing an operator or an API client types
can become a shell word, an option, or a path outside the pool. Remote command
lines are still quoted; validation is the first wall, quoting the second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_NAME_LENGTH = 255
_COMPONENT = re.compile(r"^[A-Za-z0-9_.:-]+$")
_POOL = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]*$")
_RESERVED_POOLS = re.compile(r"^(mirror|raidz\d?|draid\d?|spare|log|cache|c\d.*)$")


class InvalidName(ValueError):
    """A dataset or snapshot name that cerssd refuses to pass to zfs."""


@dataclass(frozen=True)
class SnapshotName:
    volume: str
    snapshot: str

    def __str__(self) -> str:
        return f"{self.volume}@{self.snapshot}"


def validate_volume(name: str) -> str:
    """Return ``name`` if it is a safe ``pool[/dataset...]`` name, else raise InvalidName."""
    if not isinstance(name, str) or not name:
        raise InvalidName("a volume name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"volume name longer than {MAX_NAME_LENGTH} characters")
    parts = name.split("/")
    if not _POOL.match(parts[0]) or _RESERVED_POOLS.match(parts[0]):
        raise InvalidName(f"{name!r}: the pool name must start with a letter and use only "
                          "letters, digits and _ - : . (and not be a reserved vdev word)")
    for part in parts[1:]:
        _check_component(name, part)
    return name


def validate_snapshot(name: str) -> SnapshotName:
    """Parse and check ``volume@snapshot``."""
    return _validate_child(name, "@", "snapshot")


def validate_bookmark(name: str) -> SnapshotName:
    """Parse and check ``volume#bookmark``."""
    return _validate_child(name, "#", "bookmark")


def _validate_child(name: str, separator: str, kind: str) -> SnapshotName:
    if not isinstance(name, str) or name.count(separator) != 1:
        raise InvalidName(f"{name!r}: a {kind} name has the form pool/volume{separator}name")
    volume, _, child = name.partition(separator)
    validate_volume(volume)
    _check_component(name, child)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"{kind} name longer than {MAX_NAME_LENGTH} characters")
    return SnapshotName(volume, child)


def validate_snapshot_label(label: str) -> str:
    """The part after ``@`` on its own (e.g. a name chosen for a new snapshot)."""
    if not isinstance(label, str):
        raise InvalidName("a snapshot name must be a string")
    _check_component(label, label)
    return label


def _check_component(whole: str, part: str) -> None:
    if part in ("", ".", ".."):
        raise InvalidName(f"{whole!r}: empty, '.' or '..' component")
    if not _COMPONENT.match(part):
        raise InvalidName(f"{whole!r}: only letters, digits and _ - : . are allowed")
    if part.startswith("-"):
        raise InvalidName(f"{whole!r}: a component must not start with '-'")
