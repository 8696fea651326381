"""The LM head + per-sequence log-probs alone, forward and backward: prefpool's code against TRL's.

Where `bench_trainer_vs_trl.py`'s gap comes from: TRL 1.16's DPOTrainer replaces the model's LM head
by a chunked log-prob function (``trl.kernels.chunked_logprob.ChunkedLogProbFunction``) that, without
Triton (on the CPU), runs in plain torch over every position (prompt and padding included), also
computes entropy / mean logit / top-1 for its metrics, and recomputes the logits in backward.

Shapes from the benchmark: 2B = 8 sequences, hidden 256, vocab 8192, padded width T (default 188,
a measured TRL step), prompt 34 tokens (measured), completions drawn so that the completion/padded
ratio matches the measured batches. Run with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ fixed
so that RSS follows live memory (freed multi-MiB blocks otherwise stay resident):

  MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072 OMP_NUM_THREADS=1 \
    .venv/bin/python benchmarks/bench_logprob_head_vs_trl.py [T]

Variants:
  prefpool      logits = hidden @ W.T (B, T, V) as the model's lm_head does; losses.sequence_logps
                (chunked, completion positions only; the logits are saved for backward)
  trl-cpu       TRL 1.16 fused LM head as DPOTrainer calls it on CPU: ChunkedLogProbFunction over ALL
                B*(T-1) positions (compact=False without Triton), outputs log_probs, entropy,
                mean_logits, is_top1 (the policy's call)
  trl-cpu-lp    same, outputs log_probs only (the reference model's call)
  trl-compact   same 4 outputs, only the completion positions (what TRL does on CUDA/XPU)
  naive         log_softmax(full logits).gather (textbook; for scale)
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F
from trl.kernels.chunked_logprob import ChunkedLogProbFunction

from prefpool.losses import sequence_logps

torch.set_num_threads(1)
MIB = 1024 * 1024


def kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset():
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def make(T=188, B2=8, H=256, V=8192, prompt=34, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(60, T - prompt + 1, (B2,), generator=g)
    lengths[0] = T - prompt
    ids = torch.randint(5, V, (B2, T), generator=g)
    mask = torch.zeros(B2, T, dtype=torch.bool)  # completion_mask
    attn = torch.zeros(B2, T, dtype=torch.bool)
    for b in range(B2):
        mask[b, prompt : prompt + lengths[b]] = True
        attn[b, : prompt + lengths[b]] = True
    h = torch.randn(B2, T, H, generator=g) * 0.5
    W = torch.randn(V, H, generator=g) * 0.02
    return h, W, ids, mask, attn


def run_prefpool(h, W, ids, mask):
    logits = F.linear(h, W)
    labels = ids.roll(-1, dims=1)
    m = mask.roll(-1, dims=1)
    m[:, -1] = False
    logps, _ = sequence_logps(logits, labels, m)
    return logps


def run_trl(h, W, ids, mask, outputs, compact=False):
    labels = ids.masked_fill(~mask, -100)
    hs = h[:, :-1]
    lab = labels[:, 1:]
    valid = lab != -100
    if compact:
        out = ChunkedLogProbFunction.apply(hs[valid], W, None, lab[valid], 1.0, 32768, None, 1.0, outputs)
        per = [None if x is None else x.new_zeros(valid.shape).masked_scatter(valid, x) for x in out]
    else:
        out = ChunkedLogProbFunction.apply(
            hs.reshape(-1, hs.size(-1)), W, None, lab.clamp(min=0).reshape(-1), 1.0, 32768, None, 1.0, outputs
        )
        per = [None if x is None else x.view(valid.shape).masked_fill(~valid, 0) for x in out]
    return per[0].sum(dim=1)


def run_naive(h, W, ids, mask):
    logits = F.linear(h, W)[:, :-1]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (lp * mask[:, 1:]).sum(1)


ALL4 = ("log_probs", "entropy", "mean_logits", "is_top1")
VARIANTS = {
    "prefpool": run_prefpool,
    "trl-cpu": lambda h, W, i, m: run_trl(h, W, i, m, ALL4),
    "trl-cpu-lp": lambda h, W, i, m: run_trl(h, W, i, m, ("log_probs",)),
    "trl-compact": lambda h, W, i, m: run_trl(h, W, i, m, ALL4, compact=True),
    "naive": run_naive,
}


def measure(name, fn, h0, W0, ids, mask, reps=5, grad=True):
    tf, tb, pf, pb = [], [], [], []
    for _ in range(reps + 1):
        h = h0.clone().requires_grad_(grad)
        W = W0.clone().requires_grad_(grad)
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            r0 = kib("VmRSS")
            reset()
            t0 = time.perf_counter()
            logps = fn(h, W, ids, mask)
            tf.append(time.perf_counter() - t0)
            pf.append((kib("VmHWM") - r0) / 1024)
            if grad:
                r1 = kib("VmRSS")
                reset()
                t0 = time.perf_counter()
                logps.sum().backward()
                tb.append(time.perf_counter() - t0)
                pb.append((kib("VmHWM") - r1) / 1024)
                held = (r1 - r0) / 1024
        del logps, h, W
    med = statistics.median
    s = f"{name:<12} fwd {1000 * med(tf[1:]):7.1f} ms (peak +{max(pf[1:]):5.0f} MiB)"
    if grad:
        s += f"  bwd {1000 * med(tb[1:]):7.1f} ms (peak +{max(pb[1:]):5.0f} MiB)  held fwd->bwd {held:5.0f} MiB"
    print(s, flush=True)


def main():
    T = int(sys.argv[1]) if len(sys.argv) > 1 else 188
    h, W, ids, mask = make(T=T)[:4]
    n_all, n_used = 8 * (T - 1), int(mask[:, 1:].sum())
    print(
        f"2B=8, T={T}, H=256, V=8192: all positions {n_all}, completion positions {n_used} "
        f"({n_used / n_all:.0%}); one float32 (positions x V) = {n_all * 8192 * 4 / MIB:.1f} MiB; "
        f"threads {torch.get_num_threads()}"
    )
    # check that all agree
    ref = run_naive(h, W, ids, mask)
    for name, fn in VARIANTS.items():
        assert torch.allclose(fn(h, W, ids, mask), ref, atol=1e-3, rtol=1e-4), name
    print("with grad (policy):")
    for name, fn in VARIANTS.items():
        measure(name, fn, h, W, ids, mask)
    print("no grad (reference forward):")
    for name in ("prefpool", "trl-cpu-lp"):
        measure(name, VARIANTS[name], h, W, ids, mask, grad=False)


if __name__ == "__main__":
    main()
