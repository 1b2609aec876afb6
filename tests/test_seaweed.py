"""The SeaweedFS S3 fixture itself, and the S3 features cerssd relies on, checked on it.

The later tests pin what this store really does with the calls cerssd makes (ranged
GETs, multipart listing and abort, checksums), so a store that differs from AWS shows
up here rather than as a puzzling failure in a replication test.
"""

from __future__ import annotations

import base64
import os
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from tests.conftest import running_weed
from tests.seaweed import WeedServer

AWS_CLI = Path(__file__).resolve().parent.parent / ".venv-awscli" / "bin" / "aws"


async def read_object(client: Any, bucket: str, key: str, **extra: Any) -> bytes:
    response = await client.get_object(Bucket=bucket, Key=key, **extra)
    async with response["Body"] as body:
        data: bytes = await body.read()
    return data


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    """A server of this module's own (it stops and starts it): in a whole-suite run the
    session's server has the buckets of every earlier test, and a restart of it once
    waited out its 180 s limit for volumes to register, failing every test after it."""
    yield from running_weed(tmp_path_factory, "seaweed-own")


# -- the fixture ---------------------------------------------------------------------


async def test_upload_and_download(s3_server: WeedServer, s3_bucket: str) -> None:
    data = os.urandom(300_000)
    async with s3_server.aio_client() as client:
        await client.put_object(Bucket=s3_bucket, Key="dir/object", Body=data)
        assert await read_object(client, s3_bucket, "dir/object") == data
        listing = await client.list_objects_v2(Bucket=s3_bucket, Prefix="dir/")
    assert [(o["Key"], o["Size"]) for o in listing["Contents"]] == [("dir/object", len(data))]


async def test_wrong_credentials_are_rejected(s3_server: WeedServer, s3_bucket: str) -> None:
    async with s3_server.aio_client(secret_key="not-" + s3_server.s3.secret_key) as client:
        with pytest.raises(ClientError) as wrong_secret:
            await client.put_object(Bucket=s3_bucket, Key="intruder", Body=b"x")
    assert error_code(wrong_secret.value) == "SignatureDoesNotMatch"
    async with s3_server.aio_client(access_key="AKNOBODY0000000000") as client:
        with pytest.raises(ClientError) as unknown_key:
            await client.list_buckets()
    assert error_code(unknown_key.value) == "InvalidAccessKeyId"
    async with s3_server.aio_client() as client:
        listing = await client.list_objects_v2(Bucket=s3_bucket)
    assert "Contents" not in listing, "a rejected PUT must not have stored anything"


async def test_missing_bucket_is_an_error(s3_server: WeedServer) -> None:
    """weed creates buckets on upload unless told not to; AWS does not."""
    async with s3_server.aio_client() as client:
        with pytest.raises(ClientError) as missing:
            await client.put_object(Bucket="cerssd-no-such-bucket", Key="k", Body=b"x")
    assert error_code(missing.value) == "NoSuchBucket"


async def test_outage_then_restart_keeps_data(s3_server: WeedServer, s3_bucket: str) -> None:
    data = os.urandom(100_000)
    endpoint = s3_server.s3.endpoint
    async with s3_server.aio_client() as client:
        await client.put_object(Bucket=s3_bucket, Key="before-outage", Body=data)
        pid = s3_server.pid
        assert pid is not None
        s3_server.stop()  # SIGKILL, right after the PUT was acknowledged
        assert not s3_server.running
        with pytest.raises(ProcessLookupError):  # nothing left of its process group
            os.killpg(pid, 0)
        with pytest.raises(EndpointConnectionError):
            await client.head_object(Bucket=s3_bucket, Key="before-outage")
        s3_server.start()
        # The same client: same endpoint, same credentials, the same data.
        assert s3_server.s3.endpoint == endpoint
        assert await read_object(client, s3_bucket, "before-outage") == data


def test_a_volume_file_that_never_loads_does_not_stall_a_restart(
        s3_server: WeedServer, s3_bucket: str) -> None:
    """A kill while a bucket grows a volume can leave a ``.dat`` that weed never loads
    (stop 26's CI: "master knows 14 of 15 volumes" until the 180 s limit, for every
    later test). The restart waits for what the volume server loaded instead."""
    s3_server.client().put_object(Bucket=s3_bucket, Key="kept", Body=b"kept")
    s3_server.stop()
    stray = s3_server.s3.data_dir / f"{s3_bucket}_9999.dat"
    stray.write_bytes(b"\0" * 8)
    try:
        s3_server.start(timeout=60)
        assert s3_server.last_start_seconds < 30, s3_server.last_start_seconds
        body = s3_server.client().get_object(Bucket=s3_bucket, Key="kept")["Body"].read()
        assert body == b"kept"
    finally:
        s3_server.ensure_started()


