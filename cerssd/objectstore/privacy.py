"""What keeps a store's copies private: age encryption on this side, SSE on the store's.

``[stores.NAME]`` may name age recipients (``age_recipients``, ``age_recipients_file``):
every stream written to the store is then encrypted by Debian's ``age`` binary, run as
one more stage of the stream's pipeline (``zfs send | zstd | age -r ... | upload``), and
restored through ``age -d -i IDENTITY``. The binary rather than the ``pyrage`` binding
because it is measured faster (bench/RESULTS.md, "age: binary or binding") and runs
beside the daemon on another core, as the compressor does, so the daemon's memory and
event loop see none of it; and it is the very tool a restore by hand uses. The crypto is
age's: nothing here does more than build its command lines.

Recipients are checked when the configuration is read, by the same binary that will use
them (one call per recipient, a few ms each): a recipient that does not parse is a
``ConfigError`` naming the key, not a backup that fails at night.

``sse`` and ``sse_kms_key_id`` are S3 server-side encryption, passed through on every
object the store is asked to create. Whether the store really does it is only known by
asking it: ``objectstore.sse_check`` does, before a store's first upload.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from ..parsing import ConfigError

AGE = "age"
#: The server-side encryptions S3 defines (SSE-C needs a key per request: not offered).
Sse = Literal["AES256", "aws:kms"]
SSE_VALUES: tuple[str, ...] = get_args(Sse)
#: A KMS key id, alias or ARN: printable, no spaces (AWS's own limit is 2048 characters).
_KMS_KEY_ID = re.compile(r"[A-Za-z0-9:/_.+=@-]{1,2048}")
#: What ``age -e`` prints when it refuses a recipient; the line after is a bug-report hint.
_AGE_ERROR = re.compile(r"^age: error: (.*)$", re.MULTILINE)
#: The keys ``parse_privacy`` reads (``config.STORE_KEYS`` accepts them).
PRIVACY_KEYS = frozenset({"age_recipients", "age_recipients_file", "age_identity_file",
                          "sse", "sse_kms_key_id"})


@dataclass(frozen=True)
class Privacy:
    """A store's encryption settings (``StoreConfig.privacy``)."""

    age_recipients: tuple[str, ...] = ()
    age_recipients_file: Path | None = None
    #: For restores when the request names none (a restore node may keep it; a backup
    #: node should not: only the recipients are needed to write).
    age_identity_file: Path | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None

    @property
    def encrypted(self) -> bool:
        """Whether streams written to the store are age-encrypted."""
        return bool(self.age_recipients) or self.age_recipients_file is not None

    def encrypt_argv(self) -> list[str] | None:
        """``age -e -r R... [-R FILE]``, or None when the store does not encrypt."""
        if not self.encrypted:
            return None
        argv = [AGE, "-e"]
        for recipient in self.age_recipients:
            argv += ["-r", recipient]
        if self.age_recipients_file is not None:
            argv += ["-R", str(self.age_recipients_file)]
        return argv

    def recipients(self) -> tuple[str, ...]:
        """Every recipient, those of ``age_recipients_file`` too (a manifest records them:
        which identity opens a backup)."""
        found = list(self.age_recipients)
        if self.age_recipients_file is not None:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                text = self.age_recipients_file.read_text("utf-8")
                found += [line.strip() for line in text.splitlines()
                          if line.strip() and not line.lstrip().startswith("#")]
        return tuple(found)

    def sse_args(self) -> dict[str, str]:
        """The S3 arguments of every object created (multipart uploads, manifests)."""
        args: dict[str, str] = {}
        if self.sse is not None:
            args["ServerSideEncryption"] = self.sse
        if self.sse_kms_key_id is not None:
            args["SSEKMSKeyId"] = self.sse_kms_key_id
        return args

    def to_json(self) -> dict[str, Any]:
        """What the API shows: recipients are public keys; no identity is ever read."""
        return {"encryption": "age" if self.encrypted else "none",
                "age_recipients": list(self.age_recipients),
                "age_recipients_file": str(self.age_recipients_file)
                if self.age_recipients_file else None,
                "sse": self.sse, "sse_kms_key_id": self.sse_kms_key_id}


def decrypt_argv(identity_file: Path) -> list[str]:
    return [AGE, "-d", "-i", str(identity_file)]


def parse_privacy(t: Mapping[str, Any], prefix: str) -> Privacy:
    """The privacy keys of one ``[stores.NAME]`` table (``prefix`` is ``stores.NAME.``)."""
    recipients = t.get("age_recipients", [])
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise ConfigError(prefix + "age_recipients", 'must be a list of age recipients '
                          '("age1...", or an SSH public key)')
    recipients_file = _absolute(t, "age_recipients_file", prefix)
    identity_file = _absolute(t, "age_identity_file", prefix)
    if recipients or recipients_file is not None:
        _check_recipients(recipients, recipients_file, prefix)
    sse = t.get("sse")
    if sse is not None and sse not in SSE_VALUES:
        raise ConfigError(prefix + "sse", f"must be one of {', '.join(SSE_VALUES)}, "
                          f"not {sse!r}")
    key_id = t.get("sse_kms_key_id")
    if key_id is not None:
        if sse != "aws:kms":
            raise ConfigError(prefix + "sse_kms_key_id", 'is only used with sse = "aws:kms"')
        if not isinstance(key_id, str) or not _KMS_KEY_ID.fullmatch(key_id):
            raise ConfigError(prefix + "sse_kms_key_id", "must be a KMS key id, alias or ARN "
                              "(no spaces)")
    return Privacy(tuple(recipients), recipients_file, identity_file, sse, key_id)


def _absolute(t: Mapping[str, Any], key: str, prefix: str) -> Path | None:
    value = t.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not Path(value).is_absolute():
        raise ConfigError(prefix + key, "must be an absolute path")
    return Path(value)


def _check_recipients(recipients: Sequence[str], recipients_file: Path | None,
                      prefix: str) -> None:
    """Each recipient (and the file) through ``age -e`` of nothing: what age refuses now
    is refused here, naming the key."""
    if shutil.which(AGE) is None:
        key = "age_recipients" if recipients else "age_recipients_file"
        raise ConfigError(prefix + key, "encrypting needs the age binary, which is not "
                          "installed (Debian: apt install age)")
    for i, recipient in enumerate(recipients):
        if problem := age_refuses(["-r", recipient]):
            raise ConfigError(f"{prefix}age_recipients[{i}]", problem)
    if recipients_file is not None and (problem := age_refuses(["-R", str(recipients_file)])):
        raise ConfigError(prefix + "age_recipients_file", problem)


def age_refuses(args: list[str]) -> str | None:
    """Why ``age -e ARGS`` refuses to encrypt (its own words), or None if it does not."""
    done = subprocess.run([AGE, "-e", *args, "-o", "/dev/null"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode == 0:
        return None
    return age_error(done.stderr, done.returncode)


def age_error(stderr: str, rc: int) -> str:
    """age's ``error:`` line (the line after it only asks for bug reports)."""
    found = _AGE_ERROR.search(stderr)
    if found:
        return found.group(1).strip()
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[0] if lines else f"age exited with status {rc}"
