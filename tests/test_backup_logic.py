"""Pure logic of backups: store config, manifests, chains, retention; no S3 needed.

The same code runs against a real SeaweedFS in test_backups.py; these cases pin the
edges (bad config keys, damaged manifests, chains with holes) cheaply.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cerssd.config import parse_config
from cerssd.objectstore.config import StoreConfig
from cerssd.objectstore.layout import (
    BrokenChain,
    Manifest,
    ManifestInvalid,
    Part,
    Segment,
    chain,
    decode,
    needed_parents,
    segment_key,
)
from cerssd.objectstore.upload import read_part
from cerssd.parsing import ConfigError
from cerssd.replication.flows.backup import BackupRequest, pick_snapshot
from cerssd.replication.flows.bucket_prune import backups_to_delete, bucket_plan
from cerssd.replication.logic.retention import parse_grid
from cerssd.storage.values import Snapshot

HOUR = 3600


def store_config(**keys: Any) -> dict[str, Any]:
    return {"stores": {"s3": {"bucket": "backups", "endpoint": "http://127.0.0.1:8333",
                              **keys}}}


def test_store_config_defaults_and_prefix_slash() -> None:
    cfg = parse_config(store_config(prefix="nodes/n1")).stores["s3"]
    assert (cfg.prefix, cfg.part_size, cfg.concurrency, cfg.compression) == \
        ("nodes/n1/", 8 << 20, 3, "none")


@pytest.mark.parametrize(("keys", "key"), [
    ({"bucket": "Bad_Bucket"}, "stores.s3.bucket"),
    ({"part_size": "1MiB"}, "stores.s3.part_size"),
    ({"concurrency": 0}, "stores.s3.concurrency"),
    ({"retention": "1d:all"}, "stores.s3.retention"),
    ({"retention": ["1d"]}, "stores.s3.retention[0]"),
    ({"keep_min": 0}, "stores.s3.keep_min"),
    ({"full_every": 0}, "stores.s3.full_every"),
    ({"compression": "gzip"}, "stores.s3.compression"),
    ({"compression": "zstd", "compression_level": 30}, "stores.s3.compression_level"),
    ({"endpoint": "ftp://x"}, "stores.s3.endpoint"),
    ({"credentials_file": "relative.key"}, "stores.s3.credentials_file"),
    ({"prefix": "/abs"}, "stores.s3.prefix"),
    ({"secret": "x"}, "stores.s3.secret"),
])
def test_bad_store_keys_are_named(keys: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(store_config(**keys))
    assert info.value.key == key


def test_store_may_not_share_a_server_name() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"servers": {"local": {"kind": "local"}},
                      "stores": {"local": {"bucket": "abc"}}})
    assert info.value.key == "stores.local"


def test_credentials_file_is_read_and_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "s3.key"
    path.write_text('access_key_id = "AKID"\nsecret_access_key = "very-secret"\n')
    cfg = StoreConfig(name="s3", bucket="abc", credentials_file=path)
    creds = cfg.load_credentials()
    assert creds.secret_access_key == "very-secret"
    assert "very-secret" not in repr(creds) and "very-secret" not in repr(cfg)
    assert "very-secret" not in json.dumps(cfg.to_json())


def test_broken_credentials_file_names_the_key_without_its_content(tmp_path: Path) -> None:
    path = tmp_path / "s3.key"
    path.write_text("secret_access_key = very-secret-unquoted\n")
    with pytest.raises(ConfigError) as info:
        StoreConfig(name="s3", bucket="abc", credentials_file=path).load_credentials()
    assert info.value.key == "stores.s3.credentials_file"
    assert "very-secret" not in str(info.value)


def test_missing_environment_credentials_are_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID"):
        StoreConfig(name="s3", bucket="abc").load_credentials()


def manifest(guid: str, created: int, parent: str | None = None, size: int = 10,
             volume: str = "tank/v") -> Manifest:
    key = segment_key("p/", volume, f"s{guid}", guid, "none", 0)
    return Manifest(
        volume=volume, snapshot=f"{volume}@s{guid}", guid=guid, snapshot_created=created,
        parent_guid=parent, parent_snapshot=f"{volume}@s{parent}" if parent else None,
        segments=(Segment(0, key, 0, size, "0" * 64),), stream_size=size, raw_size=size,
        compression="none", sha256="0" * 64, parts=(Part(1, 0, size, "0" * 64),))


def test_manifest_round_trips_and_rejects_gaps() -> None:
    m = manifest("11", 100, parent="10")
    again = decode(m.encode(), "k")
    assert again == m and again.kind == "incremental"
    data = json.loads(m.encode())
    data["parts"][0]["size"] = 9
    with pytest.raises(ManifestInvalid, match="parts add up to 9"):
        decode(json.dumps(data).encode(), "k")
    # Parts that add up to the stream but overlap (or leave a gap): a restore writes each
    # verified part in turn and relies on them tiling the stream, so this is refused too.
    data = json.loads(m.encode())
    data["parts"] = [{**data["parts"][0], "size": 6},
                     {**data["parts"][0], "number": 2, "offset": 5, "size": 4}]
    with pytest.raises(ManifestInvalid, match="part at offset 5 is out of order"):
        decode(json.dumps(data).encode(), "k")
    with pytest.raises(ManifestInvalid, match="not a cerssd manifest"):
        decode(b'{"format": "cerssd-backup/1"}', "k")
    with pytest.raises(ManifestInvalid):
        decode(b"not json", "k")


def test_a_manifest_written_now_has_digests_per_part_only_and_old_ones_still_read() -> None:
    made = manifest("12", 100)
    made = replace(made, sha256="", segments=tuple(replace(g, sha256="") for g in made.segments))
    now = json.loads(made.encode())
    assert now["format"] == "cerssd-backup/3" and "sha256" not in now
    assert all("sha256" not in seg for seg in now["segments"]) and now["parts"][0]["sha256"]
    assert decode(json.dumps(now).encode(), "k").parts[0].sha256 == "0" * 64
    old = {**now, "format": "cerssd-backup/1", "sha256": "1" * 64,
           "segments": [{**now["segments"][0], "sha256": "2" * 64}]}
    read = decode(json.dumps(old).encode(), "k")  # made before issue 13's change
    assert read.sha256 == "1" * 64 and read.segments[0].sha256 == "2" * 64
    with pytest.raises(ManifestInvalid, match="without the whole stream's sha256"):
        decode(json.dumps({**now, "format": "cerssd-backup/1"}).encode(), "k")


def test_chain_walks_back_to_the_full_and_names_a_hole() -> None:
    full, i1, i2 = manifest("1", 1), manifest("2", 2, "1"), manifest("3", 3, "2")
    assert chain([i2, full, i1], "3") == [full, i1, i2]
    with pytest.raises(BrokenChain, match=r"tank/v@s3 is an incremental from tank/v@s2"):
        chain([full, i2], "3")
    with pytest.raises(BrokenChain, match="no complete backup"):
        chain([full], "9")


def test_retention_keeps_every_parent_a_kept_incremental_needs() -> None:
    now = 100 * HOUR
    # One full long ago, then hourly incrementals; keep only the last 2 hours.
    backups = [manifest("0", 10 * HOUR)] + [
        manifest(str(i), (10 + i) * HOUR, str(i - 1)) for i in range(1, 90)]
    doomed = backups_to_delete(backups, parse_grid(["2h:all"]), now=now)
    assert doomed == []  # every backup is an ancestor of the newest: nothing may go
    # With a second full, the old chain is no longer needed by the kept ones.
    backups.append(manifest("f2", now - 30 * 60))
    backups.append(manifest("f3", now - 29 * 60, "f2"))
    doomed = backups_to_delete(backups, parse_grid(["45m:all"]), now=now)
    assert {m.guid for m in doomed} == {str(i) for i in range(90)}
    assert needed_parents(backups, ["f3"]) == {"f2"}


def test_read_part_fills_whole_parts_and_hashes_them() -> None:
    data = os.urandom(300_000)
    r, w = os.pipe()

    def feed() -> None:
        for i in range(0, len(data), 7000):  # small writes: reads must keep filling
            os.write(w, data[i:i + 7000])
        os.close(w)

    feeder = threading.Thread(target=feed)
    feeder.start()
    buf = bytearray(131072)
    got = []
    for _ in range(3):
        n, digest = read_part(r, buf, len(buf))
        got.append((n, digest, bytes(buf[:n])))
    feeder.join()
    os.close(r)
    assert [n for n, _, _ in got] == [131072, 131072, 300_000 - 262144]
    assert b"".join(part for _, _, part in got) == data
    assert [d for _, d, _ in got] == [hashlib.sha256(p).hexdigest() for _, _, p in got]


def test_store_errors_are_sorted_into_transient_and_permanent() -> None:
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    from cerssd.objectstore.client import ObjectMissing, classify

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")

    assert not classify("s3", "x", EndpointConnectionError(endpoint_url="http://h")).permanent
    assert not classify("s3", "x", ReadTimeoutError(endpoint_url="http://h")).permanent
    assert not classify("s3", "x", ConnectionResetError()).permanent
    assert not classify("s3", "x", client_error("SlowDown", 503)).permanent
    assert not classify("s3", "x", client_error("InternalError", 500)).permanent
    assert not classify("s3", "x", client_error("BadDigest", 400)).permanent  # damaged
    assert classify("s3", "x", client_error("SignatureDoesNotMatch", 403)).permanent
    assert classify("s3", "x", client_error("NoSuchBucket", 404)).permanent
    assert isinstance(classify("s3", "x", client_error("NoSuchKey", 404)), ObjectMissing)


def test_incremental_base_is_the_newest_by_txg_not_by_one_second_creation() -> None:
    from cerssd.objectstore.catalog import newest_backed_up as newest_common
    from cerssd.storage.values import Snapshot

    def snap(guid: str) -> Snapshot:  # all made within one second, as scripts do
        return Snapshot(f"tank/v@s{guid}", "tank/v", f"s{guid}", guid, 1000, 0, 0, 0)

    source = [snap("1"), snap("2"), snap("3")]  # oldest first, by createtxg
    catalog = {manifest("1", 1000).guid, manifest("2", 1000, "1").guid}
    base = newest_common(catalog, source, "3")
    assert base is not None and base.guid == "2"
    assert newest_common(catalog, source, "2") is not None
    assert newest_common(catalog, source, "1") is None


def test_manifest_guid_is_read_off_the_key_of_the_volume_itself() -> None:
    from cerssd.objectstore.layout import manifest_guid, manifest_key

    key = manifest_key("p/", "tank/v", "daily.1", "123")
    assert key == "p/tank/v/daily.1.123/manifest.json"
    assert manifest_guid("p/", "tank/v", key) == "123"
    child = manifest_key("p/", "tank/v/child", "s", "9")
    assert manifest_guid("p/", "tank/v", child) is None  # a child volume's backup
    assert manifest_guid("p/", "tank/v", "p/tank/v/s.9/stream-000000") is None


@pytest.mark.parametrize("key", ["pool/vol/label.123/stream-000000",
                                 "p/v@x/weird key+%~=&;é/stream-000000.zst"])
async def test_part_requests_sign_the_given_payload_hash_as_botocore_signs_the_body(
        key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lean part path (parts.py) signs with botocore's S3SigV4Auth but hands it the
    part's sha256 instead of the body: the Authorization must be exactly what stock
    botocore gives when it hashes the body itself (a wrong or empty payload hash would
    differ), and a session token must be sent and signed."""
    import datetime as dt

    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import ReadOnlyCredentials

    from cerssd.objectstore.config import StoreConfig
    from cerssd.objectstore.parts import EMPTY_SHA256, PartClient, endpoint_of, uri_encode

    now = dt.datetime(2026, 12, 6, 7, 8, 9)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)
    body = os.urandom(1000)
    digest = hashlib.sha256(body).hexdigest()
    checksum = base64.b64encode(bytes.fromhex(digest)).decode()
    for token in (None, "FwoGZXIvYXdzEBYaD+token/=="):
        creds = ReadOnlyCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                                    token)
        parts = PartClient(StoreConfig(name="s", bucket="bucket", region="eu-west-3",
                                       endpoint="http://127.0.0.1:8333"), creds)
        try:
            for method, query, payload, extra, data in (
                    ("PUT", {"partNumber": "7", "uploadId": "a+b/c=="}, digest,
                     {"x-amz-checksum-sha256": checksum}, body),
                    ("GET", {}, EMPTY_SHA256, {"Range": "bytes=5-9"}, b"")):
                url, ours = parts._request(method, key, query, payload, extra)
                assert url.raw_path == f"/bucket/{uri_encode(key, keep_slash=True)}"
                stock = AWSRequest(method=method, url=str(url), data=data, headers=extra)
                botocore.auth.S3SigV4Auth(creds, "s3", "eu-west-3").add_auth(stock)
                assert ours["Authorization"] == stock.headers["Authorization"]
                assert ours["X-Amz-Content-SHA256"] == payload
                assert ours["Host"] == "127.0.0.1:8333"
                signed = ours["Authorization"].split("SignedHeaders=")[1].split(",")[0]
                if token:
                    assert ours["X-Amz-Security-Token"] == token
                    assert "x-amz-security-token" in signed.split(";")
                else:
                    assert "X-Amz-Security-Token" not in ours
        finally:
            await parts.close()
    assert endpoint_of(StoreConfig(name="s", bucket="b", region="eu-west-3")) == \
        "https://s3.eu-west-3.amazonaws.com"


