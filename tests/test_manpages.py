"""The man pages, generated from the argument parsers and docs/config.md (make man):
``man`` renders each without a complaint, and each documents everything its source has
(every option of every parser and subcommand; every key of the config reference)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cerssd import daemon
from cerssd.cli import main as cli

from .packaging import REPO


def render(page: Path) -> str:
    """``man -l`` of a page as a person reads it, with groff's warnings made errors."""
    result = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True,
                            text=True, env={**os.environ, "MANWIDTH": "100",
                                            "MAN_KEEP_FORMATTING": "", "PAGER": "cat"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"{page.name}: {result.stderr}"
    # A word broken at the line's end (hyphenation) is joined again for the search.
    return re.sub(r"[\u2010\u00ad]\n\s*", "", result.stdout)


def command_section(text: str, path: str) -> str:
    """The part of a page about one subcommand: argparse-manpage heads it ``COMMAND 'cerssctl
    relationship create'`` (its usage), then ``OPTIONS '...'``, until the next command."""
    head = f"COMMAND '{path}'"
    assert head in text, f"no section for {path!r}"
    start = text.index(head) + len(head)
    end = text.find("\nCOMMAND '", start)
    return text[start:] if end < 0 else text[start:end]


def parsers(parser: argparse.ArgumentParser,
            path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{path} {name}")


def options(parser: argparse.ArgumentParser) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        yield from action.option_strings


@pytest.mark.parametrize(("page", "parser"), [("cerssd.8", daemon.parser),
                                              ("cerssctl.8", cli.parser)])
def test_every_option_of_every_command_is_in_the_page(generated: Path, page: str,
                                                      parser: object) -> None:
    text = render(generated / "man" / page)
    assert callable(parser)
    top = parser()
    for path, sub in parsers(top, top.prog):
        section = text if path == top.prog else command_section(text, path)
        for option in options(sub):
            # an entry of its own (not only the usage line): at the start of a line,
            # perhaps after the option's other names ("-n, --dry-run")
            assert re.search(rf"^ +(?:\S+(?: \S+)?, )*{re.escape(option)}(?![\w-])",
                             section, re.M), f"{page}: {path} {option} is missing"
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if action.help and action.help != argparse.SUPPRESS and "%" not in action.help:
                first = " ".join(action.help.split()[:4])
                assert " ".join(first.split()) in " ".join(section.split()), \
                    f"{page}: the help of {path} {action.dest} is missing"


def test_the_config_page_has_every_key_of_the_reference(generated: Path) -> None:
    text = render(generated / "man" / "cerssd.toml.5")
    reference = (REPO / "docs" / "config.md").read_text()
    keys = re.findall(r"^\| `([a-z_.]+)` \|", reference, re.M)
    assert len(keys) > 40  # the reference's key tables were found
    words = set(re.findall(r"[\w.]+", text))
    missing = [k for k in keys if k not in words]
    assert not missing, missing
    for heading in re.findall(r"^## (.+)$", reference, re.M):
        title = heading.replace("`", "")
        assert title in text, title
    assert text.startswith("CERSSD.TOML(5)")
    assert "cerssd.toml - configuration file of the cerssd replication daemon" in text


def test_a_broken_page_would_be_caught(generated: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.8"
    broken.write_text((generated / "man" / "cerssd.8").read_text() + ".foo bar\n")
    with pytest.raises(AssertionError, match="foo"):
        render(broken)
