"""MC-PO training step: two passes against back-propagating through all 1 + M answers.

Run:

    .venv/bin/python benchmarks/bench_mcpo_two_pass.py

Optional: ``--pools 1,2,4,8 --batch 4 --steps 3 --hidden 256 --layers 4 --vocab 8192``.

Both variants compute the same loss and gradient (tests/train/test_mcpo_step.py
checks this), with the ``sample`` kernel:

- ``two-pass`` (``prefpool.train.kinds.mcpo.mcpo_step_loss``): the pool is scored
  without gradient, ``mcpo_select`` picks one negative per prompt, and only the
  preferred and the picked answers are forwarded with gradient.
- ``one-pass``: all ``1 + M`` answers are forwarded with gradient (activations
  kept for backward), then ``mcpo_loss`` picks and back-propagates.

Model: a randomly initialised Llama built locally (``build_tiny_llama`` with the
sizes above, head_dim 64), float32, on the CPU. Data: random token ids; each
prompt 64 tokens, answers 64 to 128 tokens. Each (variant, M) runs in a fresh
subprocess: one warm-up step, then ``--steps`` timed steps (forward, backward,
optimizer step) under ``peak_memory.PeakMemory``. Reported: steps/s and the
peak RSS added during the timed steps (activations, gradients, temporaries;
the weights and optimizer state exist before the measurement starts), and
the ratios one-pass/two-pass.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from harness import dispatch, emit, run_child, small_llama
from peak_memory import PeakMemory


def _batch(torch, batch_size: int, pool: int, vocab: int, seed: int):
    from prefpool.train.kinds.mcpo import PoolBatch

    gen = torch.Generator().manual_seed(seed)

    def tokens(n):
        return torch.randint(10, vocab, (n,), generator=gen).tolist()

    def answer_len():
        return int(torch.randint(64, 129, (1,), generator=gen))

    prompts = [tokens(64) for _ in range(batch_size)]
    chosen = [(p, tokens(answer_len())) for p in prompts]
    pools = [[(p, tokens(answer_len())) for _ in range(pool)] for p in prompts]
    mask = torch.ones(batch_size, pool, dtype=torch.bool)
    ref_chosen = torch.randn(batch_size, generator=gen) - 900.0
    ref_pool = torch.randn(batch_size, pool, generator=gen) - 900.0
    return PoolBatch(chosen, pools, ref_chosen, ref_pool, mask)


def _one_pass_loss(torch, model, batch, beta, generator):
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
        kernel="sample",
        generator=generator,
    )


def child(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from prefpool.train.kinds.mcpo import mcpo_step_loss

    model = AutoModelForCausalLM.from_pretrained(args.model_dir).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)

    def step(seed):
        batch = _batch(torch, args.batch, args.pool, args.vocab, seed)
        if args.variant == "two-pass":
            out = mcpo_step_loss(model, batch, pad_token_id=0, beta=0.1, kernel="sample", generator=generator)
        else:
            out = _one_pass_loss(torch, model, batch, 0.1, generator)
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
        }
    )


def parent(args) -> None:
    pools = [int(m) for m in args.pools.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = small_llama(Path(tmp) / "model", vocab=args.vocab, hidden=args.hidden, layers=args.layers)
        for pool in pools:
            result = {
                variant: run_child(
                    __file__,
                    variant=variant,
                    model_dir=model_dir,
                    pool=pool,
                    batch=args.batch,
                    steps=args.steps,
                    vocab=args.vocab,
                )
                for variant in ("two-pass", "one-pass")
            }
            rows.append((pool, result))

    first = rows[0][1]["two-pass"]
    print(
        f"Llama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, float32, CPU, "
        f"{first['threads']} threads; batch {args.batch} prompts, prompt 64 tokens, answers 64-128; "
        f"{args.steps} timed steps; memory: {first['method']}"
    )
    print()
    print(
        f"{'M':>3} {'two-pass steps/s':>17} {'one-pass steps/s':>17} {'speed x':>8} "
        f"{'two-pass MiB':>13} {'one-pass MiB':>13} {'memory x':>9}"
    )
    for pool, r in rows:
        two, one = r["two-pass"], r["one-pass"]
        print(
            f"{pool:>3} {two['steps_per_s']:>17.3f} {one['steps_per_s']:>17.3f} "
            f"{two['steps_per_s'] / one['steps_per_s']:>8.2f} {two['peak_extra_mib']:>13.0f} "
            f"{one['peak_extra_mib']:>13.0f} {one['peak_extra_mib'] / two['peak_extra_mib']:>9.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", default="1,2,4,8")
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
