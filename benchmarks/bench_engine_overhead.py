"""The `generate` stage against the bare engine it drives: `vllm.LLM.generate`, and transformers' `model.generate`.

Run (needs vllm, e.g. after `make setup`):

    .venv/bin/python benchmarks/bench_engine_overhead.py --model ~/.cache/prefpool-bench/smollm2-135m-instruct-f32

Optional: ``--prompts 16 --n 4 --max-new-tokens 48 --batch-size 16 --repeats 2`` (without ``--model``: a tiny
random Llama built locally). Each measurement is its own child process, so no engine shares state with another:

- ``stage-<engine>``: ``prefpool.pipeline.generate.generate`` over an examples table of the prompts, in
  process, timed from the call to its return: the engine's start, the chat template, the per-sample seeds,
  decoding and the Parquet shards, manifest and report included;
- ``bare-vllm``: what a user writes without prefpool: ``vllm.LLM(model)`` with the same engine settings
  (dtype, the CPU settings prefpool applies), the prompts rendered by the tokenizer's chat template, and
  one ``LLM.generate`` call with the same sampling settings and a seed per sample;
- ``bare-hf``: ``AutoModelForCausalLM.from_pretrained`` and ``model.generate`` over left-padded batches of
  ``--batch-size / n`` prompts with ``num_return_sequences = n`` (``--batch-size`` sequences decoded together,
  as the stage's ``batch_size``), the same sampling settings.

vLLM compiles the model on its first start and caches the result (``~/.cache/vllm``): the first run of the
first side pays for it, so read the medians of ``--repeats 3`` or more, whose runs alternate stage and bare.

Both sides are timed from the start of the model's load to the last token, with the same libraries
(transformers, and vllm for the vllm engine) imported before the timer starts; and from the interpreter's
start (``process_s``: imports and, for the stage, writing the examples table included). Samples differ
between the stage and the bare call (different seeds per sample), so throughput is tokens drawn per second,
and the ratio is the stage's tokens/s over the bare engine's (1.00 = no overhead); the seconds each side
took for the same job are given too (a batched hf decode lasts as long as its longest sample, so there
the job's seconds are the fairer figure). For vLLM the seconds inside ``vllm.LLM(...)`` and
``LLM.generate``, the same calls on both sides, are timed apart: the rest is what each side adds, and
it is the figure vLLM's start-up (about a minute here, ±10 % from run to run) does not blur.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from harness import dispatch, emit, run_child, short_prompts, timed

TEMPERATURE, TOP_P = 1.0, 0.95


def _examples(root: Path, count: int) -> Path:
    from prefpool.pipeline.ingest import ingest

    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in short_prompts(count)))
    return ingest(root / "prompts.jsonl", format="prompts", out=root / "examples", show_progress=False).out


def _stage(args, engine: str) -> dict:
    # The libraries the bare side imports before its timer starts are imported here too (the stage would
    # import them lazily, inside its timed call): both sides are timed from the model's load, imports apart.
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    if engine == "vllm":
        from vllm import LLM, SamplingParams  # noqa: F401

    from prefpool.pipeline.generate import generate
    from prefpool.pipeline.io.read import read_table

    with tempfile.TemporaryDirectory() as tmp:
        examples = _examples(Path(tmp), args.prompts)
        start = time.perf_counter()
        out = generate(
            examples,
            model=args.model,
            out=Path(tmp) / "pool",
            n=args.n,
            engine=engine,
            temperature=TEMPERATURE,
            top_p=TOP_P,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            device="cpu",
            show_progress=False,
        ).out
        seconds = time.perf_counter() - start
        table = read_table(out).to_pylist()
        tokens = sum(sum(s["num_tokens"] for s in row["samples"]) for row in table)
    return {"seconds": seconds, "tokens": tokens}


def _rendered(tokenizer, count: int) -> list[list[int]]:
    """The prompts as token ids, each rendered by the model's chat template with the generation prompt."""
    found = []
    for prompt in short_prompts(count):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        found.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return found


def _bare_vllm(args) -> dict:
    import psutil
    import torch
    from transformers import AutoConfig, AutoTokenizer
    from vllm import LLM, SamplingParams

    from prefpool.pipeline.engines.vllm_start import cpu_settings

    start = time.perf_counter()
    extra, env = cpu_settings({}, per_request_seeds=True, available=psutil.virtual_memory().available)
    os.environ.update(env)
    dtype = getattr(AutoConfig.from_pretrained(args.model), "torch_dtype", None) or torch.float32
    llm = LLM(model=str(args.model), dtype=dtype, seed=0, **extra)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = [{"prompt_token_ids": ids} for ids in _rendered(tokenizer, args.prompts) for _ in range(args.n)]
    params = [
        SamplingParams(
            n=1, seed=i, temperature=TEMPERATURE, top_p=TOP_P, max_tokens=args.max_new_tokens, detokenize=False
        )
        for i in range(len(prompts))
    ]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": sum(len(o.outputs[0].token_ids) for o in outputs)}


