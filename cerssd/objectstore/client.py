"""One S3 client per object-store target, and S3 failures sorted for the retry policy.

Retries are cerssd's own (tenacity, with the link reported lost while they go on),
so botocore's are turned off: otherwise a dead endpoint would be retried silently
inside one call for longer than the 10 s in which a loss must be reported. The
timeouts are short for the same reason; a part upload that makes no progress for
``read_timeout`` is a stalled link.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from ..links import Links
from .config import StoreConfig
from .parts import PartClient

log = structlog.get_logger("cerssd.objectstore")

#: S3 error codes that another attempt cannot fix.
PERMANENT_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket",
    "InvalidBucketName", "AllAccessDisabled", "AccountProblem", "InvalidStorageClass",
    "EntityTooLarge", "InvalidArgument", "MalformedXML", "NotImplemented",
})
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchUpload"})
#: 4xx codes that say the request was damaged or refused for a while: sent again.
TRANSIENT_CODES = frozenset({"BadDigest", "RequestTimeout", "SlowDown",
                             "RequestTimeTooSkewed"})


class StoreError(Exception):
    """An object-store call failed; ``permanent`` says whether retrying can help."""

    def __init__(self, store: str, message: str, *, permanent: bool,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.store = store
        self.permanent = permanent
        self.code = code


class ObjectMissing(StoreError):
    def __init__(self, store: str, message: str) -> None:
        super().__init__(store, message, permanent=True, code="NoSuchKey")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


def classify(store: str, what: str, exc: Exception) -> StoreError:
    """Map botocore/aiohttp failures onto transient (link) and permanent errors."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = f"{what}: {code or status} {err.get('Message', '')}".strip()
        if code in NOT_FOUND_CODES:
            return ObjectMissing(store, message)
        permanent = code in PERMANENT_CODES or (
            400 <= int(status or 0) < 500 and status not in (408, 429)
            and code not in TRANSIENT_CODES)
        return StoreError(store, message, permanent=permanent, code=code)
    if isinstance(exc, HTTPClientError | BotoConnectionError | aiohttp.ClientError | OSError
                  | TimeoutError):
        return StoreError(store, f"{what}: {type(exc).__name__}: {exc}", permanent=False)
    if isinstance(exc, BotoCoreError):
        return StoreError(store, f"{what}: {exc}", permanent=True)
    raise exc


_SESSION: AioSession | None = None


def shared_session() -> AioSession:
    """One botocore session for every store: its loader reads and keeps the S3 service
    model once, where a session per store kept a copy each (~13 MiB a store)."""
    global _SESSION
    if _SESSION is None:
        _SESSION = get_session()
    return _SESSION


