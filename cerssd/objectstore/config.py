"""``[stores.NAME]``: an S3-compatible bucket the daemon streams snapshots into.

Credentials are never part of the configuration values that get logged or served:
the config names a file (or says to use the environment) and ``Credentials`` keeps
the secret out of every ``repr``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from ..parsing import ConfigError, MissingSecret, parse_size, reject_unknown
from ..replication.logic.retention import DEFAULT_KEEP_MIN, parse_grid, parse_keep_min
from ..storage.names import InvalidName, validate_object_name
from .privacy import PRIVACY_KEYS, Privacy, parse_privacy

#: How a store's streams are compressed (the API schema lists these values).
Compression = Literal["none", "zstd", "lz4"]
COMPRESSIONS: tuple[str, ...] = get_args(Compression)
#: S3's own limits: parts are 5 MiB..5 GiB (the last may be smaller), at most 10,000.
MIN_PART_SIZE = 5 << 20
MAX_PART_SIZE = 5 << 30
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 << 20
DEFAULT_CONCURRENCY = 3
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX = re.compile(r"[A-Za-z0-9!_.*'()/-]*")
_STORAGE_CLASS = re.compile(r"[A-Z_]{1,40}")
#: The keys a ``[stores.NAME]`` table accepts (also read by tests/test_docs.py).
STORE_KEYS = {"endpoint", "bucket", "prefix", "region", "credentials_file", "part_size",
              "concurrency", "compression", "compression_level", "storage_class",
              "retention", "keep_min", "full_every"} \
    | PRIVACY_KEYS


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(access_key_id={self.access_key_id!r}, secret_access_key=***)"


@dataclass(frozen=True)
class StoreConfig:
    name: str
    bucket: str
    endpoint: str | None = None
    prefix: str = "cerssd/"
    region: str = "us-east-1"
    credentials_file: Path | None = None
    part_size: int = DEFAULT_PART_SIZE
    concurrency: int = DEFAULT_CONCURRENCY
    compression: str = "none"
    compression_level: int | None = None
    storage_class: str | None = None
    #: age encryption and S3 server-side encryption (privacy.py).
    privacy: Privacy = field(default_factory=Privacy)
    #: The grid applied to a relationship's backups after each of them (None: backups
    #: stay until an operator prunes them), and the fewest it leaves per volume.
    retention: tuple[str, ...] | None = None
    keep_min: int = DEFAULT_KEEP_MIN
    #: A relationship's every N-th backup is a full one (None: only the first), so that
    #: retention has whole chains to let go.
    full_every: int | None = None

    def to_json(self) -> dict[str, Any]:
        """What the API shows: where the bucket is, never the credentials themselves."""
        return {"name": self.name, "kind": "s3", "endpoint": self.endpoint,
                "bucket": self.bucket, "prefix": self.prefix, "region": self.region,
                "credentials": "file" if self.credentials_file else "environment",
                "part_size": self.part_size, "concurrency": self.concurrency,
                "compression": self.compression, "storage_class": self.storage_class,
                "retention": list(self.retention) if self.retention is not None else None,
                "keep_min": self.keep_min, "full_every": self.full_every,
                **self.privacy.to_json()}

    def load_credentials(self) -> Credentials:
        """Read the key pair now (at start-up and on use), naming the key when it fails."""
        key = f"stores.{self.name}.credentials_file"
        if self.credentials_file is None:
            access = os.environ.get("AWS_ACCESS_KEY_ID")
            secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
            if not access or not secret:
                raise MissingSecret(key, "not set, and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                                   "are not both in the environment")
            return Credentials(access, secret)
        try:
            data = tomllib.loads(self.credentials_file.read_text("utf-8"))
        except FileNotFoundError as exc:
            raise MissingSecret(key, f"cannot read {self.credentials_file}: {exc.strerror}") \
                from exc
        except OSError as exc:
            raise ConfigError(key, f"cannot read {self.credentials_file}: {exc.strerror}") \
                from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            # The parser's message may quote the file's content: it is not repeated.
            raise ConfigError(key, f"{self.credentials_file} is not valid TOML "
                              '(access_key_id = "...", secret_access_key = "...")') from exc
        access, secret = data.get("access_key_id"), data.get("secret_access_key")
        if not isinstance(access, str) or not isinstance(secret, str) or not access \
                or not secret:
            raise ConfigError(key, f"{self.credentials_file} must set access_key_id and "
                              "secret_access_key as strings")
        return Credentials(access, secret)


def parse_store(name: str, t: Mapping[str, Any], *, servers: Collection[str]) -> StoreConfig:
    prefix = f"stores.{name}."
    try:
        validate_object_name(name, "store")
    except InvalidName as exc:
        raise ConfigError(f"stores.{name}", str(exc)) from None
    if name in servers:
        raise ConfigError(f"stores.{name}", "a store cannot have the name of a server "
                          "(both name links)")
    reject_unknown(t, prefix, STORE_KEYS)
    d = StoreConfig(name=name, bucket="x")
    bucket = _string(t, "bucket", prefix, None)
    if bucket is None or not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(prefix + "bucket", "is required: an S3 bucket name (3-63 lowercase "
                          "letters, digits, '.', '-')")
    endpoint = _string(t, "endpoint", prefix, None)
    if endpoint is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", endpoint):
        raise ConfigError(prefix + "endpoint", f"must be an http(s) URL, not {endpoint!r}")
    key_prefix = _string(t, "prefix", prefix, d.prefix)
    if not _PREFIX.fullmatch(key_prefix) or key_prefix.startswith("/") or "//" in key_prefix:
        raise ConfigError(prefix + "prefix", "must be a relative key prefix of letters, "
                          "digits and !_.*'()/-")
    if key_prefix and not key_prefix.endswith("/"):
        key_prefix += "/"
    part_size = parse_size(t.get("part_size", d.part_size), prefix + "part_size")
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ConfigError(prefix + "part_size", "must be between 5MiB and 5GiB (S3's limits)")
    concurrency = t.get("concurrency", d.concurrency)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) \
            or not 1 <= concurrency <= 64:
        raise ConfigError(prefix + "concurrency", "must be an integer from 1 to 64")
    compression = _string(t, "compression", prefix, d.compression)
    if compression not in COMPRESSIONS:
        raise ConfigError(prefix + "compression", f"must be one of {', '.join(COMPRESSIONS)}")
    level = t.get("compression_level")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int)
                              or not 1 <= level <= (19 if compression == "zstd" else 12)):
        raise ConfigError(prefix + "compression_level",
                          "must be an integer from 1 (zstd up to 19, lz4 up to 12)")
    storage_class = _string(t, "storage_class", prefix, None)
    if storage_class is not None and not _STORAGE_CLASS.fullmatch(storage_class):
        raise ConfigError(prefix + "storage_class", "must be an S3 storage class such as "
                          "STANDARD_IA")
    credentials = _string(t, "credentials_file", prefix, None)
    if credentials is not None and not Path(credentials).is_absolute():
        raise ConfigError(prefix + "credentials_file", "must be an absolute path")
    retention = t.get("retention")
    if retention is not None:
        if not isinstance(retention, list):
            raise ConfigError(prefix + "retention", 'must be a list of tiers such as '
                              '["1d:all", "1w:1d", "30d:1w"]')
        parse_grid(retention, prefix + "retention")
        retention = tuple(retention)
    keep_min = parse_keep_min(t.get("keep_min", DEFAULT_KEEP_MIN), prefix + "keep_min")
    full_every = t.get("full_every")
    if full_every is not None and (isinstance(full_every, bool) or not isinstance(
            full_every, int) or not 1 <= full_every <= 100_000):
        raise ConfigError(prefix + "full_every", "must be a whole number of backups from 1 "
                          "(every backup full) to 100000")
    return StoreConfig(
        name=name, bucket=bucket, endpoint=endpoint, prefix=key_prefix,
        retention=retention, keep_min=keep_min, full_every=full_every,
        region=_string(t, "region", prefix, d.region),
        credentials_file=Path(credentials) if credentials else None, part_size=part_size,
        concurrency=concurrency, compression=compression, compression_level=level,
        storage_class=storage_class, privacy=parse_privacy(t, prefix))


def _string(t: Mapping[str, Any], key: str, prefix: str, default: Any) -> Any:
    value = t.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(prefix + key, "must be a string")
    return value
