"""Snapshot policies' config and their binding to relationships, as plain logic (fast tier).

Every bad input gets a ConfigError naming the dotted key, as the rest of the config does:
an operator who mistypes a policy learns which key and why.
"""

from __future__ import annotations

from typing import Any

import pytest

from cerssd.config import parse_config
from cerssd.parsing import ConfigError
from cerssd.policies.spec import parse_policy
from cerssd.replication.logic.retention import parse_grid
from cerssd.replication.logic.schedule import Cron, Interval

SERVERS = {"local", "standby1"}


def policy(**extra: Any) -> Any:
    return parse_policy("hourly", {"volume": "tank/data", "interval": "1h", **extra},
                        servers=SERVERS)


def config(policies: dict[str, Any], relationships: dict[str, Any] | None = None) -> Any:
    return parse_config({
        "servers": {"local": {}, "standby1": {"kind": "local"}},
        "snapshots": policies, "relationships": relationships or {}})


def rel(**extra: Any) -> dict[str, Any]:
    return {"volume": "tank/data", "slaves": [{"server": "standby1",
                                                "target_volume": "backup/data"}], **extra}


def test_a_minimal_policy_gets_its_defaults() -> None:
    p = policy()
    assert (p.server, p.volume, p.prefix) == ("local", "tank/data", "cerssd-hourly-")
    assert isinstance(p.schedule, Interval) and p.schedule.seconds == 3600
    assert p.retention == tuple(parse_grid(["1h:all", "1d:1h", "1w:1d"]))
    assert not p.is_tree and p.hooks is None and p.keep_min == 1


def test_a_tree_policy_on_cron() -> None:
    p = policy(interval=None, cron="0 * * * *", recursive=True, exclude=["tmp"],
               retention=["1d:1h"])
    assert isinstance(p.schedule, Cron) and p.is_tree
    assert p.selection.exclude == ("tmp",)
    assert p.to_json()["schedule"] == "cron 0 * * * *"


