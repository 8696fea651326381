"""Write a file under a temporary name in the same folder, then rename it.

``os.replace`` within one folder is atomic on POSIX, so a reader (or a resumed
run) sees either no file or the complete file under its final name, never a
half-written one. A crash leaves only a ``.NAME.tmp-PID`` file behind, which
stages ignore and clean up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".tmp-"


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def is_temp_name(path: Path) -> bool:
    return path.name.startswith(".") and TMP_MARK in path.name


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        # fsync before the rename so a power loss cannot leave a renamed empty file
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, obj: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")
