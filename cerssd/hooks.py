"""Commands an operator runs around a snapshot (quiesce an application, flush a database).

A relationship's or a snapshot policy's ``hooks`` table names a ``pre`` and a ``post``
command (an argv list: never run through a shell unless the operator writes one), a
``timeout`` and what a failing ``pre`` means (``on_pre_failure``: ``skip`` the snapshot,
the default, or ``continue``). Both callers take their snapshots through
``around_snapshot`` so the rules are the same wherever a snapshot is made:

- ``pre`` runs; when it fails (non-zero exit, timeout, cannot start) the snapshot is
  skipped (``SnapshotSkipped``) or taken anyway, as configured;
- ``post`` runs whenever ``pre`` ran, also when ``pre`` failed or ``take()`` raised or
  was cancelled: a filesystem left frozen matters more than the error. A failing ``post``
  is logged and recorded, and the snapshot stands;
- each hook runs in a process group of its own (a new session); on its timeout, or when
  the caller is cancelled, the whole group is killed, and whatever the hook left in its
  group when it exits is killed too: a hook leaves nothing behind unless it detaches on
  purpose (``setsid``, output redirected; docs/hooks.md shows the lock-holder pattern);
- stdout and stderr go to one pipe, of which the last ``OUTPUT_LIMIT`` bytes are kept
  (a chatty hook costs no memory), logged and returned in ``HookRun``.

Hooks run on the daemon's own node with the daemon's user, whichever server is the
master (a hook for a remote master runs ``ssh`` itself). Their environment is the
daemon's minus anything that looks like a secret (``AWS_*``, ``*_SECRET*``,
``*PASSWORD*``, ``*TOKEN*``), plus ``CERSSD_*`` facts about the snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from .parsing import ConfigError, parse_duration, reject_unknown

T = TypeVar("T")

log = structlog.get_logger("cerssd.hooks")

DEFAULT_HOOK_TIMEOUT = 30.0
#: The longest a hook may be given: a snapshot waits for its ``pre``, and a frozen
#: filesystem blocks every writer until ``post``.
MAX_HOOK_TIMEOUT = 3600.0
#: Of a hook's combined output, the last bytes kept (and logged, and put in the result).
OUTPUT_LIMIT = 4096
#: After SIGTERM to a hook's process group, how long before SIGKILL.
KILL_GRACE = 2.0
#: After a hook exits, how long its output pipe may stay open (a detached helper that
#: kept it) before the daemon stops reading it.
DRAIN_GRACE = 2.0
#: ``CERSSD_VOLUMES`` longer than this goes to a file (``CERSSD_VOLUMES_FILE``): Linux
#: refuses one environment string over 128 KiB (MAX_ARG_STRLEN), and a tree has thousands
#: of members.
MAX_VOLUMES_ENV = 64 * 1024
_KEYS = {"pre", "post", "timeout", "on_pre_failure"}
_SECRET_WORDS = ("SECRET", "PASSWORD", "PASSWD", "TOKEN", "CREDENTIAL")


class PreFailure(enum.Enum):
    """What a failing (or timed-out) ``pre`` hook means for the snapshot."""

    SKIP = "skip"
    CONTINUE = "continue"


class Stage(enum.StrEnum):
    PRE = "pre"
    POST = "post"


@dataclass(frozen=True)
class Hooks:
    """A ``hooks`` table, parsed: argv lists, never shell strings."""

    pre: tuple[str, ...] | None = None
    post: tuple[str, ...] | None = None
    timeout: float = DEFAULT_HOOK_TIMEOUT
    on_pre_failure: PreFailure = PreFailure.SKIP

    def to_json(self) -> dict[str, Any]:
        return {"pre": list(self.pre) if self.pre else None,
                "post": list(self.post) if self.post else None,
                "timeout": self.timeout, "on_pre_failure": self.on_pre_failure.value}


@dataclass(frozen=True)
class HookRun:
    """One hook's run, for the log and the activity's result."""

    stage: str  # "pre" | "post"
    argv: tuple[str, ...]
    exit_status: int | None  # None: timed out or could not start
    output: str  # combined stdout/stderr, bounded
    seconds: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "argv": list(self.argv), "exit_status": self.exit_status,
                "output": self.output, "seconds": round(self.seconds, 3),
                "timed_out": self.timed_out}

    def describe(self) -> str:
        """One line for an error or a status: what became of it."""
        if self.timed_out:
            what = f"timed out after {self.seconds:.1f}s"
        elif self.exit_status is None:
            what = "could not start"
        elif self.exit_status < 0:
            what = f"killed by signal {-self.exit_status}"
        else:
            what = f"exited {self.exit_status}"
        tail = self.output.strip().splitlines()[-1:] if self.output.strip() else []
        return f"{self.stage} hook {self.argv[0]} {what}" + (f": {tail[0][:200]}" if tail
                                                             else "")


class SnapshotSkipped(Exception):
    """The ``pre`` hook failed and ``on_pre_failure = "skip"``: no snapshot was taken."""

    def __init__(self, runs: Sequence[HookRun]) -> None:
        self.runs = tuple(runs)
        first = next((r for r in self.runs if r.stage == Stage.PRE), None)
        super().__init__("snapshot skipped: " + (first.describe() if first
                                                 else "pre hook failed"))


# -- parsing ---------------------------------------------------------------------------

def parse_hooks(value: Any, key: str) -> Hooks | None:
    """Parse a ``hooks`` table (``key`` is its dotted name for errors); None when absent.

    The commands are looked up now, so a typo in a path is a config error naming the key
    rather than a skipped snapshot at the next cycle."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(key, 'must be a table such as { pre = ["/usr/sbin/fsfreeze", '
                          '"--freeze", "/srv/db"], post = [...] }')
    reject_unknown(value, f"{key}.", _KEYS)
    pre = _argv(value.get("pre"), f"{key}.pre")
    post = _argv(value.get("post"), f"{key}.post")
    if pre is None and post is None:
        raise ConfigError(key, "names neither pre nor post")
    timeout = parse_duration(value.get("timeout", DEFAULT_HOOK_TIMEOUT), f"{key}.timeout")
    if not 0 < timeout <= MAX_HOOK_TIMEOUT:
        raise ConfigError(f"{key}.timeout", f"must be more than 0 and at most "
                          f"{MAX_HOOK_TIMEOUT:.0f}s (a snapshot waits for its hooks)")
    choice = value.get("on_pre_failure", PreFailure.SKIP.value)
    try:
        on_failure = PreFailure(choice)
    except ValueError:
        raise ConfigError(f"{key}.on_pre_failure", 'must be "skip" (no snapshot when pre '
                          'fails) or "continue"') from None
    return Hooks(pre=pre, post=post, timeout=timeout, on_pre_failure=on_failure)


