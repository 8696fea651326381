"""``TrainConfig``: every setting of ``prefpool train``, with help text, loaded strictly from YAML.

Load with ``prefpool.core.config.load_config(TrainConfig, path, overrides)``; unknown
keys and wrongly typed values are errors. ``check()`` adds the cross-field rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prefpool.core.errors import ConfigError
from prefpool.losses import LOSSES, MCPO_KERNELS

# Trackers `report_to` accepts: accelerate's names for those prefpool sets up (log dir, offline mode).
TRACKERS: tuple[str, ...] = ("tensorboard", "wandb")

# Which losses fit which training table (the table kind is read from the data's manifest).
LOSSES_FOR_TABLE: dict[str, tuple[str, ...]] = {
    "pairwise": ("dpo", "ipo", "simpo"),
    "mcpo": ("mcpo",),
    "mpo": ("mpo",),
}


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run. Paths are local folders."""

    model: str = field(metadata=_help("Initial policy: a local save_pretrained folder (model + tokenizer)."))
    data: str = field(metadata=_help("A `build` output folder (pairwise, mcpo or mpo table)."))
    output_dir: str = field(metadata=_help("Where metrics.jsonl, checkpoints/ and the final model go."))

    loss: str = field(default="dpo", metadata=_help("Loss name from prefpool.losses.LOSSES; must fit the table kind."))
    beta: float = field(default=0.1, metadata=_help("KL strength (dpo/ipo/mcpo/mpo) or reward scale (simpo)."))
    label_smoothing: float = field(default=0.0, metadata=_help("dpo/simpo: assumed label-flip probability, [0, 0.5)."))
    gamma: float = field(default=1.0, metadata=_help("simpo: target reward margin."))
    tau: float = field(default=0.0, metadata=_help("mpo: weight of the NLL on reference samples (0 skips them)."))
    kernel: str = field(default="sample", metadata=_help("mcpo: sample | max | min | uniform | expectation."))
    nll_alpha: float = field(
        default=0.0, metadata=_help("Weight of the per-token NLL on the preferred answer (RPO); 0 = off.")
    )

    batch_size: int = field(default=4, metadata=_help("Examples per device per micro-batch."))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("Micro-batches per optimizer step."))
    optimizer: Literal["adamw", "sgd"] = field(default="adamw", metadata=_help("adamw | sgd (plain, for tests)."))
    lr: float = field(default=1e-6, metadata=_help("Peak learning rate."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    warmup_steps: int = field(default=0, metadata=_help("Linear warmup from 0 to lr, then linear decay to 0."))
    max_grad_norm: float | None = field(
        default=1.0, metadata=_help("Clip the global gradient norm; null = no clipping.")
    )
    max_steps: int | None = field(default=None, metadata=_help("Optimizer steps; null = epochs x steps per epoch."))
    epochs: int = field(default=1, metadata=_help("Passes over the table when max_steps is null."))
    seed: int = field(
        default=0, metadata=_help("Seeds torch/python RNGs, the data order and the MC-PO kernel's draws.")
    )

    max_length: int | None = field(
        default=None,
        metadata=_help(
            "Max prompt + completion tokens; null = the cache's (the logprobs stage's), else must equal it."
        ),
    )
    truncation: str = field(default="completion", metadata=_help("Truncation policy; must equal the cache's."))
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32", metadata=_help("Dtype the policy's weights are loaded in; must equal the cache's.")
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = field(
        default="no", metadata=_help("accelerate autocast: no | bf16 | fp16 (raise step0_tolerance with it).")
    )
    gradient_checkpointing: bool = field(default=False, metadata=_help("Recompute activations in backward."))
    score_max_tokens: int = field(default=16384, metadata=_help("mcpo: padded-token budget of a pass-1 scoring batch."))

    lora_r: int = field(
        default=0, metadata=_help("LoRA rank (peft, `pip install prefpool[lora]`); 0 = train all weights.")
    )
    lora_alpha: float = field(default=16.0, metadata=_help("LoRA scale numerator: the update is (alpha / r) B A."))
    lora_dropout: float = field(default=0.0, metadata=_help("Dropout on the LoRA input, [0, 1)."))
    lora_target_modules: tuple[str, ...] | None = field(
        default=None,
        metadata=_help(
            "Module names LoRA wraps, e.g. [q_proj, v_proj]; null = peft's default for "
            "the architecture; [all-linear] = every linear layer but the output head."
        ),
    )

    reference_is_policy_init: bool = field(
        default=True,
        metadata=_help(
            "The cache was made with the initial policy's weights (checked by hash). "
            "false: allow another reference and skip the step-0 check (with a warning)."
        ),
    )
    step0_tolerance: float = field(
        default=1e-3,
        metadata=_help(
            "Largest allowed |policy - cached reference| log-prob at step 0, in nats. 1e-3 suits "
            "fp32 (batching noise is ~1e-5); bf16/fp16 need ~0.1-1."
        ),
    )

    logging_steps: int = field(default=1, metadata=_help("Write a metrics.jsonl line every N optimizer steps."))
    report_to: tuple[str, ...] = field(
        default=(),
        metadata=_help(
            "Also log metrics.jsonl's numeric scalars to these accelerate trackers: "
            "tensorboard (output_dir/runs/, `pip install prefpool[tensorboard]`) and/or "
            "wandb (offline unless WANDB_MODE says otherwise); [] = metrics.jsonl only."
        ),
    )
    tracker_project: str = field(
        default="prefpool",
        metadata=_help("Tracker project name: the wandb project; the tensorboard run folder under output_dir/runs/."),
    )
    save_steps: int = field(default=0, metadata=_help("Checkpoint every N optimizer steps; 0 = only at the end."))
    save_total_limit: int | None = field(default=None, metadata=_help("Keep only the newest N checkpoints."))
    resume: bool = field(default=False, metadata=_help("Continue from the newest checkpoint in output_dir."))
    resume_from: str | None = field(default=None, metadata=_help("Continue from this checkpoint folder."))
    overwrite: bool = field(
        default=False,
        metadata=_help(
            "Replace a finished (or unfinished) run in output_dir with other settings; the old one is "
            "kept until the new run has finished. The same settings again are a no-op."
        ),
    )
    progress: bool | None = field(default=None, metadata=_help("Progress bar on stderr; null = when it is a terminal."))

    def check(self) -> None:
        """Cross-field checks that do not need the data (the table kind is checked later)."""
        if self.loss not in LOSSES:
            raise ConfigError(f"loss: unknown loss {self.loss!r}; expected one of {', '.join(sorted(LOSSES))}")
        if self.kernel not in MCPO_KERNELS:
            raise ConfigError(f"kernel: expected one of {', '.join(MCPO_KERNELS)}, got {self.kernel!r}")
        for name in ("batch_size", "gradient_accumulation_steps", "epochs", "logging_steps", "max_length"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps: must be >= 1 or null, got {self.max_steps}")
        for name in ("lr", "warmup_steps", "save_steps", "nll_alpha", "tau", "step0_tolerance"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.lora_r < 0 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ConfigError(
                f"lora: need lora_r >= 0, lora_alpha > 0 and 0 <= lora_dropout < 1, got "
                f"{self.lora_r}, {self.lora_alpha}, {self.lora_dropout}"
            )
        unknown = [name for name in self.report_to if name not in TRACKERS]
        if unknown:
            raise ConfigError(f"report_to: unknown tracker {unknown[0]!r}; expected any of {', '.join(TRACKERS)}")
        if len(set(self.report_to)) != len(self.report_to):
            raise ConfigError(f"report_to: a tracker is named twice: {list(self.report_to)}")
        if not self.tracker_project or "/" in self.tracker_project:
            raise ConfigError(f"tracker_project: need a non-empty name without '/', got {self.tracker_project!r}")
        if self.resume and self.resume_from:
            raise ConfigError("resume and resume_from: give one (resume picks the newest checkpoint in output_dir)")

    def check_table(self, kind: str) -> None:
        """Refuse a loss that does not fit the table kind."""
        allowed = LOSSES_FOR_TABLE.get(kind, ())
        if self.loss not in allowed:
            fits = next((k for k, names in LOSSES_FOR_TABLE.items() if self.loss in names), None)
            hint = f"; {self.loss} trains on a {fits!r} table (build --kind {fits})" if fits else ""
            raise ConfigError(
                f"loss: {self.loss!r} does not fit the {kind!r} table in {self.data} "
                f"(it takes {', '.join(allowed) or 'nothing'}){hint}"
            )
