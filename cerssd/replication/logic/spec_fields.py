"""Parsers of the keys relationships and snapshot policies share, one definition each.

A ``[relationships.NAME]`` and a ``[snapshots.NAME]`` table select volumes the same way
(``volume``, ``recursive``, ``include``, ``exclude``, ``property``), name a server, a
label prefix and a retention grid: parsed here so a mistyped key gets the same clear
``ConfigError`` (naming the dotted key) in either table, and a relationship can be
checked against the policy whose snapshots it replicates by comparing parsed values.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ...parsing import ConfigError
from ...storage.names import (
    InvalidName,
    validate_snapshot,
    validate_snapshot_label,
    validate_volume,
)
from .members import SelectionError, TreeSelection
from .retention import Tier, parse_grid


def selection(t: Mapping[str, Any], key: str, volume: str) -> TreeSelection:
    """The tree selection as written: recursive, include/exclude patterns, a property."""
    recursive = flag(t.get("recursive", False), f"{key}.recursive")
    patterns = {}
    for which in ("include", "exclude"):
        value = t.get(which, [])
        if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
            raise ConfigError(f"{key}.{which}", 'must be a list of patterns such as '
                              '["tmp", "*/scratch"]')
        patterns[which] = tuple(value)
    prop = t.get("property")
    if prop is not None and not isinstance(prop, str):
        raise ConfigError(f"{key}.property", "must be a ZFS user property such as "
                          "cerssd:replicate")
    try:
        return TreeSelection(volume, recursive=recursive, include=patterns["include"],
                             exclude=patterns["exclude"], by_property=prop)
    except SelectionError as exc:
        which = "property" if prop is not None and "property" in str(exc) else (
            "include" if patterns["include"] else "exclude" if patterns["exclude"]
            else "recursive")
        raise ConfigError(f"{key}.{which}", str(exc)) from None


def flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, "must be true or false")
    return value


def bounded_int(value: Any, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(key, f"must be a whole number from {low} to {high}")
    return value


def server(value: Any, key: str, servers: Collection[str]) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, "must be the name of a configured server")
    if value not in servers:
        raise ConfigError(key, f"no server {value!r} is configured (servers: "
                          f"{', '.join(sorted(servers))})")
    return value


def volume(value: Any, key: str, *, required: bool) -> str:
    if value is None and required:
        raise ConfigError(key, "is required (pool/path of a filesystem or zvol)")
    if not isinstance(value, str):
        raise ConfigError(key, "must be a string such as tank/data")
    try:
        return validate_volume(value)
    except InvalidName as exc:
        raise ConfigError(key, str(exc)) from None


def as_list(value: Any, key: str) -> list[str]:
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise ConfigError(key, 'must be a list of tiers such as ["1h:all", "1d:1h"]')
    return value


def grid(value: Any, key: str) -> tuple[Tier, ...]:
    """A retention grid (``["1h:all", "1d:1h"]``)."""
    return tuple(parse_grid(as_list(value, key), key))


def prefix(value: Any, key: str) -> str:
    """A snapshot label prefix: non-empty and usable in snapshot names."""
    if not isinstance(value, str) or not value:
        raise ConfigError(key, "must be a non-empty string")
    try:
        validate_snapshot_label(value + "x")
    except InvalidName as exc:
        raise ConfigError(key, f"not usable in snapshot names: {exc}") from None
    return value


def check_label_room(prefix: str, suffix: str, volumes: Sequence[str], key: str) -> None:
    """Every snapshot ``PREFIX + SUFFIX`` of ``volumes`` must fit ZFS's 255-byte limit."""
    for name in volumes:
        try:
            validate_snapshot(f"{name}@{prefix}{suffix}")
        except InvalidName as exc:
            raise ConfigError(key, f"too long for {name}: the snapshots it names would "
                              f"not fit ({exc})") from None