async def test_multipart_upload_survives_outage(s3_server: WeedServer,
                                                s3_bucket: str) -> None:
    """The outage the replication tests make: parts stored before it stay stored, and
    the same upload is finished after it."""
    first, second = os.urandom(5 << 20), os.urandom(1000)
    async with s3_server.aio_client() as client:
        upload_id = (await client.create_multipart_upload(
            Bucket=s3_bucket, Key="stream"))["UploadId"]
        part1 = await client.upload_part(Bucket=s3_bucket, Key="stream", UploadId=upload_id,
                                         PartNumber=1, Body=first)
        s3_server.stop()
        with pytest.raises(EndpointConnectionError):
            await client.upload_part(Bucket=s3_bucket, Key="stream", UploadId=upload_id,
                                     PartNumber=2, Body=second)
        s3_server.start()
        assert await all_uploads(client, s3_bucket) == {("stream", upload_id)}
        listed = await client.list_parts(Bucket=s3_bucket, Key="stream", UploadId=upload_id)
        assert [(p["PartNumber"], p["ETag"]) for p in listed["Parts"]] == [(1, part1["ETag"])]
        part2 = await client.upload_part(Bucket=s3_bucket, Key="stream", UploadId=upload_id,
                                         PartNumber=2, Body=second)
        await client.complete_multipart_upload(
            Bucket=s3_bucket, Key="stream", UploadId=upload_id, MultipartUpload={"Parts": [
                {"PartNumber": 1, "ETag": part1["ETag"]},
                {"PartNumber": 2, "ETag": part2["ETag"]}]})
        assert await read_object(client, s3_bucket, "stream") == first + second


def test_aws_cli_copies_both_ways(s3_server: WeedServer, s3_bucket: str,
                                  tmp_path: Path) -> None:
    if not AWS_CLI.exists():
        pytest.fail(f"{AWS_CLI} is missing: run scripts/setup")
    local = tmp_path / "upload.bin"
    local.write_bytes(os.urandom(9 << 20))  # over the CLI's 8 MiB multipart threshold
    back = tmp_path / "download.bin"
    url = f"s3://{s3_bucket}/cli/upload.bin"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **s3_server.s3.env()}
    for source, target in ((local, url), (url, back)):
        result = subprocess.run(
            [str(AWS_CLI), "--endpoint-url", s3_server.s3.endpoint, "--only-show-errors",
             "s3", "cp", str(source), str(target)],
            env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    assert back.read_bytes() == local.read_bytes()


# -- what the store supports -----------------------------------------------------------


async def test_ranged_gets(s3_server: WeedServer, s3_bucket: str) -> None:
    data = os.urandom(100_000)
    async with s3_server.aio_client() as client:
        await client.put_object(Bucket=s3_bucket, Key="ranged", Body=data)
        assert await read_object(client, s3_bucket, "ranged", Range="bytes=10-19") == data[10:20]
        assert await read_object(client, s3_bucket, "ranged", Range="bytes=-5") == data[-5:]
        assert await read_object(client, s3_bucket, "ranged",
                                 Range="bytes=99990-") == data[99990:]
        with pytest.raises(ClientError) as past_end:
            await client.get_object(Bucket=s3_bucket, Key="ranged", Range="bytes=200000-")
    assert error_code(past_end.value) == "InvalidRange"


async def test_list_and_abort_multipart_uploads(s3_server: WeedServer,
                                                s3_bucket: str) -> None:
    async with s3_server.aio_client() as client:
        started = {(key, (await client.create_multipart_upload(
            Bucket=s3_bucket, Key=key))["UploadId"]) for key in ("a", "b", "b", "c/d")}
        assert await all_uploads(client, s3_bucket) == started
        key, upload_id = min(started)
        await client.abort_multipart_upload(Bucket=s3_bucket, Key=key, UploadId=upload_id)
        assert await all_uploads(client, s3_bucket) == started - {(key, upload_id)}
        with pytest.raises(ClientError) as bogus:
            await client.abort_multipart_upload(Bucket=s3_bucket, Key="a", UploadId="bogus")
    assert error_code(bogus.value) == "NoSuchUpload"


async def all_uploads(client: Any, bucket: str) -> set[tuple[str, str]]:
    """Every pending upload, one per page so paging is exercised.

    SeaweedFS pages by upload id and sends no NextKeyMarker (AWS sends both): pass
    back only the markers the store gave, or pages are skipped.
    """
    found: set[tuple[str, str]] = set()
    markers: dict[str, str] = {}
    for _ in range(100):
        page = await client.list_multipart_uploads(Bucket=bucket, MaxUploads=1, **markers)
        found |= {(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])}
        if not page.get("IsTruncated"):
            return found
        markers = {name: page[f"Next{name}"] for name in ("KeyMarker", "UploadIdMarker")
                   if page.get(f"Next{name}")}
    raise AssertionError("ListMultipartUploads never stopped paging")


