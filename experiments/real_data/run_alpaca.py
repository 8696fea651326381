"""MC-PO vs DPO-random on real ranked data: AlpacaEval pools, SmolLM2-135M-Instruct.

Held-out implicit-reward ranking (how often the preferred answer ranks first
in its pool, its mean rank) of the reference, of DPO with a uniformly random
rejected answer (MC-PO, kernel ``uniform``) and of MC-PO (kernel ``sample``),
each trained with ``prefpool train`` from the same reference cache. Every
stage is prefpool's own command, run as a subprocess:

    model   tools/get-smollm2 (GGUF) -> float32 save_pretrained folder (once, cached)
    split   held-out = stable_bucket(prompt_id, 10) == 0, before anything is trained
    ingest  prefpool ingest SPLIT.jsonl --format ranked             (train and held-out separately)
    logprobs prefpool logprobs ... --max-length L                   (the shared reference cache)
    build   prefpool build --kind mcpo ... --max-pool K --missing drop
    train   prefpool train CONFIG.yaml   (loss mcpo; kernel uniform | sample; per seed)
    eval    prefpool eval --model M --data HELDOUT_TABLE            (reference, then every run)

Rerunning the same command skips what is finished (pipeline stages are
resumable; a trained run with train_summary.json and an eval with its JSON
are not redone). Writes OUT/results.json and prints a markdown table.

    python experiments/real_data/run_alpaca.py --setting reduced --seeds 0 1 2
    python experiments/real_data/run_alpaca.py --setting full --seeds 0 1 2   # a GPU (see README.md)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import (
    REPO,
    Timer,
    build_tables,
    common_arguments,
    log,
    mean_std,
    prefpool,
    prepare_model,
    run_eval,
    set_threads,
    train_config,
)

from prefpool.pipeline.io.layout import REPORT, read_meta

HERE = Path(__file__).resolve().parent
DATA = REPO.parent / "shared" / "data" / "alpaca_eval" / "alpaca_eval_ranked_pools.jsonl"
HELDOUT_BUCKETS = 10  # held-out = stable_bucket(prompt_id, 10) == 0: about 80 of the 805 prompts

# What changes between the settings. n_train / n_heldout: None = every prompt of that side of the
# split; a number = the first N of that side in prompt_id order (a hash, so an unbiased subset).
# max_pool: pool members kept per prompt (the best answer's strictly worse answers, in rank order);
# None = the whole pool (up to 11).
SETTINGS: dict[str, dict] = {
    "reduced": {
        "n_train": 48,
        "n_heldout": 64,
        "max_pool": 3,
        "max_length": 160,
        "train": {
            "beta": 0.1,
            "lr": 5.0e-4,
            "warmup_steps": 2,
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
            "epochs": 1,
            "max_steps": None,
            "lora_r": 16,
            "lora_alpha": 32.0,
            "lora_target_modules": ["all-linear"],
            "save_steps": 4,
            "save_total_limit": 1,
        },
    },
    "full": {
        "n_train": None,
        "n_heldout": None,
        "max_pool": None,
        "max_length": 2048,
        "train": {
            "beta": 0.1,
            "lr": 1.0e-6,
            "warmup_steps": 10,
            "batch_size": 8,
            "gradient_accumulation_steps": 4,
            "epochs": 3,
            "max_steps": None,
            "lora_r": 0,
            "score_max_tokens": 65536,
            "save_steps": 20,
            "save_total_limit": 1,
        },
    },
}
# method name -> (MC-PO kernel, M sampled negatives). ``uniform`` is the MC-PO paper's "Random" row
# (M = 1: DPO with a random rejected answer); ``sample`` draws from {y0} ∪ pool by exp(implicit reward).
METHODS = {
    "dpo_random": ("uniform", 1),
    "mcpo": ("sample", 1),
    "random_m2": ("uniform", 2),
    "mcpo_m2": ("sample", 2),
    "random_m3": ("uniform", 3),
    "mcpo_m3": ("sample", 3),
}
DEFAULT_METHODS = ("dpo_random", "mcpo")
# "a beats b" readings, per seed (same seed: same data order and random stream; only the method differs)
PAIRED = (
    ("mcpo", "dpo_random"),  # the paper's kernel against its Random row, M = 1
    ("mcpo_m2", "random_m2"),
    ("mcpo_m3", "random_m3"),
    ("mcpo_m2", "mcpo"),  # the M ablation: more sampled negatives
    ("mcpo_m3", "mcpo"),
    ("random_m2", "dpo_random"),
    ("random_m3", "dpo_random"),
)
# two-sided 95 % Student t quantiles by degrees of freedom (n seeds - 1)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


# -- model ------------------------------------------------------------------------------------------


# -- split ------------------------------------------------------------------------------------------


def trim(candidates: list[dict], max_pool: int | None) -> list[dict]:
    """The answers ``build --kind mcpo --max-pool K`` uses: the best (lowest rank; the first on a
    tie, as ``best_ties=first``) and the first K answers ranked strictly below it, in answer order.
    Trimming before ``logprobs`` only saves scoring answers the table would drop; build's own
    ``max_pool`` is still passed (and then drops nothing, see build/*/.prefpool/report.json)."""
    if max_pool is None:
        return candidates
    best = min(range(len(candidates)), key=lambda i: (candidates[i]["rank"], i))
    worse = [c for c in candidates if c["rank"] > candidates[best]["rank"]][:max_pool]
    keep = {id(candidates[best])} | {id(c) for c in worse}
    return [c for c in candidates if id(c) in keep]


def split(setting: dict, out: Path) -> dict:
    """Write OUT/split/{train,heldout}.jsonl (rows of the source file) and split.json (their ids)."""
    from prefpool.pipeline.io.ids import normalize_messages, prompt_id, stable_bucket

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    keyed = sorted(((prompt_id(normalize_messages(r["instruction"])), r) for r in rows), key=lambda x: x[0])
    if len({pid for pid, _ in keyed}) != len(keyed):
        raise SystemExit(f"{DATA}: duplicate prompts")
    sides = {
        "heldout": [x for x in keyed if stable_bucket(x[0], HELDOUT_BUCKETS) == 0],
        "train": [x for x in keyed if stable_bucket(x[0], HELDOUT_BUCKETS) != 0],
    }
    folder = out / "split"
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "source": str(DATA),
        "rule": f"heldout: stable_bucket(prompt_id, {HELDOUT_BUCKETS}) == 0",
        "prompts_in_source": len(rows),
    }
    for side, items in sides.items():
        n = setting[f"n_{side}"]
        info[f"{side}_prompts_available"] = len(items)
        items = items if n is None else items[:n]
        lines = [
            json.dumps({**r, "candidates": trim(r["candidates"], setting["max_pool"])}, ensure_ascii=False)
            for _, r in items
        ]
        text = "\n".join(lines) + "\n"
        path = folder / f"{side}.jsonl"
        if not path.exists() or path.read_text() != text:  # unchanged: keep it (ingest's input hash)
            path.write_text(text)
        info[f"{side}_prompt_ids"] = [pid for pid, _ in items]
        info[f"{side}_prompts"] = len(items)
    assert not set(info["train_prompt_ids"]) & set(info["heldout_prompt_ids"])
    (folder / "split.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


# -- pipeline ---------------------------------------------------------------------------------------


def pipeline(setting: dict, model: Path, out: Path, timer: Timer) -> dict[str, Path]:
    """ingest -> logprobs -> build mcpo, separately for the train and held-out prompts."""
    max_pool = () if setting["max_pool"] is None else ("--max-pool", setting["max_pool"])
    return build_tables(
        model, out, timer, fmt="ranked", kind="mcpo", max_length=setting["max_length"], build_options=max_pool
    )


def check_split(tables: dict[str, Path], info: dict) -> dict:
    """The built tables hold only their side's prompts; count rows and what build/logprobs dropped."""
    from prefpool.pipeline.io.read import read_table

    stats = {}
    for side, table in tables.items():
        t = read_table(table).to_pylist()
        ids = {r["prompt_id"] for r in t}
        if not ids <= set(info[f"{side}_prompt_ids"]):
            raise SystemExit(f"{table}: prompt ids outside the {side} split")
        lp_report = read_meta(table.parent / "logprobs", REPORT)
        build_report = read_meta(table, REPORT)
        stats[side] = {
            "rows": len(t),
            "prompts_in_split": info[f"{side}_prompts"],
            "mean_pool_size": round(sum(len(r["pool"]) for r in t) / max(1, len(t)), 3),
            "logprobs_report": lp_report,
            "build_report": build_report,
        }
    return stats


def truncation_stats(tables: dict[str, Path], model: Path, max_length: int) -> dict:
    """How many preferred / pool answers the cache cut at max_length (the trainer cuts the same)."""
    from transformers import AutoTokenizer

    from prefpool.pipeline.io.read import read_table
    from prefpool.pipeline.model.tokenize import encode_pair

    tok = AutoTokenizer.from_pretrained(str(model))
    stats = {}
    for side, table in tables.items():
        pref = pool = pref_cut = pool_cut = 0
        for r in read_table(table).to_pylist():
            pref += 1
            pref_cut += encode_pair(tok, r["prompt"], r["preferred"], max_length=max_length).truncated
            for text in r["pool"]:
                pool += 1
                pool_cut += encode_pair(tok, r["prompt"], text, max_length=max_length).truncated
        stats[side] = {
            "preferred_truncated": round(pref_cut / max(1, pref), 3),
            "pool_truncated": round(pool_cut / max(1, pool), 3),
        }
    return stats


# -- train and eval ---------------------------------------------------------------------------------


def summarize(ranking: dict) -> dict:
    keys = (
        "top1_accuracy",
        "mean_rank",
        "pairwise_accuracy",
        "pairwise_tie_rate",
        "mean_margin",
        "num_prompts",
        "mean_pool_size",
    )
    return {k: ranking[k] for k in keys}


def kernel_stats(run_dir: Path) -> dict:
    """From metrics.jsonl: the kernel's mean entropy (log M = uniform) and the per-step pick histograms."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    ent = [r["mcpo/entropy"] for r in rows if "mcpo/entropy" in r]
    kl = [r["mcpo/kernel_kl_uniform"] for r in rows if "mcpo/kernel_kl_uniform" in r]
    y0 = [r["mcpo/chosen_drawn"] for r in rows if "mcpo/chosen_drawn" in r]
    return {
        "kernel_entropy_mean": statistics.mean(ent) if ent else None,
        "kernel_entropy_last": ent[-1] if ent else None,
        "kernel_kl_uniform_mean": statistics.mean(kl) if kl else None,
        "chosen_drawn_mean": statistics.mean(y0) if y0 else None,
        "train_reward_accuracy_last": rows[-1].get("rewards/accuracies") if rows else None,
        "selected_hist": [r.get("mcpo/selected_hist") for r in rows],
    }


def table(results: dict) -> str:
    lines = [
        "| method | seeds | top-1 accuracy | mean rank | pairwise acc. | pairwise ties | kernel KL to uniform | "
        "y0 draws | train s/run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ref = results["reference"]
    lines.append(
        f"| reference | - | {ref['top1_accuracy']:.3f} | {ref['mean_rank']:.3f} | "
        f"{ref['pairwise_accuracy']:.3f} | {ref['pairwise_tie_rate']:.3f} | - | - | - |"
    )
    for method, (kernel, m) in METHODS.items():
        runs = [r[method] for r in results["runs"].values() if method in r]
        if not runs:
            continue
        top1, rank, pair, ties = (
            mean_std([r[k] for r in runs])
            for k in ("top1_accuracy", "mean_rank", "pairwise_accuracy", "pairwise_tie_rate")
        )
        lines.append(
            f"| {method} (kernel {kernel}, M = {m}) | {len(runs)} | {top1} | {rank} | {pair} | {ties} | "
            f"{_mean_of(runs, 'kernel_kl_uniform_mean')} | {_mean_of(runs, 'chosen_drawn_mean')} | "
            f"{statistics.mean(r['train_seconds'] for r in runs):.0f} |"
        )
    return "\n".join(lines)


def _mean_of(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs if r.get(key) is not None]
    return f"{statistics.mean(values):.3f}" if values else "-"


def paired_table(results: dict) -> str:
    """Per-seed differences ``a - b`` of held-out top-1 accuracy and pairwise accuracy, their mean with a
    95 % t-interval over the seeds, and how many seeds have ``a`` ahead."""
    lines = [
        "| a − b | seeds | top-1 per seed | top-1 mean [95 % t] | a ahead | pairwise acc. mean [95 % t] |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for a, b in PAIRED:
        per_seed = [r for r in results["runs"].values() if a in r and b in r]
        if not per_seed:
            continue
        top1 = [r[a]["top1_accuracy"] - r[b]["top1_accuracy"] for r in per_seed]
        pair = [r[a]["pairwise_accuracy"] - r[b]["pairwise_accuracy"] for r in per_seed]
        lines.append(
            f"| {a} − {b} | {len(per_seed)} | {', '.join(f'{d:+.3f}' for d in top1)} | {_t_interval(top1)} | "
            f"{sum(d > 0 for d in top1)} of {len(top1)} | {_t_interval(pair)} |"
        )
    return "\n".join(lines)


def _t_interval(diffs: list[float]) -> str:
    mean = statistics.mean(diffs)
    if len(diffs) < 2 or len(diffs) - 1 not in T95:
        return f"{mean:+.3f}"
    half = T95[len(diffs) - 1] * statistics.stdev(diffs) / len(diffs) ** 0.5
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(ap, SETTINGS, "SETTING", "prompts")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(DEFAULT_METHODS))
    ap.add_argument("--beta", type=float, default=None, help="override the setting's beta")
    args = ap.parse_args()

    setting = json.loads(json.dumps(SETTINGS[args.setting]))
    for key in ("n_train", "n_heldout"):
        if getattr(args, key) is not None:
            setting[key] = getattr(args, key)
    if args.beta is not None:
        setting["train"]["beta"] = args.beta
    set_threads(args.threads)
    out = (args.out or HERE / "runs" / args.setting).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer(out / "timings.json")
    wall = time.perf_counter()

    start = time.perf_counter()
    model = prepare_model(args.model_cache.resolve())
    timer.record("model", time.perf_counter() - start)
    info = split(setting, out)
    log(
        f"split: {info['train_prompts']} train / {info['heldout_prompts']} held-out prompts "
        f"(of {info['train_prompts_available']} / {info['heldout_prompts_available']})"
    )
    tables = pipeline(setting, model, out, timer)
    data_stats = check_split(tables, info)
    data_stats["truncation"] = truncation_stats(tables, model, setting["max_length"])

    results: dict = {
        "setting": args.setting,
        "config": setting,
        "max_steps_override": args.max_steps,
        "threads": args.threads,
        "data": data_stats,
        "tie_rule": "prefpool eval: log-ratios within tie_atol=1e-4 nats tie; a tie is never a "
        "win (top-1 needs a strict win over every pool member); ranks are mid-ranks "
        "(1 + #above + #tied/2), so an all-tie reference scores top-1 0 and mean rank "
        "1 + M/2",
        "runs": {},
    }
    ref = run_eval(model, tables["heldout"], out / "evals" / "reference", timer, "eval_reference")
    results["reference"] = {**summarize(ref["ranking"]), "eval_seconds": ref["seconds"]}

    for seed in args.seeds:
        per_seed = results["runs"].setdefault(str(seed), {})
        for method in args.methods:
            kernel, num_negatives = METHODS[method]
            run_dir = out / "train" / f"{method}-seed{seed}"
            cfg = train_config(
                setting, model, tables["train"], run_dir, kernel, seed, args.max_steps, num_negatives=num_negatives
            )
            if not (run_dir / "train_summary.json").exists():
                prefpool("train", cfg, timer=timer, name=f"train_{method}_seed{seed}")
            summary = json.loads((run_dir / "train_summary.json").read_text())
            ev = run_eval(
                run_dir,
                tables["heldout"],
                out / "evals" / f"{method}-seed{seed}",
                timer,
                f"eval_{method}_seed{seed}",
            )
            per_seed[method] = {
                **summarize(ev["ranking"]),
                **kernel_stats(run_dir),
                "train_seconds": round(summary["seconds"], 1),
                "train_steps": summary["steps"],
                "first_loss": summary["first_loss"],
                "final_loss": summary["final_loss"],
                "step0_max_abs_diff": summary["step0_max_abs_diff"],
                "eval_seconds": ev["seconds"],
            }
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    for per_seed in results["runs"].values():  # same seed = same data order and random stream
        if all(m in per_seed for m in DEFAULT_METHODS):
            a, b = (per_seed[m]["selected_hist"] for m in DEFAULT_METHODS)
            per_seed["steps_with_different_picks"] = sum(x != y for x, y in zip(a, b, strict=True))
    results["timings_seconds"] = timer.data
    results["wall_seconds_this_invocation"] = round(time.perf_counter() - wall, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))
    print()
    print(paired_table(results))
    print(f"\nresults: {out / 'results.json'}; stage wall times: {out / 'timings.json'}")


if __name__ == "__main__":
    main()
