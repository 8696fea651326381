"""Put a complete folder in place of an output folder: ``--overwrite`` builds beside, then swaps.

A command that replaces an output builds the new one in a sibling staging
folder and calls ``swap_in`` only when it is complete, so a run killed at any
moment leaves the earlier output (or the new one) under the output's name,
never neither. An output given as a symbolic link is replaced at its target
(``real_folder``): the link stays, the rename never crosses a file system, and
nothing is removed through a link. An ``.NAME.old-PID`` folder left by a run
killed between the two renames is removed by the next swap (it runs under the
output's ``writer_lock``, so no other writer owns it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prefpool.core.outputs import writing


def real_folder(out: str | Path) -> Path:
    """``out``, or the folder it links to when it is a symbolic link."""
    out = Path(out)
    return out.resolve() if out.is_symlink() else out


def old_name(out: Path) -> Path:
    return out.parent / f".{out.name}.old-{os.getpid()}"


def swap_in(staging: Path, out: Path) -> None:
    """Replace the folder ``out`` (absent, or a real folder) by the complete folder ``staging``."""
    out = real_folder(out)
    for leftover in out.parent.glob(f".{out.name}.old-*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
    with writing(out):
        if not out.exists():
            os.replace(staging, out)
            return
        old = old_name(out)
        os.replace(out, old)
        os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
