"""A model, checked before anything loads it, and its tokenizer.

Every command that takes a model (generate, logprobs, score's reward model,
train, eval, online) reads it through here, on top of ``source.resolve_model``
(a local folder, a Hub id from the cache, a ``.gguf`` file): a path that does
not exist, a folder without config or weights or tokenizer files, or a
tokenizer without a chat template is one clear error naming the model and what
to do, never a transformers traceback about Hub repo ids ("Repo id must be in
the form ...").
"""

from __future__ import annotations

from pathlib import Path

from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.model.source import ModelSource, resolve_model

WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Files one of which a transformers tokenizer is built from (besides *.tiktoken).
TOKENIZER_VOCAB = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
LAYOUT = "a folder saved with save_pretrained (config.json, *.safetensors weights, tokenizer files)"


def check_model(model: str | Path | ModelSource, *, what: str = "model", weights: bool = True) -> ModelSource:
    """``model`` resolved, after checking it is a model (a config, and weight files unless ``weights=False``)."""
    source = resolve_model(model, what=what)
    if source.kind == "gguf":  # one file holds config, tokenizer and weights
        return source
    if not (source.folder / "config.json").is_file():
        raise PipelineConfigError(f"{what} {source.given}: not a model folder (no config.json); give {LAYOUT}")
    if weights and not source.weight_files(WEIGHT_SUFFIXES):
        raise PipelineConfigError(
            f"{what} {source.given}: no *.safetensors or *.bin weights in {source.folder}; give {LAYOUT}"
        )
    return source


def load_tokenizer(model: str | Path | ModelSource, *, what: str = "model", chat_template: bool = True):
    """The model's tokenizer, refused without tokenizer files or (by default) without a chat template."""
    source = check_model(model, what=what, weights=False)
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
