"""Shell completion for ``cerssctl`` (bash and zsh, through argcomplete).

The shell runs ``cerssctl`` itself with argcomplete's environment to complete a word:
subcommands and options come from the parser, and the names that only the running daemon
knows (relationships, servers, activity ids) from its control socket. A completion must
never hang a shell or print an error into it: each such request has a short timeout, and
a daemon that cannot be reached completes nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

import argcomplete

from .client import Client, CliError

#: How long a completion waits for the daemon: a person is waiting at the prompt.
TIMEOUT = 1.0
#: The newest activities offered for an activity id.
ACTIVITY_LIMIT = 200

Completer = Callable[..., list[str]]


def _names(parsed_args: argparse.Namespace, path: str, key: str) -> list[str]:
    """``key`` of each item of the listing at ``path``; nothing if the daemon is away."""
    try:
        data = Client(parsed_args.socket).request("GET", path, timeout=TIMEOUT)
    except (CliError, ValueError, OSError):
        return []
    return [str(item[key]) for item in data.get("items", []) if key in item]


def relationships(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    return [n for n in _names(parsed_args, "/v1/relationships", "name") if n.startswith(prefix)]


def servers(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    return [n for n in _names(parsed_args, "/v1/servers", "name") if n.startswith(prefix)]


def activities(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    return [n for n in _names(parsed_args, f"/v1/activities?limit={ACTIVITY_LIMIT}", "id")
            if n.startswith(prefix)]


#: Which completer a positional or option gets, by its ``dest``, and in which commands.
#: ``name`` is a relationship's only under ``relationship`` (``snapshot``'s is a snapshot).
BY_DEST: dict[str, tuple[Completer, frozenset[str] | None]] = {
    "id": (activities, None),
    "relationship": (relationships, None),
    "name": (relationships, frozenset({"relationship"})),
    "server": (servers, None),
    "master": (servers, None),
    "to": (servers, None),
    "source": (servers, frozenset({"replicate"})),
    "destination": (servers, frozenset({"replicate"})),
}


def _subparsers(parser: argparse.ArgumentParser) -> Iterable[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def attach(parser: argparse.ArgumentParser, command: str | None = None) -> None:
    """Give the arguments that name a daemon's object their completer (``BY_DEST``),
    through every level of subcommands; ``command`` is the top-level one."""
    for action in parser._actions:
        completer, commands = BY_DEST.get(action.dest, (None, None))
        if completer and (commands is None or command in commands):
            action.completer = completer  # type: ignore[attr-defined]
    for name, sub in _subparsers(parser):
        attach(sub, command or name)


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request and exit, if this run is one; else return
    at once (argcomplete looks only at its environment variables)."""
    attach(parser)
    argcomplete.autocomplete(parser)
