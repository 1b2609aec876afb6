"""Configuration: the example loads, every error names its key, the daemon exits 78."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cerssd.config import EX_CONFIG, load_config, parse_config
from cerssd.parsing import ConfigError, parse_duration, parse_size

REPO = Path(__file__).resolve().parent.parent


def test_example_config_loads() -> None:
    cfg = load_config(REPO / "etc" / "cerssd.toml")
    assert cfg.daemon.control_socket == Path("/run/cerssd/control.sock")
    assert cfg.daemon.metrics_listen is not None and cfg.daemon.metrics_listen.port == 9811
    assert "local" in cfg.servers
    assert all(s.kind in ("local", "ssh") for s in cfg.servers.values())


def test_defaults_without_servers_give_local() -> None:
    cfg = parse_config({})
    assert list(cfg.servers) == ["local"]
    assert cfg.daemon.activity_retention == 7 * 86400


@pytest.mark.parametrize(("data", "key"), [
    ({"daemon": {"log_level": "loud"}}, "daemon.log_level"),
    ({"daemon": {"metrics_listen": "nowhere"}}, "daemon.metrics_listen"),
    ({"daemon": {"metrics_listen": "127.0.0.1:99999"}}, "daemon.metrics_listen"),
    ({"daemon": {"state_dir": "relative/dir"}}, "daemon.state_dir"),
    ({"daemon": {"activity_retention": "soon"}}, "daemon.activity_retention"),
    ({"daemon": {"shutdown_timeout": -1}}, "daemon.shutdown_timeout"),
    ({"daemon": {"colour": "blue"}}, "daemon.colour"),
    ({"daemon": {"max_concurrent_cycles": 0}}, "daemon.max_concurrent_cycles"),
    ({"daemon": {"max_concurrent_cycles": 1001}}, "daemon.max_concurrent_cycles"),
    ({"daemon": {"max_concurrent_cycles": 2.5}}, "daemon.max_concurrent_cycles"),
    ({"daemon": {"max_concurrent_cycles": "4"}}, "daemon.max_concurrent_cycles"),
    ({"daemon": {"max_concurrent_cycles": True}}, "daemon.max_concurrent_cycles"),
    ({"daemon": "x"}, "daemon"),
    ({"servers": {"b1": {"kind": "ssh", "known_hosts": "/k"}}}, "servers.b1.host"),
    ({"servers": {"b1": {"kind": "ssh", "host": "h"}}}, "servers.b1.known_hosts"),
    ({"servers": {"b1": {"kind": "ftp"}}}, "servers.b1.kind"),
    ({"servers": {"b1": {"kind": "ssh", "host": "h", "known_hosts": "/k", "port": 0}}},
     "servers.b1.port"),
    ({"servers": {"b1": {"kind": "local", "stateless": "yes"}}}, "servers.b1.stateless"),
    ({"servers": {"bad name": {"kind": "local"}}}, "servers.bad name"),
    ({"servers": {"b1": {"kind": "local", "cipher": "aes -o ProxyCommand=x"}}},
     "servers.b1.cipher"),
    ({"servers": {"b1": {"kind": "local", "pools": "tank"}}}, "servers.b1.pools"),
    ({"servers": {"b1": {"kind": "local", "pools": []}}}, "servers.b1.pools"),
    ({"servers": {"b1": {"kind": "local", "pools": ["tank", "-o x"]}}}, "servers.b1.pools"),
    ({"servers": {"b1": {"kind": "local", "pools": ["tank", "tank"]}}}, "servers.b1.pools"),
    ({"servers": {"b1": {"kind": "local", "pools": [1]}}}, "servers.b1.pools"),
    ({"extra": 1}, "extra"),
])
def test_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")


def test_pools_and_the_roots_a_server_lists() -> None:
    from cerssd.volume_roots import volume_roots, within

    cfg = parse_config({
        "servers": {"local": {"kind": "local", "pools": ["tank/vms", "backup"]},
                    "b": {"kind": "local"}, "c": {"kind": "local"}},
        "relationships": {"r": {"volume": "tank/web", "slaves": [
            {"server": "b", "target_volume": "stby/web"}], "interval": "1h"}}})
    assert cfg.servers["local"].pools == ("tank/vms", "backup")
    specs = list(cfg.relationships.values())
    assert volume_roots(cfg.servers["local"], specs) == ("backup", "tank/vms")
    assert volume_roots(cfg.servers["b"], specs) == ("stby",)
    assert volume_roots(cfg.servers["c"], specs) is None  # nothing says: every pool
    assert within(None, "x/y") == ("x/y",)
    assert within(("backup", "tank/vms"), "tank") == ("tank/vms",)
    assert within(("backup", "tank/vms"), "tank/vms/a") == ("tank/vms/a",)
    assert within(("backup", "tank/vms"), "other") == ()


def test_durations() -> None:
    assert parse_duration("90s", "k") == 90
    assert parse_duration("15m", "k") == 900
    assert parse_duration("2h", "k") == 7200
    assert parse_duration("7d", "k") == 604800
    assert parse_duration(12, "k") == 12
    with pytest.raises(ConfigError):
        parse_duration(True, "k")


def test_ssh_server_parsed() -> None:
    cfg = parse_config({"servers": {"b1": {"host": "192.0.2.2", "known_hosts": "/etc/k",
                                           "identity_file": "/etc/id", "port": 2222}}})
    b1 = cfg.servers["b1"]
    assert (b1.kind, b1.host, b1.port, str(b1.identity_file)) == ("ssh", "192.0.2.2", 2222,
                                                                  "/etc/id")


def run_daemon(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cerssd", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def test_daemon_exits_78_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[daemon]\nlog_level = "loud"\n')
    result = run_daemon(bad)
    assert result.returncode == EX_CONFIG
    assert "daemon.log_level" in result.stderr and "must be one of" in result.stderr
    assert "Traceback" not in result.stderr


def test_daemon_exits_78_on_toml_syntax_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[daemon\n")
    assert run_daemon(broken).returncode == EX_CONFIG
    missing = run_daemon(tmp_path / "missing.toml")
    assert missing.returncode == EX_CONFIG and "cannot read" in missing.stderr


def test_check_config_flag(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[daemon]\n")
    result = run_daemon(good, "--check-config")
    assert result.returncode == 0 and "is valid" in result.stdout


def test_max_concurrent_cycles() -> None:
    assert parse_config({}).daemon.max_concurrent_cycles == 4
    assert parse_config({"daemon": {"max_concurrent_cycles": 1}}).daemon \
        .max_concurrent_cycles == 1


def test_retry_keys() -> None:
    cfg = parse_config({"daemon": {"retry_deadline": "never", "stall_timeout": "5s",
                                   "retry_max_interval": "2s"}})
    assert cfg.daemon.retry_deadline is None
    assert (cfg.daemon.stall_timeout, cfg.daemon.retry_max_interval) == (5, 2)
    with pytest.raises(ConfigError) as info:
        parse_config({"daemon": {"retry_deadline": "soonish"}})
    assert info.value.key == "daemon.retry_deadline"


REL_SERVERS = {"local": {"kind": "local"}, "s1": {"kind": "local"}, "s2": {"kind": "local"}}


def rel(**table: object) -> dict[str, object]:
    base: dict[str, object] = {"volume": "tank/web", "interval": "5m", "slaves": ["s1"]}
    return {"servers": REL_SERVERS, "relationships": {"web": {**base, **table}}}


def test_relationship_defaults_and_values() -> None:
    cfg = parse_config(rel(slaves=["s1", {"server": "s2", "target_volume": "b/web",
                                          "bandwidth_limit": 1000}],
                           retention=["1h:all", "2d:1h"], retry_deadline="never"))
    spec = cfg.relationships["web"]
    assert spec.master == "local" and spec.prefix == "cerssd-web-"
    assert [(s.server, s.target_volume, s.bandwidth_limit) for s in spec.slaves] == [
        ("s1", "tank/web", None), ("s2", "b/web", 1000)]
    assert [t.age for t in spec.retention] == [3600, 2 * 86400]
    assert spec.slave_retention == spec.retention  # the slaves follow the master's grid
    assert spec.retry_deadline == float("inf") and spec.fanout is True
    assert spec.fanout_buffer == 256 << 20
    assert spec.to_json()["schedule"] == "every 5m"


@pytest.mark.parametrize(("table", "key"), [
    ({"volume": None}, "relationships.web.volume"),
    ({"volume": "no pool"}, "relationships.web.volume"),
    ({"master": "elsewhere"}, "relationships.web.master"),
    ({"slaves": []}, "relationships.web.slaves"),
    ({"slaves": ["nope"]}, "relationships.web.slaves[0].server"),
    ({"slaves": ["s1", "s1"]}, "relationships.web.slaves[1].server"),
    ({"slaves": [{"server": "local"}]}, "relationships.web.slaves[0].target_volume"),
    ({"slaves": [{"server": "s1", "speed": 3}]}, "relationships.web.slaves[0].speed"),
    ({"slaves": [{"server": "s1", "bandwidth_limit": -1}]},
     "relationships.web.slaves[0].bandwidth_limit"),
    ({"interval": None}, "relationships.web"),
    ({"cron": "* * *"}, "relationships.web"),
    ({"interval": None, "cron": "61 * * * *"}, "relationships.web.cron"),
    ({"retention": ["1h"]}, "relationships.web.retention[0]"),
    ({"slave_retention": "1h:all"}, "relationships.web.slave_retention"),
    ({"prefix": "bad prefix "}, "relationships.web.prefix"),
    ({"retry_deadline": "soon"}, "relationships.web.retry_deadline"),
    ({"fanout": "yes"}, "relationships.web.fanout"),
    ({"fanout_buffer": "1KiB"}, "relationships.web.fanout_buffer"),
    ({"keep_min": 0}, "relationships.web.keep_min"),
    ({"keep_min": "2"}, "relationships.web.keep_min"),
    ({"slave_keep_min": -1}, "relationships.web.slave_keep_min"),
    ({"colour": "blue"}, "relationships.web.colour"),
])
def test_relationship_errors_name_the_key(table: dict[str, object], key: str) -> None:
    data = rel(**table)
    rels = data["relationships"]
    assert isinstance(rels, dict)
    rels["web"] = {k: v for k, v in rels["web"].items() if v is not None}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.key == key, str(info.value)


def test_check_config_reads_store_credentials_and_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "s3.toml"
    key = tmp_path / "s3.key"
    cfg.write_text(f'[stores.s3]\nbucket = "backups"\ncredentials_file = "{key}"\n')
    # not on this node yet: a warning for --check-config, but the daemon will not start
    missing = run_daemon(cfg, "--check-config")
    assert missing.returncode == 0, missing.stderr
    assert ("cerssd: warning: secret missing: stores.s3.credentials_file: cannot read"
            in missing.stderr)
    assert "will not start until the 1 missing secret(s) above are in place" in missing.stdout
    refused = run_daemon(cfg)
    assert refused.returncode == EX_CONFIG
    assert "invalid configuration: stores.s3.credentials_file: cannot read" in refused.stderr
    # there but wrong: an error
    key.write_text("access_key_id = AK\n")
    broken = run_daemon(cfg, "--check-config")
    assert broken.returncode == EX_CONFIG and "is not valid TOML" in broken.stderr
    key.write_text('access_key_id = "AK"\nsecret_access_key = "SECRET-VALUE"\n')
    ok = run_daemon(cfg, "--check-config")
    assert ok.returncode == 0 and "SECRET-VALUE" not in ok.stdout + ok.stderr
    assert "warning" not in ok.stderr and ok.stdout == f"cerssd: {cfg} is valid\n"


def test_shipped_example_checks_with_its_secrets_as_warnings() -> None:
    """A newcomer's first command: the example, as shipped, on a node without its secrets."""
    example = REPO / "etc" / "cerssd.toml"
    result = run_daemon(example, "--check-config")
    assert result.returncode == 0, result.stderr
    assert f"cerssd: {example} is valid" in result.stdout
    warnings = [x for x in result.stderr.splitlines() if x]
    assert warnings and all(x.startswith("cerssd: warning: secret missing: stores.")
                            for x in warnings), warnings


