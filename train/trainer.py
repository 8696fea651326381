"""``train(config)``: preference optimization from a ``build`` table with cached reference log-probs.

No reference model is loaded: the reference enters only as the cached numbers.
Before training: the loss must fit the table kind, the cache key parts must
match (``cache_check``), and on the first micro-batch the policy's log-probs
(``scoring.completion_logps``, the training code path, which the ``logprobs``
stage's hf engine also runs) must equal the cached values within
``step0_tolerance``.

Scoring (``pipeline.model.scoring``): log-probs from the last hidden states,
the LM head run in tiles over completion positions only (``logprobs_from``),
optionally packed (``packing``); micro-batches optionally grouped by length
(``group_by_length``, ``data.length_grouped``).

Loss normalization: per-example losses are summed and divided by the number
of examples in the optimizer step over all processes (``batch_size x
gradient_accumulation_steps x processes``), so batch 8 x 1 step equals batch
1 x 8 accumulation steps. Each micro-batch backpropagates ``sum / batch_size``;
``Accelerator.backward`` divides by the accumulation steps and DDP averages
over processes.

Metrics: one ``metrics.jsonl`` line per logged step (main process); with ``report_to`` the same
numeric values also go to accelerate's trackers (tensorboard under ``output_dir/runs/``, wandb).

The output folder (``run_folder``): nothing is written before every check has
passed, step-0 included; a finished run of the same settings is a no-op
(``train()`` returns its summary), other settings over a finished or
unfinished run are refused unless ``overwrite`` (then the new run is staged
beside it and swapped in when complete) or ``resume``.

Checkpoints (``output_dir/checkpoints/step-N``, ``checkpoint``) hold model, optimizer,
scheduler, every RNG (``accelerator.save_state``), each process's MC-PO kernel generator
(safetensors) and ``trainer_state.json`` (step, data position, config, and the size and
sha256 of every file). A resumed run continues the same stream of batches and draws from
the newest intact checkpoint; it refuses other settings than the checkpoint's (``run_folder``).
A full disk while writing a checkpoint or the model is an ``OutputError`` saying so.

Several processes (DDP; on CPU ``ACCELERATE_USE_CPU=true torchrun --nproc_per_node N``):
process ``p`` takes rows ``p*B .. (p+1)*B`` of each global micro-batch, so ``N``
processes x batch ``B`` see the rows one process with batch ``N*B`` sees, and the
per-step losses and weights agree. Each process has its own MC-PO kernel generator,
seeded from ``(seed, process)`` (process 0: ``seed + 1``, as a single process), so
processes draw independently; process ``p`` saves its generator in the checkpoint
as ``kernel_generator_{p}.safetensors`` (``checkpoint.generator_file``). The draws depend on the number of
processes (a process draws for its
``B`` rows only), so only the deterministic kernels (``max``, ``min``,
``listwise``, ``rao_blackwell``) give identical runs for any ``N``.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch

from prefpool.core.errors import ConfigError, OutputExistsError
from prefpool.core.outputs import writing
from prefpool.core.secrets import redact, redact_text
from prefpool.losses import METHODS
from prefpool.pipeline.engines.logprob_engines import DTYPES
from prefpool.pipeline.io.atomic import write_json, write_text
from prefpool.pipeline.io.progress import announce, progress
from prefpool.pipeline.io.writer_lock import writes_folder

from .cache_check import Step0MismatchError, check_cache, check_step0
from .card import model_card
from .checkpoint import (
    CheckpointError,
    check_pickles,
    checkpoints,
    full_disk_reported,
    load_generator,
    newest_intact,
    read_state,
    save_generator,
    write_state,
)
from .config import TrainConfig
from .data import collate
from .lora import with_lora
from .metrics import MetricsLog, peak_memory_mb, read_metrics, reduce_step, tracker_scalars
from .objective import batch_loss, step0_difference
from .run_data import open_run_data
from .run_folder import (
    CHECKPOINTS,
    SUMMARY_NAME,
    check_resumed_settings,
    plan_run_folder,
    run_identity,
    start_folder,
    swap_in,
)
from .unpadded_checkpoints import keep_layer_inputs_unpadded

# TrainConfig.optimizer_impl -> torch.optim.AdamW's arguments
ADAMW_IMPL = {"auto": {}, "for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}

__all__ = ["CHECKPOINTS", "Step0MismatchError", "Trainer", "TrainerState", "latest_checkpoint", "train"]


class TrainerState:
    """What a resumed run needs besides model/optimizer/scheduler/RNGs (saved by accelerate): the
    position (in ``trainer_state.json``) and this process's MC-PO kernel generator (safetensors)."""

    def __init__(self, generator: torch.Generator, method_state: dict[str, float] | None = None) -> None:
        self.step = 0  # optimizer steps done
        self.epoch = 0
        self.micro = 0  # micro-batches consumed in this epoch
        self.generator = generator  # the MC-PO kernel's draws (this process's)
        self.method_state = dict(method_state or {})  # the method's running statistics (BCO's reward mean)

    def position(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "micro_batch": self.micro,
            "method_state": dict(self.method_state),
        }

    def restore(self, info: dict) -> None:
        self.step, self.epoch, self.micro = info["step"], info["epoch"], info["micro_batch"]
        self.method_state = dict(info.get("method_state", self.method_state))


