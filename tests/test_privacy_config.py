"""``[stores.NAME]``'s privacy keys: age recipients checked by age itself, SSE values,
and the manifest fields an encrypted or raw backup carries (no store needed)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cerssd.config import parse_config
from cerssd.objectstore.layout import (
    FORMAT,
    FORMAT_AGE,
    FORMAT_PARTS,
    ManifestInvalid,
    decode,
    segment_key,
)
from cerssd.parsing import ConfigError
from cerssd.replication.stream.filters import backup_filters, restore_filters

from .test_backup_logic import manifest


def recipient(tmp_path: Path, name: str = "k") -> str:
    key = tmp_path / name
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    return subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True,
                          text=True).stdout.strip()


def store(**table: Any) -> Any:
    return parse_config({"stores": {"s3": {"bucket": "backups", **table}}}).stores["s3"]


def test_recipients_are_used_in_order_and_shown(tmp_path: Path) -> None:
    one, two = recipient(tmp_path, "a"), recipient(tmp_path, "b")
    listing = tmp_path / "recipients.txt"
    listing.write_text(f"# the off-site key\n{two}\n\n")
    cfg = store(age_recipients=[one], age_recipients_file=str(listing), compression="zstd")
    assert cfg.privacy.recipients() == (one, two)
    assert [name for name, _ in backup_filters(cfg)] == ["compressor", "age encryption"]
    assert backup_filters(cfg)[1][1] == ["age", "-e", "-r", one, "-R", str(listing)]
    assert cfg.to_json()["encryption"] == "age"
    assert store().to_json()["encryption"] == "none" and backup_filters(store()) == []
    assert [n for n, _ in restore_filters("lz4", Path("/k"))] == ["age decryption",
                                                                   "decompressor"]


@pytest.mark.parametrize(("table", "key", "words"), [
    ({"age_recipients": ["age1notakey"]}, "stores.s3.age_recipients[0]", "malformed recipient"),
    ({"age_recipients": ["RECIPIENT", "nonsense"]}, "stores.s3.age_recipients[1]",
     "unknown recipient type"),
    ({"age_recipients": "age1x"}, "stores.s3.age_recipients", "must be a list"),
    ({"age_recipients_file": "relative.txt"}, "stores.s3.age_recipients_file", "absolute"),
    ({"age_recipients_file": "/nonexistent/r.txt"}, "stores.s3.age_recipients_file",
     "/nonexistent/r.txt"),
    ({"age_identity_file": "key.txt"}, "stores.s3.age_identity_file", "absolute"),
    ({"sse": "aes256"}, "stores.s3.sse", "must be one of AES256, aws:kms"),
    ({"sse": "AES256", "sse_kms_key_id": "k"}, "stores.s3.sse_kms_key_id", "aws:kms"),
    ({"sse": "aws:kms", "sse_kms_key_id": "a b"}, "stores.s3.sse_kms_key_id", "no spaces"),
])
def test_bad_privacy_settings_name_the_key(tmp_path: Path, table: dict[str, Any], key: str,
                                           words: str) -> None:
    good = recipient(tmp_path)
    if "age_recipients" in table and isinstance(table["age_recipients"], list):
        table = {"age_recipients": [good if r == "RECIPIENT" else r
                                    for r in table["age_recipients"]]}
    with pytest.raises(ConfigError) as info:
        store(**table)
    assert info.value.key == key
    assert words in info.value.problem
    assert "report" not in info.value.problem  # age's bug-report line is not repeated


def test_a_recipients_file_with_a_bad_line_names_the_line(tmp_path: Path) -> None:
    listing = tmp_path / "r.txt"
    listing.write_text(f"{recipient(tmp_path)}\nage1broken\n")
    with pytest.raises(ConfigError) as info:
        store(age_recipients_file=str(listing))
    assert info.value.key == "stores.s3.age_recipients_file"
    assert "line 2" in info.value.problem


def test_sse_arguments_go_on_every_object_created() -> None:
    cfg = store(sse="aws:kms", sse_kms_key_id="alias/backups")
    assert cfg.privacy.sse_args() == {"ServerSideEncryption": "aws:kms",
                                      "SSEKMSKeyId": "alias/backups"}
    assert store(sse="AES256").privacy.sse_args() == {"ServerSideEncryption": "AES256"}


def test_manifest_says_raw_and_age_and_refuses_a_mismatch() -> None:
    m = manifest("7", 100)
    data = m.to_json()
    assert data["raw"] is False and data["encryption"] == "none"
    age = {**data, "send_flags": "-w", "encryption": "age", "age_recipients": ["age1x"],
           "format": FORMAT_AGE}
    back = decode(json.dumps(age).encode(), "k")
    assert back.raw and back.encryption == "age" and back.age_recipients == ("age1x",)
    with pytest.raises(ManifestInvalid, match="does not go with"):
        decode(json.dumps({**age, "format": FORMAT}).encode(), "k")
    written_now = {k: v for k, v in age.items() if k != "sha256"} | {"format": FORMAT_PARTS}
    now = decode(json.dumps(written_now).encode(), "k")
    assert now.encryption == "age" and not now.sha256 and "sha256" not in now.to_json()
    with pytest.raises(ManifestInvalid, match="without the whole stream's sha256"):
        decode(json.dumps(written_now | {"format": FORMAT_AGE}).encode(), "k")
    with pytest.raises(ManifestInvalid, match="does not go with"):
        decode(json.dumps({**data, "encryption": "rot13"}).encode(), "k")
    assert segment_key("p/", "t/v", "l", "1", "zstd", 0, encrypted=True).endswith(
        "stream-000000.zst.age")


class _Store:
    """Just what ``check_sse`` calls: a store that answers PUTs as told."""

    def __init__(self, answer: dict[str, Any] | Exception, **table: Any) -> None:
        self.config = store(**table)
        self.name = "s3"
        self.sse_checked = False
        self.answer = answer
        self.calls: list[dict[str, Any]] = []
        self.deleted: list[str] = []

    def key(self, relative: str) -> str:
        return self.config.prefix + relative

    async def call(self, operation: str, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if "ServerSideEncryption" in kwargs and isinstance(self.answer, Exception):
            raise self.answer
        return self.answer if "ServerSideEncryption" in kwargs else {}

    async def delete(self, key: str) -> None:
        self.deleted.append(key)


def test_sse_check_refuses_a_store_that_ignores_or_refuses_and_asks_once() -> None:
    import asyncio

    from cerssd.objectstore.client import StoreError
    from cerssd.objectstore.sse_check import SseRefused, check_sse

    ignoring = _Store({}, sse="AES256")
    with pytest.raises(SseRefused, match=r"stores\.s3\.sse: the store accepted .* but did not"):
        asyncio.run(check_sse(ignoring))  # type: ignore[arg-type]
    assert ignoring.deleted == ["cerssd/.cerssd-sse-check"]
    refusing = _Store(StoreError("s3", "put_object: InternalError", permanent=False),
                      sse="aws:kms", sse_kms_key_id="alias/k")
    with pytest.raises(SseRefused, match="refused sse = 'aws:kms' with sse_kms_key_id") as info:
        asyncio.run(check_sse(refusing))  # type: ignore[arg-type]
    assert info.value.permanent and len(refusing.calls) == 2  # and once without SSE
    doing = _Store({"ServerSideEncryption": "AES256"}, sse="AES256")
    asyncio.run(check_sse(doing))  # type: ignore[arg-type]
    asyncio.run(check_sse(doing))  # type: ignore[arg-type]
    assert doing.sse_checked and len(doing.calls) == 1
