"""What a newcomer reads before running anything: the README's first lines say what
``make test`` will do to their machine, with figures that match the real guest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .openzfs_guest import _build_image

REPO = Path(__file__).resolve().parent.parent


def _opening() -> str:
    text = (REPO / "README.md").read_text()
    return " ".join(text[:text.index("## Walkthrough")].split())


def _cache_dir() -> str:
    match = re.search(r"^CACHE=\$\{CERSSD_GUEST_CACHE:-(\S+)\}$",
                      (REPO / "scripts" / "openzfs-guest").read_text(), re.M)
    assert match
    return match.group(1)


def test_readme_opening_says_what_make_test_installs_and_builds() -> None:
    opening = _opening()
    assert "apt" in opening and "OpenZFS" in opening
    assert f"`{_cache_dir()}`" in opening
    assert re.search(r"about [\d.]+ GB", opening.replace("*", ""))
    assert re.search(r"about \d+ minutes", opening.replace("*", ""))


@pytest.mark.openzfs
def test_stated_guest_size_matches_the_built_guest() -> None:
    """The guest's cache (built now if this machine has none, as the OpenZFS tests do)
    is as large as the README says."""
    _build_image()
    stated = float(re.search(r"about ([\d.]+) GB", _opening().replace("*", "")).group(1))
    actual = sum(f.stat().st_size for f in Path(_cache_dir()).iterdir() if f.is_file()) / 1e9
    assert 0.75 * stated <= actual <= 1.25 * stated, (stated, actual)
