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
    return files_sha256(files, then=b"" if base is None else b"base\0" + base_hash.encode("ascii"))


def files_sha256(paths: list[Path], *, then: bytes = b"") -> str:
    """One hash over several files, in the given order: each file's name and bytes; ``then`` last.

    Remembered for the life of the process, keyed by each file's ``stat`` (device, inode, size, modification
    and change times) and 16 small blocks of its bytes spread over it (a rewrite within one tick of the file
    clock still changes the key): a command that names one model twice (``eval``'s run identity and its
    cache check, ``online``'s reference and initial policy) reads its weights once. Nothing is kept on disk."""
    key = (tuple(_file_identity(path) for path in paths), then)
    if key not in _HASHED:
        digest = hashlib.sha256()
        for path in paths:
            digest.update(path.name.encode("utf-8") + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        digest.update(then)
        _HASHED[key] = digest.hexdigest()
    return _HASHED[key]


_HASHED: dict[tuple, str] = {}


SAMPLED_BLOCKS, BLOCK = 16, 4096


def _file_identity(path: Path) -> tuple:
    st = path.stat()
    sample = hashlib.sha256()
    with open(path, "rb") as handle:
        if st.st_size <= SAMPLED_BLOCKS * BLOCK:
            sample.update(handle.read())
        else:
            for k in range(SAMPLED_BLOCKS):
                handle.seek((st.st_size - BLOCK) * k // (SAMPLED_BLOCKS - 1))
                sample.update(handle.read(BLOCK))
    return (path.name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, sample.digest())


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
