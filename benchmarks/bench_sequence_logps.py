"""Peak memory of forward + backward: naive log_softmax vs chunked sequence_logps.

Run:

    .venv/bin/python benchmarks/bench_sequence_logps.py

Optional: ``--batch 4 --seq 512 --vocab 49152 --dtype bf16`` (the defaults).

Setup: bf16 logits ``(B, T, V)`` as a leaf that requires grad (as the output of
an LM head would be, seen from the loss), shifted the causal way
(``logits[:, :-1]``, ``labels[:, 1:]``, ``mask[:, 1:]``), a completion mask
that skips a random prompt on the left and padding on the right (about 60%
of positions used). Each variant computes the summed log-probs and calls
``.backward()`` on their sum.

Variants:

- ``naive``: ``log_softmax(logits.float(), -1).gather(...)``, masked sum.
- ``chunked-64M``: ``sequence_logps`` with ``chunk_elements=2**26``.
- ``chunked-4M``: ``sequence_logps`` with the default ``chunk_elements=2**22``.
- ``chunked-4M-rolled``: ``chunk_elements=2**22``, called the way ``prefpool.pipeline.model.scoring``
  calls it: the full logits with labels rolled left (no strided view, so
  autograd does not hold a second full-size gradient for the view).

How memory is measured (CPU): each variant runs in a fresh subprocess and
``peak_memory.PeakMemory`` (see there) reports the peak RSS the call added
on top of the inputs. It includes the ``(B, T, V)`` bf16 ``logits.grad`` that
both variants must produce.

Seconds are the wall time of that single forward + backward, on whatever
threads torch uses by default. The sanity check is the max abs difference of
the log-probs and of ``logits.grad`` (on a strided subsample of positions)
between naive and each chunked variant.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from harness import dispatch, emit, run_child
from peak_memory import PeakMemory

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# name -> (chunk_elements or None for naive, how labels are aligned)
VARIANTS = {
    "naive": (None, "view"),
    "chunked-64M": (2**26, "view"),
    "chunked-4M": (2**22, "view"),
    "chunked-4M-rolled": (2**22, "rolled"),
}


def _make_inputs(torch, batch, seq, vocab, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, seq, vocab, generator=gen, dtype=dtype).requires_grad_(True)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    pos = torch.arange(seq)
    prompt = torch.randint(seq // 8, seq // 3, (batch, 1), generator=gen)
    end = seq - torch.randint(0, seq // 8, (batch, 1), generator=gen)
    mask = (pos >= prompt) & (pos < end)
    return logits, input_ids, mask


def _run(torch, logits, input_ids, mask, variant):
    from prefpool.losses.logps import sequence_logps

    chunk_elements, align = variant
    if align == "rolled":
        # How prefpool.pipeline.model.scoring calls it: full logits, labels rolled left, the last
        # position masked. Same values; no strided view, so autograd keeps one gradient.
        used = mask.roll(-1, dims=1)
        used[:, -1] = False
        logps, _ = sequence_logps(logits, input_ids.roll(-1, dims=1), used, chunk_elements=chunk_elements)
        logps.sum().backward()
        return logps.detach()
    view, labels, used = logits[:, :-1], input_ids[:, 1:], mask[:, 1:]
    if chunk_elements is None:
        safe = labels.masked_fill(~used, 0)
        tok = torch.log_softmax(view.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        logps = (tok * used).sum(-1)
    else:
        logps, _ = sequence_logps(view, labels, used, chunk_elements=chunk_elements)
    logps.sum().backward()
    return logps.detach()


def child(args) -> None:
    import torch

    dtype = getattr(torch, DTYPES[args.dtype])
    chunk = VARIANTS[args.variant]
    small = _make_inputs(torch, 2, 16, 64, dtype, seed=1)
    _run(torch, *small, chunk)  # warm-up: kernels, thread pool
    del small
    logits, input_ids, mask = _make_inputs(torch, args.batch, args.seq, args.vocab, dtype)

    with PeakMemory() as memory:
        start = time.perf_counter()
        logps = _run(torch, logits, input_ids, mask, chunk)
        seconds = time.perf_counter() - start

    torch.save({"logps": logps, "grad": logits.grad[:, ::37].clone()}, args.out)
    emit(
        {
            "variant": args.variant,
            "peak_extra_mib": memory.extra_mib,
            "seconds": seconds,
            "method": memory.method,
            "tokens": int(mask[:, 1:].sum()),
        }
    )


def parent(args) -> None:
    import torch

    rows = {}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            out = os.path.join(tmp, f"{variant}.pt")
            rows[variant] = run_child(
                __file__, variant=variant, out=out, batch=args.batch, seq=args.seq, vocab=args.vocab, dtype=args.dtype
            )
            results[variant] = torch.load(out)

    b, t, v = args.batch, args.seq, args.vocab
    first = rows["naive"]
    print(
        f"logits ({b}, {t}, {v}) {args.dtype}, shifted view ({b}, {t - 1}, {v}), "
        f"{first['tokens']} used positions; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"one (B, T, V) tensor: {b * t * v * 4 / 2**20:.0f} MiB in fp32, "
        f"{b * t * v * torch.empty(0, dtype=getattr(torch, DTYPES[args.dtype])).element_size() / 2**20:.0f} "
        f"MiB in {args.dtype}"
    )
    print(f"memory method: {first['method']} (peak RSS minus RSS before the call, fresh process each)")
    print()
    print(
        f"{'variant':<18} {'peak extra MiB':>15} {'seconds':>8} {'naive/this':>11} "
        f"{'max|dlogps|':>12} {'max|dgrad|':>11}"
    )
    ref = results["naive"]
    for variant, row in rows.items():
        ratio = first["peak_extra_mib"] / row["peak_extra_mib"]
        dl = (results[variant]["logps"] - ref["logps"]).abs().max().item()
        dg = (results[variant]["grad"].float() - ref["grad"].float()).abs().max().item()
        print(
            f"{variant:<18} {row['peak_extra_mib']:>15.1f} {row['seconds']:>8.2f} "
            f"{ratio:>11.2f} {dl:>12.3g} {dg:>11.3g}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    dispatch(parser, parent, child)


if __name__ == "__main__":
    main()
