"""TRL 1.16's ``DPOTrainer`` on prefpool tables, with prefpool's cached reference log-probs.

Three trainers, none of which loads a reference model:

- ``CachedRefDPOTrainer``: TRL's own DPO-family losses (``loss_type``: sigmoid, ipo, hinge, robust,
  ...) on a ``pairwise`` table, reading ``ref_chosen_logps``/``ref_rejected_logps`` from it. Plain
  ``DPOTrainer`` does not: by default it loads a second copy of the model and recomputes them, and
  with ``precompute_ref_log_probs=True`` it recomputes them too and fails on the table's columns
  ("columns are duplicated").
- ``MCPODPOTrainer`` / ``MPODPOTrainer``: MC-PO / MPO (``prefpool.losses``) on an ``mcpo`` / ``mpo`` table.

The dataset comes from ``prefpool_dataset(data)`` (``pipeline.kinds.hf.table_dataset``: a build
folder, a pushed folder or a Hub id, in TRL's column names), which records the table's reference
cache. Before training each trainer checks that cache against its own settings, with the errors
``prefpool train`` raises (``CacheMismatchError``): tokenizer and chat-template hash, ``max_length``,
truncation (TRL's ``keep_start`` is prefpool's ``completion``), the dtype of the policy's weights and,
when the model was loaded from a local folder, the weights hash. On the first training step it
compares the policy's log-probs (TRL's fused LM head, under the trainer's own autocast) with the
cached values (``Step0MismatchError`` beyond ``step0_tolerance``). So a precision that changes the
values, such as ``DPOConfig``'s default ``bf16=True`` against a float32 cache, is refused with a
message; ``CachedRefConfig`` (and ``MCPOConfig``, ``MPOConfig``) default to ``bf16=False``.

Seams used (all methods of ``DPOTrainer`` a subclass may override; ``check_trl_version`` refuses a
TRL outside the tested range, since these are internals):

- ``_prepare_dataset``: TRL tokenizes ``prompt``/``chosen``/``rejected`` its own way; the MC-PO
  and MPO trainers then add ``<extra>_ids`` for the extra completions (the MC-PO pool, or MPO's
  reference samples), tokenized like TRL tokenizes ``chosen`` (chat template of prompt + answer,
  minus the prompt's tokens, cut to ``max_length`` keeping the start) via ``encode_pair``, and
  check that the prompt tokens agree.
- ``_set_signature_columns_if_needed``: keeps our columns through ``remove_unused_columns``.
- ``_precompute_ref_logps``: the reference values are already in the dataset, so this returns it
  as is; it refuses a dataset without them. ``precompute_ref_log_probs=True`` is what makes TRL
  skip loading a reference model (it is switched on, with a message, for a plain ``DPOConfig``).
- ``compute_loss``: the step-0 check on the first training batch; then TRL's own loss
  (``CachedRefDPOTrainer``) or ours: per-sequence log-probs from the model's TRL-fused LM head
  (``fused_lm_head=True``, as ``DPOTrainer`` does) into ``mcpo_loss`` / ``mpo_loss``, averaged
  over the batch.

The collator (``PoolCollator``) is TRL's ``DataCollatorForPreference`` plus the extra completions,
padded into ``(N, T)`` rows with ``(B, M)`` slot indices. For MC-PO, ``rejected`` is the first pool
member (TRL's tokenizer wants one); the loss does not use that row.

``_save_rng_state`` / ``_load_rng_state``: MC-PO's kernel generator is saved beside TRL's RNG files in
every checkpoint (``kernel_generator_{process}.safetensors``, one per process) and restored on resume, so a
resumed run makes the draws an uninterrupted one makes. Each process seeds its generator from
``(seed, process index)`` (``trainer.kernel_seed``, as ``prefpool train`` does): equal seeds would
give every process the same draws for different rows.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import trl
from packaging.version import Version
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from prefpool.core.errors import ConfigError, UserError
from prefpool.losses import MCPO_KERNELS, check_num_negatives, mpo_loss
from prefpool.pipeline.kinds.hf import table_dataset, table_info
from prefpool.pipeline.kinds.source import TableSource, open_table
from prefpool.pipeline.model.scoring import eval_mode, pad_pairs
from prefpool.pipeline.model.tokenize import encode_pair

from .cache_check import CacheMismatchError, Step0MismatchError, check_cache
from .checkpoint import generator_file, read_generator_state, save_generator
from .kinds.mcpo import mcpo_step
from .trainer import kernel_seed

logger = logging.getLogger(__name__)

# The TRL releases these subclasses were tested with (they override DPOTrainer internals); pyproject's
# `prefpool[trl]` extra pins the same range.
TESTED_TRL = (Version("1.16"), Version("1.17"))  # [low, high)
# TRL's truncation of prompt + completion to max_length that equals prefpool's (encode_pair's) policy.
TRUNCATION = {"keep_start": "completion"}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class TRLVersionError(UserError, ImportError):
    """The installed TRL is outside the range the plug-in was tested with."""


def check_trl_version(version: str | None = None) -> None:
    """Refuse a TRL release outside ``TESTED_TRL``: the trainers override its internals."""
    found = Version(version or trl.__version__)
    low, high = TESTED_TRL
    if not low <= found < high:
        raise TRLVersionError(
            f"prefpool.train.trl_plugin overrides DPOTrainer internals and was tested with trl>={low},<{high}; "
            f"trl {found} is installed. Install the tested range: pip install 'prefpool[trl]'"
        )


def prefpool_dataset(data: str | Path | TableSource, *, split: str | None = None, kind: str | None = None):
    """A prefpool build table (a build folder, a pushed folder or a Hub id) as the ``datasets.Dataset`` these
    trainers take: TRL's column names, and the table's reference cache in ``info`` (``kinds.hf``)."""
    table = open_table(data, split=split)
    if kind is not None and table.kind != kind:
        raise CacheMismatchError(f"{table.label} holds a {table.kind!r} table; this trainer takes a {kind!r} table")
    return table_dataset(table)


def mcpo_dataset(data: str | Path, *, split: str | None = None):
    """A ``datasets.Dataset`` for ``MCPODPOTrainer`` from a ``build --kind mcpo`` table."""
    return prefpool_dataset(data, split=split, kind="mcpo")


def mpo_dataset(data: str | Path, *, split: str | None = None):
    """A ``datasets.Dataset`` for ``MPODPOTrainer`` from a ``build --kind mpo`` table."""
    return prefpool_dataset(data, split=split, kind="mpo")


@dataclass
class PoolCollator(DataCollatorForPreference):
    """TRL's preference collator, plus ``extra`` completions per example.

    Adds ``extra_input_ids``, ``extra_attention_mask``, ``extra_completion_mask``
    ``(N, T)`` (one row per extra completion, right-padded), ``extra_slot``
    ``(B, M)`` long (row of slot ``(b, i)``, -1 for padding), ``extra_mask``
    ``(B, M)`` bool, and when the examples have them ``ref_extra_logps``
    ``(B, M)`` float64 (0 on padding) and ``label`` ``(B,)``.
    """

    extra: str = "pool"
    ref_extra: str | None = "ref_pool_logps"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if "label" in examples[0]:
            out["label"] = torch.tensor([float(e["label"]) for e in examples], dtype=torch.float64)
        extras = [e[f"{self.extra}_ids"] for e in examples]
        width = max(1, max(len(x) for x in extras))
        slot = torch.full((len(examples), width), -1, dtype=torch.long)
        pairs = []
        for b, (example, ids) in enumerate(zip(examples, extras, strict=True)):
            for i, completion in enumerate(ids):
                slot[b, i] = len(pairs)
                pairs.append((example["prompt_ids"], completion))
        if pairs:
            padded = pad_pairs(pairs, self.pad_token_id)
            out.update({f"extra_{k}": v for k, v in padded.items()})
        out["extra_slot"] = slot
        out["extra_mask"] = slot >= 0
        if self.ref_extra is not None:
            ref = torch.zeros(len(examples), width, dtype=torch.float64)
            for b, e in enumerate(examples):
                ref[b, : len(e[self.ref_extra])] = torch.tensor(e[self.ref_extra], dtype=torch.float64)
            out["ref_extra_logps"] = ref
        return out


@dataclass
class CachedRefConfig(DPOConfig):
    """``DPOConfig`` for training against a prefpool table's cached reference log-probs.

    Differs from ``DPOConfig`` in ``precompute_ref_log_probs=True`` (no reference model) and
    ``bf16=False`` (autocast would change the policy's log-probs away from a float32 cache: the step-0
    check refuses it), and adds ``step0_tolerance`` and ``reference_is_policy_init`` (as ``prefpool train``).
    """

    precompute_ref_log_probs: bool = field(
        default=True, metadata={"help": "must stay True: the reference values come from the dataset"}
    )
    bf16: bool | None = field(
        default=False,
        metadata={"help": "bf16 autocast; off by default: the cached reference values are usually float32"},
    )
    step0_tolerance: float = field(
        default=1e-3,
        metadata={
            "help": "largest |policy - cached reference| log-prob at the first step, in nats (as prefpool train)"
        },
    )
    reference_is_policy_init: bool = field(
        default=True,
        metadata={"help": "the cache was made with the initial policy's weights; False skips the step-0 check"},
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.step0_tolerance >= 0:
            raise ConfigError(f"step0_tolerance: must be >= 0 nats, got {self.step0_tolerance}")


@dataclass
class MCPOConfig(CachedRefConfig):
    """``CachedRefConfig`` plus MC-PO's options. ``beta`` is MC-PO's beta."""

    mcpo_kernel: str = field(default="sample", metadata={"help": " | ".join(MCPO_KERNELS)})
    mcpo_num_negatives: int = field(
        default=1,
        metadata={"help": "M, the negatives drawn per prompt (independent draws of the kernel, with replacement)"},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.mcpo_kernel not in MCPO_KERNELS:
            raise ValueError(f"mcpo_kernel: expected one of {MCPO_KERNELS}, got {self.mcpo_kernel!r}")
        try:
            check_num_negatives(self.mcpo_num_negatives, self.mcpo_kernel)
        except ValueError as error:
            raise ConfigError(f"mcpo_{error}") from None  # the message starts with "num_negatives:"


@dataclass
class MPOConfig(CachedRefConfig):
    """``CachedRefConfig`` plus MPO's options (Jiang et al. 2023, arXiv 2312.16430, eq. 33).

    ``beta`` is MPO's KL weight; ``mpo_tau`` weights the reference-sample NLL term.
    """

    mpo_tau: float = field(default=0.0, metadata={"help": "weight of the reference-sample NLL term"})
    mpo_length_normalize: bool = field(default=False, metadata={"help": "p from per-token log-probs"})


class _CachedRefTrainer(DPOTrainer):
    """What the three trainers share: the table's cache checked, its reference values used as they are,
    the step-0 check; for MC-PO and MPO also the extra completions (``extra_column``) and our loss."""

    table_kind = "pairwise"  # the build table kind the trainer takes
    extra_column: str | None = None
    ref_extra_column: str | None = None

    def __init__(self, model, args: DPOConfig, train_dataset, processing_class=None, data_collator=None, **kwargs):
        check_trl_version()
        if not args.precompute_ref_log_probs:
            if isinstance(args, CachedRefConfig):
                raise ConfigError(
                    "precompute_ref_log_probs: must be True; the reference log-probs come from the "
                    "dataset (prefpool build tables), and no reference model is loaded"
                )
            # DPOConfig's default: with it TRL would load a second model. The values are in the table.
            logger.warning("precompute_ref_log_probs switched on: the reference log-probs come from the prefpool table")
            args.precompute_ref_log_probs = True
        if kwargs.get("ref_model") is not None:
            raise ConfigError("ref_model: not used; the reference log-probs come from the dataset")
        self._table = self._table_of(train_dataset, "train_dataset")
        evals = kwargs.get("eval_dataset")
        for name, dataset in evals.items() if isinstance(evals, dict) else [("eval_dataset", evals)]:
            if dataset is not None and self._table_of(dataset, name)["caches"] != self._table["caches"]:
                raise CacheMismatchError(f"{name}: its reference log-probs were cached under another key than train's")
        if data_collator is None and self.extra_column is not None:
            tok = getattr(processing_class, "tokenizer", processing_class)
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            data_collator = PoolCollator(
                pad_token_id=pad,
                max_length=args.max_length,
                truncation_mode=args.truncation_mode,
                pad_to_multiple_of=args.pad_to_multiple_of,
                extra=self.extra_column,
                ref_extra=self.ref_extra_column,
            )
        self._generator: torch.Generator | None = None
        self._step0_pending = True
        self.step0_max_abs_diff: float | None = None
        super().__init__(
            model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            data_collator=data_collator,
            **kwargs,
        )
        self._check_step0 = self._check_cache()

    # -- the table's reference cache ------------------------------------------------------------
    def _table_of(self, dataset, name: str) -> dict:
        info = table_info(dataset)
        if info is None:
            raise CacheMismatchError(
                f"{name}: not a prefpool table (no record of its reference cache); make it with "
                "prefpool.train.trl_plugin.prefpool_dataset(DATA) from a build folder, a pushed folder or a Hub id, "
                "so the trainer can check how its reference log-probs were made"
            )
        if info["kind"] != self.table_kind:
            raise CacheMismatchError(
                f"{name}: a {info['kind']!r} table ({info['location']}); {type(self).__name__} trains on a "
                f"{self.table_kind!r} table"
            )
        if len(info["caches"]) != 1:
            what = "no logprobs cache key" if not info["caches"] else f"{len(info['caches'])} cache keys"
            raise CacheMismatchError(
                f"{name}: {info['location']} records {what}; the plug-ins train on tables made by "
                "`prefpool build` from `prefpool logprobs` output"
            )
        return info

    def _check_cache(self) -> bool:
        """``prefpool train``'s cache check with this trainer's settings; whether to run the step-0 check."""
        parts = self._table["caches"][0][1]
        if self.args.truncation_mode not in TRUNCATION:
            raise CacheMismatchError(
                f"truncation_mode={self.args.truncation_mode!r}: the reference log-probs were cached cutting the "
                f"completion's tail (truncation {parts.get('truncation')!r}); use truncation_mode='keep_start'"
            )
        tok = getattr(self.processing_class, "tokenizer", self.processing_class)
        dtype = next(self.model.parameters()).dtype
        path = Path(str(getattr(self.model.config, "_name_or_path", "") or "."))
        check = check_cache(
            parts,
            model=path if path.is_dir() and any(path.glob("*.safetensors")) else None,
            tokenizer=tok,
            max_length=self.args.max_length,
            truncation=TRUNCATION.get(self.args.truncation_mode, self.args.truncation_mode),
            dtype=_DTYPE_NAMES.get(dtype, str(dtype)),
            reference_is_policy_init=getattr(self.args, "reference_is_policy_init", True),
        )
        if not check and (self.args.bf16 or self.args.fp16):
            warnings.warn(
                "bf16/fp16 autocast with the step-0 check skipped: nothing verifies that the policy's log-probs "
                f"match the {parts.get('dtype')} reference cache",
                stacklevel=3,
            )
        return check

    # -- the step-0 check -------------------------------------------------------------------------
    @torch.no_grad()
    def _step0_difference(self, model, inputs) -> float:
        """max |policy - cached reference| log-prob over the batch's cached sequences (chosen, rejected and,
        for MC-PO, the pool), through TRL's fused LM head and the trainer's own autocast."""
        with eval_mode(model):
            ids, mask, completion = (inputs[k] for k in ("input_ids", "attention_mask", "completion_mask"))
            policy = [self._logps(model, ids, mask, completion)]  # (2B,): chosen then rejected
            refs = [inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]
            if self.ref_extra_column is not None and "extra_input_ids" in inputs:
                keys = ("extra_input_ids", "extra_attention_mask", "extra_completion_mask")
                policy.append(self._logps(model, *(inputs[k] for k in keys)))  # (N,) in slot order
                refs.append(inputs["ref_extra_logps"][inputs["extra_mask"]])
        ours = torch.cat([p.double().flatten() for p in policy])
        cached = torch.cat([r.double().flatten().to(ours.device) for r in refs])
        return float((ours - cached).abs().max())

    def _step0(self, model, inputs) -> None:
        """On the first training batch: refuse a cache the policy does not reproduce (``prefpool train``'s check)."""
        if not self._step0_pending or not model.training:
            return
        self._step0_pending = False
        if not self._check_step0 or self.state.global_step > 0:
            return
        diff = self._step0_difference(model, inputs)
        self.step0_max_abs_diff = diff
        self._metrics["train"]["step0_max_abs_diff"].append(diff)
        tolerance = getattr(self.args, "step0_tolerance", 1e-3)
        logger.info("step-0 max |policy - cached reference| log-prob = %.3g nats", diff)
        if not diff <= tolerance:
            precision = (
                " bf16/fp16 is on (bf16=True is DPOConfig's default): autocast changes the policy's log-probs away "
                f"from the {self._table['caches'][0][1].get('dtype')} cache; set bf16=False (CachedRefConfig's "
                "default), or raise step0_tolerance to accept the difference."
                if self.args.bf16 or self.args.fp16
                else ""
            )
            raise Step0MismatchError(
                f"step-0 check: the policy's log-probs differ from the cached reference values by up to "
                f"{diff:.4g} nats (tolerance {tolerance}).{precision} Otherwise the cache in "
                f"{self._table['location']} was probably made with another model, tokenizer, chat template or "
                "max_length; rerun `prefpool logprobs` + `prefpool build` with this model. (For a reference other "
                "than the initial policy set reference_is_policy_init=False.)"
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._step0(model, inputs)
        return self._compute_loss_of_batch(model, inputs, return_outputs, num_items_in_batch)

    def _compute_loss_of_batch(self, model, inputs, return_outputs, num_items_in_batch):
        """TRL's own loss (``loss_type``), with the batch's cached ``ref_*_logps``."""
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    # -- data ---------------------------------------------------------------------------------
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        column = self.extra_column
        if column is None or f"{column}_ids" in dataset.column_names or column not in dataset.column_names:
            return dataset
        tok = getattr(processing_class, "tokenizer", processing_class)

        def tokenize_extra(example):
            ids = []
            for text in example[column]:
                enc = encode_pair(tok, example["prompt"], text, max_length=args.max_length)
                if enc.prompt_ids != example["prompt_ids"]:
                    raise ValueError(f"{column}: prompt tokens differ from TRL's for prompt {example['prompt']!r}")
                ids.append(enc.completion_ids)
            return {f"{column}_ids": ids}

        return dataset.map(tokenize_extra, desc=f"Tokenizing {column} of {dataset_name} dataset")

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.extra_column is None:
            return
        extra = [f"{self.extra_column}_ids", "label"] + ([self.ref_extra_column] if self.ref_extra_column else [])
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *extra]))

    def _precompute_ref_logps(self, dataset, name, batch_size):
        missing = {"ref_chosen_logps", "ref_rejected_logps"} - set(dataset.column_names)
        if missing:
            raise CacheMismatchError(
                f"{name} dataset: no {sorted(missing)} columns; this trainer reads cached reference "
                "log-probs (build the dataset with prefpool_dataset from a build table)"
            )
        return dataset

    # -- log-probs ----------------------------------------------------------------------------
    @staticmethod
    def _logps(model, input_ids, attention_mask, completion_mask) -> torch.Tensor:
        """Summed completion log-probs ``(N,)`` through TRL's fused LM head."""
        labels = input_ids.masked_fill(completion_mask == 0, -100)
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True, use_cache=False
        )
        return out.log_probs[:, -(completion_mask.size(1) - 1) :].sum(dim=1)


