"""The reload's config diff and its refusals: pure functions on parsed configs (fast)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cerssd.config import Config, parse_config
from cerssd.config_diff import (
    ConfigDiff,
    RunningRelationship,
    SectionDiff,
    diff_config,
    reload_refusal,
)
from cerssd.reload import _moved
from cerssd.replication.logic.spec import SlaveSpec, parse_relationship


def ssh(host: str) -> dict[str, Any]:
    return {"kind": "ssh", "host": host, "known_hosts": "/etc/ssh/known"}


def rel(master: str = "local", slave: str = "a", **extra: Any) -> dict[str, Any]:
    return {"volume": "tank/web", "master": master, "interval": "1h",
            "slaves": [{"server": slave, "target_volume": "tank/web"}], **extra}


def config(servers: dict[str, Any] | None = None, rels: dict[str, Any] | None = None) -> Config:
    return parse_config({"servers": {"local": {"kind": "local"}, "a": ssh("a.example"),
                                     **(servers or {})},
                         "relationships": rels or {}})


def running(cfg: Config, **flags: Any) -> dict[str, RunningRelationship]:
    return {n: RunningRelationship(s, **flags) for n, s in cfg.relationships.items()}


def test_unchanged_config_is_an_empty_diff() -> None:
    cfg = config(rels={"web": rel()})
    diff = diff_config(cfg, config(rels={"web": rel()}))
    assert not diff and diff == ConfigDiff() and diff.to_json() == {}


def test_added_removed_changed_per_section() -> None:
    old = config({"b": ssh("b.example")}, {"web": rel(), "db": rel(), "gone": rel()})
    new = config({"b": ssh("b2.example"), "c": ssh("c.example")},
                 {"web": rel(), "db": rel(interval="5m"), "new": rel(slave="c")})
    diff = diff_config(old, new)
    assert diff.servers == SectionDiff(added=("c",), changed=("b",))
    assert diff.relationships == SectionDiff(added=("new",), removed=("gone",),
                                             changed=("db",))
    assert not diff.stores
    assert diff.to_json() == {"servers": {"added": ["c"], "changed": ["b"]},
                              "relationships": {"added": ["new"], "removed": ["gone"],
                                                "changed": ["db"]}}


def test_every_spec_key_counts_as_a_change() -> None:
    """Specs compare whole (frozen dataclasses): a key added to the spec later is a change
    without this module knowing it."""
    old = config(rels={"web": rel()})
    for extra in ({"prefix": "x-"}, {"retention": ["1h:all"]}, {"fanout": False},
                  {"slaves": [{"server": "a", "target_volume": "tank/web",
                               "bandwidth_limit": 1 << 20}]}):
        new = config(rels={"web": {**rel(), **extra}})
        assert diff_config(old, new).relationships.changed == ("web",), extra


def test_server_setting_change_is_a_change() -> None:
    old = config()
    for key, value in (("port", 2222), ("user", "zfs"), ("zfs_command", "/sbin/zfs")):
        new = config({"a": {**ssh("a.example"), key: value}})
        assert diff_config(old, new).servers == SectionDiff(changed=("a",)), key


def test_removed_server_still_named_by_an_api_relationship_is_refused() -> None:
    old = config({"b": ssh("b.example")})
    new = config()
    api = parse_relationship("mine", rel(slave="b"), servers=old.servers, origin="api")
    diff = diff_config(old, new)
    refusal = reload_refusal(diff, old, new, {"mine": RunningRelationship(api)})
    assert refusal is not None and refusal.key == "servers.b"
    assert "mine" in refusal.problem and "api" in refusal.problem
    assert reload_refusal(diff, old, new, {}) is None  # nobody names it: it may go


def test_removed_server_named_by_a_failed_over_config_relationship_is_refused() -> None:
    """The roles a failover left are what stays in force, not the file's servers."""
    old = config({"b": ssh("b.example")}, {"web": rel(slave="a")})
    new = config({}, {"web": rel(slave="a")})
    roles = replace(old.relationships["web"], slaves=(SlaveSpec("b", "tank/web"),))
    diff = diff_config(old, new)
    refusal = reload_refusal(diff, old, new,
                             {"web": RunningRelationship(roles, failed_over=True)})
    assert refusal is not None and refusal.key == "servers.b"