# An odd 64-bit constant (2^64 / golden ratio): process p's seed is offset by p times it. Its low 32
# bits are odd too, so the offset changes the low 32 bits, the only bits the CPU generator (mt19937)
# uses: an offset of ``p << 32`` would give every CPU process the same stream.
_PROCESS_STRIDE = 0x9E3779B97F4A7C15


def kernel_seed(seed: int, process: int) -> int:
    """Seed of process ``process``'s MC-PO kernel generator; process 0 keeps the single-process seed
    (``seed + 1``). Equal streams in all processes would give every process the same draws for
    different rows; the seeds differ in their low 32 bits, so the streams differ on CPU as on CUDA."""
    return (seed + 1 + process * _PROCESS_STRIDE) % 2**64


def _disable_dropout(model: torch.nn.Module) -> None:
    # Dropout would make the policy's values differ from the cached reference's at step 0.
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def warmup_steps(cfg: TrainConfig, total: int) -> int:
    """Warmup steps: ``warmup_steps``, else ``ceil(warmup_ratio * total)`` (TRL's and HF's rule)."""
    return cfg.warmup_steps if cfg.warmup_steps > 0 else math.ceil(cfg.warmup_ratio * total)


def _reshard(model: torch.nn.Module) -> None:
    """Shard FSDP2 parameters again after a forward with no backward (FSDP2 leaves some gathered for it)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _linear_warmup_decay(warmup: int, total: int, *, start: int = 0):
    """The LR factor at a run's step ``step``: the schedule of ``total`` steps read at ``start + step``."""

    def factor(run_step: int) -> float:
        step = start + run_step
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


TRACKER_DIR = "runs"  # output_dir/runs/<tracker_project>/: tensorboard's event files


def _tracker_options(cfg: TrainConfig, out: Path) -> dict:
    """``Accelerator`` keyword arguments for ``cfg.report_to``; a requested tracker that is not
    installed is an error here (accelerate would drop it with only a debug message)."""
    if not cfg.report_to:
        return {}
    from accelerate.utils import ProjectConfiguration, is_tensorboard_available, is_wandb_available

    installed = {
        "tensorboard": (is_tensorboard_available, "pip install 'prefpool[tensorboard]'"),
        "wandb": (is_wandb_available, "pip install wandb"),
    }
    for name in cfg.report_to:
        available, hint = installed[name]
        if not available():
            raise ConfigError(f"report_to: {name} is not installed ({hint})")
    return {
        "log_with": list(cfg.report_to),
        "project_config": ProjectConfiguration(project_dir=str(out), logging_dir=str(out / TRACKER_DIR)),
    }


