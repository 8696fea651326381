"""One writer per output folder: an exclusive ``fcntl.flock`` held for the whole command.

Every command that writes a folder (each stage, ``merge``, ``push --out``,
``train`` and ``online`` output_dir, ``eval --out``, ``plot --out``,
``quickstart --out``) runs inside ``writer_lock(folder)``. The lock file sits
beside the folder, ``PARENT/.NAME.prefpool-lock`` (``lock_path``), not inside
it: ``--overwrite`` builds a new folder beside the old one and swaps it in, so
a lock file inside would move away with the old folder while the path stays in
use. The file records the holder (pid, host, command, start time).

A second writer is refused with an ``OutputLockedError`` (exit 2) that names
the holder, or, with ``--wait`` (``waiting_for_writers``), waits for it. The
kernel drops a lock when its process dies, so a lock file whose recorded holder
is gone is taken over, with a ``StaleLockWarning`` that says so. The holder
removes the file when done (while still holding the lock; a waiter that then
finds its file gone from the path tries again), and with it any parent folder
the lock had to make, so a refused run leaves nothing behind.

``flock`` works between processes of one machine; on a network file system
whose locks are local to each client, two machines can still write one folder.
"""

from __future__ import annotations

import contextvars
import fcntl
import functools
import inspect
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from prefpool.core.outputs import writing
from prefpool.pipeline.io.errors import OutputConflictError

SUFFIX = ".prefpool-lock"
_wait = contextvars.ContextVar("prefpool_wait_for_writers", default=False)
_held: dict[Path, int] = {}  # folders this process holds -> nesting depth (a command calling another on it)
F = TypeVar("F", bound=Callable[..., Any])


class OutputLockedError(OutputConflictError):
    """Another process is writing the output folder."""


class StaleLockWarning(UserWarning):
    """A lock file was left by a process that no longer runs; this run took the folder over."""


def lock_path(folder: str | Path) -> Path:
    """``PARENT/.NAME.prefpool-lock`` of the folder, symbolic links resolved (a link and its target share it)."""
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}{SUFFIX}"


@contextmanager
def waiting_for_writers(wait: bool = True) -> Iterator[None]:
    """Inside this block a locked folder is waited for instead of refused (``--wait``)."""
    token = _wait.set(wait)
    try:
        yield
    finally:
        _wait.reset(token)


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        record = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _live_holder(fd: int, patience: float = 2.0) -> dict:
    """The record of the process that holds ``fd``'s lock. It writes its record just after taking the lock, so
    for a moment the file may be empty or still name the dead holder it took over from: read again until it
    names a live process, for up to ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while True:
        record = _holder(fd)
        if record and (record.get("host") != socket.gethostname() or _alive(record.get("pid"))):
            return record
        if time.monotonic() >= deadline:
            return record
        time.sleep(0.02)


def describe(record: dict) -> str:
    if not record:
        return "another prefpool process (its record is not written yet)"
    return (
        f"pid {record.get('pid')} on host {record.get('host')} (`prefpool {record.get('command')}`, "
        f"started {record.get('started')})"
    )


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_parents(path: Path) -> list[Path]:
    """Make the missing folders above ``path``'s file; return those made, deepest first."""
    made = []
    for parent in [*reversed(path.parents)]:
        if not parent.exists():
            parent.mkdir()
            made.append(parent)
    return list(reversed(made))


@contextmanager
def writer_lock(folder: str | Path, *, command: str) -> Iterator[None]:
    """Hold the exclusive lock of the output ``folder`` for the block (see the module docstring)."""
    key = Path(folder).resolve()
    if key in _held:  # this process holds it already (a command run by another on the same folder)
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    path = lock_path(key)
    with writing(path):
        made = _make_parents(path)
    try:
        fd = _acquire(path, key, command)
    except BaseException:
        _remove_empty(made)
        raise
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        try:
            path.unlink(missing_ok=True)  # still holding the lock: a waiter on this file tries again
        finally:
            os.close(fd)
            _remove_empty(made)


def _acquire(path: Path, folder: Path, command: str) -> int:
    announced = False
    while True:
        with writing(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _live_holder(fd)
                if not _wait.get():
                    raise OutputLockedError(
                        f"{folder} is being written by {describe(holder)}; "
                        f"wait for it to finish (or pass --wait), or choose another output folder (lock file {path})"
                    ) from None
                if not announced:
                    print(f"prefpool: waiting for {describe(holder)}, which writes {folder}", file=sys.stderr)
                    announced = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if not _same_file(fd, path):
                os.close(fd)  # its holder removed it when done: lock the file at the path now
                continue
            _take_over(fd, path)
            _record(fd, command)
            return fd
        except BaseException:
            os.close(fd)
            raise


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _take_over(fd: int, path: Path) -> None:
    """A record in a file nobody locks: its writer died (the kernel dropped its lock). Say so."""
    previous = _holder(fd)
    if not previous:
        return
    same_host = previous.get("host") == socket.gethostname()
    if same_host and previous.get("pid") != os.getpid() and _alive(previous.get("pid")):
        why = "its pid now belongs to another process"
    elif same_host:
        why = "it is no longer running"
    else:
        why = "it ran on another host; flock cannot tell whether it still runs there"
    warnings.warn(
        StaleLockWarning(f"took over the output lock {path} left by {describe(previous)}: {why}"), stacklevel=1
    )


def _record(fd: int, command: str) -> None:
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": started}
    data = json.dumps(record).encode("utf-8")
    os.pwrite(fd, data, 0)  # over the old record, then cut to length: a reader never sees an empty file here
    os.ftruncate(fd, len(data))


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            return


def writes_folder(locate: Callable[[dict[str, Any]], str | Path | None], *, command: str) -> Callable[[F], F]:
    """Run the decorated function under ``writer_lock`` of the folder ``locate(arguments)`` names
    (``None``: it writes no folder this time). The signature, help and annotations stay the function's."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            folder = locate(bound.arguments)
            if folder is None or int(os.environ.get("RANK", "0")) != 0:
                return fn(*args, **kwargs)  # other ranks of a distributed run write under rank 0's lock
            with writer_lock(folder, command=command):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
