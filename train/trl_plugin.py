"""MC-PO and MPO inside TRL 1.16's ``DPOTrainer``, with prefpool's cached reference log-probs.

Seams used (all methods of ``DPOTrainer`` a subclass may override):

- ``_prepare_dataset``: TRL tokenizes ``prompt``/``chosen``/``rejected`` its own
  way; we then add ``<extra>_ids`` for the extra completions (the MC-PO pool, or
  MPO's reference samples), tokenized like TRL tokenizes ``chosen`` (chat
  template of prompt + answer, minus the prompt's tokens, cut to ``max_length``
  keeping the start) via ``encode_pair``, and check that the prompt tokens agree.
- ``_set_signature_columns_if_needed``: keeps our columns through
  ``remove_unused_columns``.
- ``_precompute_ref_logps``: the reference values are already in the dataset
  (from ``build``), so this returns the dataset as is; it refuses a dataset
  without them. ``precompute_ref_log_probs=True`` is required: it is what makes
  TRL skip loading a reference model.
- ``compute_loss``: per-sequence log-probs come from the model's TRL-fused LM
  head (``fused_lm_head=True``, as ``DPOTrainer`` does); the loss is
  ``prefpool.losses.mcpo_loss`` / ``mpo_loss``, averaged over the batch.

The collator (``PoolCollator``) is TRL's ``DataCollatorForPreference`` plus the
extra completions, padded into ``(N, T)`` rows with ``(B, M)`` slot indices.

- ``_save_rng_state`` / ``_load_rng_state``: MC-PO's kernel generator is saved
  beside TRL's RNG files in every checkpoint (``kernel_generator_{process}.pt``,
  one per process) and restored on resume, so a resumed run makes the draws an
  uninterrupted one makes. Each process seeds its generator from ``(seed,
  process index)`` (``trainer.kernel_seed``, as ``prefpool train`` does): equal
  seeds would give every process the same draws for different rows.

Datasets: ``mcpo_dataset`` / ``mpo_dataset`` turn a prefpool build table
(``build --kind mcpo`` / ``--kind mpo``) into the ``datasets.Dataset`` these
trainers take. For MC-PO, ``rejected`` is the first pool member (TRL's
tokenizer wants one); the loss does not use that row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from prefpool.losses import AVERAGING_KERNELS, CHOSEN_SUPPORT_KERNELS, MCPO_KERNELS, mcpo_loss, mcpo_select, mpo_loss
from prefpool.pipeline.io.read import checked_shards
from prefpool.pipeline.model.scoring import eval_mode, pad_pairs
from prefpool.pipeline.model.tokenize import encode_pair

from .cache_check import check_dataset_cache, check_step0, dataset_info
from .data import decoded_rows
from .trainer import kernel_seed

logger = logging.getLogger(__name__)

STEP0_TOLERANCE = 1e-3  # nats, float32 (as train's default step0_tolerance)


def _turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def mcpo_dataset(data: str | Path):
    """A ``datasets.Dataset`` for ``MCPODPOTrainer`` from a ``build --kind mcpo`` folder."""
    from datasets import Dataset

    rows = decoded_rows(data, "mcpo")
    return Dataset.from_list(
        info=dataset_info(checked_shards(data)[0], data),
        mapping=[
            {
                "prompt": r.prompt,
                "chosen": _turn(r.answers[0].text),
                "rejected": _turn(r.answers[1].text),
                "ref_chosen_logps": r.answers[0].ref_logp,
                "ref_rejected_logps": r.answers[1].ref_logp,
                "pool": [a.text for a in r.answers[1:]],
                "ref_pool_logps": [a.ref_logp for a in r.answers[1:]],
            }
            for r in rows
        ],
    )


def mpo_dataset(data: str | Path):
    """A ``datasets.Dataset`` for ``MPODPOTrainer`` from a ``build --kind mpo`` folder."""
    from datasets import Dataset

    rows = decoded_rows(data, "mpo")
    return Dataset.from_list(
        [
            {
                "prompt": r.prompt,
                "chosen": _turn(r.answers[0].text),
                "rejected": _turn(r.answers[1].text),
                "ref_chosen_logps": r.answers[0].ref_logp,
                "ref_rejected_logps": r.answers[1].ref_logp,
                "label": r.label,
                "ref_samples": list(r.samples),
            }
            for r in rows
        ],
        info=dataset_info(checked_shards(data)[0], data),
    )


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
class MCPOConfig(DPOConfig):
    """``DPOConfig`` plus MC-PO's options. ``beta`` is MC-PO's beta."""

    mcpo_kernel: str = field(default="sample", metadata={"help": " | ".join(MCPO_KERNELS)})
    precompute_ref_log_probs: bool = field(
        default=True, metadata={"help": "must stay True: the reference values come from the dataset"}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.mcpo_kernel not in MCPO_KERNELS:
            raise ValueError(f"mcpo_kernel: expected one of {MCPO_KERNELS}, got {self.mcpo_kernel!r}")


@dataclass
class MPOConfig(DPOConfig):
    """``DPOConfig`` plus MPO's options (Jiang et al. 2023, arXiv 2312.16430, eq. 33).

    ``beta`` is MPO's KL weight; ``mpo_tau`` weights the reference-sample NLL term.
    """

    mpo_tau: float = field(default=0.0, metadata={"help": "weight of the reference-sample NLL term"})
    mpo_length_normalize: bool = field(default=False, metadata={"help": "p from per-token log-probs"})
    precompute_ref_log_probs: bool = field(
        default=True, metadata={"help": "must stay True: the reference values come from the dataset"}
    )


class _CachedRefTrainer(DPOTrainer):
    """What MC-PO and MPO share: cached reference values, extra completions, our loss."""

    extra_column = "pool"
    ref_extra_column: str | None = "ref_pool_logps"

    def __init__(self, model, args: DPOConfig, train_dataset, processing_class, data_collator=None, **kwargs):
        if not args.precompute_ref_log_probs:
            raise ValueError(
                "precompute_ref_log_probs: must be True; the reference log-probs come from the "
                "dataset (prefpool build tables), and no reference model is loaded"
            )
        if kwargs.get("ref_model") is not None:
            raise ValueError("ref_model: not used; the reference log-probs come from the dataset")
        if data_collator is None:
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
        super().__init__(
            model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            data_collator=data_collator,
            **kwargs,
        )
        tok = getattr(processing_class, "tokenizer", processing_class)
        if check_dataset_cache(
            train_dataset,
            model=self.model,
            tokenizer=tok,
            max_length=args.max_length,
            truncation_mode=args.truncation_mode,
        ):
            self._step0()

    def _step0(self) -> None:
        """Policy == reference (same weights as the cache's): the first rows' chosen and rejected log-probs,
        through TRL's own tokenization and LM head, must equal the cached values."""
        rows = min(len(self.train_dataset), self.args.per_device_train_batch_size)
        batch = self._prepare_inputs(self.data_collator([self.train_dataset[i] for i in range(rows)]))
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            logps = self._logps(self.model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        self.model.train(was_training)
        ref = torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]]).double().cpu()
        diff = float((logps[: 2 * rows].double().cpu() - ref).abs().max())
        check_step0(diff, STEP0_TOLERANCE, data="the train dataset", model=self.model.config._name_or_path)

    # -- data ---------------------------------------------------------------------------------
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if f"{self.extra_column}_ids" in dataset.column_names or self.extra_column not in dataset.column_names:
            return dataset
        tok = getattr(processing_class, "tokenizer", processing_class)
        column = self.extra_column

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
        extra = [f"{self.extra_column}_ids", "label"] + ([self.ref_extra_column] if self.ref_extra_column else [])
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *extra]))

    def _precompute_ref_logps(self, dataset, name, batch_size):
        missing = {"ref_chosen_logps", "ref_rejected_logps"} - set(dataset.column_names)
        if missing:
            raise ValueError(
                f"{name} dataset: no {sorted(missing)} columns; this trainer reads cached reference "
                "log-probs (build the dataset with mcpo_dataset / mpo_dataset from a build table)"
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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = self._loss(model, inputs)
        loss = out.loss.mean()
        self._log_metrics(out.metrics, loss)
        return (loss, None) if return_outputs else loss


class MCPODPOTrainer(_CachedRefTrainer):
    """MC-PO (Chen et al. 2025, arXiv 2502.04567) as a ``DPOTrainer``; see the module docstring.

    Selection kernels run two passes: the pool is scored without gradient, one
    negative per prompt is picked by ``mcpo_select``, then one forward/backward
    runs through the preferred and the picked answers (the paper's ``sample``
    kernel may draw the preferred answer itself: that row's loss is log 2, with
    no gradient). The averaging kernels (``listwise``, ``rao_blackwell``) run
    one forward through the preferred answers and the whole pool.
    """

    _restored_generator: torch.Tensor | None = None  # a checkpoint's state, set on the first draw

    def _draw_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device.type != device.type:
            seed = kernel_seed(self.args.seed, self.args.process_index)
            self._generator = torch.Generator(device=device).manual_seed(seed)
            if self._restored_generator is not None:
                self._generator.set_state(self._restored_generator)
                self._restored_generator = None
        return self._generator

    def _generator_file(self, folder: str | Path) -> Path:
        return Path(folder) / f"kernel_generator_{self.args.process_index}.pt"

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        torch.save(self._draw_generator(self.args.device).get_state(), self._generator_file(output_dir))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = self._generator_file(checkpoint)
        if not path.is_file():
            logger.warning("%s: no kernel generator state; the resumed run's MC-PO draws start afresh", path)
            return
        self._generator = None  # recreated on the next draw, from this state
        self._restored_generator = torch.load(path, weights_only=True)

    def _loss(self, model, inputs):
        kernel, beta = self.args.mcpo_kernel, self.args.beta
        batch = inputs["ref_chosen_logps"].shape[0]
        mask, slot = inputs["extra_mask"], inputs["extra_slot"]
        ref_chosen = inputs["ref_chosen_logps"]
        ref_pool = inputs["ref_extra_logps"].to(ref_chosen.dtype)
        if kernel in AVERAGING_KERNELS:
            rows = slot[mask]  # slot order = row order
            logps = self._logps_of_rows(model, inputs, batch, rows)
            pool = torch.zeros(mask.shape, dtype=logps.dtype, device=logps.device).masked_scatter(mask, logps[batch:])
            return mcpo_loss(logps[:batch], pool, ref_chosen, ref_pool, candidate_mask=mask, beta=beta, kernel=kernel)
        # Pass 1 without gradient or dropout: the kernel samples from the policy itself.
        with_chosen = kernel in CHOSEN_SUPPORT_KERNELS  # the paper's kernel may draw the preferred answer
        with torch.no_grad(), eval_mode(model):
            scores = self._logps(
                model, inputs["extra_input_ids"], inputs["extra_attention_mask"], inputs["extra_completion_mask"]
            )  # (N,)
            chosen_scores = self._logps_of_rows(model, inputs, batch, None) if with_chosen else None
        pool_scores = scores[slot.clamp(min=0)].masked_fill(~mask, 0.0)  # (B, M)
        selected = mcpo_select(
            pool_scores,
            ref_pool,
            policy_chosen_logps=chosen_scores,
            ref_chosen_logps=ref_chosen if with_chosen else None,
            candidate_mask=mask,
            beta=beta,
            kernel=kernel,
            generator=self._draw_generator(pool_scores.device),
        )  # (B,), -1 where the preferred answer was drawn
        in_pool = selected >= 0
        picked = slot.gather(1, selected.clamp(min=0)[:, None]).squeeze(1)[in_pool]  # extra rows of the picks
        logps = self._logps_of_rows(model, inputs, batch, picked)
        picked_logps = torch.zeros(batch, dtype=logps.dtype, device=logps.device).masked_scatter(in_pool, logps[batch:])
        one_hot = F.one_hot(selected.clamp(min=0), mask.shape[1]).bool() & in_pool[:, None]
        pool = torch.where(one_hot, picked_logps[:, None], pool_scores.to(logps.dtype))
        return mcpo_loss(
            logps[:batch], pool, ref_chosen, ref_pool, candidate_mask=mask, beta=beta, kernel=kernel, selected=selected
        )


class MPODPOTrainer(_CachedRefTrainer):
    """MPO (Jiang et al. 2023, arXiv 2312.16430, eq. 33) as a ``DPOTrainer``.

    Chosen/rejected go through TRL's own collation; ``label`` is the preference
    ``I``; with ``mpo_tau > 0`` the policy's log-probs of ``ref_samples`` (drawn
    from the reference by the pipeline) enter the NLL term.
    """

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
