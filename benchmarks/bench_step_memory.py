"""A training step's memory and time by phase and owner, measured, beside the floor the step must hold.

Run:

    MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072 \\
      .venv/bin/python benchmarks/bench_step_memory.py --real        # SmolLM2-135M, UltraFeedback, T <= 1,024
    .venv/bin/python benchmarks/bench_step_memory.py                 # a random small Llama, synthetic pairs

Optional: ``--variants default,padded-inputs,fused,foreach,packed --steps 2 --batch 4 --max-length 1024 --rows 16``.

Each variant runs ``prefpool.train.Trainer`` (DPO on the table's cached reference log-probs, AdamW, gradient
checkpointing on, float32, CPU) in a fresh subprocess, with its phases wrapped (nothing else changes):

- ``load``: ``ModelSource.causal_lm`` (model load) — its peak above what it keeps (a second copy while
  loading shows here; safetensors are mapped lazily, so what it keeps is not yet the weights: those are
  counted as parameter bytes);
- ``init``: the rest of ``Trainer(...)``: table tokenization, optimizer and scheduler set-up, the step-0
  check's no-grad forward;
- each optimizer step's ``forward`` (``objective.batch_loss``), ``backward`` (``Accelerator.backward``),
  ``optimizer`` (``optimizer.step``) and ``zero_grad``; for each, the resident memory it keeps
  (``held``, RSS after minus before) and its peak above what it started with (``peak``), read from
  ``VmHWM`` after ``clear_refs``, and its seconds.

The owners are read off those phases: weights = the parameters' bytes; held activations = what the forward
keeps; gradients = what ``zero_grad`` frees; optimizer state = what the first ``optimizer.step`` keeps;
optimizer temporaries = its peak above what it keeps; backward working set = the backward's peak above
the larger of its start and end (the recompute working set and the log-prob head's tiles). The floor
beside them is ``prefpool train --estimate-memory``'s for the same config, of its largest micro-batch
(``train/memory_floor.py``), and ``peak`` is the run's highest RSS above the process's RSS after imports.

Time: the step's model FLOPs (6 x parameters x trained tokens, plus attention 12 x layers x hidden x
sum(T^2) for the causal half) over its seconds, against the machine's float32 matmul throughput
(a 2048^3 ``torch.mm``, best of 10, measured by every child before and after its steps; the best of all
is the rate) — the model FLOPs utilization (MFU). Gradient checkpointing recomputes the forward (8x
instead of 6x parameters x tokens of work done) and a padded batch computes every padding position;
MFU counts neither, by its definition; "work done" counts both. The step's seconds are split by phase:
the data (``_next_batch``), the forward in the decoder layers and outside them (embedding, log-prob
head, loss), the recompute (the layers' checkpointed functions run again inside the backward), the
rest of the backward, clipping, the optimizer step, ``zero_grad``, and what none covers ("other").

The glibc malloc settings in the command make freed blocks go back to the kernel at once, so resident
memory follows live memory; without them the figures include what malloc keeps cached.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from harness import dispatch, emit, run_child, small_llama, timed
from peak_memory import reset_peak, status_kib

VARIANTS = {
    "default": {},
    "padded-inputs": {},  # default, with each checkpointed layer input kept with its padding (the cut undone)
    "foreach": {"optimizer_impl": "foreach"},
    "fused": {"optimizer_impl": "fused"},
    "packed": {"packing": "on"},
}
MIB = 1024


def _rss() -> float:
    return status_kib("VmRSS") / MIB


def _hwm() -> float:
    return status_kib("VmHWM") / MIB


class Phases:
    """Wraps callables so that each call records (name, held MiB, peak MiB above start, seconds)."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.run_peak = 0.0

    def wrap(self, name: str, fn):
        def measured(*args, **kwargs):
            self.run_peak = max(self.run_peak, _hwm())
            before = _rss()
            reset_peak()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            seconds = time.perf_counter() - start
            peak, after = _hwm(), _rss()
            self.run_peak = max(self.run_peak, peak)
            self.records.append(
                {"phase": name, "held": after - before, "peak": peak - before, "after": after, "s": seconds}
            )
            return out

        return measured

    def of(self, name: str) -> list[dict]:
        return [r for r in self.records if r["phase"] == name]


