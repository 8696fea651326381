"""`prefpool train` (DPO on cached reference log-probs) against TRL's DPOTrainer: peak memory, steps/s.

Run:

    .venv/bin/python benchmarks/bench_trainer_vs_trl.py                  # a random small Llama, synthetic pairs
    .venv/bin/python benchmarks/bench_trainer_vs_trl.py --real --steps 2 --repeats 2   # SmolLM2-135M, UltraFeedback

Optional: ``--steps 6 --batch 4 --hidden 256 --layers 4 --vocab 8192 --words 40,90 --max-length 512
--repeats 1 --variants prefpool,prefpool-logits,trl-ref-model,trl-precompute``.

``--real``: SmolLM2-135M-Instruct with its real weights (``../shared/tools/get-smollm2`` fetches the
GGUF, ``experiments/real_data/common.py: prepare_model`` converts it to a float32 folder, kept in
``--model-cache``; without them the benchmark says so and stops) and the first UltraFeedback pairs of
``../shared/data/ultrafeedback/train_clean.jsonl`` whose chat-rendered prompt is at most 256 tokens
(answers distinct), ``--max-length`` 1024 (answers cut at the tail to fit, both sides alike).

Variants (each in a fresh subprocess, same model folder, same pairs, same settings):

- ``prefpool``: ``prefpool.train.Trainer`` on a ``build --kind pairwise`` table; the reference
  enters only as the table's cached ``ref_chosen_logps``/``ref_rejected_logps``; no reference model.
  Log-probs from the hidden states (the LM head in tiles over completion positions, no logits).
- ``prefpool-fused``: the same with ``optimizer_impl: fused`` (AdamW without step temporaries; the
  memory choice, see "A training step against its memory floor" in BENCHMARKS.md).
- ``prefpool-logits``: the same with ``logprobs_from: logits`` (the model's full logits, the path
  before issue 14), for reference.
- ``trl-ref-model``: TRL's ``DPOTrainer`` with its default reference: a second copy of the model,
  loaded by TRL and run forward (no grad) in every training step.
- ``trl-precompute``: ``DPOTrainer(precompute_ref_log_probs=True)``: TRL runs its own reference pass
  over the whole dataset in ``__init__`` (with the policy, before training; no second model),
  then trains from those numbers. That pass is timed on its own (``precompute s``).

TRL 1.16 cannot train from prefpool's cached values directly: it reads ``ref_chosen_logps`` /
``ref_rejected_logps`` only on the ``precompute_ref_log_probs=True`` path, and that path always
recomputes them (``_precompute_ref_logps``, unless a ``datasets`` cache file from an earlier run
exists) and appends them as new columns. So TRL gets the table's ``prompt``/``chosen``/``rejected``
columns (conversational, TRL's names) and the ref columns are dropped; the precompute pass is the
price TRL pays once per run, which prefpool's ``logprobs`` stage pays once per table.

Setup shared by all variants: a randomly initialised Llama built locally (``build_tiny_llama``,
head_dim 64, float32, CPU); a pairwise table made by the real stages (ingest -> logprobs -> build)
from synthetic prompts with a chosen and a rejected answer of ``--words`` words each (max_length
512, nothing is truncated); loss sigmoid DPO, beta 0.1; AdamW (torch, not fused) lr 1e-6, weight
decay 0, linear decay, no warmup; grad-norm clip 1.0; no dropout; batch ``--batch`` pairs, one
process, no accumulation; gradient checkpointing (non-reentrant) on both sides with ``--real``
(TRL's ``DPOConfig`` default), off otherwise (``--[no-]gradient-checkpointing``). Each runs
``--steps + 1`` optimizer steps; the first is a warm-up, steps/s is over the other ``--steps``
(wall time between the ends of step 1 and of the last step, read by a callback / wrapper;
logging included, checkpoints off).
The ``tokens/pair`` column (prompt counted for chosen and rejected, as both forwards see it) checks
that both tokenizations give the same work.

With ``--repeats N`` each variant runs N times, interleaved (A B C A B C), and the table gives
medians; every run is listed with the 1-minute load average read when it ended (``/proc/loadavg``:
the machine is shared, so the load says how much to trust a timing).

Memory (``peak_memory.PeakMemory``, resident memory as the kernel counts it): the window opens
after the imports and closes after training, so it holds everything the run adds: model load
(TRL's second model included), tokenization, TRL's precompute pass, optimizer state, activations.
``peak extra MiB`` is ``VmHWM - VmRSS at window start``. Holding a second model is the point of
the comparison, so it is in the window by design.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from harness import dispatch, emit, run_child, small_llama
from peak_memory import PeakMemory

VARIANTS = ("prefpool", "prefpool-fused", "prefpool-logits", "trl-ref-model", "trl-precompute")
DEFAULT_VARIANTS = "prefpool,trl-ref-model,trl-precompute"
LR, BETA = 1e-6, 0.1
REPO = Path(__file__).resolve().parents[1]
ULTRAFEEDBACK = REPO.parent / "shared" / "data" / "ultrafeedback" / "train_clean.jsonl"
MAX_PROMPT_TOKENS = 256


def _table_from(root: Path, model: Path, source: Path, fmt: str, max_length: int) -> Path:
    """ingest -> logprobs (the reference) -> build pairwise: the real stages."""
    from prefpool.pipeline.build import build
    from prefpool.pipeline.ingest import ingest
    from prefpool.pipeline.logprobs import logprobs

    ingest(source, format=fmt, out=root / "examples")
    logprobs(root / "examples", model=model, out=root / "lp", max_length=max_length, show_progress=False)
    return build("pairwise", examples=root / "examples", logprobs=root / "lp", out=root / "pairwise").out


def real_model(cache: Path) -> Path | None:
    """SmolLM2-135M-Instruct as a float32 folder (``prepare_model``), or None where it cannot be had."""
    import importlib.util

    path = REPO / "experiments" / "real_data" / "common.py"
    spec = importlib.util.spec_from_file_location("real_data_common", path)
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    if not common.GET_SMOLLM2.exists():
        return None
    try:
        return common.prepare_model(cache)
    except (subprocess.CalledProcessError, OSError, ImportError) as exc:  # no network / no gguf package
        print(f"SmolLM2 unavailable: {exc}")
        return None


def make_real_table(root: Path, model: Path, rows: int, max_length: int) -> Path:
    """The first ``rows`` UltraFeedback pairs (file order) with distinct answers and a chat-rendered
    prompt of at most ``MAX_PROMPT_TOKENS`` tokens, as a pairwise table."""
    from transformers import AutoTokenizer

    from prefpool.pipeline.io.ids import normalize_messages
    from prefpool.pipeline.model.tokenize import chat_ids

    tok = AutoTokenizer.from_pretrained(str(model))
    keep = []
    for line in ULTRAFEEDBACK.read_text().splitlines():
        r = json.loads(line)
        prompt = chat_ids(tok, normalize_messages(r["prompt"]), add_generation_prompt=True)
        if r["chosen"].strip() != r["rejected"].strip() and len(prompt) <= MAX_PROMPT_TOKENS:
            keep.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]})
        if len(keep) == rows:
            break
    root.mkdir(parents=True, exist_ok=True)
    src = root / "pairs.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))
    return _table_from(root, model, src, "pairwise", max_length)


def make_table(root: Path, model: Path, rows: int, words: tuple[int, int], max_length: int) -> Path:
    """A pairwise table of synthetic pairs through the real stages: ingest -> logprobs -> build."""
    from prefpool.testing import default_corpus

    root.mkdir(parents=True, exist_ok=True)
    vocab = sorted({w for text in default_corpus() for w in text.split()})
    rng = random.Random(0)

    def text(n: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(n))

    lines = []
    for i in range(rows):
        answers = [{"text": text(rng.randint(*words)), "rank": r} for r in (1, 2)]
        lines.append({"prompt": f"Question {i}: {text(20)}?", "answers": answers})
    src = root / "pairs.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return _table_from(root, model, src, "ranked", max_length)


# -- children ---------------------------------------------------------------------------------------


def run_prefpool(args, memory_window) -> dict:
    from prefpool.train.config import TrainConfig
    from prefpool.train.memory_estimate import estimate_memory
    from prefpool.train.trainer import Trainer

    ends = []
    with memory_window:
        cfg = TrainConfig(
            model=args.model_dir,
            data=args.data,
            output_dir=str(Path(args.work) / "prefpool"),
            loss="dpo",
            beta=BETA,
            lr=LR,
            batch_size=args.batch,
            max_steps=args.steps + 1,
            max_length=args.max_length,
            logprobs_from="logits" if args.variant == "prefpool-logits" else "auto",
            gradient_checkpointing=bool(args.gradient_checkpointing),
            optimizer="adamw",
            weight_decay=0.0,
            warmup_steps=0,
            max_grad_norm=1.0,
            optimizer_impl="fused" if args.variant == "prefpool-fused" else "auto",
            progress=False,
        )
        trainer = Trainer(cfg)
        step = trainer._optimizer_step

        def timed_step():  # records when each optimizer step ends; nothing else changes
            record = step()
            ends.append(time.perf_counter())
            return record

        trainer._optimizer_step = timed_step
        trainer.run()
    seen = trainer.table.examples[: (args.steps + 1) * args.batch]
    tokens = sum(len(p) + len(c) for ex in seen for p, c in ex.answers[:2]) / len(seen)
    # The floor of the step's largest micro-batch (``train --estimate-memory``), read after the window closes.
    floor_mib = estimate_memory(cfg).largest.total / 2**20
    return {"ends": ends, "tokens_per_pair": tokens, "precompute_s": None, "floor_mib": floor_mib}


def run_trl(args, memory_window, precompute: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from prefpool.pipeline.io.read import read_table

    rows = read_table(args.data, schema="pairwise").select(["prompt", "chosen", "rejected"]).to_pylist()
    ends, precompute_s = [], []

    class StepEnds(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    original = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *a, **kw):
        start = time.perf_counter()
        out = original(self, *a, **kw)
        precompute_s.append(time.perf_counter() - start)
        return out

    DPOTrainer._precompute_ref_logps = timed_precompute  # timing only
    config = DPOConfig(
        output_dir=str(Path(args.work) / "trl"),
        use_cpu=True,
        bf16=False,
        seed=0,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_steps=args.steps + 1,
        learning_rate=LR,
        optim="adamw_torch",
        weight_decay=0.0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_grad_norm=1.0,
        beta=BETA,
        loss_type=["sigmoid"],
        max_length=args.max_length,
        gradient_checkpointing=bool(args.gradient_checkpointing),
        gradient_checkpointing_kwargs={"use_reentrant": False},  # as prefpool's
        disable_dropout=True,
        precompute_ref_log_probs=precompute,
        model_init_kwargs={"dtype": torch.float32},
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    with memory_window:
        trainer = DPOTrainer(
            model=args.model_dir, args=config, train_dataset=Dataset.from_list(rows), callbacks=[StepEnds()]
        )
        trainer.train()
    data = trainer.train_dataset
    seen = range(min(len(data), (args.steps + 1) * args.batch))
    tokens = sum(
        2 * len(data[i]["prompt_ids"]) + len(data[i]["chosen_ids"]) + len(data[i]["rejected_ids"]) for i in seen
    ) / len(seen)
    return {
        "ends": ends,
        "tokens_per_pair": tokens,
        "precompute_s": sum(precompute_s) if precompute else None,
        "ref_model": trainer.ref_model is not None,
    }


def child(args) -> None:
    # Every library either side needs is imported before the window opens, so the window measures
    # training, not imports: the trainer imports transformers and accelerate lazily (in Trainer.__init__),
    # which alone adds ~200 MiB, while `from trl import DPOTrainer` has already paid for them.
    import accelerate  # noqa: F401
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import prefpool.train.trainer  # noqa: F401

    if not args.variant.startswith("prefpool"):
        import trl  # noqa: F401
        from trl import DPOTrainer  # noqa: F401

    memory = PeakMemory()
    if args.variant.startswith("prefpool"):
        result = run_prefpool(args, memory)
    else:
        result = run_trl(args, memory, precompute=args.variant == "trl-precompute")
    ends = result.pop("ends")
    if len(ends) != args.steps + 1:
        raise SystemExit(f"{args.variant}: expected {args.steps + 1} optimizer steps, saw {len(ends)}")
    result.update(
        steps_per_s=args.steps / (ends[-1] - ends[0]),
        peak_extra_mib=memory.extra_mib,
        method=memory.method,
        threads=torch.get_num_threads(),
        load_1min=float(Path("/proc/loadavg").read_text().split()[0]),
    )
    emit(result)


# -- parent -----------------------------------------------------------------------------------------


def parent(args) -> None:
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; expected some of {', '.join(VARIANTS)}")
    words = tuple(int(w) for w in args.words.split(","))
    max_length = args.max_length or (1024 if args.real else 512)
    checkpointing = args.real if args.gradient_checkpointing is None else args.gradient_checkpointing
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        rows = (args.steps + 1) * args.batch
        if args.real:
            model_dir = real_model(args.model_cache.expanduser().resolve())
            if model_dir is None or not ULTRAFEEDBACK.exists():
                print(
                    "skipped: needs ../shared/tools/get-smollm2 (and the gguf package) and ../shared/data/ultrafeedback"
                )
                return
            data = make_real_table(root / "data", model_dir, rows, max_length)
            what = f"SmolLM2-135M-Instruct (real weights), UltraFeedback pairs (prompt <= {MAX_PROMPT_TOKENS} tokens)"
        else:
            model_dir = small_llama(
                root / "model", vocab=args.vocab, hidden=args.hidden, layers=args.layers, max_positions=max_length
            )
            data = make_table(root / "data", model_dir, rows, words, max_length)
            what = (
                f"Llama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; "
                f"answers {words[0]}-{words[1]} words"
            )
        setup_s = time.perf_counter() - start
        # TRL's precompute pass caches under HF_DATASETS_CACHE: a fresh folder, so it never hits a cache.
        env = {
            **os.environ,
            "HF_DATASETS_CACHE": str(root / "hf-datasets"),
            "TQDM_DISABLE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
        }
        for repeat in range(args.repeats):
            for variant in variants:
                runs[variant].append(
                    run_child(
                        __file__,
                        env=env,
                        variant=variant,
                        model_dir=model_dir,
                        data=data,
                        work=root / f"{variant}-{repeat}",
                        steps=args.steps,
                        batch=args.batch,
                        max_length=max_length,
                        gradient_checkpointing=checkpointing,
                    )
                )
                r = runs[variant][-1]
                print(
                    f"run {repeat + 1}/{args.repeats} {variant}: {r['peak_extra_mib']:.0f} MiB, "
                    f"{r['steps_per_s']:.4f} steps/s, load {r['load_1min']:.2f}",
                    flush=True,
                )

    def median(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[variant])

    base = variants[0]
    first = runs[base][0]
    print()
    print(
        f"{what}; float32, CPU, {first['threads']} thread(s); max_length {max_length}; gradient checkpointing "
        f"{'on' if checkpointing else 'off'} (both); DPO (sigmoid, beta {BETA}), "
        f"AdamW, batch {args.batch} pairs; {args.steps} timed steps after 1 warm-up step; medians of "
        f"{args.repeats} run(s) per variant; memory: {first['method']}, window = model load + setup + "
        f"training (after imports); table + model built in {setup_s:.0f} s"
    )
    print()
    print(
        f"{'variant':<16} {'ref model':>9} {'tokens/pair':>11} {'precompute s':>12} {'peak extra MiB':>14} "
        f"{'steps/s':>8} {'memory x':>9} {'speed x':>8} {'x floor':>8}"
    )
    for variant in variants:
        r = runs[variant][0]
        ref = "yes" if r.get("ref_model") else "no"
        pre = "-" if r["precompute_s"] is None else f"{median(variant, 'precompute_s'):.2f}"
        mem, speed = median(variant, "peak_extra_mib"), median(variant, "steps_per_s")
        floor = f"{mem / r['floor_mib']:.2f}" if r.get("floor_mib") else "-"
        print(
            f"{variant:<16} {ref:>9} {r['tokens_per_pair']:>11.1f} {pre:>12} {mem:>14.0f} "
            f"{speed:>8.4f} {mem / median(base, 'peak_extra_mib'):>9.2f} {speed / median(base, 'steps_per_s'):>8.2f} "
            f"{floor:>8}"
        )
    print()
    print(f"memory x = peak extra MiB / {base}'s; speed x = steps/s / {base}'s (below 1: slower).")
    floors = [r["floor_mib"] for v in variants for r in runs[v] if r.get("floor_mib")]
    if floors:
        print(
            f"x floor = peak extra MiB / the floor of the step's largest micro-batch ({max(floors):,.0f} MiB, "
            "train --estimate-memory; model load is in the window, not in the floor)."
        )
    print("runs (MiB, steps/s, 1-min load average at the end):")
    for variant in variants:
        listed = ", ".join(
            f"({r['peak_extra_mib']:.0f}, {r['steps_per_s']:.4f}, {r['load_1min']:.2f})" for r in runs[variant]
        )
        print(f"  {variant}: {listed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--words", default="40,90", help="answer length range in words")
    parser.add_argument("--real", action="store_true", help="SmolLM2-135M-Instruct and UltraFeedback pairs")
    parser.add_argument("--model-cache", type=Path, default=Path("~/.cache/prefpool-bench"), help="--real: model cache")
    parser.add_argument("--max-length", type=int, default=None, help="default: 1024 with --real, else 512")
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant, interleaved; medians reported")
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="both sides alike; default: on with --real (TRL's DPOConfig default), else off",
    )
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    dispatch(parser, parent, child)


if __name__ == "__main__":
    main()
