"""The link failures the flows catch, whatever transport raised them.

A flow decides between "retry later" and "give up" from these two facts alone: a
``LinkLost`` is the path to a server gone (transient, worth another attempt), any other
``LinkError`` says whether it is ``permanent`` (a rejected host key, refused
credentials: no retry will change it). The SSH transport's own types subclass these;
flows never import them. A stream's remote end is a process whose exit says the same
in words: ``stream_link_lost`` and ``stream_link_refused`` read them.
"""

from __future__ import annotations


class LinkError(Exception):
    """Could not run a command on a server: its link, not the command, failed."""

    permanent = False


class LinkLost(LinkError):
    """The server could not be reached, or the connection broke (transient)."""

    def __init__(self, message: str, server: str | None = None) -> None:
        super().__init__(message)
        self.server = server


#: What ssh says when the connection, not the command, failed.
LINK_ERRORS = ("Connection closed", "Connection reset", "Broken pipe", "timed out",
               "Timeout, server", "not responding", "Connection refused", "No route to host",
               "Network is unreachable", "closed by remote host")


def stream_link_lost(returncode: int, stderr: str) -> bool:
    """Whether a stream's remote end died with its link (ssh's own exit status 255, or
    its words for a broken connection), not by its command's failure."""
    return returncode == 255 or any(text in stderr for text in LINK_ERRORS)


def stream_link_refused(stderr: str) -> bool:
    """Whether a stream's link was refused for good (the server's host key)."""
    return "Host key verification failed" in stderr
