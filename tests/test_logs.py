"""The log forms (cerssd/logs.py): which one ``auto`` picks, and what each one writes.
The journal form against a real journald is tests/test_journald.py."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

import pytest
import structlog

from cerssd import logs
from cerssd.config import load_config
from cerssd.logs import LogFormat, configure_logging, journal_field, journal_fields, resolve
from cerssd.parsing import ConfigError


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_console_on_a_terminal_and_json_elsewhere(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert resolve(LogFormat.AUTO, _Tty()) is LogFormat.CONSOLE
    assert resolve(LogFormat.AUTO, io.StringIO()) is LogFormat.JSON
    assert resolve(LogFormat.JSON, _Tty()) is LogFormat.JSON  # asked for: kept


def test_journal_stream_counts_only_when_it_is_our_stream(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    with tempfile.TemporaryFile("w") as f, tempfile.TemporaryFile("w") as other:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.under_journald(streams=(f,))
        assert resolve(LogFormat.AUTO, f) is LogFormat.JOURNAL
        # inherited by a child whose output went elsewhere: not the journal
        assert not logs.under_journald(streams=(other,))
        assert resolve(LogFormat.AUTO, other) is LogFormat.JSON
    for junk in ("", "12", "a:b", "1:2:3"):
        assert not logs.under_journald({"JOURNAL_STREAM": junk}, (sys.stdout,))


@pytest.mark.parametrize(("key", "field"), [
    ("activity_id", "ACTIVITY_ID"), ("volume", "VOLUME"), ("bytes-per-s", "BYTES_PER_S"),
    ("_hidden", "HIDDEN"), ("message", "CERSSD_MESSAGE"), ("priority", "CERSSD_PRIORITY"),
    ("2fa", "CERSSD_2FA"), ("x" * 80, "X" * 64),
])
def test_journal_field_names(key: str, field: str) -> None:
    assert journal_field(key) == field
    assert re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", field)


def test_journal_fields_of_an_event() -> None:
    fields = journal_fields(None, "warning", {
        "event": "activity state", "level": "warning", "timestamp": "t",
        "activity_id": "ab12", "volume": "tank/v", "retries": 3, "ok": False,
        "servers": ["s1", "s2"], "status": None, "message": "from a hook"})
    assert fields == {
        "ACTIVITY_ID": "ab12", "VOLUME": "tank/v", "RETRIES": "3", "OK": "false",
        "SERVERS": '["s1", "s2"]', "STATUS": "null", "CERSSD_MESSAGE": "from a hook",
        "MESSAGE": 'activity state  activity_id=ab12 volume=tank/v retries=3 ok=false '
                   'servers=["s1", "s2"] status=null message=from a hook',
        "PRIORITY": 4, "SYSLOG_IDENTIFIER": "cerssd", "CERSSD_EVENT": "activity state"}


def _log_once(fmt: LogFormat, stream: io.StringIO) -> str:
    configure_logging("info", stream, fmt)
    log = structlog.get_logger()
    log.info("control socket listening", path="/run/cerssd/control.sock")
    log.debug("not shown at info")
    try:
        raise ValueError("boom")
    except ValueError:
        secret = "s3cr3t-key"  # noqa: F841 - a local that must not be printed
        log.exception("it failed", volume="tank/v")
    return stream.getvalue()


def test_console_lines_are_for_people() -> None:
    text = _log_once(LogFormat.CONSOLE, io.StringIO())
    first = text.splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[info\s*\] control socket "
                    r"listening\s+path=/run/cerssd/control.sock$", first), first
    assert "not shown" not in text and "{" not in first
    assert "ValueError: boom" in text and "s3cr3t" not in text  # no frame locals


def test_json_lines_stay_json() -> None:
    lines = [json.loads(x) for x in _log_once(LogFormat.JSON, io.StringIO()).splitlines()]
    assert lines[0]["event"] == "control socket listening" and lines[0]["level"] == "info"
    assert lines[0]["timestamp"].endswith("Z")
    assert lines[1]["volume"] == "tank/v" and "s3cr3t" not in json.dumps(lines[1])


def test_log_format_config_key(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[daemon]\nlog_format = "Console"\n')
    assert load_config(path).daemon.log_format is LogFormat.CONSOLE
    path.write_text("[daemon]\n")
    assert load_config(path).daemon.log_format is LogFormat.AUTO
    path.write_text('[daemon]\nlog_format = "xml"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "daemon.log_format" and "auto, json, console, journal" in str(err.value)


def test_dsa_deprecation_from_asyncssh_is_silenced_and_nothing_else() -> None:
    def stderr(code: str) -> str:
        return subprocess.run([sys.executable, "-W", "default", "-c", code],
                              capture_output=True, text=True, check=True).stderr

    assert "DSA is deprecated" in stderr("import asyncssh")  # what a newcomer saw
    assert stderr("import cerssd.transport.ssh") == ""
    other = stderr("import cerssd.transport, warnings\n"
                   "from cryptography.utils import CryptographyDeprecationWarning as C\n"
                   "warnings.warn('DSA is deprecated (not asyncssh)', C)\n"
                   "warnings.warn('other', DeprecationWarning)")
    assert "DSA is deprecated (not asyncssh)" in other and "other" in other


def test_console_fields_use_the_human_convention() -> None:
    stream = io.StringIO()
    configure_logging("info", stream, LogFormat.CONSOLE)
    structlog.get_logger().info("replication done", bytes=64 << 20,
                                rate_bytes_per_second=1 << 20, next_try_at=0.0,
                                attempt=3, ok=True)
    line = stream.getvalue()
    for part in ("bytes='64.0 MiB'", "rate_bytes_per_second='1.0 MiB/s'",
                 "next_try_at=1970-01-01T00:00:00Z", "attempt=3", "ok=True"):
        assert part in line, line
    json_stream = io.StringIO()
    configure_logging("info", json_stream, LogFormat.JSON)
    structlog.get_logger().info("replication done", bytes=64 << 20)
    assert json.loads(json_stream.getvalue())["bytes"] == 64 << 20  # raw for machines


def test_a_failed_journal_send_does_not_break_the_caller(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    logger = logs.JournalLogger()

    def refuse(fields: Any) -> None:
        raise OSError("[Errno 111] Connection refused")

    logger._send = refuse
    logger.info(MESSAGE="activity state  state=failed", PRIORITY=4)
    assert capsys.readouterr().err == ("activity state  state=failed (journal send failed: "
                                       "[Errno 111] Connection refused)\n")
