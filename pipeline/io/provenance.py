"""What made a file: library versions, git revision, seed, model, time.

Versions are read from installed package metadata, not by importing the
packages: importing torch or transformers just to record a version string
would cost seconds in every stage, including ones that never touch a model.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import prefpool

LIBRARIES = ("torch", "transformers", "tokenizers", "datasets", "pyarrow", "polars", "vllm")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """HEAD of the checkout prefpool runs from (``+dirty`` if it has local edits), or None."""
    repo = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (an installed wheel), or no commit yet
    return f"{rev}+dirty" if dirty else rev


def collect(*, seed: int | None = None, model: dict | None = None, extra: dict | None = None) -> dict:
    """Provenance dict stored in every shard's metadata and in ``manifest.json``.

    ``model`` is for stages that run one: name, revision, tokenizer and
    chat-template hash, sampling parameters actually used.
    """
    return {
        "prefpool": prefpool.__version__,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "seed": seed,
        "model": model,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
