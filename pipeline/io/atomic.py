"""Write a file under a temporary name in the same folder, then rename it.

``os.replace`` within one folder is atomic on POSIX, so a reader (or a resumed
run) sees either no file or the complete file under its final name, never a
half-written one. A crash leaves only a ``.NAME.tmp-PID`` file behind, which
stages ignore and clean up; a failed write (no space, read-only disk) removes it
and raises ``OutputError`` (``prefpool.core.outputs.writing``).

``write_json`` redacts secrets (``prefpool.core.secrets``) before writing: every
JSON file a stage, the trainer or eval writes goes through it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefpool.core.outputs import writing
from prefpool.core.secrets import redact

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
        with writing(path):
            yield tmp
            # fsync before the rename so a power loss cannot leave a renamed empty file
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically (cards, logs, config copies); the caller redacts what it must."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: object) -> None:
    """Write ``obj`` as indented JSON, atomically, with every secret redacted."""
    write_text(path, json.dumps(redact(obj), indent=2, ensure_ascii=False, sort_keys=False) + "\n")
