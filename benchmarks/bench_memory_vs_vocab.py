"""Peak memory of a training step's scoring as the vocabulary grows: full logits against hidden states.

Run:

    .venv/bin/python benchmarks/bench_memory_vs_vocab.py --plot docs/figures/memory_vs_vocab.png

Optional: ``--vocabs 8192,49152,151936 --layers 2 --pairs 4 --prompt 128 --answers 256,384``.

Model: Qwen2.5-0.5B's shape (hidden 896, MLP 4864, 14 heads, 2 key/value heads, tied embeddings,
its rope theta) with ``--layers`` layers and vocabulary V, random weights (seed 0), float32, CPU.
Data: ``--pairs`` pairs, i.e. ``2 x pairs`` sequences of a ``--prompt``-token prompt and an answer
of ``--answers`` tokens (random ids, seed 0, the same for every V up to the ids' range).

One step = ``prefpool.pipeline.model.scoring.completion_logps`` on the sequences (one padded
forward) and ``backward()`` of the summed log-probs, which is what the gradient pass of
``prefpool train`` runs per micro-batch:

- ``logits``: ``method="logits"``, the model's full ``(B, T, V)`` logits and ``losses.sequence_logps``
  (the path before issue 14);
- ``hidden``: ``method="hidden"``, the last hidden states through the LM head in tiles over the
  completion positions only (``losses.hidden_logps``), no logits.

Each (variant, V) runs in a fresh subprocess: a warm-up step first (allocates the gradients, kept:
``zero_grad(set_to_none=False)``), then one measured step under ``peak_memory.PeakMemory``: the
figure is what the step adds on top of weights and gradients (activations, logits, temporaries).
The ``(B, T, V)`` column is one float32 logits tensor of the batch. ``--plot`` writes a PNG
(matplotlib) of the peaks against V.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness import dispatch, emit, run_child
from peak_memory import PeakMemory

VARIANTS = ("logits", "hidden")
QWEN25_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_attention_heads=14,
    num_key_value_heads=2,
    tie_word_embeddings=True,
    rope_theta=1_000_000.0,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
)


def _pairs(torch, vocab: int, pairs: int, prompt: int, answers: tuple[int, int]):
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(pairs):
        p = torch.randint(0, vocab, (prompt,), generator=gen).tolist()
        for _ in range(2):  # chosen, rejected
            n = int(torch.randint(answers[0], answers[1] + 1, (1,), generator=gen))
            out.append((p, torch.randint(0, vocab, (n,), generator=gen).tolist()))
    return out


def child(args) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from prefpool.pipeline.model.scoring import completion_logps

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B, num_hidden_layers=args.layers, vocab_size=args.vocab))
    model.train()
    answers = tuple(int(a) for a in args.answers.split(","))
    pairs = _pairs(torch, args.vocab, args.pairs, args.prompt, answers)

    def step():
        logps, _ = completion_logps(model, pairs, 0, method=args.variant)
        logps.sum().backward()
        model.zero_grad(set_to_none=False)

    step()  # warm-up: gradients allocated (and kept), the head checked, kernels and thread pool ready
    with PeakMemory() as memory:
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
    width = max(len(p) + len(c) for p, c in pairs)
    emit(
        {
            "peak_extra_mib": memory.extra_mib,
            "seconds": seconds,
            "method": memory.method,
            "logits_mib": len(pairs) * width * args.vocab * 4 / 2**20,
            "positions": len(pairs) * width,
            "completion_tokens": sum(len(c) for _, c in pairs),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "threads": torch.get_num_threads(),
            "load_1min": float(Path("/proc/loadavg").read_text().split()[0]),
        }
    )


def plot(results: dict, vocabs: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = {"logits": "full logits + sequence_logps (before)", "hidden": "hidden states + hidden_logps (now)"}
    for variant in VARIANTS:
        ax.plot(vocabs, [results[(variant, v)]["peak_extra_mib"] for v in vocabs], "o-", label=labels[variant])
    ax.plot(vocabs, [results[("logits", v)]["logits_mib"] for v in vocabs], "k:", label="one float32 (B, T, V) tensor")
    ax.set_xscale("log")
    ax.set_xticks(vocabs, [f"{v // 1000}k" for v in vocabs])
    ax.set_xlabel("vocabulary V")
    ax.set_ylabel("peak extra MiB (forward + backward)")
    ax.set_title("Scoring step memory, Qwen2.5-0.5B shape", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def parent(args) -> None:
    vocabs = [int(v) for v in args.vocabs.split(",")]
    results = {}
    for vocab in vocabs:
        for variant in VARIANTS:
            results[(variant, vocab)] = r = run_child(
                __file__,
                variant=variant,
                vocab=vocab,
                layers=args.layers,
                pairs=args.pairs,
                prompt=args.prompt,
                answers=args.answers,
            )
            print(f"V {vocab} {variant}: {r['peak_extra_mib']:.0f} MiB, {r['seconds']:.1f} s, load {r['load_1min']}")
    first = results[(VARIANTS[0], vocabs[0])]
    print()
    print(
        f"Qwen2.5-0.5B shape, {args.layers} layers, float32, CPU, {first['threads']} thread(s); {2 * args.pairs} "
        f"sequences ({args.pairs} pairs), prompt {args.prompt}, answers {args.answers} tokens: "
        f"{first['positions']} padded positions, {first['completion_tokens']} completion tokens; "
        f"memory: {first['method']}, one step after a warm-up step (weights and gradients exist before)"
    )
    print()
    print(
        f"{'V':>7} {'params M':>8} {'(B,T,V) MiB':>11} {'logits MiB':>10} {'hidden MiB':>10} {'ratio':>6} "
        f"{'logits s':>8} {'hidden s':>8}"
    )
    for vocab in vocabs:
        a, b = results[("logits", vocab)], results[("hidden", vocab)]
        print(
            f"{vocab:>7} {a['params_m']:>8.1f} {a['logits_mib']:>11.0f} {a['peak_extra_mib']:>10.0f} "
            f"{b['peak_extra_mib']:>10.0f} {b['peak_extra_mib'] / a['peak_extra_mib']:>6.2f} "
            f"{a['seconds']:>8.1f} {b['seconds']:>8.1f}"
        )
    print()
    print("ratio = hidden / logits peak; 1-min load averages per run:")
    print("  " + ", ".join(f"{v}/{k}: {results[(v, k)]['load_1min']}" for k in vocabs for v in VARIANTS))
    if args.plot:
        plot(results, vocabs, Path(args.plot))
        print(f"plot: {args.plot}")
    if args.json:
        rows = [{"variant": v, "vocab": k, **results[(v, k)]} for k in vocabs for v in VARIANTS]
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabs", default="8192,49152,151936")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--answers", default="256,384", help="answer length range in tokens")
    parser.add_argument("--plot", default=None, help="write the plot (PNG) here")
    parser.add_argument("--json", default=None, help="write the results (JSON) here")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    dispatch(parser, parent, child)


if __name__ == "__main__":
    main()