class CachedRefDPOTrainer(_CachedRefTrainer):
    """TRL's ``DPOTrainer`` with its own losses (``loss_type``: sigmoid = DPO, ipo, hinge, robust, ...) on a
    prefpool ``pairwise`` table, the reference log-probs read from the table; no reference model is loaded.

    ``DPOTrainer(model, args=DPOConfig(...), train_dataset=prefpool_dataset(folder), ...)`` with these
    differences only: the table's cache is checked, the first step checks the policy against the cache.
    """


class _PrefpoolLossTrainer(_CachedRefTrainer):
    """MC-PO and MPO: extra completions per example and a loss from ``prefpool.losses``."""

    def _logps_of_rows(self, model, inputs, chosen_rows: int, extra_rows: torch.Tensor | None) -> torch.Tensor:
        """Log-probs of TRL's first ``chosen_rows`` rows and of the given extra rows, one forward."""
        parts = [
            (
                inputs["input_ids"][:chosen_rows],
                inputs["attention_mask"][:chosen_rows],
                inputs["completion_mask"][:chosen_rows],
            )
        ]
        if extra_rows is not None and extra_rows.numel():
            parts.append(
                tuple(inputs[f"extra_{k}"][extra_rows] for k in ("input_ids", "attention_mask", "completion_mask"))
            )
        width = max(p[0].size(1) for p in parts)
        cat = [torch.cat([F.pad(p[j], (0, width - p[j].size(1))) for p in parts]) for j in range(3)]
        return self._logps(model, *cat)

    def _log_metrics(self, metrics: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        mode = "train" if self.model.training else "eval"
        for name, value in metrics.items():
            value = self.accelerator.gather_for_metrics(value.detach().double())
            self._metrics[mode][name].append(value.mean().item())

    def _compute_loss_of_batch(self, model, inputs, return_outputs, num_items_in_batch):
        out = self._loss(model, inputs)
        loss = out.loss.mean()
        self._log_metrics(out.metrics, loss)
        return (loss, None) if return_outputs else loss


class MCPODPOTrainer(_PrefpoolLossTrainer):
    """MC-PO (Chen et al. 2025, arXiv 2502.04567) as a ``DPOTrainer``; see the module docstring.

    The step is ``train.kinds.mcpo.mcpo_step``, the one ``prefpool train`` runs, with
    TRL's fused LM head scoring the sequences: for the selection kernels the pool
    is scored without gradient, ``mcpo_num_negatives`` negatives per prompt are
    drawn by ``mcpo_select``, then one forward/backward runs through the
    preferred and the distinct picked answers (the paper's ``sample`` kernel may
    draw the preferred answer itself, which adds a constant and no gradient).
    The averaging kernels (``listwise``, ``rao_blackwell``) run one forward
    through the preferred answers and the whole pool.
    """

    table_kind = "mcpo"
    extra_column = "pool"
    ref_extra_column = "ref_pool_logps"
    _restored_generator: torch.Tensor | None = None  # a checkpoint's state, set on the first draw

    def _draw_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device.type != device.type:
            seed = kernel_seed(self.args.seed, self.args.process_index)
            self._generator = torch.Generator(device=device).manual_seed(seed)
            if self._restored_generator is not None:
                self._generator.set_state(self._restored_generator)
                self._restored_generator = None
        return self._generator

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        save_generator(Path(output_dir), self.args.process_index, self._draw_generator(self.args.device))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = generator_file(Path(checkpoint), self.args.process_index)
        if not path.is_file():
            logger.warning("%s: no kernel generator state; the resumed run's MC-PO draws start afresh", path)
            return
        self._generator = None  # recreated on the next draw, from this state
        self._restored_generator = read_generator_state(Path(checkpoint), self.args.process_index)

    def _loss(self, model, inputs):
        batch = inputs["ref_chosen_logps"].shape[0]
        mask, slot = inputs["extra_mask"], inputs["extra_slot"]  # (B, K); slot: the extra row of each
        ref_chosen = inputs["ref_chosen_logps"]

        def score(with_chosen: bool):
            keys = ("extra_input_ids", "extra_attention_mask", "extra_completion_mask")
            scores = self._logps(model, *(inputs[k] for k in keys))  # (N,)
            chosen = self._logps_of_rows(model, inputs, batch, None) if with_chosen else None
            return scores[slot.clamp(min=0)].masked_fill(~mask, 0.0), chosen

        return mcpo_step(
            model,
            score=score,
            forward=lambda rows, slots: self._logps_of_rows(model, inputs, batch, slot[rows, slots]),
            ref_chosen=ref_chosen,
            ref_pool=inputs["ref_extra_logps"].to(ref_chosen.dtype),
            mask=mask,
            beta=self.args.beta,
            kernel=self.args.mcpo_kernel,
            num_negatives=self.args.mcpo_num_negatives,
            generator=self._draw_generator(ref_chosen.device),
        )


class MPODPOTrainer(_PrefpoolLossTrainer):
    """MPO (Jiang et al. 2023, arXiv 2312.16430, eq. 33) as a ``DPOTrainer``.

    Chosen/rejected go through TRL's own collation; ``label`` is the preference
    ``I``; with ``mpo_tau > 0`` the policy's log-probs of ``ref_samples`` (drawn
    from the reference by the pipeline) enter the NLL term.
    """

    table_kind = "mpo"
    extra_column = "ref_samples"
    ref_extra_column = None

    def _loss(self, model, inputs):
        batch = inputs["ref_chosen_logps"].shape[0]
        tau = self.args.mpo_tau
        mask, slot = inputs["extra_mask"], inputs["extra_slot"]
        rows = slot[mask] if tau > 0 else None
        logps = self._logps_of_rows(model, inputs, 2 * batch, rows)  # [chosen; rejected; samples]
        samples = None
        if tau > 0:
            samples = torch.zeros(mask.shape, dtype=logps.dtype, device=logps.device)
            samples = samples.masked_scatter(mask, logps[2 * batch :])
        counts = inputs["completion_mask"][:, 1:].sum(dim=1)
        return mpo_loss(
            logps[:batch],
            logps[batch : 2 * batch],
            inputs["ref_chosen_logps"],
            inputs["ref_rejected_logps"],
            preference=inputs.get("label"),
            ref_sample_logps=samples,
            ref_sample_mask=mask if tau > 0 else None,
            beta=self.args.beta,
            tau=tau,
            chosen_tokens=counts[:batch],
            rejected_tokens=counts[batch:],
            length_normalize=self.args.mpo_length_normalize,
        )
