"""`prefpool train` (DPO on cached reference log-probs) against TRL's DPOTrainer: peak memory, steps/s.

Run:

    .venv/bin/python benchmarks/bench_trainer_vs_trl.py

Optional: ``--steps 6 --batch 4 --hidden 256 --layers 4 --vocab 8192 --words 40,90``.

Variants (each in a fresh subprocess, same model folder, same pairs, same settings):

- ``prefpool``: ``prefpool.train.Trainer`` on a ``build --kind pairwise`` table; the reference
  enters only as the table's cached ``ref_chosen_logps``/``ref_rejected_logps``; no reference model.
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
decay 0, linear decay, no warmup; grad-norm clip 1.0; no gradient checkpointing, no dropout;
batch ``--batch`` pairs, one process, no accumulation. Each runs ``--steps + 1`` optimizer steps;
the first is a warm-up, steps/s is over the other ``--steps`` (wall time between the ends of
step 1 and of the last step, read by a callback / wrapper; logging included, checkpoints off).
The ``tokens/pair`` column (prompt counted for chosen and rejected, as both forwards see it) checks
that both tokenizations give the same work.

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
import tempfile
import time
from pathlib import Path

from harness import dispatch, emit, run_child, small_llama
from peak_memory import PeakMemory

VARIANTS = ("prefpool", "trl-ref-model", "trl-precompute")
MAX_LENGTH = 512
LR, BETA = 1e-6, 0.1


def make_table(root: Path, model: Path, rows: int, words: tuple[int, int]) -> Path:
    """A pairwise table through the real stages: ingest -> logprobs (the reference) -> build."""
    from prefpool.pipeline.build import build
    from prefpool.pipeline.ingest import ingest
    from prefpool.pipeline.logprobs import logprobs
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
    ingest(src, format="ranked", out=root / "examples")
    logprobs(root / "examples", model=model, out=root / "lp", max_length=MAX_LENGTH, show_progress=False)
    return build("pairwise", examples=root / "examples", logprobs=root / "lp", out=root / "pairwise").out


# -- children ---------------------------------------------------------------------------------------


def run_prefpool(args, memory_window) -> dict:
    from prefpool.train.config import TrainConfig
    from prefpool.train.trainer import Trainer

    ends = []
    with memory_window:
        trainer = Trainer(
            TrainConfig(
                model=args.model_dir,
                data=args.data,
                output_dir=str(Path(args.work) / "prefpool"),
                loss="dpo",
                beta=BETA,
                lr=LR,
                batch_size=args.batch,
                max_steps=args.steps + 1,
                max_length=MAX_LENGTH,
                optimizer="adamw",
                weight_decay=0.0,
                warmup_steps=0,
                max_grad_norm=1.0,
                progress=False,
            )
        )
        step = trainer._optimizer_step

        def timed_step():  # records when each optimizer step ends; nothing else changes
            record = step()
            ends.append(time.perf_counter())
            return record

        trainer._optimizer_step = timed_step
        trainer.run()
    seen = trainer.table.examples[: (args.steps + 1) * args.batch]
    tokens = sum(len(p) + len(c) for ex in seen for p, c in ex.answers[:2]) / len(seen)
    return {"ends": ends, "tokens_per_pair": tokens, "precompute_s": None}


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
        max_length=MAX_LENGTH,
        gradient_checkpointing=False,
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

    if args.variant != "prefpool":
        import trl  # noqa: F401
        from trl import DPOTrainer  # noqa: F401

    memory = PeakMemory()
    if args.variant == "prefpool":
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
    )
    emit(result)


# -- parent -----------------------------------------------------------------------------------------


def parent(args) -> None:
    words = tuple(int(w) for w in args.words.split(","))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        model_dir = small_llama(
            root / "model", vocab=args.vocab, hidden=args.hidden, layers=args.layers, max_positions=MAX_LENGTH
        )
        data = make_table(root / "data", model_dir, (args.steps + 1) * args.batch, words)
        setup_s = time.perf_counter() - start
        # TRL's precompute pass caches under HF_DATASETS_CACHE: a fresh folder, so it never hits a cache.
        env = {
            **os.environ,
            "HF_DATASETS_CACHE": str(root / "hf-datasets"),
            "TQDM_DISABLE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
        }
        for variant in VARIANTS:
            results[variant] = run_child(
                __file__,
                env=env,
                variant=variant,
                model_dir=model_dir,
                data=data,
                work=root / variant,
                steps=args.steps,
                batch=args.batch,
            )

    base = results["prefpool"]
    print(
        f"Llama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, float32, CPU, "
        f"{base['threads']} threads; DPO (sigmoid, beta {BETA}), AdamW, batch {args.batch} pairs, "
        f"answers {words[0]}-{words[1]} words; {args.steps} timed steps after 1 warm-up step; "
        f"memory: {base['method']}, window = model load + setup + training (after imports); "
        f"table + model built in {setup_s:.0f} s"
    )
    print()
    print(
        f"{'variant':<15} {'ref model':>9} {'tokens/pair':>11} {'precompute s':>12} {'peak extra MiB':>14} "
        f"{'steps/s':>8} {'memory x':>9} {'speed x':>8}"
    )
    for variant in VARIANTS:
        r = results[variant]
        ref = {
            "prefpool": "no",
            "trl-ref-model": "yes" if r.get("ref_model") else "NO?",
            "trl-precompute": "yes?" if r.get("ref_model") else "no",
        }[variant]
        pre = "-" if r["precompute_s"] is None else f"{r['precompute_s']:.2f}"
        print(
            f"{variant:<15} {ref:>9} {r['tokens_per_pair']:>11.1f} {pre:>12} {r['peak_extra_mib']:>14.0f} "
            f"{r['steps_per_s']:>8.3f} {r['peak_extra_mib'] / base['peak_extra_mib']:>9.2f} "
            f"{r['steps_per_s'] / base['steps_per_s']:>8.2f}"
        )
    print()
    print("memory x = peak extra MiB / prefpool's; speed x = steps/s / prefpool's (below 1: slower).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--words", default="40,90", help="answer length range in words")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    dispatch(parser, parent, child)


if __name__ == "__main__":
    main()
