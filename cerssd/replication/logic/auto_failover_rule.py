"""Automatic failover's rule (opt-in, clustered managers only): when, and to whom.

The leader of a relationship with ``auto_failover = true`` promotes a slave when the
master has not answered for ``failover_after``, and only if what that slave would lose
is within ``max_data_loss``: the writes the master may have taken between the slave's
newest snapshot and the moment the master stopped answering. Otherwise it promotes
nobody and says why (an operator can still force a failover). The best slave is the
one with the newest snapshot; a tie goes to the one listed first.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ...parsing import ConfigError, parse_duration
from .slave_status import SlaveStatus

KEYS = {"auto_failover", "failover_after", "max_data_loss"}
DEFAULT_AFTER = 30.0
DEFAULT_MAX_DATA_LOSS = 300.0


class AutoState(enum.StrEnum):
    """Where a relationship's automatic failover stands."""

    #: The master answers.
    WATCHING = "watching"
    #: The master does not answer; not for ``failover_after`` yet.
    MASTER_DOWN = "master-down"
    #: A slave was promoted (the failover activity is named).
    PROMOTED = "promoted"
    #: The master is down and no slave is within ``max_data_loss``: only an alert.
    REFUSED = "refused"


@dataclass(frozen=True)
class AutoFailover:
    after: float = DEFAULT_AFTER
    max_data_loss: float = DEFAULT_MAX_DATA_LOSS

    def to_json(self) -> dict[str, Any]:
        return {"failover_after": self.after, "max_data_loss": self.max_data_loss}


@dataclass(frozen=True)
class Decision:
    #: The slave to promote; None: refused (``reason`` says why).
    promote: str | None
    reason: str
    #: The promoted (or best) slave's possible loss in seconds; None if unknown.
    loss: float | None = None


def parse_auto_failover(t: Mapping[str, Any], key: str, *, tree: bool,
                        origin: str) -> AutoFailover | None:
    enabled = t.get("auto_failover", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{key}.auto_failover", "must be true or false")
    after = parse_duration(t.get("failover_after", DEFAULT_AFTER), f"{key}.failover_after")
    if after < 1:
        raise ConfigError(f"{key}.failover_after", "must be at least 1s")
    loss = parse_duration(t.get("max_data_loss", DEFAULT_MAX_DATA_LOSS),
                          f"{key}.max_data_loss")
    if not enabled:  # checked above all the same: a typo waits for no one
        return None
    if tree:
        raise ConfigError(f"{key}.auto_failover", "not for a tree relationship (its "
                          "unplanned failover may need an operator's choice of point)")
    if origin != "config":
        raise ConfigError(f"{key}.auto_failover", "only the config file may enable it "
                          "(clustered managers share the config's relationships)")
    return AutoFailover(after=after, max_data_loss=loss)


def decide(policy: AutoFailover, slaves: Mapping[str, SlaveStatus],
           fenced: Collection[str], down_since: float) -> Decision:
    """Whom to promote now that the master has been down long enough, or why nobody."""
    best: tuple[float, str] | None = None
    for name, status in slaves.items():
        if name in fenced or status.last_snapshot_created is None:
            continue
        loss = max(0.0, down_since - status.last_snapshot_created)
        if best is None or loss < best[0]:
            best = (loss, name)
    if best is None:
        return Decision(None, "no slave has a snapshot of the relationship")
    loss, name = best
    if loss > policy.max_data_loss:
        return Decision(None, f"the best slave {name} would lose up to {loss:.0f} s of "
                        f"writes, over max_data_loss ({policy.max_data_loss:.0f} s)", loss)
    return Decision(name, f"{name} loses at most {loss:.0f} s of writes", loss)
