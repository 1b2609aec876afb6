"""structlog set-up: where the daemon's events go and in which form.

Three forms (``daemon.log_format``, or ``cerssd --log-format``):

- ``journal``: each event sent to journald natively, its fields (``activity_id``,
  ``volume``, ``relationship``…) as journal fields (``ACTIVITY_ID=``, ``VOLUME=``), so
  ``journalctl -u cerssd ACTIVITY_ID=…`` finds an activity's lines and ``-o json`` shows
  them as fields, not one JSON string inside ``MESSAGE``;
- ``json``: one JSON object per line on stdout, for log shippers and files;
- ``console``: one human line per event (structlog's console renderer), times and the
  rest as :mod:`cerssd.human` writes them.

``auto`` (the default) picks ``journal`` when stdout or stderr is connected to the journal
(systemd's ``JOURNAL_STREAM``, checked against the descriptors themselves as sd_journal's
documentation says, so an inherited variable does not fool it), ``console`` on a terminal
and ``json`` otherwise.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer

from . import human
from .journald import Journal

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class LogFormat(enum.Enum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"
    JOURNAL = "journal"


#: Exceptions as structured frames (file, line, function), but never the frames' local
#: variables: structlog's default shows them, and a local may hold a credential (an
#: object-store key pair, a request's headers) that must not reach the journal.
#: ``use_rich=False`` keeps rich's formatting out of a JSON log.
_TRACEBACKS = ExceptionRenderer(ExceptionDictTransformer(show_locals=False, use_rich=False))


def under_journald(environ: Mapping[str, str] | None = None,
                   streams: tuple[TextIO, ...] = ()) -> bool:
    """Whether stdout or stderr is systemd's journal stream: ``JOURNAL_STREAM`` is
    ``DEVICE:INODE`` of that stream, and only counts if one of ours still is it (a child
    started with its output redirected inherits the variable but not the stream)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    for stream in streams or (sys.stdout, sys.stderr):
        try:
            st = os.fstat(stream.fileno())
        except (OSError, ValueError, AttributeError):
            continue
        if (st.st_dev, st.st_ino) == (int(dev), int(ino)):
            return True
    return False


def resolve(fmt: LogFormat, stream: TextIO) -> LogFormat:
    """The concrete form ``auto`` stands for on ``stream``."""
    if fmt is not LogFormat.AUTO:
        return fmt
    if under_journald(streams=() if stream is sys.stdout else (stream,)):
        return LogFormat.JOURNAL
    isatty = getattr(stream, "isatty", None)
    return LogFormat.CONSOLE if isatty is not None and isatty() else LogFormat.JSON


# -- journald ------------------------------------------------------------------------------

#: syslog priorities (sd-journal's PRIORITY=) of structlog's levels.
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}
#: Journal fields with a meaning of their own: an event key of the same name is kept under
#: ``CERSSD_`` instead of overriding it.
_RESERVED = {"MESSAGE", "MESSAGE_ID", "PRIORITY", "CODE_FILE", "CODE_LINE", "CODE_FUNC",
             "ERRNO", "INVOCATION_ID", "USER_INVOCATION_ID", "SYSLOG_FACILITY",
             "SYSLOG_IDENTIFIER", "SYSLOG_PID", "SYSLOG_TIMESTAMP", "SYSLOG_RAW",
             "DOCUMENTATION", "TID", "UNIT", "USER_UNIT"}
_BAD = re.compile(r"[^A-Z0-9_]")


def journal_field(key: str) -> str:
    """A structlog key as a journal field name: upper case, ``[A-Z0-9_]``, not starting
    with ``_`` (journald reserves those for the fields it adds) nor a digit, at most 64."""
    name = _BAD.sub("_", key.upper()).lstrip("_")
    if not name or name[0].isdigit() or name in _RESERVED:
        name = "CERSSD_" + name
    return name[:64]


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, default=str, sort_keys=True)


