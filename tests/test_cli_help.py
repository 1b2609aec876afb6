"""What a newcomer reads first: ``cerssctl --help`` lists every command, verbs included,
each with a one-line help; ``cerssd --help`` is plain text."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

from cerssd.cli.commands_help import leaf_commands
from cerssd.cli.main import parser


def _help(module: str) -> str:
    return subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                          text=True, check=True, env={"COLUMNS": "200", "PATH": ""}).stdout


def _leaves(p: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """Every runnable command, found by parsing (independent of commands_help's walk)."""
    found = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _leaves(child, f"{prefix}{name} ") or [f"{prefix}{name}"]
    return found


def test_cerssctl_help_lists_every_command_with_a_line_of_help() -> None:
    text = _help("cerssd.cli")
    commands = _leaves(parser())
    assert "relationship failover" in commands and "relationship rejoin" in commands
    assert len(commands) > 30
    listed = dict(leaf_commands(parser()))
    assert sorted(listed) == sorted(commands)
    for command in commands:
        line = next((x for x in text.splitlines() if re.match(rf"  {command}\s{{2,}}\S", x)),
                    None)
        assert line is not None, f"{command!r} is not in cerssctl --help"
        assert len(line) <= 100 and listed[command], line


def test_cerssd_help_is_plain_text() -> None:
    text = _help("cerssd")
    assert "``" not in text and "--check-config" in text and "--log-format" in text
    assert "SIGHUP" in text
