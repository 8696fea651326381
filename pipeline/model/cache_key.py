"""What a cached reference log-prob depends on: the model's weights, its tokenizer and chat
template, the scoring settings (max length, truncation policy, dtype) and the engine that computed it.

``logprobs`` stores ``cache_key_of(cache_components(...))`` with every row; ``train``,
``eval`` and the TRL plug-ins compare the same components before they trust the cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.model.folder import ADAPTER_CONFIG, adapter_base, check_model
from prefpool.pipeline.model.source import ModelSource
from prefpool.pipeline.model.tokenize import template_hash


def weights_hash(model: str | Path | ModelSource, *, what: str = "model", adapter: bool = False) -> str:
    """sha256 over what holds the weights (each file's name, then its bytes).

    A folder or a Hub snapshot: ``config.json`` and the ``*.safetensors`` files
    (a snapshot's links are followed, so it hashes as a folder with the same files).
    A GGUF: the ``.gguf`` file, which holds config, tokenizer and weights in one.
    A LoRA adapter folder (``adapter=True``): its ``adapter_config.json`` and weights, then its base model's hash.
    """
    source = check_model(model, what=what, weights=False, adapter=adapter)  # a clear error for a path that is no model
    base = adapter_base(source)
    if base is not None:  # the adapter's own files, then its base model's hash
        files = [source.folder / ADAPTER_CONFIG, *source.weight_files()]
        base_hash = weights_hash(base, what=f"{what} {source.given}: its base model")
    elif source.kind == "gguf":
        files = source.weight_files()
    else:
        weights = source.weight_files()
        config = source.folder / "config.json"
        if not weights or not config.exists():
            raise PipelineConfigError(
                f"{what} {source.given}: needs config.json and *.safetensors weights (save_pretrained layout)"
            )
        files = [config, *weights]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode("utf-8") + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    if base is not None:
        digest.update(b"base\0" + base_hash.encode("ascii"))
    return digest.hexdigest()


def cache_components(
    weights_sha256: str, tokenizer, *, max_length: int, truncation: str, dtype: str, engine: str = "hf"
) -> dict:
    """The parts of the key. ``engine``: which engine computed the values; hf is the trainer's own scoring
    path, and another engine's values differ from it by more than rounding on long real sequences
    (``benchmarks/bench_engine_agreement.py``), so rows of two engines are never taken for each other."""
    return {
        "weights_sha256": weights_sha256,
        "tokenizer_sha256": template_hash(tokenizer),
        "max_length": max_length,
        "truncation": truncation,
        "dtype": dtype,
        "engine": engine,
    }


def cache_key_of(components: dict) -> str:
    return hashlib.sha256(json.dumps(components, sort_keys=True).encode("utf-8")).hexdigest()[:32]