def journal_fields(_logger: Any, method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """The last processor of the journal form: the event as journal fields, ``MESSAGE``
    the event text with its fields appended (what ``journalctl`` shows by default) and a
    traceback below it."""
    event = dict(event)
    event.pop("timestamp", None)  # journald stamps each entry itself
    level = str(event.pop("level", method))
    text = str(event.pop("event", ""))
    traceback = event.pop("exception", None)
    fields = {journal_field(k): _value(v) for k, v in event.items()}
    pairs = " ".join(f"{k}={_value(v)}" for k, v in event.items())
    message = f"{text}  {pairs}" if pairs else text
    if traceback:
        message += "\n" + str(traceback)
    return {**fields, "MESSAGE": message, "PRIORITY": _PRIORITY.get(level, 6),
            "SYSLOG_IDENTIFIER": "cerssd", "CERSSD_EVENT": text}


class JournalLogger:
    """A structlog logger that hands each event's fields to journald over its native
    protocol (:mod:`cerssd.journald`): one datagram per event."""

    _journal: Journal | None = None  # one socket for the process, made on first use

    def __init__(self) -> None:
        if JournalLogger._journal is None:
            JournalLogger._journal = Journal()
        self._send = JournalLogger._journal.send

    def msg(self, **fields: Any) -> None:
        try:
            self._send(fields)
        except (OSError, ValueError) as exc:  # never let a log call break the work it logs
            print(f"{fields.get('MESSAGE', '')} (journal send failed: {exc})", file=sys.stderr)

    debug = info = warning = warn = error = critical = exception = fatal = failure = msg


class _JournalLoggerFactory:
    def __call__(self, *args: Any) -> JournalLogger:
        return JournalLogger()


# -- set-up --------------------------------------------------------------------------------

def _timestamp(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """The console's time: cerssd.human's form, to the millisecond."""
    event["timestamp"] = human.when_precise(time.time())
    return event


def _human_value(key: str, value: Any) -> Any:
    """A field's value as people read it, by the field's name: sizes, rates, times."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if key.endswith("_per_second"):
        return human.rate(value)
    if key in ("bytes", "size") or key.endswith(("_bytes", "_size")) \
            or key.startswith("bytes_"):
        return human.size(value)
    if key.endswith("_at"):
        return human.when(value)
    return value


def humanize_fields(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """The console form's fields in cerssd.human's units (the JSON and journal forms keep
    the raw numbers, for machines)."""
    for key, value in event.items():
        event[key] = _human_value(key, value)
    return event


def processors(fmt: LogFormat, stream: TextIO) -> list[Any]:
    """The processor chain of one concrete form."""
    common: list[Any] = [structlog.contextvars.merge_contextvars,
                         structlog.processors.add_log_level]
    if fmt is LogFormat.JOURNAL:
        return [*common, structlog.processors.format_exc_info, journal_fields]
    if fmt is LogFormat.CONSOLE:
        isatty = getattr(stream, "isatty", None)
        return [*common, _timestamp, humanize_fields, structlog.dev.ConsoleRenderer(
            colors=bool(isatty and isatty()), sort_keys=False,
            # never the frames' locals (see _TRACEBACKS), and no rich boxes in a log
            exception_formatter=structlog.dev.plain_traceback)]
    return [*common, structlog.processors.TimeStamper(fmt="iso", utc=True), _TRACEBACKS,
            structlog.processors.JSONRenderer()]


def configure_logging(level: str = "info", file: TextIO | None = None,
                      fmt: LogFormat = LogFormat.AUTO) -> LogFormat:
    """Events at ``level`` and above on ``file`` (stdout by default) in the form ``fmt``
    stands for there; returns that concrete form."""
    stream = file or sys.stdout
    concrete = resolve(fmt, stream)
    factory: Any = (_JournalLoggerFactory() if concrete is LogFormat.JOURNAL
                    else structlog.PrintLoggerFactory(stream))
    structlog.configure(
        processors=processors(concrete, stream),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    return concrete