def _argv(value: Any, key: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ConfigError(key, "must be a list of arguments such as [\"/usr/sbin/fsfreeze\", "
                          "\"--freeze\", \"/srv\"]; it is never run through a shell: for "
                          f"one, write [\"/bin/sh\", \"-c\", {value!r}]")
    if not isinstance(value, list | tuple) or not value \
            or not all(isinstance(a, str) for a in value):
        raise ConfigError(key, "must be a non-empty list of strings (the command and its "
                          "arguments)")
    if any("\0" in a for a in value):
        raise ConfigError(key, "an argument contains a NUL character")
    return (_executable(value[0], key), *value[1:])


def _executable(command: str, key: str) -> str:
    """``command`` as given, once it is known to be an executable file: an absolute path,
    or a bare name found on the daemon's PATH (a relative path means nothing to a
    daemon whose working directory is not the operator's)."""
    if os.path.isabs(command):
        if not os.path.isfile(command):
            raise ConfigError(key, f"{command} does not exist (or is not a file)")
        if not os.access(command, os.X_OK):
            raise ConfigError(key, f"{command} is not executable")
        return command
    if "/" in command or not command:
        raise ConfigError(key, f"{command!r}: give an absolute path, or a command name "
                          "found on the daemon's PATH")
    if shutil.which(command) is None:
        raise ConfigError(key, f"{command!r} is not found on the daemon's PATH "
                          f"({os.environ.get('PATH', os.defpath)}); give an absolute path")
    return command


# -- running -----------------------------------------------------------------------------

def hook_environment(*, volumes: Sequence[str], label: str, stage: str,
                     server: str | None = None, volumes_file: str | None = None,
                     base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The daemon's environment without secrets, plus the snapshot's facts."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not _secret(k) and not k.startswith("CERSSD_")}
    env.update(CERSSD_VOLUME=volumes[0] if volumes else "", CERSSD_SNAPSHOT_LABEL=label,
               CERSSD_STAGE=stage, CERSSD_VOLUME_COUNT=str(len(volumes)))
    if volumes_file is None:
        env["CERSSD_VOLUMES"] = " ".join(volumes)
    else:
        env["CERSSD_VOLUMES_FILE"] = volumes_file
    if server is not None:
        env["CERSSD_SERVER"] = server
    return env


def _secret(name: str) -> bool:
    upper = name.upper()
    return upper.startswith("AWS_") or any(word in upper for word in _SECRET_WORDS)


class _Tail:
    """The last ``limit`` bytes of a stream."""

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        extra = len(self.data) - self.limit
        if extra > 0:
            del self.data[:extra]
            self.dropped += extra

    def text(self) -> str:
        text = self.data.decode("utf-8", "replace")
        return f"[{self.dropped} bytes before this dropped]\n{text}" if self.dropped else text


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal every process of the group; False when none is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a setuid member: the rest were signalled
        return True
    return True


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to the hook's group, SIGKILL after ``KILL_GRACE``; reap the leader."""
    if _signal_group(proc.pid, signal.SIGTERM):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), KILL_GRACE)
        _signal_group(proc.pid, signal.SIGKILL)
    await proc.wait()


