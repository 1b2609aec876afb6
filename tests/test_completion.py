"""Shell completion for cerssctl (make completion): the generated script loads in a real
bash, which then offers the subcommands and options; in zsh it registers for cerssctl; and
names only the daemon knows (relationships, servers, activity ids) come from its socket,
with nothing (and no error) when it cannot be reached."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import DaemonProcess, zfs
from .test_relationships import LOCAL_SLAVES, relationship_config

VENV_BIN = Path(sys.executable).parent


def bash_complete(script: Path, line: str, socket: str | None = None) -> list[str]:
    """What bash offers for ``line`` (the cursor at its end), as a person pressing Tab
    twice: the completion function the script registered runs with bash's variables."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    if socket:
        env["CERSSD_SOCKET"] = socket
    program = f"""
        source {shlex.quote(str(script))}
        spec=$(complete -p cerssctl) || exit 3
        fn=${{spec##*-F }}; fn=${{fn%% *}}
        COMP_LINE={shlex.quote(line)}; COMP_POINT=${{#COMP_LINE}}; COMP_TYPE=63
        COMP_WORDS=({" ".join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}
        "$fn" cerssctl {shlex.quote(words[-1])} {shlex.quote(words[-2])}
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", program],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return [w.strip() for w in result.stdout.splitlines() if w.strip()]


def values(offered: list[str]) -> list[str]:
    """The offered words that are not options (``-h`` is offered with every positional)."""
    return [w for w in offered if not w.startswith("-")]


def test_bash_loads_the_script_and_registers_it(generated: Path) -> None:
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c",
                             f"source {generated}/completion/cerssctl && complete -p cerssctl"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("complete ") and "-F _python_argcomplete" in result.stdout


def test_bash_offers_subcommands_verbs_and_options(generated: Path) -> None:
    script = generated / "completion" / "cerssctl"
    assert set(bash_complete(script, "cerssctl re")) >= {
        "relationship", "relationships", "replicate", "restore", "resume"}
    every = bash_complete(script, "cerssctl ")
    for command in ("status", "servers", "activities", "suspend", "cancel", "volume",
                    "policy", "backup", "prune"):
        assert command in every, every
    assert set(bash_complete(script, "cerssctl relationship ")) >= {
        "create", "show", "pause", "resume", "remove", "sync-now", "failover", "rejoin"}
    assert "--bandwidth-limit" in bash_complete(script, "cerssctl replicate --ba")
    assert values(bash_complete(script, "cerssctl snapshot ")) == ["create", "destroy"]


def test_a_daemon_that_cannot_be_reached_completes_nothing_quickly(generated: Path,
                                                                   tmp_path: Path) -> None:
    script = generated / "completion" / "cerssctl"
    started = time.monotonic()
    offered = bash_complete(script, "cerssctl relationship show ", str(tmp_path / "none.sock"))
    assert values(offered) == []
    assert time.monotonic() - started < 10  # the import of cerssctl, no waiting


def test_zsh_registers_the_script_for_cerssctl(generated: Path) -> None:
    if shutil.which("zsh") is None:
        pytest.fail("zsh is missing: scripts/setup installs it")
    script = generated / "completion" / "_cerssctl"
    assert script.read_text().startswith("#compdef cerssctl\n")
    result = subprocess.run(
        ["zsh", "-f", "-c", f"fpath=({generated}/completion $fpath); autoload -Uz compinit; "
                            "compinit -u -D; print -r -- $_comps[cerssctl]"],
        capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.strip() == "_cerssctl"


def zsh_candidates(line: str) -> list[str]:
    """The words cerssctl answers the zsh script with (argcomplete's protocol: the script
    runs the program with these variables and reads fd 8)."""
    env = {**os.environ, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_SHELL": "zsh",
           "COMP_LINE": line, "COMP_POINT": str(len(line)), "_ARGCOMPLETE_IFS": "\n"}
    result = subprocess.run(["bash", "-c", f"{shlex.quote(str(VENV_BIN / 'cerssctl'))} "
                                           "8>&1 9>/dev/null 1>/dev/null 2>&1 </dev/null"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    return [w.partition(":")[0] for w in out.splitlines() if w]


def test_zsh_gets_subcommands_with_their_descriptions() -> None:
    offered = zsh_candidates("cerssctl rel")
    assert offered == ["relationships", "relationship"]


def test_names_come_from_the_running_daemon(generated: Path, start_daemon: Any,
                                            pool: str) -> None:
    zfs("create", f"{pool}/data")
    d: DaemonProcess = start_daemon(extra=LOCAL_SLAVES + relationship_config(
        "nightly", f"{pool}/data", {"a": f"{pool}/copy"}))
    script = generated / "completion" / "cerssctl"
    sock = str(d.socket_path)
    assert values(bash_complete(script, "cerssctl relationship show ", sock)) == ["nightly"]
    assert bash_complete(script, "cerssctl prune n", sock) == ["nightly"]
    assert set(bash_complete(script, "cerssctl volumes --server ", sock)) == {"local", "a", "b"}
    assert set(bash_complete(script, "cerssctl relationship failover nightly --to ", sock)) \
        == {"local", "a", "b"}
    activities = d.api("GET", "/v1/activities")["items"]
    assert activities, "the relationship's first cycle is an activity"
    ids = values(bash_complete(script, "cerssctl show ", sock))
    assert {a["id"] for a in activities} <= set(ids)
    one = activities[0]["id"]
    assert bash_complete(script, f"cerssctl cancel {one[:-1]}", sock) == [one]
    # --json output of a real command is unaffected by completion support
    assert json.loads(subprocess.run([str(VENV_BIN / "cerssctl"), "--socket", sock, "--json",
                                      "relationships"], capture_output=True, text=True,
                                     check=True).stdout)["items"][0]["name"] == "nightly"
