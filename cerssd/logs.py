"""structlog set-up: one JSON object per line on stdout (journald keeps them as-is)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}

#: Exceptions as structured frames (file, line, function), but never the frames' local
#: variables: structlog's default shows them, and a local may hold a credential (an
#: object-store key pair, a request's headers) that must not reach the journal.
#: ``use_rich=False`` keeps rich's formatting out of a JSON log.
_TRACEBACKS = ExceptionRenderer(ExceptionDictTransformer(show_locals=False, use_rich=False))


def configure_logging(level: str = "info", file: TextIO | None = None) -> None:
    """JSON lines on ``file`` (stdout by default) at ``level`` and above."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _TRACEBACKS,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file or sys.stdout),
        cache_logger_on_first_use=False,
    )