def matmul_flops(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(10))
    return 2 * 2048**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def child(args) -> None:
    import torch

    import prefpool.pipeline.model.source as source_module
    import prefpool.train.trainer as trainer_module
    from prefpool.train.config import TrainConfig
    from prefpool.train.memory_estimate import estimate_memory

    torch.set_num_threads(args.threads)
    options = VARIANTS[args.variant]
    if args.variant == "padded-inputs":
        trainer_module.keep_layer_inputs_unpadded = lambda model: None
    settings = dict(
        model=args.model_dir,
        data=args.data,
        output_dir=str(Path(args.work) / args.variant),
        loss="dpo",
        beta=0.1,
        lr=1e-6,
        batch_size=args.batch,
        max_steps=args.steps,
        gradient_checkpointing=True,
        weight_decay=0.0,
        warmup_steps=0,
        max_grad_norm=1.0,
        progress=False,
        **options,
    )
    cfg = TrainConfig(**settings)
    estimate = estimate_memory(cfg)
    phases = Phases()
    source_module.ModelSource.causal_lm = phases.wrap("load", source_module.ModelSource.causal_lm)
    trainer_module.batch_loss = phases.wrap("forward", trainer_module.batch_loss)
    matmul_before = matmul_flops(args.threads)
    start_rss = _rss()
    reset_peak()
    trainer = phases.wrap("init", trainer_module.Trainer)(cfg)
    layer_seconds = time_layers(trainer.model)
    backward = trainer.accelerator.backward

    def backward_marked(*a, **kw):  # a decoder layer called inside the backward is a recompute
        layer_seconds["in backward"] = True
        try:
            return backward(*a, **kw)
        finally:
            layer_seconds["in backward"] = False

    trainer.accelerator.backward = phases.wrap("backward", backward_marked)
    trainer.accelerator.clip_grad_norm_ = phases.wrap("clip", trainer.accelerator.clip_grad_norm_)
    next_batch, trained = trainer._next_batch, []

    def next_batch_counted():  # each micro-batch's sequence lengths, as the step scores them
        batch = next_batch()
        trained.append([len(p) + len(c) for p, c in trainer.spec.scored(batch)])
        return batch

    trainer._next_batch = phases.wrap("data", next_batch_counted)
    trainer.optimizer.step = phases.wrap("optimizer", trainer.optimizer.step)
    trainer.optimizer.zero_grad = phases.wrap("zero_grad", trainer.optimizer.zero_grad)
    step_s = []
    step = trainer._optimizer_step

    def timed_step():
        t0 = time.perf_counter()
        record = step()
        step_s.append(time.perf_counter() - t0)
        return record

    trainer._optimizer_step = timed_step
    trainer.run()
    emit(
        {
            "records": phases.records,
            "start_rss": start_rss,
            "run_peak": max(phases.run_peak, _hwm()) - start_rss,
            "floor": estimate.largest.parts,
            "floor_total": estimate.largest.total,
            "weight_mib": sum(p.numel() * p.element_size() for p in trainer.model.parameters()) / 2**20,
            "parameters": estimate.parameters,
            "step_s": step_s,
            "layer_s": {"forward": layer_seconds["forward"], "recompute": layer_seconds["recompute"]},
            "micro_batches": trained,
            "packed": cfg.packing == "on",
            "matmul_flops": max(matmul_before, matmul_flops(args.threads)),  # before and after the steps
            "load": os.getloadavg()[0],
        }
    )


def time_layers(model) -> dict:
    """Seconds spent in the checkpointed decoder layers, split by whether a backward is running (the
    recompute) or not (the forward); the caller sets ``["in backward"]``. The function each layer hands to
    its checkpoint is timed: the checkpoint calls it in the forward and again in the backward, where torch
    stops it early by raising once the saved tensors are rebuilt. Timing only: CPU calls are synchronous."""
    seconds = {"forward": [], "recompute": [], "in backward": False}

    def record(spent: float) -> None:  # timed also when the recompute stops early by raising
        seconds["recompute" if seconds["in backward"] else "forward"].append(spent)

    def timing(checkpoint):
        return lambda function, *args, **kwargs: checkpoint(timed(function, record), *args, **kwargs)

    for module in model.modules():
        checkpoint = getattr(module, "_gradient_checkpointing_func", None)
        if getattr(module, "gradient_checkpointing", False) and checkpoint is not None:
            module._gradient_checkpointing_func = timing(checkpoint)
    return seconds


