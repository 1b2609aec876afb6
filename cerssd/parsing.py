"""The parsing primitives every part of the configuration shares: the error that names a
key, durations, sizes and the check for unknown keys.

Kept apart from ``config.py`` (which parses the whole file) so that the tables it
delegates to (``objectstore.config``, ``cluster.config``, ``policies.spec``, and
``replication.logic``'s ``spec``, ``retention`` and ``schedule``) read their values with
these without importing the module that imports them: the parser of the whole depends
on the parsers of the parts, never back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", re.ASCII)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_SIZE = re.compile(r"\s*(\d+)\s*(KiB|MiB|GiB|K|M|G)?\s*", re.ASCII)
_SIZE_UNITS = {None: 1, "K": 1 << 10, "KiB": 1 << 10, "M": 1 << 20, "MiB": 1 << 20,
               "G": 1 << 30, "GiB": 1 << 30}


class ConfigError(ValueError):
    """A problem with one key of the configuration file."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class MissingSecret(ConfigError):
    """A secret the file points at is not on this node (yet): a credentials file that does
    not exist, or environment variables that are not set. The daemon will not start
    without it, but the file itself is right: ``--check-config`` reports it as a warning,
    so a file can be checked where its secrets are not (a build host, a package's
    example) and still fail on a real mistake."""


def parse_duration(value: Any, key: str) -> float:
    """Accept a number of seconds or a string such as ``90s``, ``15m``, ``7d``."""
    if isinstance(value, bool):
        raise ConfigError(key, "must be a duration such as 30s, 15m or 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ConfigError(key, f"must be a duration such as 30s, 15m or 7d, not {value!r}")
    if seconds < 0:
        raise ConfigError(key, "must not be negative")
    return seconds


def parse_size(value: Any, key: str, minimum: int = 1 << 20) -> int:
    """Accept a number of bytes or a string such as ``64MiB``; at least ``minimum``."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value)):
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    else:
        raise ConfigError(key, f'must be a size such as "64MiB", not {value!r}')
    if size < minimum:
        raise ConfigError(key, f"must be at least {minimum >> 20}MiB")
    return size


def reject_unknown(t: Mapping[str, Any], prefix: str, known: set[str]) -> None:
    """A key the daemon does not know is an error naming it (a typo must not be ignored)."""
    for key in t:
        if key not in known:
            raise ConfigError(prefix + key, f"unknown key (known: {', '.join(sorted(known))})")
