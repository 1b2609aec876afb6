"""The object layout and manifest format in a bucket: a stable interface (docs/backups.md).

Every backup is a few objects under ``PREFIX VOLUME/LABEL.GUID/``:

* ``stream-000000`` + ``.zst`` / ``.lz4`` / nothing (+ ``.age``): the ``zfs send``
  stream, compressed and then age-encrypted as the manifest says, uploaded in parts. A
  stream longer than S3's 10,000 parts goes on in ``stream-000001``..., so the stream
  is the concatenation of the segments in order; most backups are one segment, which
  standard tools restore as ``aws s3 cp s3://BUCKET/KEY - | [age -d -i KEY |] zstd -d |
  zfs receive TARGET``;
* ``manifest.json``: what the stream is (volume, snapshot name and guid, parent guid for
  an incremental), its size, compression, and the byte range and sha256 of every part
  (manifests before ``cerssd-backup/3`` also carry the sha256 of the whole stream and
  of each segment: a second hash of every byte, dropped in issue 13). It is written
  last: a stream without a manifest is an unfinished upload and is never taken for a
  backup.

The guid in the path keeps two snapshots that reused a name apart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .. import __version__
from ..storage.zfs.names import manifest_send_flags, raw_in_send_flags

FORMAT = "cerssd-backup/1"
#: An age-encrypted stream: a reader that predates encryption refuses the manifest
#: (as a reader must refuse an unknown format) instead of feeding ciphertext to
#: ``zfs receive``. Everything else is as in ``cerssd-backup/1``.
FORMAT_AGE = "cerssd-backup/2"
#: What cerssd writes now: digests per part only (no whole-stream or segment ``sha256``),
#: encryption said by ``encryption``. A reader that predates it refuses it rather than
#: look for the whole-stream digest it used to check after a restore.
FORMAT_PARTS = "cerssd-backup/3"
FORMATS = (FORMAT, FORMAT_AGE, FORMAT_PARTS)
#: How a stream is encrypted by cerssd: not, or by age (objectstore.privacy).
ENCRYPTIONS = ("none", "age")
MANIFEST = "manifest.json"
EXTENSIONS = {"none": "", "zstd": ".zst", "lz4": ".lz4"}


class ManifestInvalid(ValueError):
    pass


class BrokenChain(LookupError):
    """An incremental's parent backup is not in the bucket (or not complete)."""


class BackupMissing(BrokenChain):
    """The backup asked for is not in the bucket at all (the API answers 404, not the
    409 of a chain with a hole)."""


@dataclass(frozen=True)
class Part:
    """One upload part: ``number`` within its segment, ``offset`` within the stream."""

    number: int
    offset: int
    size: int
    sha256: str
    segment: int = 0


@dataclass(frozen=True)
class Segment:
    """One object of the stream: bytes ``offset .. offset+size`` of it."""

    index: int
    key: str
    offset: int
    size: int
    #: The segment's own sha256: only in manifests before ``cerssd-backup/3``.
    sha256: str = ""


