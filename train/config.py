"""``TrainConfig``: every setting of ``prefpool train``, with help text, loaded strictly from YAML.

Load with ``prefpool.core.config.load_config(TrainConfig, path, overrides)``; unknown
keys and wrongly typed values are errors. ``check()`` adds the cross-field rules.
TRL ``DPOConfig`` names are accepted where they mean the same (``ALIASES``, from ``trl_names``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from prefpool.core.config import Alias
from prefpool.core.errors import ConfigError
from prefpool.losses import LOSSES, MCPO_KERNELS
from prefpool.pipeline.kinds import get_kind, kind_for_loss
from prefpool.pipeline.model.device import resolve_device

from .trl_names import TRL_ALIASES

# Trackers `report_to` accepts: accelerate's names for those prefpool sets up (log dir, offline mode).
TRACKERS: tuple[str, ...] = ("tensorboard", "wandb")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run. Paths are local folders."""

    # TRL DPOConfig / ModelConfig names -> these keys (or refused with what prefpool does instead)
    ALIASES: ClassVar[Mapping[str, Alias]] = TRL_ALIASES

    model: str = field(
        metadata=_help(
            "Initial policy: a local save_pretrained folder (model + tokenizer), a .gguf file, or a Hub id "
            "(from the local HF cache when there)."
        )
    )
    data: str = field(
        metadata=_help(
            "The table: a `build` output folder (pairwise, mcpo or mpo), a folder `prefpool push` wrote, or a Hub "
            "dataset id it was pushed to (offline: from the local HF cache)."
        )
    )
    output_dir: str = field(metadata=_help("Where metrics.jsonl, checkpoints/ and the final model go."))
    data_split: str | None = field(
        default=None, metadata=_help("Split of a pushed folder or Hub id; null = its only split, else train.")
    )

    loss: Literal["dpo", "ipo", "simpo", "mcpo", "mpo"] = field(
        default="dpo", metadata=_help("Loss name from prefpool.losses.LOSSES; must fit the table kind.")
    )
    beta: float = field(default=0.1, metadata=_help("KL strength (dpo/ipo/mcpo/mpo) or reward scale (simpo)."))
    label_smoothing: float = field(default=0.0, metadata=_help("dpo/simpo: assumed label-flip probability, [0, 0.5)."))
    gamma: float = field(default=1.0, metadata=_help("simpo: target reward margin."))
    tau: float = field(
        default=0.0,
        metadata=_help(
            "mpo: weight of the mean NLL of the reference samples (0 skips them); eq. 33 read literally: 2 x its tau."
        ),
    )
    kernel: Literal["sample", "sample_pool", "max", "min", "uniform", "listwise", "rao_blackwell"] = field(
        default="sample",
        metadata=_help(
            "mcpo: sample (the paper's kernel, Chen et al. 2025 Sec. 3: a draw from the preferred answer and the "
            "pool, prob. ∝ exp(reward)) | sample_pool (the same over the pool only) | max | min | uniform (DPO with "
            "the hardest / easiest / a random pool answer) | rao_blackwell (the sample kernel's expected loss) | "
            "listwise (-r0 + logsumexp; formerly 'expectation')."
        ),
    )
    nll_alpha: float = field(
        default=0.0, metadata=_help("Weight of the per-token NLL on the preferred answer (RPO); 0 = off.")
    )

    batch_size: int = field(default=4, metadata=_help("Examples per device per micro-batch."))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("Micro-batches per optimizer step."))
    optimizer: Literal["adamw", "sgd"] = field(default="adamw", metadata=_help("adamw | sgd (plain, for tests)."))
    optimizer_impl: Literal["auto", "for-loop", "foreach", "fused"] = field(
        default="auto",
        metadata=_help(
            "AdamW's implementation: for-loop (one parameter at a time: no full-size temporaries), foreach "
            "(batched over parameters: faster on GPUs, temporaries the size of the weights), fused (one kernel "
            "per step, no temporaries), or auto (torch's choice: foreach on GPUs, for-loop on the CPU)."
        ),
    )
    lr: float = field(default=1e-6, metadata=_help("Peak learning rate."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    warmup_steps: int = field(default=0, metadata=_help("Linear warmup from 0 to lr, then linear decay to 0."))
    warmup_ratio: float = field(
        default=0.0, metadata=_help("Warmup as a fraction of the run's steps, [0, 1); used when warmup_steps is 0.")
    )
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
    truncation: Literal["completion"] = field(
        default="completion", metadata=_help("Truncation policy; must equal the cache's.")
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32", metadata=_help("Dtype the policy's weights are loaded in; must equal the cache's.")
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = field(
        default="no", metadata=_help("accelerate autocast: no | bf16 | fp16 (raise step0_tolerance with it).")
    )
    gradient_checkpointing: bool = field(default=False, metadata=_help("Recompute activations in backward."))
    group_by_length: bool = field(
        default=False,
        metadata=_help(
            "Put rows of similar length in the same micro-batch (less padding): within windows of 16 optimizer "
            "steps the rows are sorted by length and cut into steps, in a shuffled order; reproducible and resumable."
        ),
    )
    packing: Literal["auto", "on", "off"] = field(
        default="auto",
        metadata=_help(
            "Gradient pass: the micro-batch's sequences end to end in one row, no padding. auto = only with "
            "flash_attention_2/3 (varlen, CUDA) | on = also sdpa/eager (a block-diagonal mask: correct, attention "
            "costs grow with the square of the packed length) | off."
        ),
    )
    logprobs_from: Literal["auto", "hidden", "logits"] = field(
        default="auto",
        metadata=_help(
            "Policy log-probs from: hidden = the last hidden states, the LM head run in tiles over the completion "
            "positions only (no (B, T, V) logits) | logits = the model's full logits | auto = hidden where the "
            "model's head is a plain linear layer that matches the model's own logits, else logits."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto",
        metadata=_help(
            "auto: each process on its GPU when there are GPUs (accelerate's placement), else the CPU | cpu | cuda."
        ),
    )
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
    report_to: tuple[Literal["tensorboard", "wandb"], ...] = field(
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
    progress: bool | None = field(
        default=None,
        metadata=_help(
            "Progress on stderr: null or true = a bar on a terminal, else a line every $PREFPOOL_PROGRESS_SECONDS "
            "(30) seconds; false = none."
        ),
    )

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
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        resolve_device(self.device, what="device")  # cuda asked for on a machine without it: an error here
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
        """Refuse a loss that does not fit the table kind (the kinds' specs say which fit)."""
        allowed = get_kind(kind).losses
        if self.loss not in allowed:
            fits = kind_for_loss(self.loss)
            hint = f"; {self.loss} trains on a {fits!r} table (build --kind {fits})" if fits else ""
            raise ConfigError(
                f"loss: {self.loss!r} does not fit the {kind!r} table in {self.data} "
                f"(it takes {', '.join(allowed) or 'nothing'}){hint}"
            )