@pytest.mark.parametrize(("extra", "key", "words"), [
    ({"volume": None}, "snapshots.hourly.volume", "required"),
    ({"volume": "tank/da ta"}, "snapshots.hourly.volume", ""),
    ({"server": "nowhere"}, "snapshots.hourly.server", "no server 'nowhere'"),
    ({"cron": "0 * * * *"}, "snapshots.hourly", "either interval or cron"),
    ({"interval": "soon"}, "snapshots.hourly.interval", "duration"),
    ({"retention": ["1d"]}, "snapshots.hourly.retention[0]", "1d:1h"),
    ({"retention": []}, "snapshots.hourly.retention", "at least one tier"),
    ({"prefix": ""}, "snapshots.hourly.prefix", "non-empty"),
    ({"prefix": "a@b"}, "snapshots.hourly.prefix", "snapshot names"),
    ({"prefix": "x" * 250}, "snapshots.hourly.prefix", "too long"),
    ({"include": ["db"]}, "snapshots.hourly.include", "recursive"),
    ({"recursive": "yes"}, "snapshots.hourly.recursive", "true or false"),
    ({"property": "NoColon"}, "snapshots.hourly.property", "user property"),
    ({"keep": 3}, "snapshots.hourly.keep", "unknown key"),
    ({"keep_min": 0}, "snapshots.hourly.keep_min", "at least 1"),
])
def test_bad_policy_keys_are_named(extra: dict[str, Any], key: str, words: str) -> None:
    table = {"volume": "tank/data", "interval": "1h", **extra}
    table = {k: v for k, v in table.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        parse_policy("hourly", table, servers=SERVERS)
    assert err.value.key == key, err.value
    assert words in err.value.problem


def test_a_bad_policy_name_is_named() -> None:
    with pytest.raises(ConfigError) as err:
        config({"bad name": {"volume": "tank/data", "interval": "1h"}})
    assert err.value.key == "snapshots.bad name"


def test_a_relationship_takes_its_policys_prefix_and_grids() -> None:
    c = config({"hourly": {"volume": "tank/data", "interval": "1h",
                           "retention": ["1d:1h"]}},
               {"web": rel(snapshots="hourly")})
    web = c.relationships["web"]
    assert web.snapshots == "hourly" and web.schedule is None
    assert web.prefix == "cerssd-hourly-"
    assert web.retention == web.slave_retention == c.policies["hourly"].retention
    assert web.to_json()["retention"] == ["1d:1h"]
    assert web.to_json()["schedule"] == "after each run of policy hourly"
    own = config({"hourly": {"volume": "tank/data", "interval": "1h"}},
                 {"web": rel(snapshots="hourly", slave_retention=["2d:1d"],
                             interval="15m")}).relationships["web"]
    assert own.slave_retention == tuple(parse_grid(["2d:1d"]))
    assert isinstance(own.schedule, Interval)


@pytest.mark.parametrize(("policies", "relationship", "key", "words"), [
    ({}, rel(snapshots="hourly"), "relationships.web.snapshots", "no [snapshots.hourly]"),
    ({"hourly": {"volume": "tank/other", "interval": "1h"}}, rel(snapshots="hourly"),
     "relationships.web.snapshots", "covers tank/other"),
    ({"hourly": {"volume": "tank/data", "interval": "1h", "server": "standby1"}},
     rel(snapshots="hourly"), "relationships.web.snapshots", "master is local"),
    ({"hourly": {"volume": "tank/data", "interval": "1h", "recursive": True}},
     rel(snapshots="hourly"), "relationships.web.snapshots", "recursive=true"),
    ({"hourly": {"volume": "tank/data", "interval": "1h", "recursive": True,
                 "exclude": ["tmp"]}},
     rel(snapshots="hourly", recursive=True), "relationships.web.snapshots",
     "exclude=['tmp']"),
    ({"hourly": {"volume": "tank/data", "interval": "1h"}},
     rel(snapshots="hourly", prefix="mine-"), "relationships.web.prefix", "policy's prefix"),
    ({"hourly": {"volume": "tank/data", "interval": "1h"}},
     rel(snapshots="hourly", retention=["1d:1h"]), "relationships.web.retention",
     "policy's retention"),
    ({"hourly": {"volume": "tank/data", "interval": "1h"}}, rel(snapshots=3),
     "relationships.web.snapshots", "name of a snapshot policy"),
    ({"hourly": {"volume": "tank/data", "interval": "1h"}}, rel(interval="1h",
                                                                prefix="cerssd-"),
     "relationships.web.prefix", "one starts with the other"),
])
def test_bad_bindings_are_named(policies: dict[str, Any], relationship: dict[str, Any],
                                key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(policies, {"web": relationship})
    assert err.value.key == key, err.value
    assert words in err.value.problem, err.value.problem


def test_nested_prefixes_of_two_policies_on_one_tree_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        config({"a": {"volume": "tank/data", "interval": "1h", "prefix": "auto-",
                      "recursive": True},
                "b": {"volume": "tank/data/db", "interval": "1d", "prefix": "auto-daily-"},
                })
    assert err.value.key == "snapshots.b.prefix"
    # apart: a volume and one below it that is not in its tree, different volumes, or
    # prefixes that do not nest
    config({"a": {"volume": "tank/data", "interval": "1h", "prefix": "auto-"},
            "b": {"volume": "tank/data/db", "interval": "1d", "prefix": "auto-daily-"}})
    config({"a": {"volume": "tank/data", "interval": "1h", "prefix": "auto-"},
            "b": {"volume": "tank/logs", "interval": "1d", "prefix": "auto-daily-"}})
    config({"hourly": {"volume": "tank/data", "interval": "1h"},
            "daily": {"volume": "tank/data", "interval": "1d"}},
           {"web": rel(interval="5m")})


def test_a_reload_diff_names_the_policies_added_removed_and_changed() -> None:
    from cerssd.config_diff import diff_config
    old = config({"a": {"volume": "tank/a", "interval": "1h"},
                  "b": {"volume": "tank/b", "interval": "1h"}})
    new = config({"a": {"volume": "tank/a", "interval": "2h"},
                  "c": {"volume": "tank/c", "interval": "1h"}})
    diff = diff_config(old, new)
    assert (diff.policies.added, diff.policies.removed, diff.policies.changed) == (
        ("c",), ("b",), ("a",))
    assert diff.to_json() == {"policies": {"added": ["c"], "removed": ["b"],
                                           "changed": ["a"]}}
    assert not diff_config(old, old)


def test_hooks_belong_to_the_policy_a_relationship_replicates() -> None:
    hooks = {"pre": ["/bin/true"]}
    c = config({"hourly": {"volume": "tank/data", "interval": "1h", "hooks": hooks}})
    assert c.policies["hourly"].hooks is not None
    assert c.policies["hourly"].to_json()["hooks"]["pre"] == ["/bin/true"]
    with pytest.raises(ConfigError) as err:
        config({"hourly": {"volume": "tank/data", "interval": "1h"}},
               {"web": rel(snapshots="hourly", hooks=hooks)})
    assert err.value.key == "relationships.web.hooks"
    assert "[snapshots.hourly]" in err.value.problem
    with pytest.raises(ConfigError) as err:
        config({"hourly": {"volume": "tank/data", "interval": "1h",
                           "hooks": {"pre": ["/no/such/tool"]}}})
    assert err.value.key.startswith("snapshots.hourly.hooks"), err.value
