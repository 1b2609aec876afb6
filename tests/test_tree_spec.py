"""Tree relationships as written in the config: what is accepted, and each refusal naming
its key (issue 15's bad input: a property that is no ZFS user property, patterns without a
tree, overlapping trees sending one member to one slave, a target inside the tree)."""

from __future__ import annotations

from typing import Any

import pytest

from cerssd.config import parse_config
from cerssd.parsing import ConfigError
from cerssd.replication.logic.spec import parse_relationship

SERVERS = {"local": {"kind": "local"}, "lab1": {"kind": "local"}, "lab2": {"kind": "local"}}


def config(**relationships: dict[str, Any]) -> dict[str, Any]:
    return {"servers": SERVERS, "relationships": relationships}


def tree(volume: str = "tank/cinder", slave: str = "lab1", **keys: Any) -> dict[str, Any]:
    return {"volume": volume, "slaves": [slave], "interval": "5m", **keys}


def test_a_tree_is_parsed_with_its_selection() -> None:
    cfg = parse_config(config(cinder=tree(recursive=True, exclude=["tmp", "*/scratch"],
                                          include=["*"], max_parallel=8)))
    spec = cfg.relationships["cinder"]
    assert spec.is_tree and spec.selection is not None
    assert spec.selection.exclude == ("tmp", "*/scratch") and spec.max_parallel == 8
    assert spec.to_json()["recursive"] is True and spec.to_json()["exclude"] == ["tmp",
                                                                                  "*/scratch"]
    by_property = parse_config(config(t=tree(volume="tank", property="cerssd:replicate")))
    assert by_property.relationships["t"].is_tree


def test_a_single_volume_stays_what_it_was() -> None:
    spec = parse_config(config(web=tree(volume="tank/web"))).relationships["web"]
    assert not spec.is_tree and "recursive" not in spec.to_json()


@pytest.mark.parametrize(("keys", "key"), [
    ({"property": "replicate"}, "property"),
    ({"property": "Cerssd:Replicate"}, "property"),
    ({"property": 3}, "property"),
    ({"include": ["tmp"]}, "include"),
    ({"recursive": True, "exclude": ["/abs"]}, "exclude"),
    ({"recursive": True, "exclude": "tmp"}, "exclude"),
    ({"recursive": "yes"}, "recursive"),
    ({"recursive": True, "max_parallel": 0}, "max_parallel"),
    ({"recursive": True, "max_parallel": 65}, "max_parallel"),
    ({"recursive": True, "max_parallel": True}, "max_parallel"),
    ({"recursive": True, "member_metrics": 1}, "member_metrics"),
])
def test_bad_tree_keys_are_refused_naming_the_key(keys: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(cinder=tree(**keys)))
    assert info.value.key == f"relationships.cinder.{key}", info.value


def test_overlapping_trees_to_one_slave_are_refused_naming_both() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(all=tree(volume="tank", recursive=True),
                            web=tree(volume="tank/web")))
    assert info.value.key == "relationships.web.volume" and "all" in info.value.problem
    # the same trees to different slaves, or on different masters, are fine
    parse_config(config(all=tree(volume="tank", recursive=True),
                        web=tree(volume="tank/web", slave="lab2")))
    parse_config(config(all=tree(volume="tank", recursive=True),
                        web={**tree(volume="tank/web"), "master": "lab2"}))


def test_a_target_inside_the_tree_on_the_masters_server_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(cinder={"volume": "tank/cinder", "recursive": True,
                                    "interval": "5m", "slaves": [
                                        {"server": "local",
                                         "target_volume": "tank/cinder/copy"}]}))
    assert info.value.key == "relationships.cinder.slaves[0].target_volume"


def test_a_tree_backs_up_to_named_stores_and_unknown_names_are_refused() -> None:
    spec = parse_relationship("cinder", tree(recursive=True, stores=["s3"]),
                              servers=SERVERS, stores=("s3",))
    assert spec.is_tree and spec.stores == ("s3",)
    with pytest.raises(ConfigError) as info:
        parse_relationship("cinder", tree(recursive=True, stores=["s4"]),
                           servers=SERVERS, stores=("s3",))
    assert info.value.key == "relationships.cinder.stores[0]"
    with pytest.raises(ConfigError) as info:
        parse_relationship("cinder", tree(recursive=True, stores=["s3", "s3"]),
                           servers=SERVERS, stores=("s3",))
    assert info.value.key == "relationships.cinder.stores"
