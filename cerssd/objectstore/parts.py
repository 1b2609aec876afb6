"""The two calls that move a stream's bytes, made without botocore's per-call machinery.

Why (issue 13, measured): botocore spends ~3 ms of CPU on every call before the first
byte moves (the endpoint ruleset, a dozen event hooks, the user-agent string, a fresh
SigV4 signing key, response parsing); at 128 parts per GiB that was ~0.4 CPU-s per GiB
of a backup and again of a restore. Every other operation (create, complete, list,
head, delete, the manifest) still goes through aiobotocore (client.py); only
``UploadPart`` and the ranged ``GetObject`` of a part are made here, path-style as the
client is configured, on wire.py's blocking connections in worker threads (bodies sent
from and received into the part buffers without a copy in Python).

The signature is botocore's own S3 SigV4 (``S3SigV4Auth.add_auth`` on an
``AWSRequest`` without a body; a session token is sent and signed as botocore does)
with the payload's own sha256 as ``x-amz-content-sha256``: the part's digest is
computed anyway (it goes in the manifest and, as ``x-amz-checksum-sha256``, to the
store, which verifies it), so the body is signed in full without hashing it again.
The signed headers are sent as they are. Signing costs ~100 us of CPU a call
(measured), ~13 ms per GiB at 128 parts.

A failure is raised as botocore's ``ClientError`` (the store's error code and message
from its XML answer) or as ``OSError`` (``ConnectionError``, ``TimeoutError``) for the
connection, so ``client.classify`` sorts both exactly as it sorts the rest.
"""

from __future__ import annotations

import hashlib
import re
import urllib.request
from typing import NoReturn
from urllib.parse import quote

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError
from yarl import URL

from .. import __version__
from .config import StoreConfig
from .wire import Answer, Connections, Target

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Worker threads per store for part requests (each blocked in a socket call, GIL
#: released): enough for a few transfers at the default concurrency at once.
MAX_THREADS = 32
_CODE = re.compile(rb"<Code>([^<]{1,200})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{0,2000})</Message>")


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """SigV4's encoding: everything but RFC 3986 unreserved characters, once."""
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


class PresetPayloadAuth(S3SigV4Auth):  # type: ignore[misc]  # botocore is untyped
    """botocore's own S3 SigV4, told the payload's sha256 instead of finding it.

    ``S3SigV4Auth`` replaces any ``X-Amz-Content-SHA256`` it is given with
    ``payload(request)``, which reads and hashes the body (always over plain http).
    Only that is changed: the hash comes from ``request.context["payload_sha256"]``,
    the digest the caller has already computed, so the request is built without a
    body and the body is never read for signing.
    """

    def payload(self, request: AWSRequest) -> str:
        return str(request.context["payload_sha256"])


def endpoint_of(config: StoreConfig) -> str:
    return (config.endpoint or f"https://s3.{config.region}.amazonaws.com").rstrip("/")


class PartClient:
    """``UploadPart`` and ranged ``GetObject`` for one store, on wire.py's connections."""

    def __init__(self, config: StoreConfig, credentials: ReadOnlyCredentials) -> None:
        base = URL(endpoint_of(config))
        # What is sent as Host (a default port left out): what must be signed.
        self._host = str(base.host_port_subcomponent)
        self._origin = f"{base.scheme}://{base.raw_authority}"
        # Path style, as the aiobotocore client is configured: /[endpoint path/]bucket/key.
        self._base_path = base.raw_path.rstrip("/") + "/" + uri_encode(config.bucket,
                                                                        keep_slash=False)
        self._auth = PresetPayloadAuth(credentials, "s3", config.region)
        # The proxy botocore would take from the environment for this endpoint. (Not
        # ~/.netrc as well, as some clients do: its password would replace the signature.)
        bypass = base.host is not None and bool(urllib.request.proxy_bypass(base.host))
        proxy = None if bypass else urllib.request.getproxies().get(base.scheme)
        # Every part request of every transfer on this store can have its own thread.
        self._wire = Connections(
            Target(base.with_path("/"), URL(proxy) if proxy else None), connect_timeout=5,
            read_timeout=10, threads=MAX_THREADS, name=config.name)
        self._user_agent = f"cerssd/{__version__}"

    async def close(self) -> None:
        await self._wire.close()

    def _request(self, method: str, key: str, query: dict[str, str], payload_sha256: str,
                 extra: dict[str, str]) -> tuple[URL, dict[str, str]]:
        """The URL and the signed headers (``extra`` among them) of one request."""
        path = f"{self._base_path}/{uri_encode(key, keep_slash=True)}"
        query_string = "&".join(f"{uri_encode(k, keep_slash=False)}="
                                f"{uri_encode(v, keep_slash=False)}"
                                for k, v in sorted(query.items()))
        raw = f"{self._origin}{path}" + (f"?{query_string}" if query_string else "")
        # Host is given, not left to each side to derive: what is signed is what is sent.
        request = AWSRequest(method=method, url=raw, headers={"Host": self._host, **extra})
        request.context["payload_sha256"] = payload_sha256
        self._auth.add_auth(request)
        headers = dict(request.headers.items())
        headers["User-Agent"] = self._user_agent  # not signed, as botocore does
        return URL(raw, encoded=True), headers

    async def upload_part(self, key: str, upload_id: str, number: int, body: memoryview,
                          sha256_hex: str, checksum_b64: str) -> str:
        """Send ``body`` as part ``number``; returns its ETag."""
        url, headers = self._request(
            "PUT", key, {"partNumber": str(number), "uploadId": upload_id}, sha256_hex,
            {"x-amz-checksum-sha256": checksum_b64})
        headers["Content-Length"] = str(body.nbytes)  # not signed, as botocore does
        headers["Content-Type"] = "application/octet-stream"
        answer = await self._wire.request("PUT", url.raw_path_qs, headers, body=body)
        if answer.status != 200:
            _raise_error(answer, "UploadPart")
        etag = answer.headers.get("etag")
        if not etag:
            raise ClientError({"Error": {"Code": "InternalError",
                                         "Message": "no ETag in the store's answer"},
                               "ResponseMetadata": {"HTTPStatusCode": 500}}, "UploadPart")
        return etag

    async def get_range_into(self, key: str, start: int, into: memoryview) -> None:
        """Fill ``into`` with bytes ``start ..`` of the object (exactly its length)."""
        size = into.nbytes
        url, headers = self._request("GET", key, {}, EMPTY_SHA256,
                                     {"Range": f"bytes={start}-{start + size - 1}"})
        answer = await self._wire.request("GET", url.raw_path_qs, headers, into=into)
        if answer.status not in (200, 206):
            _raise_error(answer, "GetObject")
        if answer.body or answer.headers.get("content-length") != str(size):
            raise ClientError({"Error": {"Code": "InvalidRange", "Message": (
                f"asked for {size} bytes at {start}, the store sends "
                f"{answer.headers.get('content-length')}")},
                "ResponseMetadata": {"HTTPStatusCode": 416}}, "GetObject")


def _raise_error(answer: Answer, operation: str) -> NoReturn:
    """The store's error answer as the ``ClientError`` botocore would have raised."""
    code = _CODE.search(answer.body)
    message = _MESSAGE.search(answer.body)
    raise ClientError({
        "Error": {"Code": code.group(1).decode(errors="replace") if code else
                  str(answer.status),
                  "Message": message.group(1).decode(errors="replace") if message else
                  answer.reason},
        "ResponseMetadata": {"HTTPStatusCode": answer.status}}, operation)
