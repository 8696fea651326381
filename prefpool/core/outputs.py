"""Output paths: checked before anything is written, and the operating system's refusals as user errors.

``check_folder`` / ``check_file`` run before a command does any work: an
``--out`` that names a file where a folder is wanted (or the reverse) is a
``OutputPathError`` that says which option and what to do, not a
``NotADirectoryError`` traceback from deep inside a write.

``writing(path)`` wraps the writes themselves. The errors a user fixes on the
machine, not in prefpool (no space left, a quota, a read-only file system, no
permission, a path component that is a file), become an ``OutputError`` naming
the path, with the original ``OSError`` chained; any other ``OSError`` is left
alone, since it may be a bug. Writes are atomic (temporary name, then rename),
so when one fails nothing half-written is left under a final name.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefpool.core.errors import OutputError, OutputPathError

__all__ = ["USER_ERRNOS", "check_file", "check_folder", "os_error_message", "writing"]

USER_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENAMETOOLONG: "the name is too long",
}
_ADVICE = {
    errno.ENOSPC: "free some space there (or choose an output folder on another disk) and rerun: finished work is kept",
    errno.EDQUOT: "free some space within the quota (or choose another output folder) and rerun",
    errno.EROFS: "choose an output folder on a writable disk",
    errno.EACCES: "make the folder writable for this user, or choose another output folder",
    errno.EPERM: "make the folder writable for this user, or choose another output folder",
    errno.ENOTDIR: "choose an output path whose parent folders are folders",
    errno.EISDIR: "give a file path, not a folder",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def os_error_message(exc: OSError, path: str | Path) -> str:
    where = exc.filename or path
    return f"cannot write {where}: {USER_ERRNOS[exc.errno]} ({exc.strerror}); {_ADVICE[exc.errno]}"


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn the machine's refusals to write under ``path`` (see ``USER_ERRNOS``) into ``OutputError``."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        if exc.errno not in USER_ERRNOS:
            raise
        raise OutputError(os_error_message(exc, path)) from exc


def check_folder(path: str | Path, *, option: str = "--out") -> Path:
    """``path`` as an output folder: absent or a folder (not a file, not under a file)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(
            f"{option} {path} is a file, not a folder: choose a new folder (it is created) or an existing folder"
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{option} {path}: {parent} is a file, so no folder can be made under it")
            break
    return path


def check_file(path: str | Path, *, option: str = "--out") -> Path:
    """``path`` as an output file: absent or a file (not a folder, not under a file)."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder: give the path of the file to write, inside it")
    check_folder(path.parent, option=f"{option}'s folder")
    return path