def test_check_config_still_fails_on_a_real_error_beside_a_missing_secret(tmp_path: Path
                                                                          ) -> None:
    text = (REPO / "etc" / "cerssd.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("[daemon]\n", '[daemon]\nlog_levle = "debug"\n', 1))
    result = run_daemon(bad, "--check-config")
    assert result.returncode == EX_CONFIG
    assert "invalid configuration: daemon.log_levle: unknown key" in result.stderr
    assert "is valid" not in result.stdout


def test_relationship_stores_must_exist_and_need_a_local_master() -> None:
    base: dict[str, Any] = {
        "servers": {"local": {"kind": "local"},
                    "r": {"kind": "ssh", "host": "192.0.2.9", "known_hosts": "/k"}},
        "stores": {"s3": {"bucket": "backups"}}}
    rel = {"volume": "tank/v", "slaves": ["r"], "interval": "5m", "stores": ["s3"]}
    assert parse_config({**base, "relationships": {"w": rel}}).relationships["w"].stores == (
        "s3",)
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "relationships": {"w": {**rel, "stores": ["nope"]}}})
    assert info.value.key == "relationships.w.stores[0]"
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "relationships": {"w": {
            **rel, "master": "r", "slaves": ["local"]}}})
    assert info.value.key == "relationships.w.stores"


