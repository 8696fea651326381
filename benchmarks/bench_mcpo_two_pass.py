"""MC-PO's training step against a DPO step on the same prompts, and against its own older forms.

Run:

    .venv/bin/python benchmarks/bench_mcpo_two_pass.py --repeats 3

Optional: ``--pools 1,2,4,8 --batch 4 --steps 3 --prompt 128 --answers 64,128 --hidden 256
--layers 4 --vocab 8192 --variants dpo,mcpo,mcpo-unshared,one-pass``.

Variants, on the same ``--batch`` prompts per step (MC-PO's kernel: ``--kernel``, default
``sample_pool``, which always picks a pool answer, so pass 2 has exactly the DPO step's pairs;
the paper's ``sample`` kernel also draws the preferred answer itself, and a row that draws it
needs no pass-2 forward, so it is cheaper still):

- ``dpo``: one forward/backward through each prompt's preferred answer and one pool answer
  (``completion_logps`` with gradient, ``dpo_loss``): the DPO step MC-PO is measured against
  (the same pair count in the gradient pass).
- ``mcpo`` (``prefpool.train.kinds.mcpo.mcpo_step_loss``, the trainer's step): pass 1 scores the
  pool (and, for ``sample``, the preferred answers) without gradient, each prompt run once and its keys/values cached
  (``share_prompts``); ``mcpo_select`` picks one answer per prompt; pass 2 is a DPO step on the
  preferred and the picked answers.
- ``mcpo-unshared``: the same with pass 1 over full sequences (``share_prompts=False``).
- ``one-pass``: all ``1 + M`` answers forwarded with gradient, then ``mcpo_loss`` picks.

All take log-probs from the hidden states (the trainer's default). Model: a randomly initialised
Llama built locally (``build_tiny_llama`` with the sizes above, head_dim 64), float32, on the CPU.
Data: random token ids; prompts of ``--prompt`` tokens, answers of ``--answers`` tokens. Each
(variant, M) runs in a fresh subprocess: one warm-up step, then ``--steps`` timed steps (forward,
backward, optimizer step) under ``peak_memory.PeakMemory``: steps/s and the peak RSS added during
the timed steps (activations, gradients, temporaries; the weights and optimizer state exist
before). With ``--repeats N`` every run is repeated N times, interleaved, and medians are reported;
each run's 1-minute load average is listed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from harness import dispatch, emit, run_child, small_llama
from peak_memory import PeakMemory

VARIANTS = ("dpo", "mcpo", "mcpo-unshared", "one-pass")


def _batch(torch, args, seed: int):
    from prefpool.train.kinds.mcpo import PoolBatch

    gen = torch.Generator().manual_seed(seed)
    low, high = (int(a) for a in args.answers.split(","))
    batch_size, pool = args.batch, args.pool

    def tokens(n):
        return torch.randint(10, args.vocab, (n,), generator=gen).tolist()

    def answer_len():
        return int(torch.randint(low, high + 1, (1,), generator=gen))

    prompts = [tokens(args.prompt) for _ in range(batch_size)]
    chosen = [(p, tokens(answer_len())) for p in prompts]
    pools = [[(p, tokens(answer_len())) for _ in range(pool)] for p in prompts]
    mask = torch.ones(batch_size, pool, dtype=torch.bool)
    ref_chosen = torch.randn(batch_size, generator=gen) - 900.0
    ref_pool = torch.randn(batch_size, pool, generator=gen) - 900.0
    return PoolBatch(chosen, pools, ref_chosen, ref_pool, mask)


def _one_pass_loss(torch, model, batch, beta, generator, kernel):
    from prefpool.losses import mcpo_loss
    from prefpool.pipeline.model.scoring import completion_logps

    size, pool = batch.pool_mask.shape
    flat = [*batch.chosen, *(pair for answers in batch.pools for pair in answers)]
    logps, _ = completion_logps(model, flat, 0)
    return mcpo_loss(
        logps[:size],
        logps[size:].view(size, pool),
        batch.ref_chosen_logps,
        batch.ref_pool_logps,
        candidate_mask=batch.pool_mask,
        beta=beta,
        kernel=kernel,
        generator=generator,
    )


def _dpo_loss(torch, model, batch, beta):
    from prefpool.losses import dpo_loss
    from prefpool.pipeline.model.scoring import completion_logps

    size = len(batch.chosen)
    logps, _ = completion_logps(model, [*batch.chosen, *(answers[0] for answers in batch.pools)], 0)
    return dpo_loss(logps[:size], logps[size:], batch.ref_chosen_logps, batch.ref_pool_logps[:, 0], beta=beta)


def child(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from prefpool.train.kinds.mcpo import mcpo_step_loss

    model = AutoModelForCausalLM.from_pretrained(args.model_dir).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)

    def step(seed):
        batch = _batch(torch, args, seed)
        if args.variant in ("mcpo", "mcpo-unshared"):
            out = mcpo_step_loss(
                model,
                batch,
                pad_token_id=0,
                beta=0.1,
                kernel=args.kernel,
                generator=generator,
                share_prompts=args.variant == "mcpo",
            )
        elif args.variant == "dpo":
            out = _dpo_loss(torch, model, batch, 0.1)
        else:
            out = _one_pass_loss(torch, model, batch, 0.1, generator, args.kernel)
        optimizer.zero_grad(set_to_none=False)
        out.loss.mean().backward()
        optimizer.step()

    step(0)  # warm-up: kernels, thread pool, optimizer state, gradient buffers
    with PeakMemory() as memory:
        start = time.perf_counter()
        for i in range(args.steps):
            step(i + 1)
        seconds = time.perf_counter() - start
    emit(
        {
            "steps_per_s": args.steps / seconds,
            "peak_extra_mib": memory.extra_mib,
            "method": memory.method,
            "threads": torch.get_num_threads(),
            "load_1min": float(Path("/proc/loadavg").read_text().split()[0]),
        }
    )


def parent(args) -> None:
    pools = [int(m) for m in args.pools.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS) or "dpo" not in variants:
        raise SystemExit(f"--variants: some of {', '.join(VARIANTS)}, dpo among them")
    runs: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = small_llama(Path(tmp) / "model", vocab=args.vocab, hidden=args.hidden, layers=args.layers)
        for _ in range(args.repeats):
            for pool in pools:
                for variant in variants:
                    r = run_child(
                        __file__,
                        variant=variant,
                        model_dir=model_dir,
                        pool=pool,
                        batch=args.batch,
                        steps=args.steps,
                        vocab=args.vocab,
                        prompt=args.prompt,
                        answers=args.answers,
                        kernel=args.kernel,
                    )
                    runs.setdefault((variant, pool), []).append(r)
                    print(
                        f"M {pool} {variant}: {r['steps_per_s']:.3f} steps/s, {r['peak_extra_mib']:.0f} MiB, "
                        f"load {r['load_1min']}",
                        flush=True,
                    )

    def med(variant, pool, key):
        return statistics.median(r[key] for r in runs[(variant, pool)])

    first = runs[("dpo", pools[0])][0]
    print()
    print(
        f"Llama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, float32, CPU, "
        f"{first['threads']} thread(s); batch {args.batch} prompts, prompt {args.prompt} tokens, answers "
        f"{args.answers}; kernel {args.kernel}; {args.steps} timed steps; medians of {args.repeats} run(s); "
        f"memory: {first['method']}"
    )
    print()
    others = [v for v in variants if v != "dpo"]
    header = f"{'M':>3} {'dpo s/step':>10} {'dpo MiB':>8}"
    for v in others:
        header += f" {v + ' s/step':>20} {'time x':>6} {'MiB':>6} {'mem x':>6}"
    print(header)
    for pool in pools:
        dpo_s, dpo_mib = 1 / med("dpo", pool, "steps_per_s"), med("dpo", pool, "peak_extra_mib")
        line = f"{pool:>3} {dpo_s:>10.3f} {dpo_mib:>8.0f}"
        for v in others:
            sec, mib = 1 / med(v, pool, "steps_per_s"), med(v, pool, "peak_extra_mib")
            line += f" {sec:>20.3f} {sec / dpo_s:>6.2f} {mib:>6.0f} {mib / dpo_mib:>6.2f}"
        print(line)
    print()
    print("time x = seconds per step / the DPO step's; mem x = peak extra MiB / the DPO step's.")
    print(
        "1-min load averages: " + ", ".join(f"{v}/M{m}: {[r['load_1min'] for r in rs]}" for (v, m), rs in runs.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", default="1,2,4,8")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    parser.add_argument("--answers", default="64,128", help="answer length range in tokens")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--kernel", default="sample_pool", help="MC-PO's selection kernel (sample_pool, sample, max, ...)"
    )
    parser.add_argument("--variants", default="dpo,mcpo,mcpo-unshared", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--pool", type=int, help=argparse.SUPPRESS)
    dispatch(parser, parent, child)


if __name__ == "__main__":
    main()
