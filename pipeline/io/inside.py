"""Paths read from a file stay inside the folder that file describes.

A manifest lists shard and sidecar names, a dataset card (``README.md``) lists
``data_files`` patterns and split names. Those files come with a folder someone
handed over, so an entry like ``../elsewhere/part-00000-of-00001-00000.parquet``,
``../../victim/settings.json`` or ``/etc/passwd`` must not make a reader read (or
``merge`` write) outside that folder. ``inside`` resolves the entry (symbolic
links too) and refuses it unless it lies under the folder, naming the file that
lists it and the entry.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from prefpool.pipeline.io.errors import PipelineInputError


def inside(folder: str | Path, entry: str, *, listed_in: str | Path, what: str) -> Path:
    """``folder / entry`` after checking it stays in ``folder``: no absolute path, no ``..``, no link out.

    ``listed_in`` is the file the entry was read from and ``what`` names the entry (``"shard"``,
    ``"data_files pattern"``); both are in the error.
    """
    text = str(entry)
    parts = PurePosixPath(text.replace(os.sep, "/")).parts
    if not text or os.path.isabs(text) or text.startswith("~") or ".." in parts or "://" in text:
        raise PipelineInputError(
            f"{what} {text!r} is not a path inside {folder} (absolute paths, '~', URLs and '..' are refused): "
            "the file was damaged or made to read elsewhere; remove the entry or rewrite the file",
            file=listed_in,
        )
    path = Path(folder) / text
    check_resolved_inside(folder, path, listed_in=listed_in, what=f"{what} {text!r}")
    return path


def check_resolved_inside(folder: str | Path, path: str | Path, *, listed_in: str | Path, what: str) -> None:
    """Refuse ``path`` unless, with every symbolic link followed, it lies under ``folder``."""
    root = Path(folder).resolve()
    if not Path(path).resolve().is_relative_to(root):
        raise PipelineInputError(
            f"{what} resolves to {Path(path).resolve()}, outside {root} (through a symbolic link or '..'): "
            "only files inside the folder are read",
            file=listed_in,
        )
