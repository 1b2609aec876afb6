"""Private off-site copies on a real S3 store (SeaweedFS): age encryption, S3 SSE.

Real zfs-fuse pools, a real ``weed server``, Debian's ``age``, the daemon as a process.
What is checked is what an operator relies on: no object in the bucket carries the
data in the clear (a plaintext marker written into the volume is looked for in every
object, and found in an unencrypted copy made alongside, so the check can fail), the
backup restores through cerssd and through ``aws s3 cp | age -d | zstd -d | zfs
receive`` as docs/backups.md says, and a missing or wrong identity, or an SSE setting
the store refuses, fails with an error that names the key.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import DaemonProcess, post_json, zfs
from .seaweed import WeedServer
from .test_backups import (
    AWS,
    backup,
    backup_ok,
    digest,
    guid,
    listed,
    restore_ok,
    store_section,
)

MiB = 1 << 20
MARKER = b"CERSSD-PLAINTEXT-MARKER-7f3a9c"


def age_key(path: Path) -> str:
    """A fresh age identity in ``path``; returns its recipient (public key)."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True,
                          text=True).stdout.strip()


def write_marked(path: str, mib: int) -> None:
    """Random data with the marker in every MiB: found in any unencrypted copy."""
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(MARKER + os.urandom(MiB - len(MARKER)))


def objects_with_marker(s3: WeedServer, bucket: str) -> list[str]:
    client = s3.client()
    found = []
    for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        if MARKER in body:
            found.append(item["Key"])
    return found


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, str]:
    identity = tmp_path / "backup.agekey"
    return identity, age_key(identity)


def test_age_backup_hides_the_data_and_restores_with_cerssd(
        start_daemon: Any, make_pool: Any, s3_server: WeedServer, s3_bucket: str,
        tmp_path: Path, keys: tuple[Path, str]) -> None:
    identity, recipient = keys
    plain_bucket = s3_server.create_bucket()
    try:
        src, dst = make_pool(), make_pool()
        zfs("create", f"{src}/vol")
        section = store_section(s3_server, s3_bucket, tmp_path / "s3.key",
                                age_recipients=[recipient],
                                age_identity_file=str(identity))
        plain = store_section(s3_server, plain_bucket, tmp_path / "plain.key").replace(
            "[stores.s3]", "[stores.plain]")
        d = start_daemon(extra=section + plain)
        write_marked(f"/{src}/vol/secret", 6)
        zfs("snapshot", f"{src}/vol@one")
        done = backup_ok(d, f"{src}/vol@one", store="s3")
        assert done["params"]["encryption"] == "age" and done["params"]["raw"] is False
        backup_ok(d, f"{src}/vol@one", store="plain")
        # the check can fail: the unencrypted copy carries the marker
        assert objects_with_marker(s3_server, plain_bucket)
        assert objects_with_marker(s3_server, s3_bucket) == []

        write_marked(f"/{src}/vol/more", 2)
        zfs("snapshot", f"{src}/vol@two")
        second = backup_ok(d, f"{src}/vol@two", store="s3")
        assert second["params"]["kind"] == "incremental"
        assert objects_with_marker(s3_server, s3_bucket) == []
        items = d.api("GET", f"/v1/backups?volume={src}/vol&store=s3")["items"]
        for m in items:
            assert m["encryption"] == "age" and m["format"] == "cerssd-backup/3"
            assert m["age_recipients"] == [recipient]
            assert m["segments"][0].endswith("/stream-000000.age")
        store = next(s for s in d.api("GET", "/v1/stores")["items"] if s["name"] == "s3")
        assert store["encryption"] == "age" and store["age_recipients"] == [recipient]

        # the store's age_identity_file serves when the request names none
        r = post_json(d, "/v1/restores", {"snapshot": f"{src}/vol@two", "store": "s3",
                                          "target_volume": f"{dst}/copy"})
        assert r.status == 202, r.body
        back = d.wait_done(r.body["id"])
        assert back["state"] == "succeeded", back["status"]
        assert guid(f"{dst}/copy@two") == guid(f"{src}/vol@two")
        for name in ("secret", "more"):
            assert digest(f"/{dst}/copy/{name}") == digest(f"/{src}/vol/{name}")
    finally:
        s3_server.delete_bucket(plain_bucket)