def owners(result: dict) -> dict[str, float]:
    """MiB by owner, read off the phases (see the module docstring)."""
    load = result["records"][0] if result["records"][0]["phase"] == "load" else None
    ph = {name: [r for r in result["records"] if r["phase"] == name] for name in ("init", "forward", "backward")}
    opt = [r for r in result["records"] if r["phase"] == "optimizer"]
    zero = [r for r in result["records"] if r["phase"] == "zero_grad"]
    fwd, bwd = ph["forward"], ph["backward"]
    return {
        "weights (parameter bytes)": result["weight_mib"],
        "model load: its peak above what it keeps": (load["peak"] - load["held"]) if load else float("nan"),
        "gradients": -zero[-1]["held"],
        "optimizer state": opt[0]["held"],
        "optimizer-step temporaries": max(r["peak"] - max(r["held"], 0) for r in opt),
        "activations held after forward": max(r["held"] for r in fwd[1:] or fwd),
        "forward peak above its end": max(r["peak"] - r["held"] for r in fwd[1:] or fwd),
        "backward working set": max(r["peak"] - max(r["held"], 0) for r in bwd[1:] or bwd),
    }


FLOOR_OF = {
    "weights (parameter bytes)": "weights",
    "gradients": "gradients",
    "optimizer state": "optimizer state",
    "activations held after forward": "checkpointed activations",
    "backward working set": "layer working set",
}


