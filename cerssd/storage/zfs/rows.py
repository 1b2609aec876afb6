"""``zfs get -Hp`` rows turned into the backend's values (``Volume``, ``Snapshot``)."""

from __future__ import annotations

from ..values import Snapshot, Volume
from .names import ORIGIN_PROP


def volume_from(name: str, p: dict[str, str]) -> Volume:
    # ``mounted`` is "-" for a zvol: it has no mount, only a device.
    return Volume(name=name, type=p["type"], guid=p["guid"], creation=int(p["creation"]),
                  used=to_int(p.get("used")), referenced=to_int(p.get("referenced")),
                  readonly=p.get("readonly") == "on", mounted=p.get("mounted") == "yes",
                  size=size_from(p))


def size_from(p: dict[str, str]) -> int | None:
    """What a dataset may grow to: a zvol's ``volsize``, a filesystem's ``quota``; None
    for a filesystem without one (``quota`` is 0, or "-"/"none" as some tools print it)."""
    value = to_int(p.get("volsize") if p.get("type") == "volume" else p.get("quota"))
    return value or None


def snapshot_from(name: str, p: dict[str, str]) -> Snapshot:
    volume, _, label = name.partition("@")
    return Snapshot(name=name, volume=volume, label=label, guid=p["guid"],
                    creation=int(p["creation"]), used=to_int(p.get("used")),
                    referenced=to_int(p.get("referenced")), userrefs=to_int(p.get("userrefs")),
                    createtxg=to_int(p.get("createtxg")), origin=origin_of(p))


def origin_of(p: dict[str, str]) -> str:
    """The ``cerssd:origin`` user property's value; unset prints as "-"."""
    value = p.get(ORIGIN_PROP, "-")
    return "" if value == "-" else value


def to_int(value: str | None) -> int:
    """A numeric property's value; "-" (not applicable) or missing as 0."""
    if value is None or not value.isdigit():
        return 0
    return int(value)
