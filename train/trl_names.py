"""TRL's ``DPOConfig`` (and ``ModelConfig``) names that ``prefpool train`` accepts: ``TrainConfig.ALIASES``.

A TRL user's YAML should mostly just work: each name below is mapped to the
``TrainConfig`` key with the same meaning, converting the value where TRL
spells it differently (``bf16: true`` is ``mixed_precision: bf16``;
``max_steps: -1`` is ``max_steps: null``). A name or value whose meaning
prefpool does not have is refused with a note saying what prefpool does
instead, never dropped silently. Names TRL and prefpool share with the same
meaning (``beta``, ``label_smoothing``, ``gradient_accumulation_steps``,
``weight_decay``, ``seed``, ``output_dir``, ``max_length``, ``save_total_limit``,
``gradient_checkpointing``, ``warmup_ratio``, ``lora_r`` ...) are ``TrainConfig``
fields and need no entry, unless TRL allows a value they do not
(``logging_steps: 0.1``, a fraction of the run).

Checked against TRL 1.16 (``trl.DPOConfig``, ``trl.ModelConfig``) and the
older names of the 0.x releases (``warmup_ratio``, ``rpo_alpha``,
``max_prompt_length``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prefpool.core.config import Alias
from prefpool.core.errors import ConfigError
from prefpool.losses import METHODS

NO_REFERENCE = "prefpool holds no reference model: the reference is the table's cached log-probs"
NO_EVAL = "prefpool train does not evaluate while training; run `prefpool eval` on the saved model"
ADAMW_DEFAULTS = {"adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8}
# TRL loss_type -> prefpool loss (the same per-example loss), from each method's spec
LOSS_TYPES = {trl: name for name, method in METHODS.items() for trl in method.trl_loss_type}
OPTIMIZERS = {"adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw", "adamw": "adamw", "sgd": "sgd"}


def _whole(value: Any, where: str, what: str) -> int:
    """An int, or a float with no fraction (TRL writes 3.0 epochs)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    if value != int(value):
        raise ConfigError(f"{where}: {value!r} is not a whole number; {what}")
    return int(value)


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _precision(name: str) -> Callable[[Any, str], Mapping[str, Any]]:
    def convert(value: Any, where: str) -> Mapping[str, Any]:
        return {"mixed_precision": name} if _flag(value, where) else {}

    return convert


def _steps(key: str, fraction: str) -> Callable[[Any, str], Mapping[str, Any]]:
    """TRL's ``*_steps``: an int, or a float in (0, 1) meaning a fraction of the run (refused with ``fraction``)."""

    def convert(value: Any, where: str) -> Mapping[str, Any]:
        if isinstance(value, float) and 0 < value < 1:
            raise ConfigError(f"{where}: {value} is a fraction of the run in TRL; {fraction}")
        return {key: _whole(value, where, "give a number of optimizer steps")}

    return convert


def _warmup_steps(value: Any, where: str) -> Mapping[str, Any]:
    if isinstance(value, float) and 0 < value < 1:  # TRL >= 1: a float below 1 is a ratio of the run
        return {"warmup_ratio": value}
    return {"warmup_steps": _whole(value, where, "give a number of steps, or a ratio in (0, 1)")}