def mfu(result: dict, model: Path, steps: int, rate: float) -> tuple[float, float, float]:
    """(model FLOPs utilization, tokens/s, hardware FLOPs utilization) of the timed steps (all but the first),
    against ``rate``, the machine's float32 matmul FLOP/s.

    MFU counts the model's FLOPs on the real tokens (6 x parameters, plus causal attention). The hardware
    figure counts the work the step does: the forward twice (checkpointing's recompute: 8 x parameters) and
    every position of the padded micro-batch (each padded to its longest sequence); packed, the one row's
    positions, with attention over all of it (the CPU kernels apply the block-diagonal mask, not skip it)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model))
    per_step = len(result["micro_batches"]) // steps
    attention = 12 * config.num_hidden_layers * config.hidden_size / 2
    flops, work, seconds, tokens = 0.0, 0.0, 0.0, 0
    for k in range(1, steps):
        for lengths in result["micro_batches"][k * per_step : (k + 1) * per_step]:
            flops += 6 * result["parameters"] * sum(lengths) + attention * sum(t * t for t in lengths)
            if result["packed"]:  # one row; sdpa/eager attend over all of it under a block-diagonal mask
                positions, squares = sum(lengths), sum(lengths) ** 2
            else:
                positions, squares = len(lengths) * max(lengths), len(lengths) * max(lengths) ** 2
            work += 8 * result["parameters"] * positions + 4 / 3 * attention * squares
            tokens += sum(lengths)
        seconds += result["step_s"][k]
    return flops / seconds / rate, tokens / seconds, work / seconds / rate


def time_breakdown(runs: list[dict], steps: int) -> str:
    """Seconds per timed step (all but the first) by phase, the recompute apart from the rest of the backward,
    and what no phase covers (logging, the scheduler, metrics); load and init (the step-0 check) once."""
    once = {
        k: statistics.mean(sum(x["s"] for x in r["records"] if x["phase"] == k) for r in runs) for k in ("load", "init")
    }
    per_step: dict[str, list[float]] = {}
    for r in runs:
        per_call = {k: [x["s"] for x in r["records"] if x["phase"] == k] for k in PHASES}
        calls = {k: len(v) // steps for k, v in per_call.items()}  # calls per step (accumulation)
        timed = {k: sum(v[calls[k] :]) / (steps - 1) for k, v in per_call.items()}  # the first step's calls apart
        layers = r["layer_s"]
        recompute = sum(layers["recompute"][len(layers["recompute"]) // steps :]) / (steps - 1)
        in_layers = sum(layers["forward"][len(layers["forward"]) // steps :]) / (steps - 1)
        timed["forward (the rest: embedding, log-prob head, loss)"] = timed.pop("forward") - in_layers
        timed["forward (decoder layers)"] = in_layers
        timed["backward (the rest)"] = timed.pop("backward") - recompute
        timed["recompute (in the backward)"] = recompute
        step = statistics.mean(r["step_s"][1:])
        timed["other"] = step - sum(timed.values())
        timed["step"] = step
        for k, v in timed.items():
            per_step.setdefault(k, []).append(v)
    step = statistics.median(per_step.pop("step"))
    order = ["data", "forward (decoder layers)", "forward (the rest: embedding, log-prob head, loss)"]
    order += ["recompute (in the backward)", "backward (the rest)", "clip", "optimizer", "zero_grad", "other"]
    per_step = {k: per_step[k] for k in order}
    shown = ", ".join(
        f"{k} {statistics.median(v):.2f} s ({statistics.median(v) / step:.0%})" for k, v in per_step.items()
    )
    once_shown = f"load {once['load']:.2f} s, init (tokenizing, step-0 check) {once['init']:.2f} s"
    return f"seconds a step: {step:.2f}: {shown}; once: {once_shown}"


PHASES = ("data", "forward", "backward", "clip", "optimizer", "zero_grad")


def parent(args) -> None:
    from prefpool.pipeline.build import build  # noqa: F401  (fail early if prefpool is missing)

    work = Path(tempfile.mkdtemp(prefix="bench-step-memory-"))
    if args.real:
        from bench_trainer_vs_trl import make_real_table, real_model

        model = real_model(args.model_cache.expanduser())
        if model is None:
            raise SystemExit("SmolLM2 is not available here (see bench_trainer_vs_trl --real)")
        data = make_real_table(work / "data", model, args.rows, args.max_length)
        what = f"SmolLM2-135M-Instruct, {args.rows} UltraFeedback pairs, max_length {args.max_length}"
    else:
        from bench_trainer_vs_trl import make_table

        model = small_llama(work / "model", vocab=8192, hidden=256, layers=4)
        data = make_table(work / "data", model, args.rows, (40, 90), args.max_length)
        what = f"random Llama (hidden 256, 4 layers, vocab 8192), {args.rows} synthetic pairs"
    env = dict(os.environ)
    results = {}
    for variant in args.variants.split(","):
        runs = [
            run_child(
                __file__,
                env=env,
                variant=variant,
                model_dir=model,
                data=data,
                work=work,
                steps=args.steps,
                batch=args.batch,
                threads=args.threads,
            )
            for _ in range(args.repeats)
        ]
        results[variant] = runs
    print(
        f"\n{what}; DPO, AdamW, float32, gradient checkpointing, batch {args.batch} pairs, CPU, "
        f"{args.threads} thread(s), {args.steps} steps (the first is not timed), {args.repeats} run(s) each; "
        "memory: RSS at phase boundaries, VmHWM after clear_refs"
    )
    malloc = {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    print(f"malloc settings: {malloc}")
    base = results[args.variants.split(",")[0]][0]
    floor = {k: v / 2**20 for k, v in base["floor"].items()}
    print("\nfloor of the largest micro-batch (train --estimate-memory):")
    for name, mib in floor.items():
        print(f"  {name:<28} {mib:>9,.0f} MiB")
    floor_total = base["floor_total"] / 2**20
    print(f"  {'floor':<28} {floor_total:>9,.0f} MiB (layer working set and log-prob head: the larger)")
    # The machine's matmul rate: the best any child measured (each measures before and after its steps).
    peak_rate = max(r["matmul_flops"] for runs in results.values() for r in runs)
    print(f"float32 matmul (2048^3), the best of every measurement in this run: {peak_rate / 1e9:.0f} GFLOP/s")
    for variant, runs in results.items():
        print(f"\n{variant}: owners (MiB, median of {len(runs)}), measured | floor")
        table = [owners(r) for r in runs]
        for name in table[0]:
            value = statistics.median(t[name] for t in table)
            ref = FLOOR_OF.get(name)
            beside = f"{floor[ref]:>9,.0f}" if ref else "        -"
            print(f"  {name:<34} {value:>9,.0f} | {beside}")
        peaks = [r["run_peak"] for r in runs]
        utilization = [mfu(r, model, args.steps, peak_rate) for r in runs]
        print(
            f"  peak above imports: {statistics.median(peaks):,.0f} MiB "
            f"(runs: {', '.join(f'{p:,.0f}' for p in peaks)}); {statistics.median(peaks) / floor_total:.2f}x "
            f"the floor"
        )
        print("  " + time_breakdown(runs, args.steps))
        print(
            f"  MFU {statistics.median(u[0] for u in utilization):.1%} of the {peak_rate / 1e9:.0f} GFLOP/s matmul; "
            f"{statistics.median(u[1] for u in utilization):,.0f} tokens/s; work done (recompute and padding "
            f"counted) {statistics.median(u[2] for u in utilization):.1%}; load average at end "
            + ", ".join(f"{r['load']:.1f}" for r in runs)
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="SmolLM2-135M-Instruct and UltraFeedback pairs")
    parser.add_argument("--model-cache", type=Path, default=Path("~/.cache/prefpool-bench"))
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variants", default="default")
    parser.add_argument("--json", help="also write every run's records here")
    parser.add_argument("--variant", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    dispatch(parser, parent, child)


if __name__ == "__main__":
    main()
