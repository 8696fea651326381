"""A ``.gguf`` file as a plain float model: for engines that cannot read GGUF (vLLM) and for saving a trained one.

transformers reads a GGUF by dequantizing its weights to float tensors, but the
model it returns still counts as quantized (its config carries the GGUF
quantization entry and it keeps the GGUF quantizer), so ``save_pretrained``
refuses it ("QuantizationMethod.GGUF ... is not serializable").
``plain_causal_lm`` copies those float weights into a model built from the same
config without the entry: the same numbers, in a model that trains and saves as
ordinary ``*.safetensors``.

``float_folder`` writes that model (float32) and the file's tokenizer, chat
template and generation config as a ``save_pretrained`` folder, once per file:
in ``<cache>/<file stem>-<sha256 of the file, 16 hex>``, where ``<cache>`` is
``$PREFPOOL_CACHE/gguf`` (default ``~/.cache/prefpool/gguf``). The name holds
the file's hash, so an edited file is converted again and two files never share
a folder; the folder is written under a temporary name and renamed when
complete, so a killed conversion leaves nothing under the final name, and
processes converting the same file at once all end with one complete folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefpool.pipeline.model.source import ModelSource

CACHE_ENV = "PREFPOOL_CACHE"
DONE_MARK = "prefpool_gguf.json"  # written last into the folder: its presence means the conversion finished


def cache_root() -> Path:
    """Where converted folders live: ``$PREFPOOL_CACHE/gguf``, else ``~/.cache/prefpool/gguf``."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "prefpool") / "gguf"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plain_causal_lm(model: Any) -> Any:
    """``model`` (loaded from a GGUF, weights already dequantized) as an unquantized model of the same config.

    The returned model holds the same float tensors and saves with ``save_pretrained``; ``model`` is left
    as it was. Raises ``ValueError`` if the weights do not fit the config (a GGUF transformers read wrongly).
    """
    from transformers import AutoModelForCausalLM

    config = model.config.__class__.from_dict(model.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype = next(model.parameters()).dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"the GGUF's weights do not fit its config: missing {missing}, unexpected {unexpected}")
    plain.generation_config = model.generation_config  # eos/pad ids from the file's metadata
    return plain.eval()  # as from_pretrained returns a model


def float_folder(source: ModelSource, *, cache: Path | None = None) -> Path:
    """The ``save_pretrained`` folder of the GGUF ``source``, converting it on first use (see the module doc)."""
    import json

    import torch

    path = source.path
    sha = file_sha256(path)
    root = cache if cache is not None else cache_root()
    dest = root / f"{path.stem}-{sha[:16]}"
    if (dest / DONE_MARK).is_file():
        return dest
    print(f"prefpool: converting {path.name} to a float32 model folder for vLLM, once: {dest}", file=sys.stderr)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tokenizer = source.tokenizer()
        model = source.causal_lm(torch.float32)  # a GGUF source gives the plain model
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        mark = {"gguf": path.name, "sha256": sha, "dtype": "float32"}
        (tmp / DONE_MARK).write_text(json.dumps(mark, indent=2) + "\n")
        try:
            tmp.rename(dest)
        except OSError:  # another process finished the same conversion first
            if not (dest / DONE_MARK).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