@dataclass(frozen=True)
class Manifest:
    volume: str
    snapshot: str
    guid: str
    snapshot_created: int
    parent_guid: str | None
    parent_snapshot: str | None
    segments: tuple[Segment, ...]
    stream_size: int
    raw_size: int
    compression: str
    parts: tuple[Part, ...]
    #: The whole stream's sha256: only in manifests before ``cerssd-backup/3``.
    sha256: str = ""
    #: The snapshot's creation txg on the source: orders snapshots of the same second.
    snapshot_txg: int = 0
    source_server: str = "local"
    created_at: str = ""
    cerssd_version: str = __version__
    #: ``age``: the stored stream is ``age -e`` of the (compressed) send stream, to the
    #: public keys in ``age_recipients`` (and any of ``age_recipients_file``).
    encryption: str = "none"
    age_recipients: tuple[str, ...] = ()
    format: str = FORMAT_PARTS
    #: A raw stream (the flow's ``StreamOptions.raw``): an encrypted dataset's blocks as
    #: they are on disk, received encrypted, its key never in the stream.
    raw: bool = False

    @property
    def send_flags(self) -> str:
        """What the manifest's ``send_flags`` field says: the storage's spelling of
        ``raw``, still written for readers that predate the ``raw`` field."""
        return manifest_send_flags(self.raw)

    @property
    def kind(self) -> str:
        return "full" if self.parent_guid is None else "incremental"

    @property
    def label(self) -> str:
        return self.snapshot.partition("@")[2]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind
        data["send_flags"] = self.send_flags
        data["age_recipients"] = list(self.age_recipients)
        data["parts"] = [asdict(p) for p in self.parts]
        data["segments"] = [_without_empty_digest(asdict(s)) for s in self.segments]
        return _without_empty_digest(data)

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), indent=1, sort_keys=True).encode()

    def summary(self) -> dict[str, Any]:
        """The manifest without its part list: what listings show."""
        data = self.to_json()
        data["parts"] = len(self.parts)
        data["segments"] = [s.key for s in self.segments]
        return data


def _without_empty_digest(data: dict[str, Any]) -> dict[str, Any]:
    """A digest that was not computed is left out, not written empty."""
    if not data.get("sha256"):
        data.pop("sha256", None)
    return data


def backup_dir(prefix: str, volume: str, label: str, guid: str) -> str:
    return f"{prefix}{volume}/{label}.{guid}/"


def segment_key(prefix: str, volume: str, label: str, guid: str, compression: str,
                index: int, *, encrypted: bool = False) -> str:
    return (backup_dir(prefix, volume, label, guid) + f"stream-{index:06d}"
            + EXTENSIONS[compression] + (".age" if encrypted else ""))


def manifest_key(prefix: str, volume: str, label: str, guid: str) -> str:
    return backup_dir(prefix, volume, label, guid) + MANIFEST


def manifest_guid(prefix: str, volume: str, key: str) -> str | None:
    """The guid of the backup of ``volume`` whose manifest is ``key``, read off the key.

    None for keys that are not a manifest of ``volume`` itself (e.g. a child volume's).
    """
    head = f"{prefix}{volume}/"
    rest = key[len(head):] if key.startswith(head) else ""
    directory, slash, name = rest.partition("/")
    guid = directory.rpartition(".")[2]
    return guid if slash and name == MANIFEST and "." in directory and guid.isdigit() \
        else None


def parse_manifest_key(prefix: str, key: str) -> tuple[str, str, str] | None:
    """(volume, label, guid) of the backup whose manifest is ``key``; None for any other
    key. A label has no ``/``, so the volume is everything before the backup's directory
    (a tree's listing sees every member's backups under its root's prefix)."""
    if not key.startswith(prefix) or not key.endswith("/" + MANIFEST):
        return None
    volume, _, directory = key[len(prefix):-len(MANIFEST) - 1].rpartition("/")
    label, dot, guid = directory.rpartition(".")
    return (volume, label, guid) if volume and label and dot and guid.isdigit() else None


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def decode(data: bytes, key: str) -> Manifest:
    """Parse and check a manifest; anything off is ``ManifestInvalid`` naming the key."""
    try:
        raw = json.loads(data)
        if raw.get("format") not in FORMATS:
            raise ManifestInvalid(f"{key}: unknown format {raw.get('format')!r}")
        parts = tuple(Part(int(p["number"]), int(p["offset"]), int(p["size"]),
                           str(p["sha256"]), int(p["segment"])) for p in raw["parts"])
        segments = tuple(Segment(int(g["index"]), str(g["key"]), int(g["offset"]),
                                 int(g["size"]), str(g.get("sha256", "")))
                         for g in raw["segments"])
        manifest = Manifest(
            volume=str(raw["volume"]), snapshot=str(raw["snapshot"]), guid=str(raw["guid"]),
            snapshot_created=int(raw["snapshot_created"]),
            parent_guid=None if raw["parent_guid"] is None else str(raw["parent_guid"]),
            parent_snapshot=raw["parent_snapshot"], segments=segments,
            stream_size=int(raw["stream_size"]), raw_size=int(raw["raw_size"]),
            compression=str(raw["compression"]), sha256=str(raw.get("sha256", "")),
            parts=parts,
            raw=raw.get("raw") is True or raw_in_send_flags(str(raw.get("send_flags", ""))),
            snapshot_txg=int(raw.get("snapshot_txg", 0)),
            source_server=str(raw.get("source_server", "")),
            created_at=str(raw.get("created_at", "")),
            cerssd_version=str(raw.get("cerssd_version", "")),
            encryption=str(raw.get("encryption", "none")),
            age_recipients=tuple(str(r) for r in raw.get("age_recipients", ())),
            format=str(raw["format"]))
    except ManifestInvalid:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestInvalid(f"{key}: not a cerssd manifest ({exc})") from exc
    check_parts(manifest, key)
    return manifest