async def test_checksums(s3_server: WeedServer, s3_bucket: str) -> None:
    data = os.urandom(50_000)
    crc32 = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    async with s3_server.aio_client(request_checksum_calculation="when_supported") as client:
        put = await client.put_object(Bucket=s3_bucket, Key="summed", Body=data,
                                      ChecksumAlgorithm="CRC32")
        assert put["ChecksumCRC32"] == crc32
        head = await client.head_object(Bucket=s3_bucket, Key="summed", ChecksumMode="ENABLED")
        assert head["ChecksumCRC32"] == crc32
        with pytest.raises(ClientError) as bad:
            await client.put_object(Bucket=s3_bucket, Key="corrupt", Body=data,
                                    ChecksumCRC32="AAAAAA==")
        assert error_code(bad.value) == "BadDigest"
        with pytest.raises(ClientError) as missing:
            await client.head_object(Bucket=s3_bucket, Key="corrupt")
    assert error_code(missing.value) == "404"


async def test_multipart_upload_with_checksums(s3_server: WeedServer, s3_bucket: str) -> None:
    parts = [os.urandom(5 << 20), b"tail"]
    async with s3_server.aio_client(request_checksum_calculation="when_supported") as client:
        upload_id = (await client.create_multipart_upload(
            Bucket=s3_bucket, Key="multi", ChecksumAlgorithm="CRC32"))["UploadId"]
        done = []
        for number, body in enumerate(parts, 1):
            part = await client.upload_part(Bucket=s3_bucket, Key="multi", UploadId=upload_id,
                                            PartNumber=number, Body=body)
            done.append({"PartNumber": number, "ETag": part["ETag"],
                         "ChecksumCRC32": part["ChecksumCRC32"]})
        await client.complete_multipart_upload(Bucket=s3_bucket, Key="multi",
                                               UploadId=upload_id,
                                               MultipartUpload={"Parts": done})
        whole = b"".join(parts)
        edge = len(parts[0])
        assert await read_object(client, s3_bucket, "multi",
                                 Range=f"bytes={edge - 2}-{edge + 1}") == whole[edge - 2:edge + 2]
        assert await read_object(client, s3_bucket, "multi") == whole


async def test_lean_part_path_uploads_reads_and_sorts_failures(
        s3_server: WeedServer, s3_bucket: str, tmp_path: Path) -> None:
    """UploadPart and ranged GETs go around botocore (cerssd/objectstore/parts.py): on a
    real store they must be accepted as signed, refused when the part arrives damaged
    (a transient BadDigest, retried by the caller), refused for bad credentials
    (permanent), and a key with awkward characters must name the same object both ways."""
    import hashlib

    from cerssd.objectstore.client import ObjectMissing, ObjectStore, StoreError
    from cerssd.objectstore.config import StoreConfig

    def store(secret: str) -> ObjectStore:
        key_file = tmp_path / f"key-{len(secret)}"
        key_file.write_text(f'access_key_id = "{s3_server.s3.access_key}"\n'
                            f'secret_access_key = "{secret}"\n')
        return ObjectStore(StoreConfig(name="s3", bucket=s3_bucket,
                                       endpoint=s3_server.s3.endpoint,
                                       credentials_file=key_file))

    def sums(data: bytes) -> tuple[str, str]:
        digest = hashlib.sha256(data).digest()
        return digest.hex(), base64.b64encode(digest).decode()

    key = "pool/vol/lab el+%=&;é.42/stream-000000"
    parts = [os.urandom(5 << 20), os.urandom(1000)]
    good, bad = store(s3_server.s3.secret_key), store("not-" + s3_server.s3.secret_key)
    try:
        upload_id = (await good.call("create_multipart_upload", Key=key,
                                     ChecksumAlgorithm="SHA256"))["UploadId"]
        hex0, b64_0 = sums(parts[0])
        with pytest.raises(StoreError) as damaged:
            await good.upload_part(key, upload_id, 1, memoryview(parts[0]), hex0,
                                   sums(b"something else")[1])
        assert not damaged.value.permanent, damaged.value
        with pytest.raises(StoreError) as forged:
            await bad.upload_part(key, upload_id, 1, memoryview(parts[0]), hex0, b64_0)
        assert forged.value.permanent and forged.value.code == "SignatureDoesNotMatch"
        done = []
        for number, body in enumerate(parts, 1):
            hex_digest, b64 = sums(body)
            etag = await good.upload_part(key, upload_id, number, memoryview(body),
                                          hex_digest, b64)
            done.append({"PartNumber": number, "ETag": etag, "ChecksumSHA256": b64})
        await good.call("complete_multipart_upload", Key=key, UploadId=upload_id,
                        MultipartUpload={"Parts": done})
        whole = b"".join(parts)
        assert (await good.head(key)).size == len(whole)
        into = bytearray(3000)
        await good.get_range_into(key, len(parts[0]) - 2000, memoryview(into))
        assert into == whole[len(parts[0]) - 2000:len(parts[0]) + 1000]
        with pytest.raises(ObjectMissing):
            await good.get_range_into(key + ".missing", 0, memoryview(bytearray(10)))
        with pytest.raises(StoreError) as past_end:
            await good.get_range_into(key, len(whole) - 10, memoryview(bytearray(20)))
        assert past_end.value.code == "InvalidRange"
    finally:
        await good.close()
        await bad.close()
