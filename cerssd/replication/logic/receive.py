"""What a slave's receives do to its replica: mounted or not, and which of the master's
properties it takes (a relationship's ``mount``, ``receive_exclude`` and ``receive_set``,
for all its slaves or one slave table).

A replica is a standby: by default it is received **unmounted** (``zfs receive -u``), so
it never mounts over a path on the slave, and its mounts do not count against zfs-fuse's
~1,000, and the properties that would make it visible (``mountpoint``, ``sharenfs``,
``sharesmb``) never take the stream's value. A stream carries properties only when the
relationship sends them (``send_properties``: ``zfs send -p``); ``receive_set`` applies
whatever a stream carries. Failover mounts the promoted copy (``failover.py``).

``readonly`` is cerssd's own on a replica (the fence that failover lifts) and ``origin``
would make a receive a clone, so neither can be named; nor can a ``cerssd:`` property.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ...parsing import ConfigError
from ...storage.names import InvalidName, validate_property, validate_property_value
from ...storage.values import ReceiveProperties, StreamOptions

DEFAULT_EXCLUDE = ("mountpoint", "sharenfs", "sharesmb")
RESERVED = {
    "readonly": "cerssd sets it on a replica (read-only until promoted)",
    "origin": "it would receive the replica as a clone",
}
KEYS = ("mount", "receive_exclude", "receive_set")


@dataclass(frozen=True)
class ReceiveSettings:
    """One slave's: ``mount`` (received mounted) and the properties its receives filter."""

    mount: bool = False
    properties: ReceiveProperties = field(
        default_factory=lambda: ReceiveProperties(exclude=DEFAULT_EXCLUDE))

    def to_json(self) -> dict[str, Any]:
        return {"mount": self.mount, "receive_exclude": list(self.properties.exclude),
                "receive_set": dict(self.properties.override)}


def parse_receive(t: Mapping[str, Any], key: str,
                  default: ReceiveSettings = ReceiveSettings()) -> ReceiveSettings:
    """The receive keys of table ``t`` (``key`` is its dotted name), each falling back to
    ``default`` (a slave table's to its relationship's)."""
    mount = t.get("mount", default.mount)
    if not isinstance(mount, bool):
        raise ConfigError(f"{key}mount", "must be true or false")
    exclude = default.properties.exclude
    if "receive_exclude" in t:
        exclude = _names(t["receive_exclude"], f"{key}receive_exclude")
    override = default.properties.override
    if "receive_set" in t:
        override = _settings(t["receive_set"], f"{key}receive_set")
    both = sorted(set(exclude) & {name for name, _ in override})
    if both:
        raise ConfigError(f"{key}receive_set", f"{both[0]} is also in receive_exclude: a "
                          "property is either excluded or set")
    return ReceiveSettings(mount, ReceiveProperties(exclude, override))


def _names(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, 'must be a list of property names such as ["mountpoint", '
                          '"sharenfs"]')
    for i, name in enumerate(value):
        _check_name(name, f"{key}[{i}]")
    if len(set(value)) != len(value):
        raise ConfigError(key, "names a property twice")
    return tuple(value)


def _settings(value: Any, key: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, 'must be a table of property = "value" such as '
                          '{ canmount = "noauto" }')
    for name, setting in value.items():
        _check_name(name, f"{key}.{name}")
        if not isinstance(setting, str):
            raise ConfigError(f"{key}.{name}", 'must be a string, such as "noauto" or "off"')
        try:
            validate_property_value(setting)
        except InvalidName as exc:
            raise ConfigError(f"{key}.{name}", str(exc)) from None
    return tuple((str(k), v) for k, v in value.items())


def _check_name(name: Any, key: str) -> None:
    try:
        validate_property(name)
    except InvalidName as exc:
        raise ConfigError(key, str(exc)) from None
    if name in RESERVED:
        raise ConfigError(key, f"{name} cannot be named: {RESERVED[name]}")
    if name.startswith("cerssd:"):
        raise ConfigError(key, f"{name} cannot be named: cerssd: properties are cerssd's own")


def for_stream(settings: ReceiveSettings, options: StreamOptions, *,
               creates: bool) -> ReceiveProperties:
    """The properties one receive is given: exclusions only where the stream carries
    properties (``send -p``; a raw stream carries its encryption's), and the fallback
    after the receive (zfs-fuse) only where it ``creates`` the replica: the local values
    it sets outlive the incremental receives after it."""
    return stream_properties(settings.properties, options, creates=creates)


def stream_properties(props: ReceiveProperties, options: StreamOptions, *,
                      creates: bool) -> ReceiveProperties:
    """``for_stream`` from the properties alone (a peer daemon is given them in a
    request, without the relationship's settings)."""
    if not (options.properties or options.raw):
        props = replace(props, exclude=())
    return replace(props, apply_after=creates)