#: A name that ends in a newline (Python's ``$`` matched before it), a carriage return,
#: a NUL, and one over the 63-character limit: none is a usable server, store or
#: relationship name.
HOSTILE_NAMES = ["web\n", "web\r", "we\x00b", "w" * 64]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("section", ["servers", "stores", "relationships"])
def test_hostile_names_in_the_config_name_the_key(tmp_path: Path, section: str,
                                                  name: str) -> None:
    body = {"servers": 'kind = "local"', "stores": 'bucket = "bkt"',
            "relationships": 'volume = "p/v"\nslaves = ["local"]\ninterval = "5m"'}[section]
    escaped = name.encode("unicode_escape").decode().replace("\\x00", "\\u0000")
    path = tmp_path / "cerssd.toml"
    path.write_text(f'[{section}."{escaped}"]\n{body}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == f"{section}.{name}"
    assert "names use letters" in info.value.problem


@pytest.mark.parametrize(("key", "value"), [
    ("volume", "p/v\n"), ("volume", "p/v\r"), ("volume", "p/v\x00"),
    ("volume", "p/" + "v" * 260), ("prefix", "x\n"), ("prefix", "p" * 240),
])
def test_hostile_relationship_values_name_the_key(key: str, value: str) -> None:
    table = {"volume": "p/v", "slaves": [{"server": "local", "target_volume": "p/w"}],
             "interval": "5m", key: value}
    with pytest.raises(ConfigError) as info:
        parse_config({"relationships": {"web": table}})
    assert info.value.key == f"relationships.web.{key}"


@pytest.mark.parametrize("word", ["host", "user", "zfs_command"])
def test_server_words_refuse_control_characters(word: str) -> None:
    server = {"kind": "ssh", "host": "h", "known_hosts": "/k", word: "x\ny"}
    with pytest.raises(ConfigError) as info:
        parse_config({"servers": {"b1": server}})
    assert info.value.key == f"servers.b1.{word}"


def test_a_server_backend_is_zfs_unless_named_and_only_a_registered_one() -> None:
    assert parse_config({}).servers["local"].backend == "zfs"
    cfg = parse_config({"servers": {"local": {"kind": "local", "backend": "zfs"}}})
    assert cfg.servers["local"].backend == "zfs"
    for bad in ("xfs", "ZFS", "zfs\n", "btrfs ", 3):
        with pytest.raises(ConfigError) as info:
            parse_config({"servers": {"local": {"kind": "local", "backend": bad}}})
        assert info.value.key == "servers.local.backend"


def test_a_btrfs_server_needs_a_plain_absolute_root_and_a_valid_pool_name() -> None:
    cfg = parse_config({"servers": {"local": {"kind": "local", "backend": "btrfs",
                                              "root": "/srv/volumes"}}})
    assert (cfg.servers["local"].root, cfg.servers["local"].pool) == ("/srv/volumes", None)
    named = parse_config({"servers": {"local": {"kind": "local", "backend": "btrfs",
                                                "root": "/srv/v", "pool": "tank"}}})
    assert named.servers["local"].pool == "tank"
    cases = [({"backend": "btrfs"}, "root"),
             ({"backend": "btrfs", "root": "srv/volumes"}, "root"),
             ({"backend": "btrfs", "root": "/srv/../etc"}, "root"),
             ({"backend": "btrfs", "root": "/srv/a b"}, "root"),
             ({"backend": "btrfs", "root": "/srv/vols\n"}, "root"),
             ({"backend": "btrfs", "root": "/srv/.hidden"}, "root"),
             ({"backend": "btrfs", "root": "/srv/9lives"}, "root"),  # no pool name
             ({"backend": "btrfs", "root": "/srv/v", "pool": "-x"}, "pool"),
             ({"backend": "btrfs", "root": "/srv/v", "pool": "mirror"}, "pool"),
             ({"root": "/srv/v"}, "root"),  # a btrfs key on a zfs server
             ({"pool": "tank"}, "pool")]
    for server, key in cases:
        with pytest.raises(ConfigError) as info:
            parse_config({"servers": {"local": {"kind": "local", **server}}})
        assert info.value.key == f"servers.local.{key}", server


@pytest.mark.parametrize("value", ["5m\nx", "5\u0665m", "64MiB\nx", "6\u0664MiB"])
def test_durations_and_sizes_are_full_matches(value: str) -> None:
    """Surrounding blanks are forgiven; a second line or a non-ASCII digit is not."""
    with pytest.raises(ConfigError):
        parse_duration(value, "k") if "MiB" not in value else parse_size(value, "k")