def _hparams(cfg: TrainConfig) -> dict:
    # Trackers' hyperparameter tables take scalars and strings only (tensorboard's add_hparams).
    flat = {}
    for name, value in redact(asdict(cfg)).items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        if value is not None:
            flat[name] = value
    return flat


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``output_dir`` (intact or not: resuming checks)."""
    found = checkpoints(Path(output_dir))
    return found[0] if found else None


class Trainer:
    """Sets up model, data, optimizer and checks from a ``TrainConfig``; ``run()`` trains."""

    def __init__(self, cfg: TrainConfig) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, set_seed

        cfg.check()
        self.cfg = cfg
        self.folder = plan_run_folder(cfg)  # refuses before any loading what would replace an earlier run
        if self.folder.finished is not None:
            raise OutputExistsError(
                f"output_dir {cfg.output_dir} holds a finished run of these settings; train() returns its summary "
                "without training (overwrite: true trains it again)"
            )
        self.out, self.work = self.folder.out, self.folder.work
        # Before the accelerator exists: the launcher's RANK tells the main process (unset: one process).
        shown = cfg.progress if os.environ.get("RANK", "0") == "0" else False
        announce("train", f"reading {cfg.data}, loading {cfg.model}; progress follows", enabled=shown)
        run_data = open_run_data(cfg)  # a bad model reference fails before the data is read
        self.source, self.data, self.kind, self.spec = run_data.source, run_data.data, run_data.kind, run_data.spec
        self.tokenizer, self.cache, self.max_length = run_data.tokenizer, run_data.cache, run_data.max_length
        self.check_step0 = check_cache(
            self.cache,
            model=cfg.model,
            tokenizer=self.tokenizer,
            max_length=self.max_length,
            truncation=cfg.truncation,
            dtype=cfg.dtype,
            reference_is_policy_init=cfg.reference_is_policy_init,
        )
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        self.accelerator = Accelerator(
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            mixed_precision=cfg.mixed_precision,
            step_scheduler_with_optimizer=False,
            **({"cpu": True} if cfg.device == "cpu" else {}),
            **_tracker_options(cfg, self.work),
        )
        set_seed(cfg.seed)
        self.table = run_data.table(cfg)
        procs = self.accelerator.num_processes
        self.steps_per_epoch = self.table.batches_per_epoch(cfg.batch_size * procs) // cfg.gradient_accumulation_steps
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{cfg.data}: {len(self.table)} rows are fewer than one optimizer step's "
                f"{cfg.batch_size * procs * cfg.gradient_accumulation_steps} examples"
            )
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        # The LR schedule: this run's steps, or a stretch of a longer one (lr_schedule_steps/start).
        self.schedule_steps = cfg.lr_schedule_steps or self.total_steps
        self.warmup_steps = warmup_steps(cfg, self.schedule_steps)

        model = self.source.causal_lm(DTYPES[cfg.dtype])
        _disable_dropout(model)  # before LoRA: lora_dropout is the user's choice
        if cfg.lora_r:
            model = with_lora(model, cfg)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            keep_layer_inputs_unpadded(model)  # the same numbers; each layer's saved input without its padding
        model.config.use_cache = False
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(trainable, lr=cfg.lr)
        else:
            optimizer = torch.optim.AdamW(
                trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, **ADAMW_IMPL[cfg.optimizer_impl]
            )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _linear_warmup_decay(self.warmup_steps, self.schedule_steps, start=cfg.lr_schedule_start or 0)
        )
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            # No dataloader goes through prepare, so DeepSpeed cannot infer its micro-batch ("auto").
            # Not exercised here: accelerate runs DeepSpeed on GPUs only.
            ds_config = self.accelerator.state.deepspeed_plugin.deepspeed_config
            if ds_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
                ds_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        # A sharded model gathers its parameters in every forward, collectively: MC-PO's pass 1 must then
        # run as many forwards in every process (``score_pairs(lockstep=True)``), or they wait forever.
        self.lockstep = self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        process = self.accelerator.process_index
        generator = torch.Generator(device=self.accelerator.device).manual_seed(kernel_seed(cfg.seed, process))
        self.state = TrainerState(generator, METHODS[cfg.loss].initial_state)
        # the weights, and with the optimizer's moments: a disk with less free space cannot hold the model
        # (a checkpoint)
        self.model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        self.checkpoint_bytes = sum(
            p.numel() * p.element_size() * (1 + 2 * p.requires_grad) for p in model.parameters()
        )

        resume_dir = self._resume_dir()
        if resume_dir is not None:
            self._load_checkpoint(resume_dir)
        elif cfg.resume:
            self.accelerator.print(f"train: resume: no checkpoint in {self.work / CHECKPOINTS}; starting at step 0")
        self.resumed_from = resume_dir
        self.step0_diff: float | None = None
        if self.check_step0 and self.state.step == 0:
            self._step0()  # the last check: only then does the run write anything
        self._commit(resumed=resume_dir is not None)

    def _resume_dir(self) -> Path | None:
        """The checkpoint to continue from: ``resume_from`` if intact, else with ``resume`` the newest
        intact one in output_dir (a damaged newer one is named and skipped)."""
        cfg, acc = self.cfg, self.accelerator
        if cfg.resume_from:
            folder = Path(cfg.resume_from)
            if not (folder / "trainer_state.json").exists():
                raise ConfigError(f"resume_from: {folder} is not a checkpoint (no trainer_state.json)")
            try:
                read_state(folder)
            except CheckpointError as exc:
                raise CheckpointError(f"resume_from: {exc}") from None
            return folder
        if not cfg.resume:
            return None
        folder, skipped = newest_intact(self.work)
        for reason in skipped:
            acc.print(f"train: resume: a damaged checkpoint is skipped: {reason}")
        if folder is None and skipped:
            raise CheckpointError(
                f"resume: no intact checkpoint in {self.work / CHECKPOINTS} ({len(skipped)} damaged); "
                "overwrite: true trains the run again from the start"
            )
        if skipped:
            acc.print(f"train: resume: continuing from the previous intact checkpoint, {folder}")
        return folder

    def _load_checkpoint(self, folder: Path) -> None:
        """Model, optimizer, scheduler and RNGs (accelerate, weights-only), this process's kernel generator
        (safetensors) and the position (JSON); other settings than the checkpoint's are refused first."""
        from safetensors import SafetensorError

        info = read_state(folder)
        check_resumed_settings(info.get("config"), self.cfg, where=f"{folder}/trainer_state.json")
        check_pickles(folder)
        try:
            self.accelerator.load_state(str(folder))
        except pickle.UnpicklingError as exc:  # check_pickles read the same files: only a file changed since
            raise CheckpointError(f"{folder}: holds a pickle that cannot be loaded safely ({exc})") from None
        except SafetensorError as exc:  # its record matched: a file made to pass the check
            raise CheckpointError(f"{folder}: model.safetensors is not a safetensors file ({exc})") from None
        load_generator(folder, self.accelerator.process_index, self.state.generator)
        self.state.restore(info)

    def _commit(self, *, resumed: bool) -> None:
        """Every check has passed: make the output folder, ``train_run.json``, metrics, trackers."""
        cfg, acc = self.cfg, self.accelerator
        with writing(self.work):
            if acc.is_main_process:
                start_folder(self.folder, run_identity(cfg))
            acc.wait_for_everyone()
            # Only the main process writes metrics.jsonl; another one truncating it would race with the writes.
            self.log = (
                MetricsLog(self.work / "metrics.jsonl", resume_step=self.state.step if resumed else None)
                if acc.is_main_process
                else None
            )
            if cfg.report_to:
                # A resumed run hides the events past its checkpoint, as MetricsLog drops those lines.
                tensorboard = {"purge_step": self.state.step + 1} if resumed else {}
                wandb = {"dir": str(self.work), "mode": os.environ.get("WANDB_MODE", "offline")}
                acc.init_trackers(
                    cfg.tracker_project, config=_hparams(cfg), init_kwargs={"tensorboard": tensorboard, "wandb": wandb}
                )

    # -- one optimizer step -------------------------------------------------------------------------

    def _next_batch(self):
        cfg = self.cfg
        if self.state.micro >= self.steps_per_epoch * cfg.gradient_accumulation_steps:
            self.state.epoch, self.state.micro = self.state.epoch + 1, 0
        examples = self._micro_batch(self.state.epoch, self.state.micro)
        self.state.micro += 1
        return collate(self.kind, examples)

    def _micro_batch(self, epoch: int, micro: int):
        """This process's rows of micro-batch ``micro`` of ``epoch`` (length-grouped per optimizer step
        when ``group_by_length``)."""
        cfg, acc = self.cfg, self.accelerator
        step_rows = cfg.batch_size * acc.num_processes * cfg.gradient_accumulation_steps
        return self.table.micro_batch(
            cfg.seed,
            epoch,
            micro,
            batch_size=cfg.batch_size,
            process=acc.process_index,
            num_processes=acc.num_processes,
            group_rows=step_rows if cfg.group_by_length else None,
        )

    def _step0(self) -> None:
        """Compare the policy's log-probs on the first micro-batch with the cached reference values.

        The batch is the one the first optimizer step will take (epoch 0, micro-batch 0); it is scored
        here without gradient, before anything is written. Every process checks its rows and they agree
        on the largest difference, so all stop or none does.
        """
        cfg, acc = self.cfg, self.accelerator
        examples = self._micro_batch(0, 0)
        with torch.no_grad():
            diff = step0_difference(self.model, collate(self.kind, examples), cfg, pad_token_id=self.pad)
        _reshard(self.model)
        diff = float(acc.gather(torch.tensor([diff], dtype=torch.float64, device=acc.device)).max())
        self.step0_diff = diff
        acc.print(f"train: step-0 max |policy - cached reference| log-prob = {diff:.3g} nats")
        check_step0(
            diff,
            cfg.step0_tolerance,
            data=cfg.data,
            model=cfg.model,
            engine=self.cache.get("engine"),
            hint="(Under bf16/fp16 raise step0_tolerance; for a reference other than the initial policy set "
            "reference_is_policy_init: false.)",
        )

    def _optimizer_step(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        start, tokens = time.perf_counter(), 0
        losses, metrics = [], {}
        for k in range(cfg.gradient_accumulation_steps):
            batch = self._next_batch()
            last = k == cfg.gradient_accumulation_steps - 1
            with nullcontext() if last else acc.no_sync(self.model):
                out = batch_loss(
                    self.model,
                    batch,
                    cfg,
                    pad_token_id=self.pad,
                    generator=self.state.generator,
                    lockstep=self.lockstep,
                    method_state=self.state.method_state,
                )
                # sum / batch_size here; accelerate divides by the accumulation steps, DDP averages processes.
                acc.backward(out.loss.sum() / cfg.batch_size)
            tokens += sum(len(p) + len(c) for p, c in self.spec.scored(batch))
            losses.append(out.loss.detach())
            for name, value in out.metrics.items():
                metrics.setdefault(name, []).append(value.detach())
        grad_norm = None
        if cfg.max_grad_norm is not None:
            grad_norm = float(acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        seconds = time.perf_counter() - start
        gathered = {k: acc.gather(torch.cat(v)) for k, v in metrics.items()}
        record = {
            "step": self.state.step,
            "epoch": self.state.epoch,
            "lr": lr,
            **reduce_step(acc.gather(torch.cat(losses)), gathered),
            "grad_norm": grad_norm,
            "tokens_per_s": tokens * acc.num_processes / seconds,
            "peak_memory_mb": peak_memory_mb(acc.device),
        }
        if self.state.step == 1 and self.step0_diff is not None:
            record["step0_max_abs_diff"] = self.step0_diff
        return record

    # -- checkpoints ----------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-N`` (every process); a full disk is an ``OutputError`` saying so."""
        folder = self.work / CHECKPOINTS / f"step-{self.state.step}"
        with full_disk_reported(folder, self.checkpoint_bytes):
            self._write_checkpoint(folder)
        return folder

    def _write_checkpoint(self, folder: Path) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)  # a step-N left by an earlier attempt is stale
        acc.wait_for_everyone()
        acc.save_state(str(folder))
        save_generator(folder, acc.process_index, self.state.generator)
        acc.wait_for_everyone()  # every process's files are written: the main process records them
        if acc.is_main_process:
            info = {**self.state.position(), "total_steps": self.total_steps, "config": asdict(self.cfg)}
            write_state(folder, info)  # last, atomic: it marks the checkpoint complete
            self._prune_checkpoints()

    def _prune_checkpoints(self) -> None:
        limit = self.cfg.save_total_limit
        if not limit:
            return
        found = sorted((self.work / CHECKPOINTS).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in found[:-limit]:
            shutil.rmtree(old)

    # -- the loop -------------------------------------------------------------------------------------

    def run(self, *, stop_after: int | None = None) -> dict:
        """Train to ``total_steps`` (or stop after optimizer step ``stop_after``: an interruption, for
        tests); write the final model, tokenizer and model card when training is complete."""
        cfg, acc = self.cfg, self.accelerator
        start, records = time.perf_counter(), []
        until = self.total_steps if stop_after is None else min(stop_after, self.total_steps)
        # Only the main process reports; None (auto) elsewhere would print one bar or line per process.
        shown = cfg.progress if acc.is_main_process else False
        with (
            writing(self.work),
            progress("train", until, enabled=shown, unit="steps", initial=self.state.step) as advance,
        ):
            while self.state.step < until:
                record = self._optimizer_step()
                if not math.isfinite(record["loss"]):
                    raise FloatingPointError(f"step {self.state.step}: loss is {record['loss']}")
                records.append(record)
                if acc.is_main_process and (self.state.step % cfg.logging_steps == 0 or self.state.step == until):
                    self.log.write(record)
                    if cfg.report_to:
                        acc.log(tracker_scalars(record), step=self.state.step)
                if cfg.save_steps and self.state.step % cfg.save_steps == 0:
                    self.save_checkpoint()
                advance(1)
        if cfg.report_to:
            acc.end_training()  # flushes and closes the event files / wandb run
        summary = {
            "output_dir": str(self.out),
            "table_kind": self.kind,
            "loss_name": cfg.loss,
            "rows": len(self.table),
            "steps": self.state.step,
            "total_steps": self.total_steps,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "step0_max_abs_diff": self.step0_diff,
            "losses": [r["loss"] for r in records],
            "first_loss": records[0]["loss"] if records else None,
            "final_loss": records[-1]["loss"] if records else None,
            "seconds": time.perf_counter() - start,
        }
        if self.resumed_from is not None and acc.is_main_process:
            # A resumed run: the whole run's first and final loss and its step-0 check are in metrics.jsonl
            # (``losses`` stays this invocation's), so the card of a run resumed at its end is complete.
            logged = read_metrics(self.work / "metrics.jsonl")
            if logged:
                summary["first_loss"], summary["final_loss"] = logged[0]["loss"], logged[-1]["loss"]
                summary["step0_max_abs_diff"] = logged[0].get("step0_max_abs_diff")
        if self.state.step >= self.total_steps:
            with writing(self.work):
                self._save_final(summary)
        return summary

    def _save_final(self, summary: dict) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if self.cfg.save_steps and self.state.step % self.cfg.save_steps:
            self.save_checkpoint()  # every process: each saves its own RNG state
        # Every process: under FSDP (or DeepSpeed ZeRO-3) each holds a shard and the full weights are
        # gathered collectively onto the main process; with one process or DDP this is the unwrapped
        # model's own state_dict.
        weights = acc.get_state_dict(self.model)
        if not acc.is_main_process:
            return
        with full_disk_reported(self.work, self.model_bytes):
            acc.unwrap_model(self.model).save_pretrained(self.work, state_dict=weights)
        self.tokenizer.save_pretrained(self.work)
        write_text(self.work / "README.md", redact_text(model_card(self.cfg, self.data, summary, self.cache)))
        write_json(self.work / SUMMARY_NAME, summary)  # last, atomic: online treats its presence as "trained"
        swap_in(self.folder)
        self.work = self.out


@writes_folder(lambda a: a["cfg"].output_dir, command="train")
def train(cfg: TrainConfig) -> dict:
    """Train a policy as ``cfg`` says; return the run's summary (also in ``output_dir/train_summary.json``).

    A finished run of the same settings in ``output_dir`` is not trained again: its stored summary is
    returned with ``"status": "done earlier"`` and nothing is written.
    """
    cfg.check()
    folder = plan_run_folder(cfg)
    if folder.finished is not None:
        return {**folder.finished, "status": "done earlier"}
    return Trainer(cfg).run()
