"""``OnlineConfig``: every setting of ``prefpool online`` (OnMC-PO), loaded strictly from YAML.

Load with ``prefpool.core.config.load_config(OnlineConfig, path, overrides)``;
unknown keys (``train.lrr``) and wrongly typed values are ``ConfigError``s that
name the key. The per-round training settings are the nested ``train:``
section, a ``RoundTrainConfig``: ``TrainConfig`` minus the fields the online
loop fills in itself (``ROUND_OWNED``), so every trainer option (and any field
added to ``TrainConfig`` later) is available with its own default and help text.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from prefpool.core.config import Bounds, check_bounds
from prefpool.core.errors import ConfigError
from prefpool.pipeline.engines.registry import ENGINES, EngineName
from prefpool.pipeline.model.device import resolve_device

from .config import AT_LEAST_1, SEED, TrainConfig

ENGINE_CHOICES = " | ".join(ENGINES)

# TrainConfig fields that online sets per round: the policy, table and folder change every round;
# the loss is MC-PO's; max_length/truncation/dtype must equal the reference cache's, so they come
# from the top-level settings the logprobs stage also uses; resuming is the online loop's job.
ROUND_OWNED = (
    "model",
    "data",
    "output_dir",
    "loss",
    "max_length",
    "truncation",
    "dtype",
    "resume",
    "resume_from",
    "overwrite",
    "reference_is_policy_init",
    "lr_schedule_steps",  # from lr_schedule
    "lr_schedule_start",
)


def _round_train_class() -> type:
    hints = typing.get_type_hints(TrainConfig)
    fields = [
        (f.name, hints[f.name], field(default=f.default, metadata=f.metadata))
        for f in dataclasses.fields(TrainConfig)
        if f.name not in ROUND_OWNED
    ]
    # TRL names, but not those that would set a key online owns (`model_name_or_path` is the round's policy)
    aliases = {k: a for k, a in TrainConfig.ALIASES.items() if not set(a.targets()) & set(ROUND_OWNED)}
    cls = dataclasses.make_dataclass(
        "RoundTrainConfig",
        fields,
        frozen=True,
        namespace={
            "__doc__": "TrainConfig's fields minus those online fills in each round (ROUND_OWNED).",
            "ALIASES": aliases,
        },
    )
    cls.__module__ = __name__
    return cls


RoundTrainConfig = _round_train_class()


def _help(text: str, bounds: Bounds | None = None) -> dict:
    return {"help": text, "bounds": bounds} if bounds is not None else {"help": text}


@dataclass(frozen=True)
class OnlineConfig:
    """Settings of one online MC-PO run. Paths are local folders or files."""

    output_dir: str = field(
        metadata=_help("Run folder: prompts/, round-<r>/{generate,score,logprobs,build,train}, online_state.json.")
    )
    reference: str = field(
        metadata=_help(
            "Frozen reference model: a folder (save_pretrained), a .gguf file or a Hub id (from the local HF cache "
            "when there); only the logprobs stage loads it, never the trainer."
        )
    )
    prompts: str = field(
        metadata=_help(
            "An `ingest` output folder (examples table), or a file ingested once into "
            "output_dir/prompts with `prompts_format`."
        )
    )
    prompts_format: str = field(default="prompts", metadata=_help("Ingest format when `prompts` is a file."))
    policy: str | None = field(
        default=None, metadata=_help("Initial policy (a folder, a .gguf file or a Hub id); null = the reference.")
    )
    rounds: int = field(
        default=2,
        metadata=_help(
            "Rounds of generate -> score -> logprobs -> build -> train. Raising it later continues a finished run.",
            AT_LEAST_1,
        ),
    )

    n: int = field(
        default=4,
        metadata=_help(
            "Samples per prompt drawn from the current policy each round.",
            Bounds(2, note="MC-PO needs a preferred sample and a pool below it"),
        ),
    )
    temperature: float | None = field(
        default=None,
        metadata=_help("Sampling temperature; null = generation_config, else 1.0.", Bounds(0, note="0 = greedy")),
    )
    top_p: float | None = field(
        default=None,
        metadata=_help("Nucleus sampling; null = generation_config, else 1.0.", Bounds(0, 1, low_open=True)),
    )
    max_new_tokens: int | None = field(
        default=None, metadata=_help("Per sample; null = generation_config, else 256.", AT_LEAST_1)
    )
    seed: int = field(default=0, metadata=_help("Round r samples with seed + r (fresh draws every round).", SEED))
    lr_schedule: Literal["per_round", "across_rounds"] = field(
        default="per_round",
        metadata=_help(
            "per_round: each round's training runs train's warmup-then-linear-decay schedule from the start; "
            "across_rounds: one schedule over rounds x train.max_steps steps, round r taking its stretch r (needs "
            "train.max_steps; the round count is then part of the run's identity)."
        ),
    )
    engine: EngineName = field(default="hf", metadata=_help(f"Generation engine: {ENGINE_CHOICES}."))
    engine_args: dict | None = field(default=None, metadata=_help("vllm.LLM options (engine vllm only)."))
    generate_batch_size: int = field(
        default=16, metadata=_help("Sequences decoded together (hf); not in the run's identity.", AT_LEAST_1)
    )
    device: str = field(
        default="auto",
        metadata=_help(
            "Device of the hf engines (generate, logprobs) and the reward model: auto (CUDA when present) | cpu | "
            "cuda | cuda:N | mps. Training places itself (train.device)."
        ),
    )

    reward_fn: str | None = field(
        default=None,
        metadata=_help("module:function or file.py:function, called as f(prompt messages, completion) -> float."),
    )
    reward_model: str | None = field(
        default=None,
        metadata=_help("One-label sequence-classification model folder; give exactly one of reward_fn / reward_model."),
    )

    max_length: int | None = field(
        default=None,
        metadata=_help(
            "Prompt + completion tokens for the reference log-probs and training; null = the reference's context.",
            AT_LEAST_1,
        ),
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32", metadata=_help("Dtype of the reference log-probs and of the trained policy's weights.")
    )
    logprobs_engine: EngineName = field(
        default="hf", metadata=_help(f"Engine of the reference log-probs: {ENGINE_CHOICES}.")
    )
    max_pool: int | None = field(
        default=None, metadata=_help("Keep at most this many pool samples per prompt.", AT_LEAST_1)
    )
    best_ties: str = field(
        default="first",
        metadata=_help("Which sample is preferred when several share the best score (build's best_ties)."),
    )
    show_progress: bool | None = field(
        default=None,
        metadata=_help(
            "Progress of every stage and of training (unless train.progress says otherwise): null or true = a bar "
            "on a terminal, else a line every $PREFPOOL_PROGRESS_SECONDS (30) seconds; false = none."
        ),
    )
    executor: Literal["local", "ray"] = field(
        default="local",
        metadata=_help(
            "Where generate, score and logprobs run their units: local | ray (one Ray for the whole run); "
            "not in the run's identity."
        ),
    )
    workers: int | None = field(
        default=None, metadata=_help("ray: actors per stage; null = as the cluster holds.", AT_LEAST_1)
    )
    ray_address: str | None = field(
        default=None, metadata=_help("ray: the cluster; null = $RAY_ADDRESS, else a local Ray on this machine.")
    )

    train: RoundTrainConfig = field(  # type: ignore[valid-type]
        default_factory=RoundTrainConfig,
        metadata=_help("Per-round TrainConfig fields (lr, beta, kernel, batch_size, max_steps, save_steps, ...)."),
    )

    def check(self) -> None:
        """Cross-field checks, before anything runs."""
        check_bounds(self)  # every number finite and within the bounds declared with its field
        if (self.reward_fn is None) == (self.reward_model is None):
            raise ConfigError("give exactly one of reward_fn and reward_model")
        resolve_device(self.device, what="device")
        if self.engine_args and not ENGINES[self.engine].takes_options:
            with_options = " or ".join(name for name, e in ENGINES.items() if e.takes_options)
            raise ConfigError(
                f"engine_args: vllm.LLM options, but engine is {self.engine!r} (set engine: {with_options})"
            )
        if self.lr_schedule == "across_rounds" and self.train.max_steps is None:
            raise ConfigError(
                "lr_schedule: across_rounds needs train.max_steps (a round's length must not depend on its table)"
            )
        self.round_train(
            model="-", data="-", output_dir="-", max_length=self.max_length or 1, reference_is_policy_init=True
        ).check()

    def round_train(
        self,
        *,
        model: str,
        data: str,
        output_dir: str,
        max_length: int,
        reference_is_policy_init: bool,
        resume: bool = False,
        round_: int = 0,
    ) -> TrainConfig:
        """The TrainConfig of round ``round_`` (``resume``: continue from the newest checkpoint in output_dir)."""
        settings: dict[str, Any] = dataclasses.asdict(self.train)
        if settings["progress"] is None:
            settings["progress"] = self.show_progress
        if self.lr_schedule == "across_rounds":
            steps = self.train.max_steps
            settings.update(lr_schedule_steps=self.rounds * steps, lr_schedule_start=round_ * steps)
        return TrainConfig(
            **settings,
            model=model,
            data=data,
            output_dir=output_dir,
            loss="mcpo",
            max_length=max_length,
            truncation="completion",
            dtype=self.dtype,
            resume=resume,
            reference_is_policy_init=reference_is_policy_init,
        )

    def identity(self) -> dict:
        """What decides the run's output: everything but the round count, display and where the stages run."""
        data = dataclasses.asdict(self)
        # where and how fast it runs, not what it computes (as generate leaves batch_size and device out)
        if self.lr_schedule == "per_round":  # across rounds, the count sets every round's learning rates
            data.pop("rounds")
        for key in (
            "output_dir",
            "show_progress",
            "generate_batch_size",
            "device",
            "executor",
            "workers",
            "ray_address",
        ):
            data.pop(key)
        for key in ("progress", "report_to", "tracker_project", "device"):  # display, logging, placement only
            data["train"].pop(key, None)
        return data