def test_removing_a_server_with_its_relationship_is_accepted() -> None:
    old = config({"b": ssh("b.example")}, {"web": rel(slave="b")})
    new = config()
    assert reload_refusal(diff_config(old, new), old, new, running(old)) is None


def test_removed_store_still_named_by_an_api_relationship_is_refused() -> None:
    store = {"endpoint": "http://127.0.0.1:1", "bucket": "bucket",
             "credentials_file": "/etc/cerssd/s3.key"}
    old = parse_config({"stores": {"s3": store}})
    new = parse_config({})
    api = parse_relationship("mine", {**rel(slave="local"), "stores": ["s3"],
                                      "slaves": [{"server": "local",
                                                  "target_volume": "tank/copy"}]},
                             servers=old.servers, stores=old.stores, origin="api")
    refusal = reload_refusal(diff_config(old, new), old, new,
                             {"mine": RunningRelationship(api)})
    assert refusal is not None and refusal.key == "stores.s3"


def test_config_relationship_may_not_take_an_api_relationships_name() -> None:
    old = config()
    new = config(rels={"web": rel()})
    api = parse_relationship("web", rel(), servers=old.servers, origin="api")
    refusal = reload_refusal(diff_config(old, new), old, new, {"web": RunningRelationship(api)})
    assert refusal is not None and refusal.key == "relationships.web"


def test_change_during_a_failover_is_refused() -> None:
    old = config(rels={"web": rel()})
    for new in (config(rels={"web": rel(interval="5m")}), config()):
        refusal = reload_refusal(diff_config(old, new), old, new,
                                 running(old, failover_in_progress=True))
        assert refusal is not None and refusal.key == "relationships.web"


def test_failed_over_relationship_keeps_its_servers_but_may_change_the_rest() -> None:
    old = config({"b": ssh("b.example")}, {"web": rel()})
    flags = running(old, failed_over=True)
    moved = config({"b": ssh("b.example")}, {"web": rel(slave="b")})
    refusal = reload_refusal(diff_config(old, moved), old, moved, flags)
    assert refusal is not None and refusal.key == "relationships.web.slaves"
    rescheduled = config({"b": ssh("b.example")}, {"web": rel(interval="5m")})
    assert reload_refusal(diff_config(old, rescheduled), old, rescheduled, flags) is None


def test_removed_server_a_relationship_keeps_fenced_is_refused() -> None:
    old = config({"b": ssh("b.example")}, {"web": rel()})
    new = config({}, {"web": rel()})
    fenced = {"web": RunningRelationship(old.relationships["web"], failed_over=True,
                                         fenced=frozenset({"b"}))}
    refusal = reload_refusal(diff_config(old, new), old, new, fenced)
    assert refusal is not None and refusal.key == "servers.b" and "fenced" in refusal.problem


def test_config_relationship_overlapping_an_api_tree_is_refused() -> None:
    old = config({"b": ssh("b.example")})
    api = parse_relationship("tenants", {**rel(), "recursive": True}, servers=old.servers,
                             origin="api")
    new = config({"b": ssh("b.example")}, {"web": rel()})  # tank/web to a: inside the tree
    refusal = reload_refusal(diff_config(old, new), old, new,
                             {"tenants": RunningRelationship(api)})
    assert refusal is not None and refusal.key == "relationships.web.volume"
    assert "tenants" in refusal.problem
    elsewhere = config({"b": ssh("b.example")}, {"web": rel(slave="b")})  # another slave
    assert reload_refusal(diff_config(old, elsewhere), old, elsewhere,
                          {"tenants": RunningRelationship(api)}) is None


def test_tree_selection_changes_are_changes_and_a_tree_toggle_restarts() -> None:
    old = config(rels={"web": {**rel(), "recursive": True}})
    narrowed = config(rels={"web": {**rel(), "recursive": True, "exclude": ["tmp"]}})
    single = config(rels={"web": rel()})
    assert diff_config(old, narrowed).relationships.changed == ("web",)
    assert not _moved(old.relationships["web"], narrowed.relationships["web"])
    assert _moved(old.relationships["web"], single.relationships["web"])
