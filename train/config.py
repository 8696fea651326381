"""``TrainConfig``: every setting of ``prefpool train``, with help text, loaded strictly from YAML.

Load with ``prefpool.core.config.load_config(TrainConfig, path, overrides)``; unknown
keys and wrongly typed values are errors. ``check()`` adds the cross-field rules.
TRL ``DPOConfig`` names are accepted where they mean the same (``ALIASES``, from ``trl_names``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from prefpool.core.config import Alias, Bounds, build_dataclass, check_bounds, config_help
from prefpool.core.errors import ConfigError
from prefpool.losses import LOSSES, MCPO_KERNELS, METHODS, check_num_negatives
from prefpool.pipeline.kinds import get_kind, kind_for_loss
from prefpool.pipeline.model.device import resolve_device

from .trl_names import TRL_ALIASES

# Trackers `report_to` accepts: accelerate's names for those prefpool sets up (log dir, offline mode).
TRACKERS: tuple[str, ...] = ("tensorboard", "wandb")


def _help(text: str, bounds: Bounds | None = None) -> dict:
    return {"help": text, "bounds": bounds} if bounds is not None else {"help": text}


# The ranges of the numeric fields, each given once with its field below (checked by the strict loader
# and by ``check``).
POSITIVE = Bounds(0, low_open=True)
NON_NEGATIVE = Bounds(0)
AT_LEAST_1 = Bounds(1)
FRACTION = Bounds(0, 1, high_open=True)  # [0, 1)
SEED = Bounds(0, 2**32 - 1)  # numpy's seeds, which accelerate's set_seed also sets


LossName = Literal[tuple(METHODS)]  # type: ignore[valid-type]
KernelName = Literal[MCPO_KERNELS]  # type: ignore[valid-type]
# Settings that are also keys of their own (TRL's names); the others go in loss_settings.
SETTING_KEYS = ("beta", "label_smoothing", "gamma", "tau", "kernel")


def _method_line(name: str) -> str:
    method = METHODS[name]
    settings = ", ".join(f"{n}={d}" for n, d, _ in config_help(method.settings))
    return f"{name} ({method.kind} table; {settings}): {method.summary}"


LOSS_HELP = "The method; must fit the table kind. " + " | ".join(_method_line(n) for n in METHODS) + "."


def _setting_help(key: str) -> str:
    """The help of setting ``key`` from each method that has it (null: the method's default)."""
    found: dict[str, list[str]] = {}
    for name, method in METHODS.items():
        for setting_name, default, text in config_help(method.settings):
            if setting_name == key:
                found.setdefault(f"{text} (default {default})", []).append(name)
    return " | ".join(f"{'/'.join(names)}: {text}" for text, names in found.items()) + "; null = that default."


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

    loss: LossName = field(default="dpo", metadata=_help(LOSS_HELP))
    beta: float | None = field(
        default=None,
        metadata=_help("The method's beta (every method has one); null = the method's default.", POSITIVE),
    )
    label_smoothing: float | None = field(
        default=None,
        metadata=_help(
            "dpo/simpo/cpo/robust/exo: label_smoothing, [0, 0.5); null = the method's default.",
            Bounds(0, 0.5, high_open=True),
        ),
    )
    gamma: float | None = field(default=None, metadata=_help(_setting_help("gamma"), NON_NEGATIVE))
    tau: float | None = field(default=None, metadata=_help(_setting_help("tau"), NON_NEGATIVE))
    kernel: KernelName | None = field(default=None, metadata=_help(_setting_help("kernel")))
    loss_settings: dict[str, Any] | None = field(
        default=None,
        metadata=_help(
            "The method's other settings, by name, checked against its settings (listed under loss), e.g. "
            "{cpo_alpha: 0.5} or {length_normalize: true}; beta, label_smoothing, gamma, tau and kernel may be "
            "given here or as keys of their own, not both."
        ),
    )
    num_negatives: int = field(
        default=1,
        metadata=_help(
            "mcpo: M, the negatives per prompt: M independent draws of the kernel, with replacement (max / min: the "
            "M hardest / easiest distinct answers; rao_blackwell: the exact mean over the draws; listwise: 1 only).",
            AT_LEAST_1,
        ),
    )
    nll_alpha: float = field(
        default=0.0, metadata=_help("Weight of the per-token NLL on the preferred answer (RPO); 0 = off.", NON_NEGATIVE)
    )

    batch_size: int = field(default=4, metadata=_help("Examples per device per micro-batch.", AT_LEAST_1))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("Micro-batches per optimizer step.", AT_LEAST_1))
    optimizer: Literal["adamw", "sgd"] = field(default="adamw", metadata=_help("adamw | sgd (plain, for tests)."))
    optimizer_impl: Literal["auto", "for-loop", "foreach", "fused"] = field(
        default="auto",
        metadata=_help(
            "AdamW's implementation: for-loop (one parameter at a time: no full-size temporaries), foreach "
            "(batched over parameters: faster on GPUs, temporaries the size of the weights), fused (one kernel "
            "per step, no temporaries), or auto (torch's choice: foreach on GPUs, for-loop on the CPU)."
        ),
    )
    lr: float = field(default=1e-6, metadata=_help("Peak learning rate.", NON_NEGATIVE))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay.", NON_NEGATIVE))
    warmup_steps: int = field(
        default=0, metadata=_help("Linear warmup from 0 to lr, then linear decay to 0.", NON_NEGATIVE)
    )
    warmup_ratio: float = field(
        default=0.0,
        metadata=_help("Warmup as a fraction of the run's steps, [0, 1); used when warmup_steps is 0.", FRACTION),
    )
    lr_schedule_steps: int | None = field(
        default=None,
        metadata=_help(
            "Length in optimizer steps of the warmup-then-linear-decay schedule this run follows; null = the "
            "run's own steps. With lr_schedule_start the run is one stretch of a longer schedule (online's "
            "lr_schedule: across_rounds).",
            Bounds(1, note="or null"),
        ),
    )
    lr_schedule_start: int | None = field(
        default=None,
        metadata=_help(
            "Step of that schedule at which this run starts (its step s takes the schedule's factor at "
            "lr_schedule_start + s); null = 0.",
            Bounds(0, note="or null"),
        ),
    )
    max_grad_norm: float | None = field(
        default=1.0,
        metadata=_help(
            "Clip the global gradient norm; null = no clipping.",
            Bounds(0, low_open=True, note="or null, or 0 as TRL writes it: no clipping"),
        ),
    )
    max_steps: int | None = field(
        default=None, metadata=_help("Optimizer steps; null = epochs x steps per epoch.", Bounds(1, note="or null"))
    )
    epochs: int = field(default=1, metadata=_help("Passes over the table when max_steps is null.", AT_LEAST_1))
    seed: int = field(
        default=0, metadata=_help("Seeds torch/python RNGs, the data order and the MC-PO kernel's draws.", SEED)
    )

    max_length: int | None = field(
        default=None,
        metadata=_help(
            "Max prompt + completion tokens; null = the cache's (the logprobs stage's), else must equal it.", AT_LEAST_1
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
    score_max_tokens: int = field(
        default=16384, metadata=_help("mcpo: padded-token budget of a pass-1 scoring batch.", AT_LEAST_1)
    )

    lora_r: int = field(
        default=0,
        metadata=_help("LoRA rank (peft, `pip install prefpool[lora]`); 0 = train all weights.", NON_NEGATIVE),
    )
    lora_alpha: float = field(
        default=16.0, metadata=_help("LoRA scale numerator: the update is (alpha / r) B A.", POSITIVE)
    )
    lora_dropout: float = field(default=0.0, metadata=_help("Dropout on the LoRA input, [0, 1).", FRACTION))
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
            "fp32 (batching noise is ~1e-5); bf16/fp16 need ~0.1-1.",
            NON_NEGATIVE,
        ),
    )

    logging_steps: int = field(
        default=1, metadata=_help("Write a metrics.jsonl line every N optimizer steps.", AT_LEAST_1)
    )
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
    save_steps: int = field(
        default=0, metadata=_help("Checkpoint every N optimizer steps; 0 = only at the end.", NON_NEGATIVE)
    )
    save_total_limit: int | None = field(
        default=None,
        metadata=_help("Keep only the newest N checkpoints; null = keep all.", Bounds(1, note="or null: keep all")),
    )
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

    def __post_init__(self) -> None:
        """Build the method's settings and fill the setting keys it has with their values (its defaults for
        those not given); the keys it does not have stay null."""
        if self.loss not in METHODS:
            return  # check() names the known ones
        check_bounds(self)  # a key's own range first: its error names the key as the user wrote it
        settings = self.method_settings()
        for key in SETTING_KEYS:
            object.__setattr__(self, key, getattr(settings, key, None))

    def method_settings(self) -> Any:
        """The method's settings dataclass, from the setting keys and ``loss_settings``, checked strictly."""
        method = METHODS[self.loss]
        names = method.setting_names()
        given = {k: getattr(self, k) for k in SETTING_KEYS if getattr(self, k) is not None}
        extra = dict(self.loss_settings or {})
        twice = sorted(k for k in set(given) & set(extra) if given[k] != extra[k])
        if twice:
            raise ConfigError(f"{twice[0]} and loss_settings.{twice[0]}: both set {twice[0]}; give one")
        other = [k for k in given if k not in names]
        if other:
            raise ConfigError(
                f"{other[0]}: not a setting of loss {self.loss!r}; its settings: {', '.join(names) or 'none'}"
            )
        return build_dataclass(
            method.settings, {**given, **extra}, source=f"loss {self.loss!r}", prefix="loss_settings."
        )

    @property
    def settings(self) -> Any:
        """The method's settings (an instance of ``prefpool.losses.METHODS[loss].settings``)."""
        return self.method_settings()

    def check(self) -> None:
        """Cross-field checks that do not need the data (the table kind is checked later)."""
        if self.loss not in LOSSES:
            raise ConfigError(f"loss: unknown loss {self.loss!r}; expected one of {', '.join(LOSSES)}")
        if self.kernel is not None and self.kernel not in MCPO_KERNELS:
            raise ConfigError(f"kernel: expected one of {', '.join(MCPO_KERNELS)}, got {self.kernel!r}")
        check_bounds(self)  # every number finite and within the bounds declared with its field
        try:
            check_num_negatives(self.num_negatives, self.kernel)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        resolve_device(self.device, what="device")  # cuda asked for on a machine without it: an error here
        unknown = [name for name in self.report_to if name not in TRACKERS]
        if unknown:
            raise ConfigError(f"report_to: unknown tracker {unknown[0]!r}; expected any of {', '.join(TRACKERS)}")
        if len(set(self.report_to)) != len(self.report_to):
            raise ConfigError(f"report_to: a tracker is named twice: {list(self.report_to)}")
        if not self.tracker_project or "/" in self.tracker_project:
            raise ConfigError(f"tracker_project: need a non-empty name without '/', got {self.tracker_project!r}")
        if self.lr_schedule_start and self.lr_schedule_steps is None:
            raise ConfigError(
                f"lr_schedule_start: {self.lr_schedule_start} needs lr_schedule_steps (the whole schedule's length)"
            )
        if self.lr_schedule_steps is not None and (self.lr_schedule_start or 0) >= self.lr_schedule_steps:
            raise ConfigError(
                f"lr_schedule_start: {self.lr_schedule_start} is past the schedule's end "
                f"(lr_schedule_steps {self.lr_schedule_steps})"
            )
        if self.resume and self.resume_from:
            raise ConfigError("resume and resume_from: give one (resume picks the newest checkpoint in output_dir)")

    def check_table(self, kind: str) -> None:
        """Refuse a loss that does not fit the table kind (the kinds' specs say which fit)."""
        allowed = get_kind(kind).losses
        if self.loss not in allowed:
            fits = kind_for_loss(self.loss)
            hint = f"; {self.loss} trains on a {fits!r} table, made by {get_kind(fits).recipe}" if fits else ""
            raise ConfigError(
                f"loss: {self.loss!r} does not fit the {kind!r} table in {self.data} "
                f"(it takes {', '.join(allowed) or 'nothing'}){hint}"
            )
