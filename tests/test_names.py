"""Dataset and snapshot names are validated before any command runs."""

from __future__ import annotations

import pytest

from cerssd.backends.names import (
    InvalidName,
    validate_bookmark,
    validate_snapshot,
    validate_snapshot_label,
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
