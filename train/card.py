"""The README.md model card written next to the trained model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from prefpool.core.secrets import redact
from prefpool.pipeline.io.card import public_text
from prefpool.pipeline.io.card_fields import is_repo_id
from prefpool.pipeline.kinds.source import TableSource
from prefpool.pipeline.model.cache_key import weights_hash

from .config import TrainConfig


def model_card(cfg: TrainConfig, table: TableSource, summary: dict, cache: dict) -> str:
    """YAML front matter, then what was trained on what, with which loss and settings."""
    settings = redact({k: v for k, v in asdict(cfg).items() if k not in ("model", "data", "output_dir")})
    lines = [
        "---",
        f"library_name: {'peft' if cfg.lora_r else 'transformers'}",
        # the Hub's base_model is a Hub id; a local model is named in the text, by name and weights hash
        *([f"base_model: {json.dumps(cfg.model)}"] if _is_hub_model(cfg.model) else []),
        "tags:",
        "- prefpool",
        f"- {cfg.loss}",
        "---",
        "",
        f"# {cfg.loss.upper()} policy trained with prefpool",
        "",
        f"Initial policy: {_model_name(cfg.model)}. Trained with `prefpool train` on the `{table.kind}` "
        f"table `{table.label}` ({table.rows} rows) against cached reference log-probs; no reference "
        "model was held during training.",
        "",
        "## Data",
        "",
        f"- examples source: `{table.examples_source}`",
        f"- build config: `{json.dumps(table.config, sort_keys=True)}`",
        f"- reference cache: weights sha256 `{cache.get('weights_sha256')}`, tokenizer/template sha256 "
        f"`{cache.get('tokenizer_sha256')}`, max_length {cache.get('max_length')}, "
        f"truncation `{cache.get('truncation')}`, dtype `{cache.get('dtype')}`",
        f"- build provenance: `{json.dumps(table.provenance, sort_keys=True)}`",
        "",
        "## Training",
        "",
        f"- loss: `{cfg.loss}`; steps: {summary['steps']}; final loss {summary['final_loss']}",
        f"- step-0 max |policy - reference| log-prob: {summary['step0_max_abs_diff']}",
        *(
            [
                f"- LoRA adapter (peft): r {cfg.lora_r}, alpha {cfg.lora_alpha}, dropout {cfg.lora_dropout}, "
                f"modules {list(cfg.lora_target_modules) if cfg.lora_target_modules else 'peft default'}. "
                "This folder holds the adapter only (adapter_model.safetensors, adapter_config.json); "
                "load it with `peft.AutoPeftModelForCausalLM.from_pretrained(folder)` (the base is "
                "`base_model` above), or `merge_and_unload()` it into the base."
            ]
            if cfg.lora_r
            else []
        ),
        "- settings:",
        "",
        "```json",
        json.dumps(settings, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return public_text("\n".join(lines))


def _model_name(model: str) -> str:
    """A Hub id as it is; a local model by its file or folder name and weights hash (never its path)."""
    if _is_hub_model(model):
        return f"`{model}`"
    return f"`{Path(model).name}` (weights sha256 `{weights_hash(model)}`)"


def _is_hub_model(model: str) -> bool:
    return is_repo_id(model) and not Path(model).expanduser().exists()
