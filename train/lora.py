"""LoRA adapters on a policy (peft), the one place ``train`` and its memory estimate wrap a model."""

from __future__ import annotations

import torch

from prefpool.core.errors import ConfigError

from .config import TrainConfig


def with_lora(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """Wrap ``model`` in peft LoRA adapters; only they train. peft initialises ``B`` to zero, so the
    wrapped policy equals the base at step 0 and the step-0 check against the cache still holds."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("lora_r > 0 needs peft, which is not installed: pip install 'prefpool[lora]'") from None
    targets = cfg.lora_target_modules
    if targets == ("all-linear",):
        targets = "all-linear"  # peft's own shorthand is a string, not a list
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(targets) if isinstance(targets, tuple) else targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)
