"""A model, checked before anything loads it, and its tokenizer.

Every command that takes a model (generate, logprobs, score's reward model,
train, eval, online) reads it through here, on top of ``source.resolve_model``
(a local folder, a Hub id from the cache, a ``.gguf`` file): a path that does
not exist, a folder without config or weights or tokenizer files, or a
tokenizer without a chat template is one clear error naming the model and what
to do, never a transformers traceback about Hub repo ids ("Repo id must be in
the form ...").

A LoRA adapter folder (what ``train`` writes with ``lora_r > 0``: ``adapter_config.json`` and
the adapter's weights, no ``config.json``) is a model only where a command says so
(``adapter=True``: ``eval``); transformers loads it as its base model with the adapter on top.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.model.source import ModelSource, resolve_model

WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Files one of which a transformers tokenizer is built from (besides *.tiktoken).
TOKENIZER_VOCAB = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
LAYOUT = "a folder saved with save_pretrained (config.json, *.safetensors weights, tokenizer files)"
ADAPTER_CONFIG = "adapter_config.json"  # peft's: a LoRA adapter folder


def check_model(
    model: str | Path | ModelSource, *, what: str = "model", weights: bool = True, adapter: bool = False
) -> ModelSource:
    """``model`` resolved, after checking it is a model (a config, and weight files unless ``weights=False``).

    ``adapter=True`` also takes a LoRA adapter folder whose base model passes the same checks.
    """
    source = resolve_model(model, what=what)
    if source.kind == "gguf":  # one file holds config, tokenizer and weights
        return source
    if not (source.folder / "config.json").is_file():
        if (source.folder / ADAPTER_CONFIG).is_file():
            return _check_adapter(source, what=what, weights=weights, allowed=adapter)
        raise PipelineConfigError(f"{what} {source.given}: not a model folder (no config.json); give {LAYOUT}")
    if weights and not source.weight_files(WEIGHT_SUFFIXES):
        raise PipelineConfigError(
            f"{what} {source.given}: no *.safetensors or *.bin weights in {source.folder}; give {LAYOUT}"
        )
    return source


def adapter_base(source: ModelSource) -> str | None:
    """The base model a LoRA adapter folder names (``base_model_name_or_path``); None for any other model."""
    path = source.folder / ADAPTER_CONFIG
    if source.kind == "gguf" or (source.folder / "config.json").is_file() or not path.is_file():
        return None
    try:
        base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        base = None
    if not isinstance(base, str) or not base:
        raise PipelineConfigError(f"{path}: no base_model_name_or_path: the adapter does not say which model it is for")
    return base


def _check_adapter(source: ModelSource, *, what: str, weights: bool, allowed: bool) -> ModelSource:
    if not allowed:
        raise PipelineConfigError(
            f"{what} {source.given}: a LoRA adapter folder ({ADAPTER_CONFIG}), not a whole model; merge it into its "
            "base first (peft: PeftModel.from_pretrained(base, folder).merge_and_unload().save_pretrained(new), "
            "and the tokenizer beside it)"
        )
    if importlib.util.find_spec("peft") is None:
        raise PipelineConfigError(
            f"{what} {source.given}: a LoRA adapter folder needs peft to load: pip install 'prefpool[lora]'"
        )
    base = adapter_base(source)
    check_model(base, what=f"{what} {source.given}: its base model (base_model_name_or_path in {ADAPTER_CONFIG})")
    if weights and not source.weight_files(WEIGHT_SUFFIXES):
        raise PipelineConfigError(f"{what} {source.given}: no adapter weights (*.safetensors or *.bin) in the folder")
    return source


def load_tokenizer(model: str | Path | ModelSource, *, what: str = "model", chat_template: bool = True):
    """The model's tokenizer, refused without tokenizer files or (by default) without a chat template.
    A LoRA adapter folder's own tokenizer files count (``train`` saves them beside the adapter)."""
    source = check_model(model, what=what, weights=False, adapter=True)
    folder = source.folder
    if source.kind != "gguf" and not (
        any((folder / f).is_file() for f in TOKENIZER_VOCAB) or any(folder.glob("*.tiktoken"))
    ):
        raise PipelineConfigError(
            f"{what} {source.given}: no tokenizer files ({', '.join(TOKENIZER_VOCAB)}): save the tokenizer into "
            "the model folder too (tokenizer.save_pretrained(folder))"
        )
    tokenizer = source.tokenizer()
    if chat_template and not tokenizer.chat_template:
        raise PipelineConfigError(
            f"{what} {source.given}: the tokenizer in {source.path} has no chat template (chat_template.jinja, or "
            "'chat_template' in tokenizer_config.json); prefpool renders every prompt with it: add one, "
            "or use the chat (instruct) version of the model"
        )
    return tokenizer
