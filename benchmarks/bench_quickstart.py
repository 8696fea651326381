"""Wall time of `prefpool quickstart` (the README's main job), per generation engine.

Run:

    .venv/bin/python benchmarks/bench_quickstart.py [--engines hf vllm] [--seed 0]

Each engine gets a fresh output folder and one full `prefpool quickstart`
(default settings: reference model, both pipelines, DPO and MC-PO 80 steps
with probes, two `prefpool eval`s, report), run as the subprocess a user would
start. Printed: total wall time against the 5-minute budget, the data part
(reference + pipelines) and training+probing, and the ratio between engines.
Also whether two runs of the same engine agree (``--repeat``): the probe records
and per-step losses must be equal, the wall times aside.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 300


def run(engine: str, out: Path, seed: int) -> dict:
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "prefpool.cli",
            "quickstart",
            "--out",
            str(out),
            "--engine",
            engine,
            "--seed",
            str(seed),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    return {
        "engine": engine,
        "wall_s": wall,
        "data_s": summary["data_seconds"],
        "inner_s": summary["seconds"],
        "finals": {r["method"]: (r["final"]["reward"], r["final"]["kl"]) for r in summary["runs"]},
    }


def fingerprint(out: Path) -> list:
    """What must be equal between two runs: probe records and losses, wall times removed."""
    found = []
    for method in sorted(p.name for p in (out / "runs").iterdir() if p.is_dir()):
        probes = [json.loads(line) for line in (out / "runs" / method / "probe.jsonl").read_text().splitlines()]
        for record in probes:
            record.pop("train_seconds")
        losses = [
            json.loads(line)["loss"] for line in (out / "runs" / method / "metrics.jsonl").read_text().splitlines()
        ]
        found.append((method, probes, losses))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    have_vllm = importlib.util.find_spec("vllm") is not None
    parser.add_argument("--engines", nargs="+", default=["hf", "vllm"] if have_vllm else ["hf"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", action="store_true", help="Run the first engine twice and compare.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(engine, Path(tmp) / engine, args.seed) for engine in args.engines]
        for r in results:
            verdict = "within" if r["wall_s"] < BUDGET_S else "OVER"
            print(
                f"{r['engine']:>5}: {r['wall_s']:6.1f} s wall ({verdict} the {BUDGET_S} s budget); "
                f"reference + pipelines {r['data_s']:.1f} s, training + probes + eval + report "
                f"{r['inner_s'] - r['data_s']:.1f} s"
            )
            for method, (reward, kl) in r["finals"].items():
                print(f"       {method:<11} final true reward {reward:+.3f}, KL {kl:.3f}")
        if len(results) == 2:
            a, b = results
            print(f"{b['engine']} / {a['engine']} wall time: {b['wall_s'] / a['wall_s']:.2f}x")
        if args.repeat:
            again = run(args.engines[0], Path(tmp) / "again", args.seed)
            same = fingerprint(Path(tmp) / args.engines[0]) == fingerprint(Path(tmp) / "again")
            print(
                f"repeat ({args.engines[0]}): {again['wall_s']:.1f} s wall; probe records and losses "
                f"{'identical' if same else 'DIFFER'}"
            )


if __name__ == "__main__":
    main()
