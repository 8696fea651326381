"""A Hub dataset repo as a local folder: ``huggingface_hub.snapshot_download``, offline from the local cache.

With ``HF_HUB_OFFLINE=1`` (or no network) the snapshot comes from the local
Hugging Face cache (``HF_HUB_CACHE``, where ``datasets.load_dataset`` and
``huggingface-cli download`` put it); a repo that is not there is a
``MissingInputError`` saying how to get it. The token is whatever
huggingface_hub resolves itself: prefpool never reads or passes it.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefpool.core.errors import MissingInputError
from prefpool.pipeline.io.card_fields import is_repo_id


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return constants.is_offline_mode() or value.upper() in ("1", "ON", "YES", "TRUE")


def dataset_snapshot(repo_id: str, *, allow_patterns: list[str] | None = None) -> Path:
    """The folder of the dataset repo ``repo_id`` (downloaded, or from the local cache when offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, IncompleteSnapshotError, LocalEntryNotFoundError

    if not is_repo_id(repo_id):
        raise MissingInputError(f"{repo_id}: not a local folder, nor a Hub dataset id (owner/name)")
    offline = hub_offline()
    try:
        folder = snapshot_download(
            repo_id, repo_type="dataset", allow_patterns=allow_patterns, local_files_only=offline
        )
    except (LocalEntryNotFoundError, IncompleteSnapshotError) as exc:
        where = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise MissingInputError(
            f"{repo_id}: not a local folder, and the Hub dataset is not (completely) in the local Hugging Face "
            f"cache ({where}). Download it once with `huggingface-cli download --repo-type dataset {repo_id}` "
            f"(or `datasets.load_dataset({repo_id!r})`) where there is network, or pass a local folder"
        ) from exc
    except HfHubHTTPError as exc:
        raise MissingInputError(f"{repo_id}: the Hub refused the dataset ({exc})") from exc
    return Path(folder)