def test_stream_channel_is_one_way_ends_with_eof_and_breaks_like_a_pipe() -> None:
    """Object-store streams run through a socket pair (transfer.FdSet.channel, cheaper
    to read and write than a pipe): what the writer sends arrives whole and then EOF;
    a writer whose reader is gone gets BrokenPipeError, as restore.py expects of a
    receiver that quit; and the reader's end cannot be written back into."""
    from cerssd.replication.stream.transfer import FdSet

    fds = FdSet()
    r, w = fds.channel()
    data = os.urandom(3 << 20)
    writer = threading.Thread(target=lambda: (os.write(w, data[:1 << 20]),
                                              os.write(w, data[1 << 20:]), fds.close(w)))
    writer.start()
    got = bytearray()
    while chunk := os.read(r, 1 << 20):
        got += chunk
    writer.join()
    assert got == data
    with pytest.raises(OSError):
        os.write(r, b"back")
    fds.close(r)
    r, w = fds.channel()
    fds.close(r)
    with pytest.raises(BrokenPipeError):
        os.write(w, b"x" * 10)
    fds.close_all()


def test_bucket_retention_spares_foreign_labels_and_keeps_keep_min() -> None:
    """A relationship's store retention: only its own labels, never fewer than keep_min
    (the newest), each with why; an operator's grid (no prefix) covers every label."""
    def owned_full(guid: str, hour: int) -> Manifest:
        label = time.strftime("rel-%Y%m%dT%H%M%SZ", time.gmtime(hour * HOUR))
        return replace(manifest(guid, hour * HOUR), snapshot=f"tank/v@{label}")

    foreign = manifest("m", 1 * HOUR)  # tank/v@sm: an operator's backup
    fulls = [owned_full(str(i), 10 + i) for i in range(4)]
    grid = parse_grid(["1h:all"])
    plan = bucket_plan([foreign, *fulls], grid, now=100 * HOUR, prefix="rel-", keep_min=2)
    assert [v.snapshot.guid for v in plan] == ["0", "1"]
    assert all(v.reason().startswith("older than the grid's last tier (1h:all)") for v in plan)
    everything = bucket_plan([foreign, *fulls], grid, now=100 * HOUR, keep_min=2)
    assert [v.snapshot.guid for v in everything] == ["m", "0", "1"]


def test_a_relationships_newest_snapshot_is_one_it_made() -> None:
    """An operator's snapshot sharing the prefix is not the cycle's to back up."""
    def snap(label: str, created: int) -> Snapshot:
        return Snapshot(name=f"tank/v@{label}", volume="tank/v", label=label, guid=label,
                        creation=created, used=0, referenced=0, userrefs=0)

    source = [snap("cerssd-web-20261207T010000Z", 1), snap("cerssd-web-keep", 2)]
    req = BackupRequest(snapshot=source[0].name, server="local", store="s3",
                        latest_prefix="cerssd-web-")
    assert pick_snapshot(source, req) is source[0]
