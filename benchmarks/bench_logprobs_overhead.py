""".venv/bin/python benchmarks/bench_logprobs_overhead.py

What the ``logprobs`` stage costs on top of the model: tokens/s of the stage
(hf engine, called as ``prefpool.pipeline.logprobs.logprobs``: Parquet in,
model load, chat-template tokenization, batching, Parquet shards + manifest
out) against a bare batched forward of the same model on the same tokens.

Setup: a locally built random Llama (``build_tiny_llama``; default hidden 256,
4 layers, 4 heads, MLP 688, vocab 512), and an ``examples`` table made by
``ingest`` from ``--prompts`` synthetic prompts with 2 answers each (a few
hundred distinct (prompt, answer) sequences of 1-8 sentences).

- ``stage``: wall time of the whole ``logprobs(...)`` call into a fresh
  folder, model loading included (what a user waits for). Best of ``--repeats``.
- ``bare``: the same sequences (``tokenize.encode_pair``, done before timing),
  the same batches (``scoring.plan_batches`` with the same
  ``batch_tokens``), right-padded; timed: ``model(...).logits``,
  ``log_softmax``, gather of the next tokens, masked sum over completion
  tokens. No I/O, model loaded before timing, one warm-up batch. Best of
  ``--repeats``.

tokens/s counts every token fed to the model (prompt + completion, no
padding), the same count for both. The ratio is bare/stage throughput: 1.0
would mean the stage adds nothing. A sanity line gives the largest difference
between the stage's stored log-probs and the bare ones.

Options: ``--prompts 160 --hidden 256 --layers 4 --batch-tokens 4096
--threads 1 --repeats 2``. torch uses ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.ids import completion_id
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.logprobs import logprobs
from prefpool.pipeline.model.scoring import plan_batches
from prefpool.pipeline.model.tokenize import encode_pair
from prefpool.testing import build_tiny_llama, default_corpus

MAX_LENGTH = 512


def write_examples(root: Path, prompts: int, seed: int = 0) -> Path:
    """An `examples` table: ``prompts`` prompts x 2 ranked answers of 1-8 corpus sentences."""
    rng = random.Random(seed)
    corpus = default_corpus()
    source = root / "examples.jsonl"
    with source.open("w") as f:
        for i in range(prompts):
            prompt = f"Question {i}: " + " ".join(rng.sample(corpus, rng.randint(1, 2)))
            answers = [{"text": " ".join(rng.sample(corpus, rng.randint(1, 8))), "rank": r} for r in (1, 2)]
            f.write(json.dumps({"prompt": prompt, "answers": answers}) + "\n")
    out = root / "examples"
    ingest(source, format="ranked", out=out, show_progress=False)
    return out


def encoded_pairs(examples: Path, tokenizer) -> tuple[list[list[int]], list[int], list[tuple[str, str]]]:
    """(sequence ids, completion start, (prompt_id, completion_id)) of every distinct pair."""
    seqs, starts, keys, seen = [], [], [], set()
    for row in read_table(examples).to_pylist():
        for answer in row["answers"]:
            key = (row["prompt_id"], completion_id(answer["text"]))
            if key in seen:
                continue
            seen.add(key)
            pair = encode_pair(tokenizer, row["prompt"], answer["text"], max_length=MAX_LENGTH)
            seqs.append(list(pair.prompt_ids) + list(pair.completion_ids))
            starts.append(len(pair.prompt_ids))
            keys.append(key)
    return seqs, starts, keys


@torch.inference_mode()
def bare_forward(model, seqs, starts, batches, pad_id: int) -> list[float]:
    """Summed completion log-probs, batch by batch; the only work is the model and the gather."""
    out = [0.0] * len(seqs)
    for batch in batches:
        width = max(len(seqs[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.bool)
        completion = torch.zeros(len(batch), width, dtype=torch.bool)
        for row, i in enumerate(batch):
            ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[row, : len(seqs[i])] = True
            completion[row, starts[i] : len(seqs[i])] = True
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
        logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
        picked = logps.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        sums = (picked * completion[:, 1:]).sum(-1)  # (B,)
        for row, i in enumerate(batch):
            out[i] = float(sums[row])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    parser.add_argument("--prompts", type=int, default=160)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="bench-logprobs-") as tmp:
        root = Path(tmp)
        model_dir = build_tiny_llama(
            root / "model",
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=args.hidden // 64,
            intermediate_size=int(args.hidden * 2.6875),
            max_position_embeddings=MAX_LENGTH,
        )
        examples = write_examples(root, args.prompts)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        seqs, starts, keys = encoded_pairs(examples, tokenizer)
        n_tokens = sum(len(s) for s in seqs)
        n_completion = sum(len(s) - st for s, st in zip(seqs, starts, strict=True))
        batches = plan_batches([len(s) for s in seqs], args.batch_tokens)

        stage_times = []
        for r in range(args.repeats):
            out = root / f"lp{r}"
            t0 = time.perf_counter()
            summary = logprobs(
                examples,
                model=model_dir,
                out=out,
                max_length=MAX_LENGTH,
                batch_tokens=args.batch_tokens,
                show_progress=False,
            )
            stage_times.append(time.perf_counter() - t0)
            assert summary.computed == len(seqs), (summary.computed, len(seqs))
        stored = {(r["prompt_id"], r["completion_id"]): r["logp"] for r in read_table(out).to_pylist()}

        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        bare_forward(model, seqs, starts, batches[:1], tokenizer.pad_token_id)  # warm-up
        bare_times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            values = bare_forward(model, seqs, starts, batches, tokenizer.pad_token_id)
            bare_times.append(time.perf_counter() - t0)
        diff = max(abs(stored[k] - v) for k, v in zip(keys, values, strict=True))

    stage_s, bare_s = min(stage_times), min(bare_times)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: hidden {args.hidden}, {args.layers} layers, {params / 1e6:.1f}M params, float32, "
        f"{args.threads} torch thread(s)"
    )
    print(
        f"data: {len(seqs)} sequences, {n_tokens} tokens ({n_completion} completion), "
        f"{len(batches)} batches of <= {args.batch_tokens} padded tokens"
    )
    print(
        f"stage (logprobs(), end to end): {stage_s:6.2f} s  {n_tokens / stage_s:8.0f} tokens/s"
        f"   (scorer-only rate reported by the stage: {summary.tokens_per_s:.0f} completion tokens/s)"
    )
    print(f"bare forward + gather:          {bare_s:6.2f} s  {n_tokens / bare_s:8.0f} tokens/s")
    print(f"ratio bare/stage throughput: {stage_s / bare_s:.2f}x  (stage overhead {stage_s - bare_s:.2f} s)")
    print(f"sanity: max |stage logp - bare logp| = {diff:.2e}")
    print(f"all runs (s): stage {[round(t, 2) for t in stage_times]}, bare {[round(t, 2) for t in bare_times]}")


if __name__ == "__main__":
    main()
