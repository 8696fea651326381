"""A ``.gguf`` file as a plain float model: for engines that cannot read GGUF (vLLM) and for saving a trained one.

transformers reads a GGUF by dequantizing its weights to float tensors, but the
model it returns still counts as quantized (its config carries the GGUF
quantization entry and it keeps the GGUF quantizer), so ``save_pretrained``
refuses it ("QuantizationMethod.GGUF ... is not serializable").
``plain_causal_lm`` moves those float weights into a model built from the same
config without the entry: the same numbers, in a model that trains and saves as
ordinary ``*.safetensors``.

``float_folder`` writes that model (float32) and the file's tokenizer, chat
template and generation config as a ``save_pretrained`` folder, once per file:
in ``<cache>/<file stem>-<weights hash, 16 hex>`` (``cache_key.weights_hash``, over
the file's name and bytes), where ``<cache>`` is
``$PREFPOOL_CACHE/gguf`` (default ``~/.cache/prefpool/gguf``). The name holds
the file's hash, so an edited file is converted again and two files never share
a folder; the folder is written under a temporary name and renamed when
complete, so a killed conversion leaves nothing under the final name, and
processes converting the same file at once all end with one complete folder.
"""

from __future__ import annotations

import json
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


def plain_causal_lm(model: Any) -> Any:
    """``model`` (loaded from a GGUF, weights already dequantized) as an unquantized model of the same config.

    The returned model takes over ``model``'s float tensors (no copy: the weights are in memory once) and
    saves with ``save_pretrained``; ``model`` is not to be used afterwards. Raises ``ValueError`` if the
    weights do not fit the config (a GGUF transformers read wrongly).
    """
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config = model.config.__class__.from_dict(model.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype = next(model.parameters()).dtype
    with no_init_weights():  # uninitialised tensors, never written, so never resident: they are replaced below
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"the GGUF's weights do not fit its config: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()  # assign gave each tensor its own Parameter: tied weights are one Parameter again
    # Buffers outside the state dict (rotary tables) come from the loaded model too: no_init_weights skipped
    # the initialisation that fills them in a model transformers builds on the meta device.
    for name, buffer in model.named_buffers():
        owner, _, leaf = name.rpartition(".")
        setattr(plain.get_submodule(owner), leaf, buffer)
    plain.generation_config = model.generation_config  # eos/pad ids from the file's metadata
    return plain.eval()  # as from_pretrained returns a model


def float_folder(source: ModelSource, *, cache: Path | None = None) -> Path:
    """The ``save_pretrained`` folder of the GGUF ``source``, converting it on first use (see the module doc)."""
    import torch

    from prefpool.pipeline.model.cache_key import weights_hash

    path = source.path
    sha = weights_hash(source)  # the hash the logprobs cache key records for this file
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
