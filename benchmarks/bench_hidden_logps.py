"""Peak memory of forward + backward: model logits + sequence_logps vs hidden_logps.

Run:

    .venv/bin/python benchmarks/bench_hidden_logps.py

Optional: ``--batch 8 --seq 1024 --width 576 --vocabs 8192,49152,151936 --dtype bf16``
(the defaults; H=576 is SmolLM2-135M's width, 49152 its vocabulary, 151936 Qwen2's).

Setup: bf16 hidden states ``(B, T, H)`` and a head weight ``(V, H)``, both leaves
that require grad (a full fine-tune, as seen from the loss). Labels are rolled
left the way ``prefpool.pipeline.model.scoring`` does, the completion mask skips a random
prompt (T/8 to T/3) and right padding (up to T/8). Each variant computes the
summed log-probs and calls ``.backward()`` on their sum.

Variants:

- ``logits``: ``F.linear(hidden, weight)`` (the model's ``lm_head``), then
  ``sequence_logps`` on the full ``(B, T, V)`` logits: today's trainer path.
- ``hidden``: ``hidden_logps(hidden, weight, ...)``, default ``chunk_elements``.

Memory: with CUDA, ``torch.cuda.max_memory_allocated`` minus the allocation
before the call; on CPU each variant runs in a fresh subprocess and
``peak_memory.PeakMemory`` reports the peak RSS the call added. Both include
the gradients of ``hidden`` and ``weight`` that any backward must produce.
"saved MiB" counts the bytes autograd kept between forward and backward
(``saved_tensors_hooks``), distinct storages, not counting ``hidden`` and
``weight`` themselves. The sanity columns are the max abs difference of the
log-probs and of ``hidden.grad`` between the two variants.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from harness import dispatch, emit, run_child
from peak_memory import PeakMemory

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
VARIANTS = ("logits", "hidden")


def _make_inputs(torch, batch, seq, width, vocab, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, seq, width, generator=gen).to(device, dtype).requires_grad_(True)
    weight = (torch.randn(vocab, width, generator=gen) / width**0.5).to(device, dtype)
    weight.requires_grad_(True)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    pos = torch.arange(seq)
    prompt = torch.randint(seq // 8, seq // 3, (batch, 1), generator=gen)
    end = seq - torch.randint(0, seq // 8 + 1, (batch, 1), generator=gen)
    completion = ((pos >= prompt) & (pos < end)).to(device)
    labels = input_ids.roll(-1, dims=1)
    mask = completion.roll(-1, dims=1)
    mask[:, -1] = False
    return hidden, weight, labels, mask


def _run(torch, hidden, weight, labels, mask, variant):
    from prefpool.losses import hidden_logps, sequence_logps

    if variant == "logits":
        logits = torch.nn.functional.linear(hidden, weight)
        logps, _ = sequence_logps(logits, labels, mask)
    else:
        logps, _ = hidden_logps(hidden, weight, labels, mask)
    logps.sum().backward()
    return logps.detach()


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward, leaving out ``exclude``."""

    def __init__(self, torch, exclude):
        self.torch = torch
        self.seen = {t.untyped_storage().data_ptr() for t in exclude}
        self.bytes = 0

    def pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += t.untyped_storage().nbytes()
        return t

    def hooks(self):
        return self.torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def child(args) -> None:
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = getattr(torch, DTYPES[args.dtype])
    _run(torch, *_make_inputs(torch, 2, 16, 8, 64, dtype, device, seed=1), args.variant)  # warm-up
    inputs = _make_inputs(torch, args.batch, args.seq, args.width, args.vocab, dtype, device)
    hidden, weight = inputs[:2]
    saved = SavedBytes(torch, exclude=(hidden, weight))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        with saved.hooks():
            logps = _run(torch, *inputs, args.variant)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        extra_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
        method = "torch.cuda.max_memory_allocated"
    else:
        with PeakMemory() as memory, saved.hooks():
            start = time.perf_counter()
            logps = _run(torch, *inputs, args.variant)
            seconds = time.perf_counter() - start
        extra_mib, method = memory.extra_mib, memory.method
    torch.save({"logps": logps.cpu(), "grad": hidden.grad[:, ::7].float().cpu()}, args.out)
    emit(
        {
            "variant": args.variant,
            "peak_extra_mib": extra_mib,
            "saved_mib": saved.bytes / 2**20,
            "seconds": seconds,
            "method": method,
            "device": device,
            "tokens": int(inputs[3].sum()),
        }
    )


def parent(args) -> None:
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for vocab in (int(v) for v in args.vocabs.split(",")):
            results = {}
            for variant in VARIANTS:
                out = os.path.join(tmp, f"{vocab}-{variant}.pt")
                row = run_child(
                    __file__,
                    variant=variant,
                    out=out,
                    batch=args.batch,
                    seq=args.seq,
                    width=args.width,
                    vocab=vocab,
                    dtype=args.dtype,
                )
                row["vocab"] = vocab
                results[variant] = torch.load(out)
                rows.append(row)
            ref = results["logits"]
            rows[-1]["dlogps"] = (results["hidden"]["logps"] - ref["logps"]).abs().max().item()
            rows[-1]["dgrad"] = (results["hidden"]["grad"] - ref["grad"]).abs().max().item()

    b, t, h = args.batch, args.seq, args.width
    first = rows[0]
    print(
        f"hidden ({b}, {t}, {h}) {args.dtype}, {first['tokens']} used positions, "
        f"weight (V, {h}) {args.dtype}, both require grad; device {first['device']}; "
        f"torch {torch.__version__}"
    )
    print(f"memory: {first['method']}; fresh process per variant")
    print()
    print(
        f"{'V':>7} {'variant':<8} {'(B,T,V) MiB':>12} {'peak extra MiB':>15} {'saved MiB':>10} "
        f"{'seconds':>8} {'logits/hidden':>14} {'max|dlogps|':>12} {'max|dgrad|':>11}"
    )
    elem = 2 if args.dtype == "bf16" else 4
    for i, row in enumerate(rows):
        full = b * t * row["vocab"] * elem / 2**20
        ratio = dl = dg = ""
        if row["variant"] == "hidden":
            ratio = f"{rows[i - 1]['peak_extra_mib'] / row['peak_extra_mib']:.1f}x"
            dl, dg = f"{row['dlogps']:.3g}", f"{row['dgrad']:.3g}"
        print(
            f"{row['vocab']:>7} {row['variant']:<8} {full:>12.0f} {row['peak_extra_mib']:>15.1f} "
            f"{row['saved_mib']:>10.1f} {row['seconds']:>8.2f} {ratio:>14} {dl:>12} {dg:>11}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--vocabs", default="8192,49152,151936")
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    dispatch(parser, parent, child)


if __name__ == "__main__":
    main()