async def run_hook(stage: str, argv: Sequence[str], env: Mapping[str, str],
                   timeout: float) -> HookRun:
    """Run one hook to its end (or its timeout); never raises for the hook's failure.

    The hook's process group is its pid (a new session): as long as any process is in the
    group, Linux does not give that pid to another process, so signalling the group
    after the leader was reaped cannot hit a stranger."""
    started = time.monotonic()
    argv = tuple(argv)
    read_end, write_end = os.pipe()
    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=write_end, stderr=write_end,
                env=dict(env), start_new_session=True)
        finally:
            os.close(write_end)
    except OSError as exc:
        os.close(read_end)
        return HookRun(str(stage), argv, None, f"could not start: {exc}",
                       time.monotonic() - started)
    with _OutputPipe(read_end) as output:
        timed_out = False
        try:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                timed_out = True
                await _kill_group(proc)
            # the hook exited: whatever it left in its group goes now
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(output.eof), DRAIN_GRACE)
        except asyncio.CancelledError:
            await asyncio.shield(_kill_group(proc))
            raise
    status = None if timed_out else proc.returncode
    return HookRun(str(stage), argv, status, output.tail.text(), time.monotonic() - started,
                   timed_out=timed_out)


class _OutputPipe:
    """The read end of a hook's output pipe, read on the event loop into a ``_Tail``
    until EOF; closed on exit, whether or not EOF came (a detached helper of the hook
    may hold the write end for ever)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.tail = _Tail()
        self.loop = asyncio.get_running_loop()
        self.eof: asyncio.Future[None] = self.loop.create_future()

    def __enter__(self) -> _OutputPipe:
        os.set_blocking(self.fd, False)
        self.loop.add_reader(self.fd, self._readable)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self.tail.add(chunk)
            return
        self.loop.remove_reader(self.fd)
        if not self.eof.done():
            self.eof.set_result(None)


def _log_run(run: HookRun, label: str, volume: str) -> None:
    fields = {"stage": run.stage, "argv": list(run.argv), "exit_status": run.exit_status,
              "timed_out": run.timed_out, "seconds": round(run.seconds, 3),
              "output": run.output, "snapshot_label": label, "hook_volume": volume}
    if run.ok:
        log.info("snapshot hook ran", **fields)
    else:
        log.warning("snapshot hook failed", **fields)


async def around_snapshot(hooks: Hooks | None, *, volumes: Sequence[str], label: str,
                          take: Callable[[], Awaitable[T]],
                          server: str | None = None) -> tuple[T, tuple[HookRun, ...]]:
    """Run ``pre``, ``take()`` the snapshot(s), then ``post`` (always, once pre ran).

    Environment of both hooks: ``CERSSD_VOLUMES`` (space-separated; for a list longer
    than ``MAX_VOLUMES_ENV`` instead ``CERSSD_VOLUMES_FILE``, one name a line),
    ``CERSSD_VOLUME`` (the first), ``CERSSD_VOLUME_COUNT``, ``CERSSD_SNAPSHOT_LABEL``,
    ``CERSSD_STAGE`` and, when given, ``CERSSD_SERVER`` (the master's server name).
    Raises ``SnapshotSkipped`` when ``pre`` fails and the policy is ``skip``.
    """
    if hooks is None:
        return await take(), ()
    with _volumes_file(volumes) as listed:
        return await _around(hooks, volumes, label, take, server, listed)


@contextlib.contextmanager
def _volumes_file(volumes: Sequence[str]) -> Any:
    if sum(len(v) + 1 for v in volumes) <= MAX_VOLUMES_ENV:
        yield None
        return
    with tempfile.NamedTemporaryFile("w", prefix="cerssd-hook-volumes-",
                                     suffix=".txt") as f:
        f.writelines(v + "\n" for v in volumes)
        f.flush()
        yield f.name


async def _around(hooks: Hooks, volumes: Sequence[str], label: str,
                  take: Callable[[], Awaitable[T]], server: str | None,
                  listed: str | None) -> tuple[T, tuple[HookRun, ...]]:
    runs: list[HookRun] = []
    volume = volumes[0] if volumes else ""

    async def hook(stage: Stage, argv: tuple[str, ...]) -> HookRun:
        env = hook_environment(volumes=volumes, label=label, stage=stage, server=server,
                               volumes_file=listed)
        run = await run_hook(stage, argv, env, hooks.timeout)
        _log_run(run, label, volume)
        runs.append(run)
        return run

    pre_ran = False
    try:
        if hooks.pre is not None:
            pre_ran = True
            pre = await hook(Stage.PRE, hooks.pre)
            if not pre.ok and hooks.on_pre_failure == PreFailure.SKIP:
                raise _Skip()
        result = await take()
    except _Skip:
        await _post(hook, hooks, pre_ran)
        raise SnapshotSkipped(runs) from None
    except BaseException:
        await _post(hook, hooks, pre_ran)
        raise
    await _post(hook, hooks, pre_ran)
    return result, tuple(runs)


class _Skip(Exception):
    pass


async def _post(hook: Callable[[Stage, tuple[str, ...]], Awaitable[HookRun]], hooks: Hooks,
                pre_ran: bool) -> None:
    """``post``, whenever ``pre`` ran (or there is none); carried to its end even while
    the caller is being cancelled (then the cancellation goes on afterwards)."""
    if hooks.post is None or (hooks.pre is not None and not pre_ran):
        return
    task = asyncio.ensure_future(hook(Stage.POST, hooks.post))
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()
