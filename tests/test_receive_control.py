"""Receive-side control on real zfs-fuse: replicas received unmounted, the master's
mountpoint and shares kept off them, properties set on them, and a promoted copy
mounted (``logic.receive``, ``ZfsBackend.receive_command``).

zfs-fuse's receive has no ``-o``/``-x``, so here the backend's fallback is what runs:
``zfs receive -u`` then ``zfs inherit``/``zfs set`` in the same command. The same
relationship on OpenZFS, where ``-x``/``-o`` are used, is in ``test_openzfs.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cerssd.config import parse_config
from cerssd.parsing import ConfigError
from cerssd.replication.logic.receive import ReceiveSettings, for_stream
from cerssd.storage.values import Capabilities, ReceiveProperties, StreamOptions
from cerssd.storage.zfs import ZfsBackend
from cerssd.transport.runner import LocalRunner

from .conftest import SLOW, post_json, wait_until, write_file, zfs
from .test_relationships import show, wait_in_sync


def prop(volume: str, name: str) -> tuple[str, str]:
    """(value, source) of ``name`` on ``volume``."""
    out = zfs("get", "-H", "-o", "value,source", name, volume).stdout.strip()
    value, _, source = out.partition("\t")
    return value, source


# -- what a receive is told (fast) -----------------------------------------------------


def backend(receive_properties: bool, sudo: bool = False) -> ZfsBackend:
    zfs_ = ZfsBackend(LocalRunner("s"), sudo=sudo)
    zfs_.capabilities = Capabilities(receive_properties=receive_properties)
    return zfs_


PROPS = ReceiveProperties(("mountpoint", "sharenfs"), (("canmount", "noauto"),))


def test_openzfs_receive_gets_x_and_o() -> None:
    argv = backend(True).receive_command("p/r", unmounted=True, properties=PROPS)
    assert argv == ["zfs", "receive", "-u", "-x", "mountpoint", "-x", "sharenfs",
                    "-o", "canmount=noauto", "p/r"]
    assert backend(True, sudo=True).receive_command("p/r", discard_changes=True) == \
        ["sudo", "-n", "zfs", "receive", "-F", "p/r"]


def test_zfs_fuse_receive_applies_them_after_unmounted_in_one_command() -> None:
    argv = backend(False, sudo=True).receive_command("p/r", properties=PROPS)
    assert argv[:2] == ["sh", "-c"]
    # shares first: zfs-fuse shares an unmounted dataset whose mountpoint changes
    assert argv[2] == ("sudo -n zfs receive -u p/r && sudo -n zfs inherit sharenfs p/r && "
                       "sudo -n zfs inherit mountpoint p/r && "
                       "sudo -n zfs set canmount=noauto p/r && "
                       "{ sudo -n zfs mount p/r || true; }")
    # an incremental (apply_after off): a plain receive, the values set before stay
    later = ReceiveProperties(PROPS.exclude, PROPS.override, apply_after=False)
    assert backend(False).receive_command("p/r", unmounted=True, properties=later) == \
        ["zfs", "receive", "-u", "p/r"]


def test_exclusions_only_where_the_stream_carries_properties() -> None:
    settings = ReceiveSettings()
    assert for_stream(settings, StreamOptions(), creates=True).exclude == ()
    assert for_stream(settings, StreamOptions(properties=True), creates=True).exclude == \
        ("mountpoint", "sharenfs", "sharesmb")
    assert not for_stream(settings, StreamOptions(raw=True), creates=False).apply_after


def relationship(extra: str, slave: str = '"b"', servers: str = "") -> dict[str, Any]:
    import tomllib
    text = ('[servers.a]\nkind = "local"\n[servers.b]\nkind = "local"\n' + servers
            + f'[relationships.r]\nmaster = "a"\nvolume = "p/v"\ninterval = "1h"\n'
            f'slaves = [{slave}]\n{extra}\n')
    return tomllib.loads(text)


@pytest.mark.parametrize(("extra", "key", "says"), [
    ('receive_exclude = ["Mountpoint"]', "relationships.r.receive_exclude[0]",
     "not a ZFS property name"),
    ('receive_exclude = ["mountpoint x"]', "relationships.r.receive_exclude[0]",
     "not a ZFS property name"),
    ('receive_set = { readonly = "off" }', "relationships.r.receive_set.readonly",
     "read-only until promoted"),
    ('receive_set = { origin = "p/x@s" }', "relationships.r.receive_set.origin", "clone"),
    ('receive_set = { "cerssd:origin" = "1" }', 'relationships.r.receive_set.cerssd:origin',
     "cerssd's own"),
    ('receive_set = { canmount = 1 }', "relationships.r.receive_set.canmount", "string"),
    ('receive_set = { "x:y" = "a\\nb" }', "relationships.r.receive_set.x:y",
     "control characters"),
    ('receive_exclude = ["canmount"]\nreceive_set = { canmount = "noauto" }',
     "relationships.r.receive_set", "also in receive_exclude"),
    ('mount = "no"', "relationships.r.mount", "true or false"),
    ('send_properties = 1', "relationships.r.send_properties", "true or false"),
    ('receive_exclude = "mountpoint"', "relationships.r.receive_exclude", "list"),
])
def test_bad_receive_settings_name_the_key(extra: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(relationship(extra))
    assert exc.value.key == key and says in exc.value.problem


def test_a_slave_table_overrides_and_btrfs_takes_no_receive_set() -> None:
    cfg = parse_config(relationship('receive_set = { canmount = "noauto" }',
                                    '{ server = "b", mount = true, receive_exclude = [] }'))
    got = cfg.relationships["r"].slave("b").receive
    assert got.mount and got.properties == ReceiveProperties((), (("canmount", "noauto"),))
    assert cfg.relationships["r"].to_json()["slaves"][0]["receive_set"] == {
        "canmount": "noauto"}
    btrfs = '[servers.c]\nkind = "local"\nbackend = "btrfs"\nroot = "/srv/v"\n'
    with pytest.raises(ConfigError) as exc:
        parse_config(relationship('receive_set = { canmount = "noauto" }',
                                  '"b", { server = "c", target_volume = "v/x" }', btrfs))
    assert exc.value.key == "relationships.r.slaves[1].receive_set"
    assert "btrfs" in exc.value.problem
    with pytest.raises(ConfigError) as exc:
        parse_config(relationship("", servers=btrfs.replace('root', 'sudo = true\nroot')))
    assert exc.value.key == "servers.c.sudo"


# -- a relationship on zfs-fuse (the fallback) ---------------------------------------------


def test_replica_unmounted_master_properties_filtered_and_promoted_copy_mounted(
        start_daemon: Any, make_pool: Any, tmp_path: Path) -> None:
    m, s = make_pool(), make_pool()
    vol, copy = f"{m}/data", f"{s}/data"
    elsewhere = tmp_path / "master-mount"
    # The master's own mountpoint and share: a replica taking them would mount over its
    # path (on the same node here) and share it. Its compression and a user property
    # are what the stream should carry.
    zfs("create", "-o", f"mountpoint={elsewhere}", "-o", "compression=on",
        "-o", "test:marker=from-master", vol)
    zfs("set", "sharenfs=on", vol, check=False)  # zfs-fuse sets it, then fails to export
    assert prop(vol, "sharenfs") == ("on", "local")
    write_file(elsewhere / "f1", 1)
    d = start_daemon(extra=(
        '[servers.local]\nkind = "local"\n[servers.s]\nkind = "local"\n'
        f'[relationships.r]\nmaster = "local"\nvolume = "{vol}"\ninterval = "1h"\n'
        f'slaves = [{{server = "s", target_volume = "{copy}"}}]\nsend_properties = true\n'
        'receive_set = { canmount = "noauto", "test:set" = "yes" }\n'))
    wait_in_sync(d, "r")

    def filtered() -> None:
        assert prop(copy, "mounted")[0] == "no"
        assert prop(copy, "compression") == ("on", "received")  # the stream carried them
        assert prop(copy, "test:marker") == ("from-master", "received")
        assert prop(copy, "mountpoint") == (f"/{copy}", f"inherited from {s}")
        assert prop(copy, "sharenfs") == ("off", "default")
        assert prop(copy, "canmount") == ("noauto", "local")
        assert prop(copy, "test:set") == ("yes", "local")

    filtered()
    # An incremental (which zfs-fuse receives with the stream's values again) keeps them.
    first = show(d, "r")["newest_snapshot"]
    write_file(elsewhere / "f2", 1)
    assert post_json(d, "/v1/relationships/r/sync-now", {}).status == 202
    wait_until(lambda: show(d, "r")["newest_snapshot"] != first
               and wait_in_sync(d, "r"), SLOW, what="a second cycle in sync")
    filtered()
    # Promoted, the copy is writable and mounted (canmount=noauto mounts when asked).
    started = post_json(d, "/v1/relationships/r/failover", {"to": "s"})
    assert started.status == 202, started.body
    done = d.wait_done(started.body["id"])
    assert done["state"] == "succeeded", done["status"]
    assert prop(copy, "mounted")[0] == "yes" and prop(copy, "readonly")[0] == "off"
    assert (Path(f"/{copy}") / "f2").stat().st_size == 1 << 20
    assert "not_mounted" not in done["params"]["result"]


def test_roles_after_a_failover_keep_the_receive_settings() -> None:
    from cerssd.replication.logic.roles import apply_roles, promoted, roles_json

    cfg = parse_config(relationship('mount = true\nreceive_exclude = ["sharenfs"]',
                                    '{ server = "b", receive_set = { canmount = "noauto" } }'))
    spec = cfg.relationships["r"]
    after = promoted(spec, "b", keep_old_master=True)
    old_master = after.slave("a").receive  # follows with the relationship's settings
    assert old_master.mount and old_master.properties.exclude == ("sharenfs",)
    assert old_master.properties.override == ()
    # laid over the definition again (a restart), a configured slave gets its own back
    back = apply_roles(spec, roles_json(promoted(after, "a", keep_old_master=True)), {"a", "b"})
    assert back.slave("b").receive == spec.slave("b").receive
