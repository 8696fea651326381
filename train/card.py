"""The README.md model card written next to the trained model, from ``data_cards/model_card.md``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from string import Template

from prefpool.core.secrets import redact
from prefpool.pipeline.io.card import card_template, public_text
from prefpool.pipeline.io.card_fields import is_repo_id
from prefpool.pipeline.kinds.source import TableSource
from prefpool.pipeline.model.cache_key import weights_hash

from .config import TrainConfig

TEMPLATE = "model_card.md"


def model_card(cfg: TrainConfig, table: TableSource, summary: dict, cache: dict) -> str:
    """YAML front matter, then what was trained on what, with which loss and settings (``data_cards/model_card.md``)."""
    settings = redact({k: v for k, v in asdict(cfg).items() if k not in ("model", "data", "output_dir")})
    lora = ""
    if cfg.lora_r:
        modules = list(cfg.lora_target_modules) if cfg.lora_target_modules else "peft default"
        lora = (
            f"- LoRA adapter (peft): r {cfg.lora_r}, alpha {cfg.lora_alpha}, dropout {cfg.lora_dropout}, "
            f"modules {modules}. This folder holds the adapter only (adapter_model.safetensors, adapter_config.json); "
            "load it with `peft.AutoPeftModelForCausalLM.from_pretrained(folder)` (the base is "
            "`base_model` above), or `merge_and_unload()` it into the base.\n"
        )
    text = Template(card_template(TEMPLATE)).substitute(
        library_name="peft" if cfg.lora_r else "transformers",
        # the Hub's base_model is a Hub id; a local model is named in the text, by name and weights hash
        base_model=f"base_model: {json.dumps(cfg.model)}\n" if _is_hub_model(cfg.model) else "",
        loss=cfg.loss,
        title=cfg.loss.upper(),
        model=_model_name(cfg.model),
        kind=table.kind,
        table=table.label,
        rows=table.rows,
        examples_source=table.examples_source,
        build_config=json.dumps(table.config, sort_keys=True),
        weights_sha256=cache.get("weights_sha256"),
        tokenizer_sha256=cache.get("tokenizer_sha256"),
        max_length=cache.get("max_length"),
        truncation=cache.get("truncation"),
        dtype=cache.get("dtype"),
        provenance=json.dumps(table.provenance, sort_keys=True),
        steps=summary["steps"],
        final_loss=summary["final_loss"],
        step0=summary["step0_max_abs_diff"],
        lora=lora,
        settings=json.dumps(settings, indent=2, sort_keys=True),
    )
    return public_text(text)


def _model_name(model: str) -> str:
    """A Hub id as it is; a local model by its file or folder name and weights hash (never its path)."""
    if _is_hub_model(model):
        return f"`{model}`"
    return f"`{Path(model).name}` (weights sha256 `{weights_hash(model)}`)"


def _is_hub_model(model: str) -> bool:
    return is_repo_id(model) and not Path(model).expanduser().exists()
