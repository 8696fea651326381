"""What a cached reference log-prob depends on: the model's weights, its tokenizer and chat
template, and the scoring settings (max length, truncation policy, dtype).

``logprobs`` stores ``cache_key_of(cache_components(...))`` with every row; ``train``,
``eval`` and the TRL plug-ins compare the same components before they trust the cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.model.folder import check_model_folder
from prefpool.pipeline.model.tokenize import template_hash


def weights_hash(model: str | Path) -> str:
    """sha256 over the model folder's config.json and ``*.safetensors`` weight files."""
    folder = check_model_folder(model, weights=False)
    files = sorted(folder.glob("*.safetensors"))
    if not files or not (folder / "config.json").exists():
        raise PipelineConfigError(f"model {model}: needs config.json and *.safetensors weights (save_pretrained)")
    digest = hashlib.sha256()
    for path in [folder / "config.json", *files]:
        digest.update(path.name.encode("utf-8") + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def cache_components(weights_sha256: str, tokenizer, *, max_length: int, truncation: str, dtype: str) -> dict:
    return {
        "weights_sha256": weights_sha256,
        "tokenizer_sha256": template_hash(tokenizer),
        "max_length": max_length,
        "truncation": truncation,
        "dtype": dtype,
    }


def cache_key_of(components: dict) -> str:
    return hashlib.sha256(json.dumps(components, sort_keys=True).encode("utf-8")).hexdigest()[:32]
