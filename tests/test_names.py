"""Dataset and snapshot names are validated before any command runs."""

from __future__ import annotations

import re

import pytest

from cerssd.storage.names import (
    LABEL_PATTERN,
    MAX_LABEL_LENGTH,
    OBJECT_NAME_PATTERN,
    SNAPSHOT_PATTERN,
    VOLUME_PATTERN,
    InvalidName,
    validate_bookmark,
    validate_object_name,
    validate_snapshot,
    validate_snapshot_label,
    validate_user_property,
    validate_volume,
)

HOSTILE = [
    "pool/a;touch /tmp/x", "pool/$(touch /tmp/x)", "pool/`id`", "pool/a b", "pool/a\nb",
    "pool/a|b", "pool/a&b", "pool/a>b", "pool/'a'", 'pool/"a"', "pool/../etc", "pool/./a",
    "pool//a", "pool/", "-o/x", "pool/-rf", "", "1pool", "mirror", "raidz1/a", "pool/a\x00b",
    "pool/a*", "pool/a?", "pool/~a", "pool/a\\b", "pool/ä",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_volume_names_rejected(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_volume(name)


@pytest.mark.parametrize("name", ["tank", "tank/a", "tank/a-b_c.d:e", "t/a/b/c"])
def test_ordinary_volume_names_accepted(name: str) -> None:
    assert validate_volume(name) == name


@pytest.mark.parametrize("name", [
    "tank/a", "tank/a@", "tank/a@b@c", "tank/a@$(id)", "tank/a@x;y", "tank/a@ x",
    "tank/a@-x", "@snap", "tank/a;b@s",
])
def test_bad_snapshot_names_rejected(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_snapshot(name)


def test_snapshot_name_parsed() -> None:
    snap = validate_snapshot("tank/a@daily-1")
    assert (snap.volume, snap.snapshot, str(snap)) == ("tank/a", "daily-1", "tank/a@daily-1")


def test_overlong_name_rejected() -> None:
    with pytest.raises(InvalidName, match="longer"):
        validate_volume("tank/" + "a" * 260)


def test_bookmark_names() -> None:
    assert validate_bookmark("tank/a#cerssd-b-s1").snapshot == "cerssd-b-s1"
    for bad in ("tank/a", "tank/a@s#b", "tank/a#b#c", "tank/a#$(id)", "tank/a#"):
        with pytest.raises(InvalidName):
            validate_bookmark(bad)


def test_label_rules() -> None:
    assert validate_snapshot_label("s1") == "s1"
    for bad in ("a/b", "a b", "", "..", "$x"):
        with pytest.raises(InvalidName):
            validate_snapshot_label(bad)


CONTROL = ["\n", "\r", "\x00"]


@pytest.mark.parametrize("bad", CONTROL)
def test_control_characters_anywhere_are_refused(bad: str) -> None:
    """``re.match("^...$")`` let a final newline through; full matches do not."""
    for name in (f"tank/a{bad}", f"tank{bad}", f"tank/a{bad}/b"):
        with pytest.raises(InvalidName):
            validate_volume(name)
    for name in (f"tank/a@s{bad}", f"tank/a{bad}@s"):
        with pytest.raises(InvalidName):
            validate_snapshot(name)
    with pytest.raises(InvalidName):
        validate_bookmark(f"tank/a#b{bad}")
    with pytest.raises(InvalidName):
        validate_snapshot_label(f"s{bad}")
    for kind in ("server", "store", "relationship"):
        with pytest.raises(InvalidName, match=f"{kind} names"):
            validate_object_name(f"web{bad}", kind)


def test_length_limits() -> None:
    assert validate_snapshot_label("s" * MAX_LABEL_LENGTH)
    with pytest.raises(InvalidName, match="longer"):
        validate_snapshot_label("s" * (MAX_LABEL_LENGTH + 1))
    assert validate_snapshot("t/" + "a" * 250 + "@s") is not None  # 254 characters
    with pytest.raises(InvalidName, match="longer"):
        validate_snapshot("t/" + "a" * 250 + "@sss")  # 256
    assert validate_object_name("w" * 63, "server")
    with pytest.raises(InvalidName):
        validate_object_name("w" * 64, "server")


def test_patterns_agree_with_the_validators() -> None:
    """The OpenAPI patterns accept what the validators accept (they may accept more)."""
    good = {VOLUME_PATTERN: ["tank", "tank/a-b_c.d:e", "t/a/b/c"],
            SNAPSHOT_PATTERN: ["tank/a@daily-1", "t/a/b@s:1"],
            LABEL_PATTERN: ["s1", "cerssd-web-20261123T014703Z"],
            OBJECT_NAME_PATTERN: ["local", "b-1.x_y"]}
    for pattern, names in good.items():
        for name in names:
            assert re.fullmatch(pattern.strip("^$"), name), (pattern, name)
    for name in HOSTILE:
        with pytest.raises(InvalidName):
            validate_volume(name)
        assert not re.fullmatch(VOLUME_PATTERN.strip("^$"), name) or name in (
            "pool/../etc", "pool/./a", "mirror", "raidz1/a"), name  # refused by the code


@pytest.mark.parametrize("name", ["cerssd:replicate", "com.example:sync-now", "a:", "x:y:z",
                                  "autobackup:offsite_1"])
def test_user_properties_accepted(name: str) -> None:
    assert validate_user_property(name) == name


@pytest.mark.parametrize("name", ["replicate", ":x", "Cerssd:x", "a b:c", "a+b:c",
                                  "x:y,mounted", "x:y\n", "x:" + "y" * 255, ""])
def test_bad_user_properties_rejected(name: str) -> None:
    with pytest.raises(InvalidName, match="not a ZFS user property"):
        validate_user_property(name)