class ObjectStore:
    """An open client for one ``[stores.NAME]``; its link is in the daemon's ``Links``."""

    def __init__(self, config: StoreConfig, links: Links | None = None) -> None:
        self.config = config
        self.name = config.name
        self.links = links
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._parts: PartClient | None = None  # the bytes of parts: parts.py
        #: The store was seen to encrypt as ``sse`` asks (sse_check.py): asked once.
        self.sse_checked = False

    async def open(self) -> None:
        creds = self.config.load_credentials()
        aio_config = AioConfig(
            connect_timeout=5, read_timeout=10, retries={"max_attempts": 1, "mode": "standard"},
            max_pool_connections=self.config.concurrency * 2 + 2,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Parts carry a ChecksumSHA256 the store verifies (upload.py): hashing every
            # payload once more to sign it costs ~1.4 CPU-s per GiB for nothing.
            s3={"addressing_style": "path", "payload_signing_enabled": False})
        self._client = await self._stack.enter_async_context(shared_session().create_client(
            "s3", endpoint_url=self.config.endpoint, region_name=self.config.region,
            aws_access_key_id=creds.access_key_id,
            aws_secret_access_key=creds.secret_access_key, config=aio_config))
        # The same key pair as the client's, in botocore's form (a token would be signed).
        self._parts = PartClient(self.config, ReadOnlyCredentials(
            creds.access_key_id, creds.secret_access_key, None))
        self._stack.push_async_callback(self._parts.close)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None
        self._parts = None

    async def _part_client(self) -> PartClient:
        if self._parts is None:
            await self.open()
        assert self._parts is not None
        return self._parts

    async def upload_part(self, key: str, upload_id: str, number: int, body: memoryview,
                          sha256_hex: str, checksum_b64: str) -> str:
        """Part ``number`` of an upload, sent from ``body`` as it is; returns its ETag."""
        parts = await self._part_client()
        try:
            return await parts.upload_part(key, upload_id, number, body, sha256_hex,
                                           checksum_b64)
        except Exception as exc:
            raise classify(self.name, f"upload_part {key}", exc) from exc

    async def get_range_into(self, key: str, start: int, into: memoryview) -> None:
        """Fill ``into`` with the object's bytes from ``start`` on (``len(into)`` of them)."""
        parts = await self._part_client()
        try:
            await parts.get_range_into(key, start, into)
        except Exception as exc:
            raise classify(self.name, f"get_object {key}", exc) from exc

    async def call(self, operation: str, **kwargs: Any) -> Any:
        """One S3 operation on this store's bucket; failures become ``StoreError``."""
        if self._client is None:
            await self.open()
        try:
            return await getattr(self._client, operation)(Bucket=self.config.bucket, **kwargs)
        except Exception as exc:
            raise classify(self.name, f"{operation} {kwargs.get('Key', '')}".strip(),
                           exc) from exc

    def key(self, relative: str) -> str:
        return self.config.prefix + relative

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """A small object (a manifest), with the store's server-side encryption."""
        await self.call("put_object", Key=key, Body=data, ContentType=content_type,
                        **self.config.privacy.sse_args())

    async def get_bytes(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """The object (or bytes ``start..end`` inclusive), read whole: callers bound sizes."""
        extra = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
        response = await self.call("get_object", Key=key, **extra)
        try:
            async with response["Body"] as body:
                data: bytes = await body.read()
        except Exception as exc:
            raise classify(self.name, f"get_object {key}", exc) from exc
        return data

    async def head(self, key: str) -> ObjectInfo:
        response = await self.call("head_object", Key=key)
        return ObjectInfo(key, int(response["ContentLength"]))

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = await self.call("list_objects_v2", Prefix=prefix, **extra)
            for item in page.get("Contents", []):
                yield ObjectInfo(item["Key"], int(item["Size"]))
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:  # asking again without one would list the first page again
                raise StoreError(self.name, f"listing {prefix!r}: the store says there is "
                                 "more but gave no continuation token", permanent=False)

    async def delete(self, key: str) -> None:
        await self.call("delete_object", Key=key)

    async def multipart_uploads(self, prefix: str) -> list[tuple[str, str, float]]:
        """(key, upload id, initiated at) of every unfinished upload under ``prefix``."""
        found: list[tuple[str, str, float]] = []
        extra: dict[str, str] = {}
        while True:
            page = await self.call("list_multipart_uploads", Prefix=prefix, **extra)
            found += [(u["Key"], u["UploadId"], u["Initiated"].timestamp())
                      for u in page.get("Uploads", [])]
            if not page.get("IsTruncated"):
                return found
            # Pass back only the markers the store gave (SeaweedFS omits NextKeyMarker).
            extra = {arg: page[key] for arg, key in (
                ("KeyMarker", "NextKeyMarker"), ("UploadIdMarker", "NextUploadIdMarker"))
                if page.get(key)}
            if not extra:
                return found

    async def abort(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(ObjectMissing):  # already gone: that is what we wanted
            await self.call("abort_multipart_upload", Key=key, UploadId=upload_id)

    def to_json(self) -> dict[str, Any]:
        data = self.config.to_json()
        link = self.links.get(self.name) if self.links else None
        data["link"] = link.to_json() if link else None
        return data


def quiet_botocore() -> None:
    """botocore logs request details (headers included) at debug level: never let it."""
    for name in ("botocore", "aiobotocore", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
