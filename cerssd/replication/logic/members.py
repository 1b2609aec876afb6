"""Which datasets of a tree a relationship keeps replicated: subtree, glob patterns, a property.

A storage node holds hundreds of volumes created and destroyed all day, so a relationship
names a root and a rule rather than a list. Membership is computed here, purely, from one
recursive listing of the master's tree (names, guids and the selection property's value)
that the backend reads with one command per cycle: a volume created under the root joins at
the next cycle without a command per volume and without the operator.

The three selectors combine as written:

- ``recursive``: the root and every descendant (filesystems and zvols);
- ``include`` / ``exclude``: glob patterns on names relative to the root (``"tmp"``,
  ``"*/scratch"``). A pattern that matches a dataset also matches everything below it, so
  excluding ``tmp`` leaves out ``tmp/a`` too; ``.`` names the root itself. With ``include``
  a dataset must match one of them; any ``exclude`` match takes it out;
- ``property``: a ZFS user property (``module:name``) whose value is ``on`` or the
  relationship's name selects a dataset. ZFS inheritance does the rest, as zfs-autobackup's
  property does: set it on a parent and the children follow, ``off`` on a child takes that
  child (and what inherits from it) out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

#: ZFS user properties: a colon, then lowercase letters, digits and ``: + . _ -``; the
#: module part (before the first colon) may not be empty. 256 characters at most.
_USER_PROPERTY = re.compile(r"[a-z0-9+._-]+:[a-z0-9:+._-]*")
_MAX_PROPERTY = 256
#: Values of the property that select a dataset besides the relationship's own name.
SELECTING_VALUES = frozenset({"on"})
ROOT_PATTERN = "."


class SelectionError(ValueError):
    """A tree selection that cannot work as written (the message names what is wrong)."""


def validate_user_property(name: str) -> str:
    """``name`` if it is a valid ZFS user property (``module:name``), else SelectionError."""
    if len(name) > _MAX_PROPERTY or _USER_PROPERTY.fullmatch(name) is None:
        raise SelectionError(
            f"{name!r} is not a ZFS user property: it needs a colon (module:name) and only "
            "lowercase letters, digits and ': + . _ -'")
    return name


def validate_pattern(pattern: str) -> str:
    """A glob on names relative to the root: no leading or trailing slash, no empty level."""
    if pattern == ROOT_PATTERN:
        return pattern
    if not pattern or pattern.startswith("/") or pattern.endswith("/") or "//" in pattern \
            or "@" in pattern or "\0" in pattern:
        raise SelectionError(
            f"{pattern!r} is not a pattern on names below the root (like 'tmp' or "
            f"'*/scratch'; {ROOT_PATTERN!r} for the root itself)")
    return pattern


@dataclass(frozen=True)
class TreeSelection:
    """How a relationship picks its members under ``root``."""

    root: str
    recursive: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    by_property: str | None = None

    def __post_init__(self) -> None:
        if (self.include or self.exclude) and not self.is_tree:
            raise SelectionError("include and exclude need recursive = true or a property")
        for p in (*self.include, *self.exclude):
            validate_pattern(p)
        if self.by_property is not None:
            validate_user_property(self.by_property)

    @property
    def whole_subtree(self) -> bool:
        """Whether every dataset under the root is a member (one recursive command on the
        root then acts on the members and nothing else)."""
        return self.recursive and not self.include and not self.exclude \
            and self.by_property is None

    @property
    def is_tree(self) -> bool:
        """Whether members are found by listing the tree (else: the root alone)."""
        return self.recursive or self.by_property is not None


@dataclass(frozen=True)
class ListedDataset:
    """One filesystem or zvol of the master's tree, as one recursive listing gives it."""

    name: str
    guid: str
    #: The selection property's value (``None`` when unset or when no property is used).
    selector: str | None = None


@dataclass(frozen=True)
class Member:
    """A dataset the relationship keeps replicated."""

    name: str
    #: Its name below the root ("" for the root itself): the same path under each slave's
    #: target root, so the slave mirrors the hierarchy.
    relative: str
    guid: str

    def target(self, target_root: str) -> str:
        """This member's name under a slave's ``target_root``."""
        return f"{target_root}/{self.relative}" if self.relative else target_root


def relative_name(root: str, name: str) -> str | None:
    """``name`` relative to ``root`` ("" for the root), or None if it is not in the tree."""
    if name == root:
        return ""
    if name.startswith(root + "/"):
        return name[len(root) + 1:]
    return None


def matches(pattern: str, relative: str) -> bool:
    """Whether ``pattern`` matches ``relative`` or one of its ancestors below the root."""
    if pattern == ROOT_PATTERN:
        return relative == ""
    if not relative:
        return False
    parts = relative.split("/")
    return any(fnmatchcase("/".join(parts[:depth]), pattern) for depth in range(1, len(parts) + 1))


def select(selection: TreeSelection, relationship: str,
           listing: Iterable[ListedDataset]) -> tuple[Member, ...]:
    """The members among ``listing``, parents before children (sorted by name)."""
    chosen = []
    for ds in listing:
        rel = relative_name(selection.root, ds.name)
        if rel is None or not _selected(selection, relationship, rel, ds.selector):
            continue
        chosen.append(Member(name=ds.name, relative=rel, guid=ds.guid))
    return tuple(sorted(chosen, key=lambda m: m.name))


def _selected(selection: TreeSelection, relationship: str, rel: str,
              selector: str | None) -> bool:
    if not selection.is_tree:
        return rel == ""
    if selection.by_property is not None and selector not in SELECTING_VALUES | {relationship}:
        return False
    if selection.include and not any(matches(p, rel) for p in selection.include):
        return False
    return not any(matches(p, rel) for p in selection.exclude)


def unmatched_patterns(selection: TreeSelection,
                       listing: Sequence[ListedDataset]) -> tuple[str, ...]:
    """The include/exclude patterns that match nothing in the tree: worth a warning (a typo
    selects nothing silently), never an error (the dataset may be created later)."""
    rels = [r for r in (relative_name(selection.root, ds.name) for ds in listing)
            if r is not None]
    return tuple(p for p in (*selection.include, *selection.exclude)
                 if not any(matches(p, r) for r in rels))


def trees_overlap(a: TreeSelection, b: TreeSelection) -> bool:
    """Whether two selections can share a dataset (same server assumed): one's root is in
    the other's tree. Patterns and properties are not consulted; they change with the pool,
    so two relationships whose trees nest are refused whatever they select today."""
    def covers(outer: TreeSelection, inner: TreeSelection) -> bool:
        rel = relative_name(outer.root, inner.root)
        return rel is not None and (rel == "" or outer.is_tree)
    return covers(a, b) or covers(b, a)
