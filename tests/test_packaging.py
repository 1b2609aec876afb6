"""The Debian package, the wheel and the sdist: what they contain, lintian's verdict, and
that they install and work (the .deb for real on this machine with dpkg, then purged; the
wheel in a fresh virtualenv).

The artefacts are built once per session (tests/packaging.py); how long each build took
is printed with ``-s`` (the CI cost of this module).
"""

from __future__ import annotations

import grp
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cerssd import __version__

from .packaging import REPO, Built, Dists

pytestmark = pytest.mark.integration  # dpkg, lintian, pip: minutes, and root for dpkg

STATE = Path("/var/lib/cerssd")
ETC = Path("/etc/cerssd")


def deb_field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True,
                          text=True, check=True).stdout.strip()


def deb_files(deb: Path) -> dict[str, str]:
    """Each path in the package ("/usr/sbin/cerssd") and its ``ls -l`` mode and link."""
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True,
                             text=True, check=True).stdout
    files = {}
    for line in listing.splitlines():
        fields = line.split(maxsplit=5)
        name = fields[5].removeprefix(".")
        files[name.rstrip("/") or "/"] = fields[0] + (name.partition(" -> ")[2] and
                                                      " -> " + name.partition(" -> ")[2])
    return {k.partition(" -> ")[0]: v for k, v in files.items()}


def deb_control_file(deb: Path, name: str, tmp_path: Path) -> str:
    subprocess.run(["dpkg-deb", "--control", str(deb), str(tmp_path / "control")], check=True)
    return (tmp_path / "control" / name).read_text()


def test_deb_is_the_source_version_with_its_dependencies(cerssd_deb: Built) -> None:
    print(f"\nscripts/build-deb: {cerssd_deb.seconds:.0f} s, "
          f"{cerssd_deb.path.stat().st_size / 2**20:.1f} MiB")
    deb = cerssd_deb.path
    assert deb_field(deb, "Package") == "cerssd"
    assert deb_field(deb, "Version") == __version__
    depends = [d.strip() for d in deb_field(deb, "Depends").split(",")]
    for needed in ("zfsutils-linux | zfs-fuse", "openssh-client", "zstd", "lz4", "adduser"):
        assert needed in depends, depends
    # The venv links to Debian's python3 and carries modules compiled for its version.
    minor = f"3.{sys.version_info.minor}"
    assert f"python3 (>= {minor})" in depends and f"python3 (<< 3.{sys.version_info.minor + 1})" \
        in depends, depends
    # The version is written in one place: pyproject.toml reads cerssd/__init__.py.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]


def test_deb_installs_commands_unit_config_docs_man_and_completion(cerssd_deb: Built,
                                                                   tmp_path: Path) -> None:
    files = deb_files(cerssd_deb.path)
    assert files["/usr/sbin/cerssd"].endswith("-> ../lib/cerssd/bin/cerssd")
    assert files["/usr/bin/cerssctl"].endswith("-> ../lib/cerssd/bin/cerssctl")
    assert files["/usr/lib/cerssd/bin/cerssd"].startswith("-rwxr-xr-x")
    for path in ("/lib/systemd/system/cerssd.service", "/etc/cerssd/cerssd.toml",
                 "/usr/share/man/man8/cerssd.8.gz", "/usr/share/man/man8/cerssctl.8.gz",
                 "/usr/share/man/man5/cerssd.toml.5.gz",
                 "/usr/share/bash-completion/completions/cerssctl",
                 "/usr/share/zsh/vendor-completions/_cerssctl",
                 "/usr/share/cerssd/prometheus/cerssd-alerts.yml",
                 "/usr/share/cerssd/grafana/cerssd-dashboard.json",
                 "/usr/share/doc/cerssd/README.md", "/usr/share/doc/cerssd/docs/install.md",
                 "/usr/share/doc/cerssd/copyright"):
        assert path in files, path
    # .pyc files are made by the postinst (py3compile), not shipped.
    assert not [f for f in files if f.endswith(".pyc") or "__pycache__" in f]
    assert not [f for f in files if f.startswith("/opt") or f.startswith("/usr/local")]
    assert deb_control_file(cerssd_deb.path, "conffiles", tmp_path).split() == [
        "/etc/cerssd/cerssd.toml"]
    subprocess.run(["dpkg-deb", "--extract", str(cerssd_deb.path), str(tmp_path / "root")],
                   check=True)
    unit = (tmp_path / "root/lib/systemd/system/cerssd.service").read_text()
    assert "ExecStart=/usr/sbin/cerssd --config /etc/cerssd/cerssd.toml" in unit.splitlines()
    assert "/usr/local/bin" not in unit
    assert (tmp_path / "root/etc/cerssd/cerssd.toml").read_text() == \
        (REPO / "etc/cerssd.toml").read_text()


def test_deb_maintainer_scripts_keep_the_journal_on_remove(cerssd_deb: Built,
                                                           tmp_path: Path) -> None:
    """Read before they are run for real below: the journal is removed only on purge."""
    postrm = deb_control_file(cerssd_deb.path, "postrm", tmp_path)
    purge = postrm.index('if [ "$1" = "purge" ]; then')
    assert postrm.index("rm -rf /var/lib/cerssd") > purge
    assert postrm.count("/var/lib/cerssd") == 1  # only the purge removes it
    postinst = deb_control_file(cerssd_deb.path, "postinst", tmp_path)
    assert "addgroup --system --quiet cerssd" in postinst
    # dh_installsystemd --no-enable: enabled again on upgrade only if it was (a fresh
    # install does not enable it), and deb-systemd-invoke starts only enabled units.
    assert "if deb-systemd-helper debian-installed 'cerssd.service'; then" in postinst
    assert "deb-systemd-invoke $_dh_action 'cerssd.service'" in postinst


