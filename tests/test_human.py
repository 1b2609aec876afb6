"""The one convention for people (cerssd/human.py): IEC sizes and rates, UTC times with Z."""

from __future__ import annotations

import pytest

from cerssd import human
from cerssd.cli import output

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (1023, "1023 B"), (KiB, "1.0 KiB"), (1536, "1.5 KiB"), (64 * MiB, "64.0 MiB"),
    (3 * GiB // 2, "1.5 GiB"), (5 * (1 << 40), "5.0 TiB"), (2 * (1 << 50), "2.0 PiB"),
    (4096 * (1 << 50), "4096.0 PiB"),  # past the last unit: stays in it
])
def test_sizes_are_iec(n: int, text: str) -> None:
    assert human.size(n) == text


def test_rates_are_iec_per_second() -> None:
    assert human.rate(1_000_000) == "976.6 KiB/s"  # 1 MB/s is not 1 MiB/s
    assert human.rate(MiB) == "1.0 MiB/s"


def test_times_are_utc_iso_with_z() -> None:
    ts = 1_796_621_076.9  # 2026-12-07T05:24:36.9Z
    assert human.when(ts) == "2026-12-07T05:24:36Z"
    assert human.clock(ts) == "05:24:36Z"
    assert human.when(None) == human.clock(None) == "-"


def test_times_do_not_depend_on_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert human.when(0) == "1970-01-01T00:00:00Z"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (0, "0s"), (45, "45s"), (119, "119s"), (720, "12m"), (3.5 * 3600, "3.5h"),
    (2 * 86400, "2.0d"),
])
def test_durations(seconds: float | None, text: str) -> None:
    assert human.duration(seconds) == text


def _activity() -> dict[str, object]:
    return {"id": "a1", "kind": "replicate", "state": "running", "volume": "p/v",
            "source": "local", "target": "s1", "self_restarting": True, "status": None,
            "created_at": 0.0, "finished_at": None, "link": None,
            "progress": {"unit": "bytes", "done": MiB, "total": 4 * MiB, "estimated": True},
            "usage": {"elapsed_seconds": 1.0, "bytes_read": MiB, "bytes_on_wire": 1_000_000,
                      "rate_bytes_per_second": 1_000_000, "retries": 0}}


def test_cli_activity_block_uses_the_convention(capsys: pytest.CaptureFixture[str]) -> None:
    out = output.Output(as_json=False)
    output.render_activity(out, _activity())
    text = capsys.readouterr().out
    assert "progress         1.0 MiB of 4.0 MiB (est.)" in text
    assert "created          1970-01-01T00:00:00Z" in text
    assert "bytes on wire    976.6 KiB" in text and "rate             976.6 KiB/s" in text
    assert " MB" not in text and "1000000" not in text


def test_cli_json_stays_raw(capsys: pytest.CaptureFixture[str]) -> None:
    out = output.Output(as_json=True)
    out.emit(_activity(), lambda a: output.render_activity(out, a))
    text = capsys.readouterr().out
    assert '"rate_bytes_per_second": 1000000' in text and '"created_at": 0.0' in text


def test_precise_times_for_log_lines() -> None:
    assert human.when_precise(1_796_621_076.25) == "2026-12-07T05:24:36.250Z"
