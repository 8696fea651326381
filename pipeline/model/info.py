"""The model side every generate engine shares: tokenizer, chat template, eos ids, hashes.

The model is anything ``source.resolve_model`` takes: a folder, a Hub id, a .gguf file.

Engines take prompt token ids and return completion token ids; rendering the
chat template and decoding stay here, so an hf and a vLLM run of the same model
see the same prompt tokens and record the same fingerprints.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from prefpool.pipeline.model.cache_key import files_sha256
from prefpool.pipeline.model.folder import WEIGHT_SUFFIXES, check_model, load_tokenizer
from prefpool.pipeline.model.source import ModelSource
from prefpool.pipeline.model.tokenize import template_hash

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
# generation_config.json keys the sampler honours (the rest are recorded as ignored)
APPLIED_KEYS = ("temperature", "top_p", "max_new_tokens", "eos_token_id")
NOT_SAMPLING_KEYS = ("bos_token_id", "pad_token_id")
METADATA_KEYS = ("transformers_version", "_from_model_config")


@dataclass
class ModelInfo:
    source: ModelSource  # where the files are, and how transformers loads them
    tokenizer: object  # a transformers tokenizer
    generation_config: dict  # the non-default values of generation_config.json
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    max_position_embeddings: int
    dtype: str  # the weights' dtype, which the hf engine loads them in
    fingerprint: dict  # weights_sha256, tokenizer_sha256, chat_template_sha256

    def render(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt token ids: the chat template with the generation prompt, no tokens added."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    @property
    def path(self) -> Path:
        return self.source.path

    def describe(self) -> dict:
        return {**self.source.describe(), **self.fingerprint}


def load_model_info(model: str | Path | ModelSource, *, what: str = "model") -> ModelInfo:
    """Load the tokenizer, configs and hashes of a model (a folder, a Hub id, a .gguf: ``source``)."""
    source = check_model(model, what=what)
    weights = source.weight_files(WEIGHT_SUFFIXES)
    tokenizer = load_tokenizer(source, what=what)
    config = source.config()
    gen = source.generation_config()
    eos = _ids(tokenizer.eos_token_id) + _ids(gen.get("eos_token_id"))
    eos_ids = tuple(dict.fromkeys(eos))  # union, order kept
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = gen.get("pad_token_id")
    if pad is None and eos_ids:
        pad = eos_ids[0]  # only ever fed under a zero attention mask
    template = tokenizer.chat_template
    if source.gguf_file:  # the tokenizer is in the .gguf: its files beside it are not this model's
        tokenizer_sha256 = template_hash(tokenizer)
    else:
        tokenizer_sha256 = files_sha256([source.folder / f for f in TOKENIZER_FILES if (source.folder / f).exists()])
    return ModelInfo(
        source=source,
        tokenizer=tokenizer,
        generation_config={k: v for k, v in gen.items() if k not in METADATA_KEYS},
        eos_token_ids=eos_ids,
        pad_token_id=pad if pad is not None else 0,
        max_position_embeddings=config.max_position_embeddings,
        dtype=str(getattr(config, "dtype", None) or "float32").removeprefix("torch."),
        fingerprint={
            "weights_sha256": files_sha256(weights),
            "tokenizer_sha256": tokenizer_sha256,
            "chat_template_sha256": hashlib.sha256(str(template).encode("utf-8")).hexdigest(),
        },
    )


def _ids(value: object) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]  # a list of ids