def test_standard_tools_restore_an_age_backup(setup_age: Any, s3_server: WeedServer,
                                              s3_bucket: str) -> None:
    """docs/backups.md, exactly: aws s3 cp | age -d -i KEY | zstd -d | zfs receive."""
    d, src, dst, identity = setup_age(compression="zstd")
    write_marked(f"/{src}/vol/f", 4)
    zfs("snapshot", f"{src}/vol@std")
    backup_ok(d, f"{src}/vol@std")
    (m,) = listed(d, f"{src}/vol")
    (key,) = m["segments"]
    assert key.endswith("/stream-000000.zst.age")
    env = {**os.environ, **s3_server.s3.env()}
    url = s3_server.s3.endpoint
    script = (f"set -o pipefail; {AWS} --endpoint-url {url} s3 cp s3://{s3_bucket}/{key} - "
              f"| age -d -i {identity} | zstd -d | zfs receive {dst}/manual")
    subprocess.run(["bash", "-c", script], env=env, check=True)
    assert guid(f"{dst}/manual@std") == m["guid"] == guid(f"{src}/vol@std")
    assert digest(f"/{dst}/manual/f") == digest(f"/{src}/vol/f")


@pytest.fixture
def setup_age(start_daemon: Any, make_pool: Any, s3_server: WeedServer, s3_bucket: str,
              tmp_path: Path, keys: tuple[Path, str]) -> Any:
    """A daemon whose store ``s3`` encrypts to a fresh key (and has no identity)."""
    identity, recipient = keys

    def start(**options: Any) -> tuple[DaemonProcess, str, str, Path]:
        src, dst = make_pool(), make_pool()
        zfs("create", f"{src}/vol")
        section = store_section(s3_server, s3_bucket, tmp_path / "s3.key",
                                age_recipients=[recipient], **options)
        return start_daemon(extra=section), src, dst, identity

    return start


def test_restore_without_or_with_a_wrong_identity_is_refused(
        setup_age: Any, tmp_path: Path) -> None:
    d, src, dst, identity = setup_age()
    write_marked(f"/{src}/vol/f", 1)
    zfs("snapshot", f"{src}/vol@s")
    backup_ok(d, f"{src}/vol@s")
    body = {"snapshot": f"{src}/vol@s", "target_volume": f"{dst}/copy"}
    r = post_json(d, "/v1/restores", body)  # no identity anywhere
    assert r.status == 422 and r.body["field"] == "identity_file", r.body
    assert "encrypted with age" in r.body["detail"]
    assert "stores.s3.age_identity_file" in r.body["detail"]
    r = post_json(d, "/v1/restores", {**body, "identity_file": "relative.key"})
    assert r.status == 422 and r.body["detail"].startswith("identity_file: must be an "
                                                           "absolute path"), r.body
    r = post_json(d, "/v1/restores", {**body, "identity_file": str(tmp_path / "none")})
    assert r.status == 422 and "not a readable file" in r.body["detail"], r.body

    other = tmp_path / "other.agekey"
    age_key(other)
    r = post_json(d, "/v1/restores", {**body, "identity_file": str(other)})
    assert r.status == 202, r.body
    done = d.wait_done(r.body["id"])
    assert done["state"] == "failed"
    message = done["status"]["message"]
    assert "age decryption failed: no identity matched any of the recipients" in message
    assert "does not hold the key" in message
    assert subprocess.run(["zfs", "list", f"{dst}/copy"], capture_output=True).returncode != 0

    r = post_json(d, "/v1/restores", {**body, "identity_file": str(identity)})
    assert r.status == 202 and d.wait_done(r.body["id"])["state"] == "succeeded"
    assert digest(f"/{dst}/copy/f") == digest(f"/{src}/vol/f")


# -- S3 server-side encryption ----------------------------------------------------------

@pytest.mark.parametrize("sse", ["AES256", "aws:kms"])
def test_an_sse_setting_the_store_refuses_fails_naming_the_key(
        start_daemon: Any, make_pool: Any, s3_server: WeedServer, s3_bucket: str,
        tmp_path: Path, sse: str) -> None:
    """SeaweedFS without an SSE key answers 500 to SSE-S3 (and to SSE-KMS, after
    accepting it on CreateMultipartUpload): refused at once, never retried."""
    src = make_pool()
    zfs("create", f"{src}/vol")
    section = store_section(s3_server, s3_bucket, tmp_path / "s3.key", sse=sse)
    d = start_daemon(extra=section)
    zfs("snapshot", f"{src}/vol@s")
    done = d.wait_done(backup(d, f"{src}/vol@s")["id"], timeout=60)
    assert done["state"] == "failed"
    assert f"stores.s3.sse: the store refused sse = {sse!r}" in done["status"]["message"]
    assert done["usage"]["retries"] == 0
    assert [k for k in _keys(s3_server, s3_bucket)] == []  # nor is a probe left


def _keys(s3: WeedServer, bucket: str) -> list[str]:
    page = s3.client().list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in page.get("Contents", [])]


