"""How ZFS spells what the flows ask for by meaning: pins, marks, pools, stream options.

A pin for a destination is the hold ``cerssd:<server>``, a base mark the bookmark
``volume#cerssd-<server>-<label>``, a volume's pool the first component of its name,
and ``StreamOptions`` become ``zfs send`` flags. Only this package builds them.
"""

from __future__ import annotations

import re

from ..errors import BackendError
from ..names import pool_of as first_component
from ..names import validate_volume
from ..values import StreamOptions

HOLD_PREFIX = "cerssd:"
#: The user property a snapshot made by the generic path carries: the guid (or another
#: driver's identity) of the source snapshot it is a copy of. Listed with every snapshot.
ORIGIN_PROP = "cerssd:origin"


def check_origin(origin: str) -> str:
    """A source snapshot's identity as a property value: a guid, or another driver's
    UUID (letters, digits, ``-``), never anything a shell or ``zfs`` could read as more."""
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", origin):
        raise BackendError(f"invalid snapshot origin {origin!r}")
    return origin


def hold_tag(server: str) -> str:
    """The tag of cerssd's hold on a base replicated to ``server``."""
    return check_tag(f"{HOLD_PREFIX}{server}")


def check_tag(tag: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,200}", tag):
        raise BackendError(f"invalid hold tag {tag!r}")
    return tag


def mark_prefix(server: str) -> str:
    """The label prefix of the bookmarks kept for ``server``'s incremental base."""
    return f"cerssd-{server}-"


def pool_of(volume: str) -> str:
    """The pool of ``volume``, validated first (the backend's ``pool_of``)."""
    return first_component(validate_volume(volume))


def manifest_send_flags(raw: bool) -> str:
    """The ``send_flags`` a backup manifest records (docs/backups.md): ``-w`` for a raw
    stream, else nothing. The manifest's ``raw`` says the same; this field stays for the
    readers that predate ``raw`` and take raw-ness from it."""
    return "-w" if raw else ""


def raw_in_send_flags(flags: str) -> bool:
    """Whether a manifest's recorded ``send_flags`` made a raw stream (``zfs send -w``):
    how a manifest written before ``raw`` was read says so."""
    return "w" in flags.lstrip("-")


def send_flags(options: StreamOptions) -> str:
    """Raw (``-w``) keeps an encrypted dataset encrypted on the wire and on the target;
    ``-Lec`` keeps large, embedded and compressed blocks as they are on disk; ``-p``
    sends the volume's properties along."""
    props = "p" if options.properties else ""
    if options.raw:
        return "w" + props
    if options.compressed:
        return "Lec" + props
    return props