def check_parts(manifest: Manifest, key: str) -> None:
    """Segments and parts must tile the stream exactly, in order, or it is unusable."""
    offset = 0
    for i, seg in enumerate(manifest.segments):
        if seg.index != i or seg.offset != offset or seg.size <= 0:
            raise ManifestInvalid(f"{key}: segment {i} does not follow segment {i - 1}")
        offset += seg.size
    if offset != manifest.stream_size or not manifest.segments:
        raise ManifestInvalid(f"{key}: segments add up to {offset} bytes, the stream has "
                              f"{manifest.stream_size}")
    offset, number, segment = 0, 0, 0
    for part in manifest.parts:
        number = number + 1 if part.segment == segment else 1
        segment = part.segment
        if part.number != number or part.offset != offset or part.size <= 0 \
                or not 0 <= segment < len(manifest.segments):
            raise ManifestInvalid(f"{key}: part at offset {part.offset} is out of order")
        offset += part.size
    if offset != manifest.stream_size:
        raise ManifestInvalid(f"{key}: parts add up to {offset} bytes, the stream has "
                              f"{manifest.stream_size}")
    if manifest.compression not in EXTENSIONS:
        raise ManifestInvalid(f"{key}: unknown compression {manifest.compression!r}")
    if manifest.encryption not in ENCRYPTIONS or (
            manifest.format != FORMAT_PARTS
            and (manifest.encryption == "age") != (manifest.format == FORMAT_AGE)):
        raise ManifestInvalid(f"{key}: encryption {manifest.encryption!r} does not go with "
                              f"format {manifest.format}")
    if manifest.format != FORMAT_PARTS and not manifest.sha256:
        raise ManifestInvalid(f"{key}: format {manifest.format} without the whole "
                              "stream's sha256")


def chain(backups: Iterable[Manifest], guid: str) -> list[Manifest]:
    """The backups to restore, full first, ending at the one with ``guid``."""
    by_guid = {m.guid: m for m in backups}
    wanted = by_guid.get(guid)
    if wanted is None:
        raise BrokenChain(f"no complete backup of snapshot guid {guid}")
    path = [wanted]
    while path[-1].parent_guid is not None:
        parent = by_guid.get(path[-1].parent_guid)
        if parent is None:
            child = path[-1]
            raise BrokenChain(
                f"{child.snapshot} is an incremental from {child.parent_snapshot} "
                f"(guid {child.parent_guid}), whose backup is missing or incomplete")
        if parent in path:
            raise BrokenChain(f"backups of {wanted.volume} form a loop at {parent.snapshot}")
        path.append(parent)
    return path[::-1]


def needed_parents(backups: Sequence[Manifest], kept: Iterable[str]) -> set[str]:
    """Guids of every ancestor a kept backup needs to be restorable."""
    by_guid = {m.guid: m for m in backups}
    needed: set[str] = set()
    for guid in kept:
        parent = by_guid[guid].parent_guid if guid in by_guid else None
        while parent is not None and parent not in needed and parent in by_guid:
            needed.add(parent)
            parent = by_guid[parent].parent_guid
    return needed