def _max_steps(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {"max_steps": None}
    steps = _whole(value, where, "give a number of optimizer steps")
    return {"max_steps": None if steps == -1 else steps}  # TRL's -1: train num_train_epochs


def _epochs(value: Any, where: str) -> Mapping[str, Any]:
    return {"epochs": _whole(value, where, "prefpool trains whole epochs; give max_steps for part of one")}


def _max_grad_norm(value: Any, where: str) -> Mapping[str, Any]:
    return {"max_grad_norm": None if value == 0 else value}  # TRL's 0: no clipping


def _loss_type(value: Any, where: str) -> Mapping[str, Any]:
    names = value if isinstance(value, list) else [value]
    if len(names) != 1 or names[0] not in LOSS_TYPES:
        raise ConfigError(
            f"{where}: {value!r} has no prefpool loss; TRL's {', '.join(map(repr, LOSS_TYPES))} are prefpool's "
            f"{', '.join(LOSS_TYPES.values())}; prefpool's losses (key loss): {', '.join(METHODS)}"
        )
    return {"loss": LOSS_TYPES[names[0]]}


def _scheduler(value: Any, where: str) -> Mapping[str, Any]:
    if value != "linear":
        raise ConfigError(
            f"{where}: {value!r} is not implemented; prefpool's schedule is linear warmup (warmup_steps or "
            "warmup_ratio) then linear decay to 0, TRL's 'linear'"
        )
    return {}


def _optim(value: Any, where: str) -> Mapping[str, Any]:
    if value not in OPTIMIZERS:
        raise ConfigError(f"{where}: {value!r} is not available; prefpool's optimizer key takes adamw or sgd")
    return {"optimizer": OPTIMIZERS[value]}


def _adam(name: str) -> Callable[[Any, str], Mapping[str, Any]]:
    def convert(value: Any, where: str) -> Mapping[str, Any]:
        if value != ADAMW_DEFAULTS[name]:
            raise ConfigError(
                f"{where}: {value!r} differs from torch's AdamW default {ADAMW_DEFAULTS[name]}, which prefpool "
                "always uses (betas 0.9, 0.999; eps 1e-8)"
            )
        return {}

    return convert


def _report_to(value: Any, where: str) -> Mapping[str, Any]:
    names = [value] if isinstance(value, str) else value
    if names is None or names == ["none"]:
        return {"report_to": ()}
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: expected a tracker name or a list of them, got {value!r}")
    if "all" in names:
        raise ConfigError(f"{where}: 'all' is not taken; name the trackers: tensorboard and/or wandb")
    return {"report_to": tuple(n for n in names if n != "none")}


def _strategy(no_effect: Mapping[Any, Mapping[str, Any]], note: str) -> Callable[[Any, str], Mapping[str, Any]]:
    def convert(value: Any, where: str) -> Mapping[str, Any]:
        if value is False:  # YAML 1.1 reads an unquoted `no` as false
            value = "no"
        if not isinstance(value, str) or value not in no_effect:
            raise ConfigError(f"{where}: {value!r} is not taken; {note}")
        return no_effect[value]

    return convert


def _only(allowed: Any, note: str) -> Callable[[Any, str], Mapping[str, Any]]:
    """Accept the one value that means what prefpool always does; refuse others with ``note``."""

    def convert(value: Any, where: str) -> Mapping[str, Any]:
        if value != allowed and not (allowed is False and value is None):
            raise ConfigError(f"{where}: {value!r} is not taken; {note}")
        return {}

    return convert


def _resume(value: Any, where: str) -> Mapping[str, Any]:
    if value is None or value is False:
        return {}
    if value is True:
        return {"resume": True}
    if isinstance(value, str):
        return {"resume_from": value}
    raise ConfigError(f"{where}: expected a checkpoint folder or true, got {value!r}")


def _truncation(value: Any, where: str) -> Mapping[str, Any]:
    if value != "keep_start":
        raise ConfigError(
            f"{where}: {value!r} is not taken; prefpool keeps the prompt and cuts the completion's tail to "
            "max_length (TRL's keep_start), as the reference cache did"
        )
    return {"truncation": "completion"}


def _model_init_kwargs(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    dtypes = {k: v for k, v in value.items() if k in ("dtype", "torch_dtype")}
    other = sorted(set(value) - set(dtypes))
    if other or len(set(dtypes.values())) > 1:
        raise ConfigError(
            f"{where}: only dtype is taken (as key dtype; it must equal the cache's); not {', '.join(other)}"
        )
    return {"dtype": next(iter(dtypes.values()))} if dtypes else {}


def _rpo_alpha(value: Any, where: str) -> Mapping[str, Any]:
    return {} if value is None else {"nll_alpha": value}


def _use_cpu(value: Any, where: str) -> Mapping[str, Any]:
    return {"device": "cpu"} if _flag(value, where) else {}


TRL_ALIASES: dict[str, Alias] = {
    # renamed, same meaning
    "learning_rate": Alias("the peak learning rate (prefpool: lr)", key="lr"),
    "per_device_train_batch_size": Alias(
        "examples per device per micro-batch (prefpool: batch_size)", key="batch_size"
    ),
    "model_name_or_path": Alias("TRL ModelConfig's initial policy (prefpool: model)", key="model"),
    "torch_dtype": Alias("TRL ModelConfig's weight dtype (prefpool: dtype; must equal the cache's)", key="dtype"),
    # renamed, the value converted
    "num_train_epochs": Alias("whole epochs only (prefpool: epochs)", convert=_epochs, sets=("epochs",)),
    "max_steps": Alias("-1 means null: train epochs", convert=_max_steps, sets=("max_steps",)),
    "bf16": Alias("true: mixed_precision bf16", convert=_precision("bf16"), sets=("mixed_precision",)),
    "fp16": Alias("true: mixed_precision fp16", convert=_precision("fp16"), sets=("mixed_precision",)),
    "loss_type": Alias(
        "; ".join(f"{trl}: loss {name}" for trl, name in LOSS_TYPES.items()), convert=_loss_type, sets=("loss",)
    ),
    "lr_scheduler_type": Alias("linear only: prefpool's warmup + linear decay", convert=_scheduler),
    "warmup_steps": Alias(
        "a float in (0, 1): warmup_ratio", convert=_warmup_steps, sets=("warmup_steps", "warmup_ratio")
    ),
    "logging_steps": Alias(
        "an int; a fraction of the run is refused",
        convert=_steps("logging_steps", "give a number of steps"),
        sets=("logging_steps",),
    ),
    "save_steps": Alias(
        "an int; a fraction of the run is refused",
        convert=_steps("save_steps", "give a number of steps (0: save only at the end)"),
        sets=("save_steps",),
    ),
    "max_grad_norm": Alias("0 means null: no clipping", convert=_max_grad_norm, sets=("max_grad_norm",)),
    "report_to": Alias("none: []; a name: [name]; all is refused", convert=_report_to, sets=("report_to",)),
    "optim": Alias("adamw_torch(_fused): optimizer adamw; sgd: sgd", convert=_optim, sets=("optimizer",)),
    "rpo_alpha": Alias(
        "the NLL weight on the preferred answer (prefpool: nll_alpha)", convert=_rpo_alpha, sets=("nll_alpha",)
    ),
    "use_cpu": Alias("true: device cpu", convert=_use_cpu, sets=("device",)),
    "resume_from_checkpoint": Alias(
        "true: resume; a folder: resume_from", convert=_resume, sets=("resume", "resume_from")
    ),
    "truncation_mode": Alias("keep_start: truncation completion", convert=_truncation, sets=("truncation",)),
    "model_init_kwargs": Alias("only {dtype: ...}: dtype", convert=_model_init_kwargs, sets=("dtype",)),
    # accepted where they ask for what prefpool always does
    "adam_beta1": Alias("only torch's default 0.9", convert=_adam("adam_beta1")),
    "adam_beta2": Alias("only torch's default 0.999", convert=_adam("adam_beta2")),
    "adam_epsilon": Alias("only torch's default 1e-8", convert=_adam("adam_epsilon")),
    "precompute_ref_log_probs": Alias("true only: " + NO_REFERENCE, convert=_only(True, NO_REFERENCE)),
    "sync_ref_model": Alias("false only: " + NO_REFERENCE, convert=_only(False, NO_REFERENCE)),
    "disable_dropout": Alias(
        "true only: prefpool always turns dropout off (the step-0 check needs policy = reference)",
        convert=_only(True, "prefpool always turns dropout off (the step-0 check needs policy = reference)"),
    ),
    "use_peft": Alias(
        "false only: prefpool's LoRA switch is lora_r > 0",
        convert=_only(False, "prefpool's LoRA switch is lora_r > 0 (TRL's default rank is 16: lora_r: 16)"),
    ),
    "trust_remote_code": Alias(
        "false only: prefpool loads no remote code",
        convert=_only(False, "prefpool loads models with their transformers class, no remote code"),
    ),
    "logging_strategy": Alias(
        "steps only: logging_steps", convert=_strategy({"steps": {}}, "prefpool logs every logging_steps steps")
    ),
    "save_strategy": Alias(
        "steps: save_steps; no: save_steps 0",
        convert=_strategy(
            {"steps": {}, "no": {"save_steps": 0}}, "prefpool saves every save_steps steps (0: only the final model)"
        ),
        sets=("save_steps",),
    ),
    "eval_strategy": Alias("no only: " + NO_EVAL, convert=_strategy({"no": {}}, NO_EVAL)),
    # refused: prefpool has no such setting; the note says what it does instead
    "per_device_eval_batch_size": Alias(NO_EVAL),
    "eval_steps": Alias(NO_EVAL),
    "max_prompt_length": Alias(
        "prefpool never cuts the prompt; max_length cuts the completion's tail, as the cache did"
    ),
    "max_completion_length": Alias(
        "prefpool cuts the completion to fit max_length (prompt + completion), as the cache did"
    ),
    "ref_model_init_kwargs": Alias(NO_REFERENCE),
    "ref_adapter_name": Alias(NO_REFERENCE),
    "model_adapter_name": Alias(NO_REFERENCE),
    "force_use_ref_model": Alias(NO_REFERENCE),
    "run_name": Alias("prefpool names a tracker run by tracker_project (the wandb project, the tensorboard folder)"),
}