def test_lintian_finds_no_error(cerssd_deb: Built) -> None:
    result = subprocess.run(["lintian", "--fail-on", "error", str(cerssd_deb.path)],
                            capture_output=True, text=True, timeout=900)
    print(f"\nlintian:\n{result.stdout}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [line for line in result.stdout.splitlines() if line.startswith("E:")]


@pytest.fixture
def clean_machine() -> Iterator[None]:
    """The test installs the package on this machine: only where it is not installed and
    left nothing behind, and it purges it (and the group it made) whatever happens."""
    if os.geteuid() != 0:
        pytest.fail("installing the .deb needs root (CI runs as root)")
    installed = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", "cerssd"],
                               capture_output=True, text=True).stdout
    if installed not in ("", "not-installed") or STATE.exists() or ETC.exists():
        pytest.fail("cerssd is installed here, or /var/lib/cerssd or /etc/cerssd exists: "
                    "this test installs and purges its own build; dpkg --purge cerssd first")
    try:
        grp.getgrnam("cerssd")
        had_group = True
    except KeyError:
        had_group = False
    try:
        yield
    finally:
        subprocess.run(["dpkg", "--purge", "cerssd"], capture_output=True)
        if not had_group:
            subprocess.run(["groupdel", "cerssd"], capture_output=True)


def dpkg(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["dpkg", *args], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_deb_installs_upgrades_removes_and_purges(cerssd_deb: Built,
                                                  clean_machine: None) -> None:
    deb = str(cerssd_deb.path)
    dpkg("--install", deb)
    for command in ("/usr/sbin/cerssd", "/usr/bin/cerssctl"):
        ran = subprocess.run([command, "--help"], capture_output=True, text=True)
        assert ran.returncode == 0 and "usage:" in ran.stdout, ran.stderr
    version = subprocess.run(["/usr/sbin/cerssd", "--version"], capture_output=True,
                             text=True)
    assert version.stdout.strip() == f"cerssd {__version__}"
    # The daemon's real imports (aiohttp, msgspec, cryptography...) work from the package.
    imports = subprocess.run(["/usr/lib/cerssd/bin/python", "-c",
                              "import cerssd.daemon, cerssd.api.app, asyncssh, aiobotocore"],
                             capture_output=True, text=True)
    assert imports.returncode == 0, imports.stderr
    assert grp.getgrnam("cerssd").gr_gid < 1000  # a system group
    assert list(Path("/usr/lib/cerssd").rglob("*.pyc"))  # py3compile ran
    assert subprocess.run(["man", "-w", "cerssd.toml"], capture_output=True,
                          text=True).stdout.strip() == "/usr/share/man/man5/cerssd.toml.5.gz"

    # An upgrade (here: the same version again) keeps the operator's edited conffile.
    conf = ETC / "cerssd.toml"
    conf.write_text(conf.read_text() + "\n# edited by the operator\n")
    dpkg("--install", deb)
    assert conf.read_text().endswith("# edited by the operator\n")

    # Remove keeps the journal and the config; purge removes both.
    STATE.mkdir(mode=0o750)
    (STATE / "journal.sqlite3").write_bytes(b"the journal")
    dpkg("--remove", "cerssd")
    assert not Path("/usr/sbin/cerssd").exists() and not Path("/usr/lib/cerssd").exists()
    assert (STATE / "journal.sqlite3").read_bytes() == b"the journal"
    assert conf.exists()
    dpkg("--purge", "cerssd")
    assert not STATE.exists() and not ETC.exists()


# -- the wheel and the sdist --------------------------------------------------------------

def test_twine_check_passes(cerssd_dists: Dists) -> None:
    print(f"\npython -m build: {cerssd_dists.seconds:.0f} s")
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict",
                             str(cerssd_dists.wheel), str(cerssd_dists.sdist)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_wheel_and_sdist_carry_the_version_and_the_sources(cerssd_dists: Dists) -> None:
    assert cerssd_dists.wheel.name == f"cerssd-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(cerssd_dists.wheel) as whl:
        metadata = whl.read(f"cerssd-{__version__}.dist-info/METADATA").decode()
        entry_points = whl.read(f"cerssd-{__version__}.dist-info/entry_points.txt").decode()
    assert f"Version: {__version__}\n" in metadata
    assert re.search(r"^cerssd = cerssd\.daemon:main$", entry_points, re.M)
    assert re.search(r"^cerssctl = cerssd\.cli\.main:main$", entry_points, re.M)
    # The sdist is enough to build the .deb: packaging, unit, config, monitoring, docs.
    with tarfile.open(cerssd_dists.sdist) as sdist:
        names = {n.partition("/")[2] for n in sdist.getnames()}
    for path in ("debian/control", "debian/rules", "systemd/cerssd.service", "etc/cerssd.toml",
                 "etc/prometheus/cerssd-alerts.yml", "etc/grafana/cerssd-dashboard.json",
                 "docs/config.md", "man/tables-to-lists.lua", "scripts/build-deb"):
        assert path in names, path


def test_wheel_installs_in_a_fresh_venv(cerssd_dists: Dists, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    pip = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q",
                          str(cerssd_dists.wheel)], capture_output=True, text=True,
                         timeout=900)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    for command, words in (("cerssd", "--check-config"), ("cerssctl", "relationship")):
        ran = subprocess.run([str(env_dir / "bin" / command), "--help"],
                             capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.startswith(f"usage: {command}") and words in ran.stdout
    assert shutil.which("cerssd", path=str(env_dir / "bin"))
