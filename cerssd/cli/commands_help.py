"""The list of every cerssctl command in ``cerssctl --help``: argparse lists only the first
level (``relationship``, ``volume``…) and leaves their verbs (``relationship failover``,
``relationship rejoin``…) to each group's own ``-h``, so a newcomer reading the top-level
help never learns they exist. This builds one table of every leaf command, each with its
one-line help, from the parser itself (nothing to keep in step by hand)."""

from __future__ import annotations

import argparse
from collections.abc import Generator, Iterator


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:  # type: ignore[type-arg]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def leaf_commands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(command words, help)`` of every command that runs something, in the parser's order."""
    sub = _subcommands(parser)
    if sub is None:
        return
    helps = {choice.dest: choice.help or "" for choice in sub._choices_actions}
    for name, child in sub.choices.items():
        if _subcommands(child) is not None:
            yield from leaf_commands(child, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", helps.get(name) or child.description or ""


class _CommandsFormatter(argparse.RawDescriptionHelpFormatter):
    """Leaves out argparse's first-level list (the epilog has every command instead).
    Only ``--help`` is changed: the parser keeps its subcommands for the man page
    generator and the shell completion, which read them from it."""

    def _iter_indented_subactions(self, action: argparse.Action
                                  ) -> Generator[argparse.Action, None, None]:
        if not isinstance(action, argparse._SubParsersAction):
            yield from super()._iter_indented_subactions(action)


def list_all_commands(parser: argparse.ArgumentParser) -> None:
    """Replace the first-level list of ``parser``'s help with the table of every command."""
    rows = list(leaf_commands(parser))
    width = max(len(name) for name, _ in rows) + 2
    parser.formatter_class = _CommandsFormatter
    parser.epilog = "commands (cerssctl COMMAND -h gives its arguments):\n" + "\n".join(
        f"  {name:<{width}}{help}" for name, help in rows)
    sub = _subcommands(parser)
    assert sub is not None
    for choice in sub._choices_actions:  # each command's -h says it too, as its description
        child = sub.choices[choice.dest]
        child.description = child.description or choice.help
    # sub.help stays unset: the man page (argparse-manpage) lists the commands itself