def _bare_hf(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rendered = _rendered(tokenizer, args.prompts)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    torch.manual_seed(0)
    tokens = 0
    per_call = max(1, args.batch_size // args.n)  # prompts per call: batch_size sequences at once, as the stage
    for first in range(0, len(rendered), per_call):
        batch = rendered[first : first + per_call]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(b)) + b for b in batch])  # left padding
        mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=TEMPERATURE,
                top_p=TOP_P,
                top_k=0,
                max_new_tokens=args.max_new_tokens,
                num_return_sequences=args.n,
                pad_token_id=pad,
            )
        for row in out[:, width:].tolist():  # tokens up to the first eos (the rest is padding)
            tokens += next((i for i, token in enumerate(row) if token in eos), len(row))
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


VARIANTS = {
    "stage-vllm": lambda args: _stage(args, "vllm"),
    "stage-hf": lambda args: _stage(args, "hf"),
    "bare-vllm": _bare_vllm,
    "bare-hf": _bare_hf,
}


def _time_vllm_calls(spent: list[float]) -> None:
    """Add the seconds of every ``vllm.LLM(...)`` and ``LLM.generate`` call to ``spent``: the engine's own
    time, the same calls on both sides, so what the stage adds is the rest."""
    import vllm

    vllm.LLM.__init__ = timed(vllm.LLM.__init__, spent.append)
    vllm.LLM.generate = timed(vllm.LLM.generate, spent.append)


def child(args) -> None:
    import psutil

    engine_calls: list[float] = []
    if args.variant.endswith("vllm"):
        _time_vllm_calls(engine_calls)
    result = VARIANTS[args.variant](args)
    result["engine_s"] = sum(engine_calls) if engine_calls else None
    result["process_s"] = time.time() - psutil.Process().create_time()  # interpreter start to the last token
    emit(result)


def _measure(args, variant: str) -> dict:
    options = {key: getattr(args, key) for key in ("model", "prompts", "n", "max_new_tokens", "batch_size")}
    return run_child(__file__, env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}, variant=variant, **options)


def parent(args) -> None:
    if args.model is None:
        from prefpool.testing import build_tiny_llama

        args.model = build_tiny_llama(Path(tempfile.mkdtemp()) / "tiny")
    engines = args.engines.split(",")
    results = {f"{side}-{engine}": [] for engine in engines for side in ("stage", "bare")}
    for engine in engines:
        for _ in range(args.repeats):
            for side in ("stage", "bare"):  # alternating: a drift in the machine's load hits both sides
                results[f"{side}-{engine}"].append(_measure(args, f"{side}-{engine}"))
    print(f"model {args.model}; {args.prompts} prompts x {args.n} samples, <= {args.max_new_tokens} new tokens")
    summary = {}
    for engine in engines:
        rates, whole = {}, {}
        for side in ("stage", "bare"):
            runs = results[f"{side}-{engine}"]
            rates[side] = statistics.median(r["tokens"] / r["seconds"] for r in runs)
            whole[side] = statistics.median(r["tokens"] / r["process_s"] for r in runs)
            shown = ", ".join(f"{r['seconds']:.1f} s ({r['process_s']:.1f} s) / {r['tokens']} tok" for r in runs)
            print(
                f"{side:>5} {engine:<5} median {rates[side]:8.1f} tokens/s ({whole[side]:.1f} with imports)   "
                f"runs: {shown}"
            )
        summary[engine] = rates["stage"] / rates["bare"]
        summary[f"{engine} with imports"] = whole["stage"] / whole["bare"]
        summary[f"{engine} seconds"] = statistics.median(
            r["seconds"] for r in results[f"bare-{engine}"]
        ) / statistics.median(r["seconds"] for r in results[f"stage-{engine}"])
        print(
            f"ratio stage/bare tokens/s ({engine}): {summary[engine]:.2f}x from the model's load; "
            f"{summary[f'{engine} with imports']:.2f}x from the interpreter's start; "
            f"bare/stage seconds for the same job: {summary[f'{engine} seconds']:.2f}x"
        )
        if engine == "vllm":
            for side in ("stage", "bare"):
                runs = results[f"{side}-{engine}"]
                inside = statistics.median(r["engine_s"] for r in runs)
                outside = statistics.median(r["seconds"] - r["engine_s"] for r in runs)
                print(f"{side:>5} vllm: in vllm.LLM() and LLM.generate {inside:.1f} s; outside them {outside:.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "ratios": summary}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engines", default="vllm,hf")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    dispatch(parser, parent, child)


if __name__ == "__main__":
    main()