@pytest.fixture(scope="module")
def sse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    """A second ``weed server`` with SSE-S3 on (a key from which it derives its KEK)."""
    server = WeedServer(tmp_path_factory.mktemp("seaweed-sse"),
                        env={"WEED_S3_SSE_KEY": "cerssd-test-" + os.urandom(8).hex()})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_sse_s3_is_passed_through_and_restores(start_daemon: Any, make_pool: Any,
                                               sse_server: WeedServer,
                                               tmp_path: Path) -> None:
    bucket = sse_server.create_bucket()
    src, dst = make_pool(), make_pool()
    zfs("create", f"{src}/vol")
    section = store_section(sse_server, bucket, tmp_path / "s3.key", sse="AES256")
    d = start_daemon(extra=section)
    write_marked(f"/{src}/vol/f", 6)
    zfs("snapshot", f"{src}/vol@s")
    backup_ok(d, f"{src}/vol@s")
    client = sse_server.client()
    keys = _keys(sse_server, bucket)
    assert len(keys) == 2  # the stream and the manifest; the probe was removed
    for key in keys:
        assert client.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"
    # at rest: nothing of the data in the store's own files
    found = subprocess.run(["grep", "-rlF", MARKER.decode(), str(sse_server.s3.data_dir)],
                           capture_output=True, text=True)
    assert found.stdout == "" and found.returncode == 1, found
    restore_ok(d, f"{src}/vol@s", f"{dst}/copy")
    assert digest(f"/{dst}/copy/f") == digest(f"/{src}/vol/f")
    assert json.loads(client.get_object(Bucket=bucket, Key=next(
        k for k in keys if k.endswith("manifest.json")))["Body"].read())["guid"] == guid(
            f"{src}/vol@s")


def test_a_relationships_shared_send_is_compressed_and_encrypted_on_its_way_to_the_bucket(
        start_daemon: Any, make_pool: Any, s3_server: WeedServer, s3_bucket: str,
        tmp_path: Path, keys: tuple[Path, str]) -> None:
    """The cycle's one send feeds the slave and, through zstd then age, the bucket."""
    from .conftest import SLOW, wait_until
    from .test_relationships import LOCAL_SLAVES, relationship_config, wait_in_sync

    identity, recipient = keys
    master, a, restored = make_pool(), make_pool(), make_pool()
    zfs("create", f"{master}/data")
    write_marked(f"/{master}/data/f", 6)
    config = (LOCAL_SLAVES + store_section(s3_server, s3_bucket, tmp_path / "s3.key",
                                           compression="zstd", age_recipients=[recipient])
              + relationship_config("web", f"{master}/data", {"a": f"{a}/data"},
                                    extra='stores = ["s3"]'))
    d = start_daemon(extra=config)
    synced = wait_in_sync(d, "web")

    def backed_up() -> dict[str, Any] | None:
        items = d.api("GET", "/v1/activities?kind=backup&limit=10")["items"]
        return next((x for x in items if x["state"] == "succeeded"), None)

    done = wait_until(backed_up, SLOW, what="the cycle's backup")
    assert done["params"]["fanout"] == "shared" and done["params"]["encryption"] == "age"
    assert objects_with_marker(s3_server, s3_bucket) == []
    (m,) = listed(d, f"{master}/data")
    assert m["segments"][0].endswith(".zst.age") and m["encryption"] == "age"
    r = post_json(d, "/v1/restores", {"snapshot": synced["newest_snapshot"],
                                      "target_volume": f"{restored}/copy",
                                      "identity_file": str(identity)})
    assert r.status == 202, r.body
    assert d.wait_done(r.body["id"])["state"] == "succeeded"
    assert digest(f"/{restored}/copy/f") == digest(f"/{master}/data/f")


def test_a_trees_members_are_each_backed_up_encrypted(
        start_daemon: Any, make_pool: Any, s3_server: WeedServer, s3_bucket: str,
        tmp_path: Path, keys: tuple[Path, str]) -> None:
    """A tree's backup goes through the same filters: every member's chain is age."""
    from .conftest import SLOW, wait_until
    from .test_tree_backups import settled
    from .test_trees import tree_config

    identity, recipient = keys
    src, dst, restored = make_pool(), make_pool(), make_pool()
    root = f"{src}/tree"
    zfs("create", root)
    zfs("create", f"{root}/m")
    write_marked(f"/{root}/m/f", 2)
    config = (store_section(s3_server, s3_bucket, tmp_path / "s3.key",
                            age_recipients=[recipient], age_identity_file=str(identity))
              + tree_config("t", root, f"{dst}/standby", recursive="true", stores='["s3"]'))
    d = start_daemon(extra=config)
    wait_until(lambda: settled(d, "t", 1, 2), SLOW, what="the tree's first backups")
    assert objects_with_marker(s3_server, s3_bucket) == []
    (m,) = listed(d, f"{root}/m")
    assert m["encryption"] == "age" and m["segments"][0].endswith(".age")
    restore_ok(d, m["snapshot"], f"{restored}/m")
    assert digest(f"/{restored}/m/f") == digest(f"/{root}/m/f")
