"""Validation of the names cerssd accepts, done before any command runs.

Dataset and snapshot names are checked against a strict subset of what ZFS accepts
(letters, digits and ``_ - : .``; no spaces), so that nothing an operator or an API
client types can become a shell word, an option, or a path outside the pool. Remote
command lines are still quoted; validation is the first wall, quoting the second.

Every check is a *full* match (``re.fullmatch``): with ``re.match("^...$")`` Python's
``$`` also matches before a final newline, so ``"web\\n"`` would pass.

The ``*_PATTERN`` strings are the same grammars for the OpenAPI document (JSON Schema,
ECMA-262 regexes, where ``$`` is the end of the text). They are necessary, not sufficient:
the reserved pool words and ``.``/``..`` components are refused here, not by the pattern.

Lengths: ZFS limits a full dataset or snapshot name to 255 bytes (ZFS_MAX_DATASET_NAME_LEN
is 256 with the NUL). Names here are ASCII, so characters are bytes. A snapshot label on
its own is at most 253 characters (the shortest volume, a one-letter pool, plus ``@``
leaves that much); with its volume the whole name must still fit in 255.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_NAME_LENGTH = 255
MAX_LABEL_LENGTH = MAX_NAME_LENGTH - 2
#: Server, store and relationship names: they become link names, metric labels, route
#: segments and config keys.
MAX_OBJECT_NAME_LENGTH = 63

_COMPONENT_RE = r"[A-Za-z0-9_.:][A-Za-z0-9_.:-]*"
_POOL_RE = r"[A-Za-z][A-Za-z0-9_.:-]*"
_OBJECT_RE = rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_OBJECT_NAME_LENGTH - 1}}}"
_COMPONENT = re.compile(_COMPONENT_RE)
_POOL = re.compile(_POOL_RE)
_OBJECT = re.compile(_OBJECT_RE)
_RESERVED_POOLS = re.compile(r"mirror|raidz\d?|draid\d?|spare|log|cache|c\d.*")
#: ZFS user properties: lowercase letters, digits and ``: . _ -`` (ZFS refuses ``+``), with
#: a colon after a non-empty module part (``module:name``). 256 characters at most.
_USER_PROPERTY = re.compile(r"[a-z0-9._-]+:[a-z0-9:._-]*")
MAX_USER_PROPERTY_LENGTH = 256
#: A native ZFS property as ``zfs set``/``receive -o`` spell it (``canmount``,
#: ``sharenfs``, ``com.sun``-less names only: user properties have a colon).
_NATIVE_PROPERTY = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: A property value passed to ``zfs``: printable, no line breaks or tabs (``zfs get -H``
#: prints tab-separated lines), at most ZFS's 8 KiB limit for user properties.
_PROPERTY_VALUE = re.compile(r"[^\x00-\x1f\x7f]{1,8192}")

VOLUME_PATTERN = f"^{_POOL_RE}(/{_COMPONENT_RE})*$"
LABEL_PATTERN = f"^{_COMPONENT_RE}$"
SNAPSHOT_PATTERN = f"^{_POOL_RE}(/{_COMPONENT_RE})*@{_COMPONENT_RE}$"
OBJECT_NAME_PATTERN = f"^{_OBJECT_RE}$"


class InvalidName(ValueError):
    """A name that cerssd refuses (to pass to zfs, or to use as a server, store or
    relationship name)."""


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
    if not _POOL.fullmatch(parts[0]) or _RESERVED_POOLS.fullmatch(parts[0]):
        raise InvalidName(f"{name!r}: the pool name must start with a letter and use only "
                          "letters, digits and _ - : . (and not be a reserved vdev word)")
    for part in parts[1:]:
        _check_component(name, part)
    return name


def pool_of(volume: str) -> str:
    """The pool of a ``pool[/dataset...]`` name: its first component. Nothing is checked
    here (a name is validated where it comes in); every backend's ``pool_of`` and the
    daemon's per-pool bookkeeping read the pool this one way."""
    return volume.partition("/")[0]


def validate_snapshot(name: str) -> SnapshotName:
    """Parse and check ``volume@snapshot``."""
    return _validate_child(name, "@", "snapshot")


def validate_bookmark(name: str) -> SnapshotName:
    """Parse and check ``volume#bookmark``."""
    return _validate_child(name, "#", "bookmark")


def _validate_child(name: str, separator: str, kind: str) -> SnapshotName:
    if not isinstance(name, str) or name.count(separator) != 1:
        raise InvalidName(f"{name!r}: a {kind} name has the form pool/volume{separator}name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"{kind} name longer than {MAX_NAME_LENGTH} characters")
    volume, _, child = name.partition(separator)
    validate_volume(volume)
    _check_component(name, child)
    return SnapshotName(volume, child)


def validate_snapshot_label(label: str) -> str:
    """The part after ``@`` on its own (e.g. a name chosen for a new snapshot)."""
    if not isinstance(label, str):
        raise InvalidName("a snapshot name must be a string")
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidName(f"snapshot name longer than {MAX_LABEL_LENGTH} characters")
    _check_component(label, label)
    return label


def validate_object_name(name: str, kind: str) -> str:
    """A server, store or relationship name (``kind`` says which, for the message)."""
    if not isinstance(name, str) or not _OBJECT.fullmatch(name):
        raise InvalidName(f"{name!r}: {kind} names use letters, digits, '_', '.', '-', "
                          f"start with a letter or digit, and have at most "
                          f"{MAX_OBJECT_NAME_LENGTH} characters")
    return name


def validate_user_property(name: str) -> str:
    """``name`` if it is a ZFS user property (``module:name``), else InvalidName: the
    property a tree's members are selected by, passed to ``zfs get``."""
    if not isinstance(name, str) or len(name) > MAX_USER_PROPERTY_LENGTH \
            or _USER_PROPERTY.fullmatch(name) is None:
        raise InvalidName(
            f"{name!r} is not a ZFS user property: it needs a colon (module:name) and only "
            "lowercase letters, digits and ': . _ -'")
    return name


def validate_property(name: str) -> str:
    """``name`` if it is a native property name or a user property (full match), else
    InvalidName: what a relationship's ``receive_exclude``/``receive_set`` name."""
    if isinstance(name, str) and _NATIVE_PROPERTY.fullmatch(name):
        return name
    try:
        return validate_user_property(name)
    except InvalidName:
        raise InvalidName(f"{name!r} is not a ZFS property name: a native one is lowercase "
                          "letters, digits and '_' (canmount), a user one module:name"
                          ) from None


def validate_property_value(value: str) -> str:
    """A value for ``zfs set``/``receive -o``: 1 to 8192 printable characters."""
    if not isinstance(value, str) or not _PROPERTY_VALUE.fullmatch(value):
        raise InvalidName(f"{value!r} is not a usable property value: 1 to 8192 characters, "
                          "no control characters")
    return value


def _check_component(whole: str, part: str) -> None:
    if part in ("", ".", ".."):
        raise InvalidName(f"{whole!r}: empty, '.' or '..' component")
    if not _COMPONENT.fullmatch(part):
        raise InvalidName(f"{whole!r}: only letters, digits and _ - : . are allowed, and "
                          "a component must not start with '-'")
