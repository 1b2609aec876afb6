"""Built artefacts for the packaging tests, made once per session: the Debian package
(``scripts/build-deb``, as ``make deb``), the wheel and sdist (``python -m build``, as
``make wheel``) and the generated man pages and completion scripts
(``scripts/build-man``).

A plugin of tests/conftest.py, so that other modules (the systemd tests in the OpenZFS
guest) can install the same ``cerssd_deb``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cerssd import __version__

REPO = Path(__file__).resolve().parent.parent
GEN = REPO / "build" / "gen"


@dataclass(frozen=True)
class Built:
    """An artefact and how long it took to make (the report of the CI cost)."""
    path: Path
    seconds: float


def _run(argv: list[str], what: str, timeout: float) -> float:
    started = time.monotonic()
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{what} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-3000:]}")
    return time.monotonic() - started


@pytest.fixture(scope="session")
def cerssd_deb() -> Built:
    """dist/cerssd_VERSION_ARCH.deb, built from this tree by ``scripts/build-deb``."""
    seconds = _run([str(REPO / "scripts" / "build-deb")], "scripts/build-deb", 1200)
    debs = sorted((REPO / "dist").glob(f"cerssd_{__version__}_*.deb"))
    assert len(debs) == 1, debs
    return Built(debs[0], seconds)


@dataclass(frozen=True)
class Dists:
    wheel: Path
    sdist: Path
    seconds: float


@pytest.fixture(scope="session")
def cerssd_dists(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dists]:
    """The wheel and the sdist, as ``make wheel`` builds them (into a temporary dir)."""
    out = tmp_path_factory.mktemp("dist")
    seconds = _run([sys.executable, "-m", "build", "--outdir", str(out), "."],
                   "python -m build", 600)
    wheels, sdists = list(out.glob("cerssd-*.whl")), list(out.glob("cerssd-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    yield Dists(wheels[0], sdists[0], seconds)


@pytest.fixture(scope="session")
def generated() -> Path:
    """build/gen: the man pages (man/) and completion scripts (completion/)."""
    _run([str(REPO / "scripts" / "build-man")], "scripts/build-man", 300)
    return GEN
