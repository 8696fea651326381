"""``--out`` is a folder in every command: where a command's one file lands inside it.

``eval`` writes ``OUT/eval.json`` and ``plot`` writes ``OUT/curves.png``; the
stages write their shards and sidecars into ``OUT``. A path that is an existing
file, or a new path named like the file itself (``--out eval.json``, the old
spelling), is refused before any work, so nothing lands where the user did not
expect it.
"""

from __future__ import annotations

from pathlib import Path

from prefpool.core.errors import ConfigError, OutputExistsError


def file_in_folder(out: str | Path, name: str, *, command: str) -> Path:
    """``out / name``, after checking that ``out`` is a folder or a new folder's name."""
    out = Path(out)
    suffix = Path(name).suffix
    if out.is_file():
        raise OutputExistsError(
            f"out {out}: is a file; --out is a folder ({command} writes {name} into it): pass a folder"
        )
    if not out.exists() and out.suffix.lower() == suffix:
        raise ConfigError(
            f"out {out}: --out is a folder ({command} writes {name} into it), not a {suffix} file: "
            f"pass a folder, e.g. --out {out.with_suffix('')}"
        )
    return out / name
