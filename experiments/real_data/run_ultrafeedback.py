"""DPO and IPO on real pairwise data: the UltraFeedback slice, SmolLM2-135M-Instruct.

Held-out implicit-reward pairwise accuracy (the chosen answer's log-ratio
``log pi - log pi_ref`` strictly above the rejected one's) and mean margin of
the reference, of DPO (loss ``dpo``) and of IPO (loss ``ipo``), each trained
with ``prefpool train`` from the same reference cache. Train pairs come from
``train_clean.jsonl``, held-out pairs from ``eval_clean.jsonl`` (a separate file,
no prompt in common). Every stage is prefpool's own command, run as a subprocess:

    model    tools/get-smollm2 (GGUF) -> float32 save_pretrained folder (run_alpaca.prepare_model, cached)
    select   drop pairs with equal scores (no preference) or equal texts; reduced: prompts <= P tokens;
             first N of each file in prompt_id order
    ingest   prefpool ingest SIDE.jsonl --format pairwise               (train and held-out separately)
    logprobs prefpool logprobs ... --max-length L                        (the shared reference cache)
    build    prefpool build --kind pairwise ... --missing drop
    train    prefpool train CONFIG.yaml   (loss dpo | ipo; per seed)
    eval     prefpool eval --model M --data HELDOUT_TABLE --device D     (reference, then every run)

Rerunning the same command skips what is finished. Writes OUT/results.json,
OUT/timings.json and prints a markdown table.

    python experiments/real_data/run_ultrafeedback.py --setting reduced --seeds 0 1 2 --threads 1
    python experiments/real_data/run_ultrafeedback.py --setting full --seeds 0 1 2   # a GPU (see README.md)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import (
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
REPO = HERE.parents[1]
DATA = REPO.parent / "shared" / "data" / "ultrafeedback"
FILES = {"train": DATA / "train_clean.jsonl", "heldout": DATA / "eval_clean.jsonl"}

# n_train / n_heldout: the first N selected pairs of each file in prompt_id order (a hash: an unbiased
# subset of the selected pairs); None = all of them. max_prompt_tokens: keep only pairs whose chat-rendered
# prompt (with the template's default system turn) is at most this many tokens, so that each answer keeps
# at least max_length - max_prompt_tokens tokens; None = no such filter (logprobs still drops a prompt that
# leaves no answer token). Chosen once, before any result was seen.
SETTINGS: dict[str, dict] = {
    "reduced": {
        "n_train": 48,
        "n_heldout": 64,
        "max_length": 160,
        "max_prompt_tokens": 96,
        "eval_device": "cpu",
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
        "max_length": 2048,
        "max_prompt_tokens": None,
        "eval_device": "cuda",
        "train": {
            "beta": 0.1,
            "lr": 1.0e-6,
            "warmup_steps": 10,
            "batch_size": 8,
            "gradient_accumulation_steps": 4,
            "epochs": 3,
            "max_steps": None,
            "lora_r": 0,
            "save_steps": 20,
            "save_total_limit": 1,
        },
    },
}
METHODS = ("dpo", "ipo")  # method name = prefpool loss name


# -- select -----------------------------------------------------------------------------------------


def select(setting: dict, model: Path, out: Path) -> dict:
    """Write OUT/split/{train,heldout}.jsonl (rows of the source files, unchanged) and split.json."""
    from transformers import AutoTokenizer

    from prefpool.pipeline.io.ids import normalize_messages, prompt_id
    from prefpool.pipeline.model.tokenize import chat_ids

    tok = AutoTokenizer.from_pretrained(str(model))
    folder = out / "split"
    folder.mkdir(parents=True, exist_ok=True)
    limit = setting["max_prompt_tokens"]
    info: dict = {
        "rule": "drop score_chosen == score_rejected and chosen == rejected (stripped); "
        + (f"keep rendered prompts <= {limit} tokens; " if limit else "")
        + "first N in prompt_id order"
    }
    for side, path in FILES.items():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        counts = {"rows_in_file": len(rows), "score_ties": 0, "same_text": 0, "prompt_too_long": 0}
        keep = []
        for r in rows:
            meta = r["metadata"] if isinstance(r["metadata"], dict) else {}
            if r["chosen"].strip() == r["rejected"].strip():
                counts["same_text"] += 1
                continue
            if meta.get("score_chosen") == meta.get("score_rejected"):
                counts["score_ties"] += 1
                continue
            messages = normalize_messages(r["prompt"])
            if limit is not None and len(chat_ids(tok, messages, add_generation_prompt=True)) > limit:
                counts["prompt_too_long"] += 1
                continue
            keep.append((prompt_id(messages), r))
        keep.sort(key=lambda x: x[0])
        if len({pid for pid, _ in keep}) != len(keep):
            raise SystemExit(f"{path}: duplicate prompts")
        counts["selectable"] = len(keep)
        n = setting[f"n_{side}"]
        keep = keep if n is None else keep[:n]
        text = "\n".join(json.dumps(r, ensure_ascii=False) for _, r in keep) + "\n"
        dest = folder / f"{side}.jsonl"
        if not dest.exists() or dest.read_text() != text:  # unchanged: keep it (ingest's input hash)
            dest.write_text(text)
        gaps = [r["metadata"]["score_chosen"] - r["metadata"]["score_rejected"] for _, r in keep]
        info[side] = {
            "source": str(path),
            **counts,
            "pairs": len(keep),
            "score_gap_mean": round(statistics.mean(gaps), 3) if gaps else None,
            "prompt_ids": [pid for pid, _ in keep],
        }
    if set(info["train"]["prompt_ids"]) & set(info["heldout"]["prompt_ids"]):
        raise SystemExit("a prompt is in both the train and the held-out selection")
    (folder / "split.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


# -- pipeline ---------------------------------------------------------------------------------------


def pipeline(setting: dict, model: Path, out: Path, timer: Timer) -> dict[str, Path]:
    """ingest -> logprobs -> build pairwise, separately for the train and held-out pairs."""
    return build_tables(model, out, timer, fmt="pairwise", kind="pairwise", max_length=setting["max_length"])


def data_stats(tables: dict[str, Path], info: dict, model: Path, max_length: int) -> dict:
    """Rows per table (only its side's prompts), what ingest/logprobs/build dropped, and truncation:
    answers cut at max_length, and pairs whose cut chosen and rejected tokens are identical (a tie for
    every model)."""
    from transformers import AutoTokenizer

    from prefpool.pipeline.io.read import read_table
    from prefpool.pipeline.model.tokenize import encode_pair

    tok = AutoTokenizer.from_pretrained(str(model))
    stats = {}
    for side, table in tables.items():
        rows = read_table(table).to_pylist()
        if not {r["prompt_id"] for r in rows} <= set(info[side]["prompt_ids"]):
            raise SystemExit(f"{table}: prompt ids outside the {side} selection")
        cut = same = 0
        lengths = []
        for r in rows:
            enc = [
                encode_pair(tok, r["prompt"], r[k][0]["content"], max_length=max_length) for k in ("chosen", "rejected")
            ]
            cut += sum(e.truncated for e in enc)
            same += enc[0].completion_ids == enc[1].completion_ids
            lengths += [len(e.completion_ids) for e in enc]
        stats[side] = {
            "rows": len(rows),
            "pairs_selected": info[side]["pairs"],
            "answers_truncated": round(cut / max(1, 2 * len(rows)), 3),
            "pairs_identical_after_truncation": same,
            "answer_tokens_median": statistics.median(lengths) if lengths else None,
            "ingest_report": read_meta(table.parent / "ingest", REPORT),
            "logprobs_report": read_meta(table.parent / "logprobs", REPORT),
            "build_report": read_meta(table, REPORT),
        }
    return stats


# -- results ----------------------------------------------------------------------------------------


def summarize(ranking: dict) -> dict:
    keys = ("accuracy", "tie_rate", "mean_margin", "mean_logratio_margin", "num_pairs")
    return {k: ranking[k] for k in keys}


def train_stats(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {
        "train_reward_accuracy_last": rows[-1].get("rewards/accuracies") if rows else None,
        "train_margin_last": rows[-1].get("rewards/margins") if rows else None,
    }


def table(results: dict) -> str:
    lines = [
        "| method | seeds | held-out pairwise acc. | ties | mean margin (β·Δ, β=0.1) | "
        "mean log-ratio margin Δ (nats) | train s/run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    ref = results["reference"]
    lines.append(
        f"| reference | - | {ref['accuracy']:.3f} | {ref['tie_rate']:.3f} | {ref['mean_margin']:.3f} | "
        f"{ref['mean_logratio_margin']:.3f} | - |"
    )
    for method in METHODS:
        runs = [r[method] for r in results["runs"].values() if method in r]
        if not runs:
            continue
        cells = [
            mean_std([r[k] for r in runs]) for k in ("accuracy", "tie_rate", "mean_margin", "mean_logratio_margin")
        ]
        lines.append(
            f"| {method.upper()} | {len(runs)} | {' | '.join(cells)} | "
            f"{statistics.mean(r['train_seconds'] for r in runs):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(ap, SETTINGS, "ultrafeedback-SETTING", "pairs")
    ap.add_argument("--eval-device", default=None, help="override the setting's prefpool eval --device")
    args = ap.parse_args()

    setting = json.loads(json.dumps(SETTINGS[args.setting]))
    for key in ("n_train", "n_heldout", "eval_device"):
        if getattr(args, key) is not None:
            setting[key] = getattr(args, key)
    set_threads(args.threads)
    out = (args.out or HERE / "runs" / f"ultrafeedback-{args.setting}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer(out / "timings.json")
    wall = time.perf_counter()

    start = time.perf_counter()
    model = prepare_model(args.model_cache.resolve())
    timer.record("model", time.perf_counter() - start)
    info = select(setting, model, out)
    log(
        f"selected: {info['train']['pairs']} train pairs (of {info['train']['selectable']} selectable) / "
        f"{info['heldout']['pairs']} held-out pairs (of {info['heldout']['selectable']})"
    )
    tables = pipeline(setting, model, out, timer)
    eval_opts = ("--device", setting["eval_device"])

    results: dict = {
        "setting": args.setting,
        "config": setting,
        "max_steps_override": args.max_steps,
        "threads": args.threads,
        "selection": {side: {k: v for k, v in info[side].items() if k != "prompt_ids"} for side in FILES},
        "selection_rule": info["rule"],
        "data": data_stats(tables, info, model, setting["max_length"]),
        "tie_rule": "prefpool eval: a pair ties when the chosen and rejected log-ratios differ by <= tie_atol=1e-4 "
        "nats; accuracy counts strict wins only (a tie is not a win), so the reference (every "
        "log-ratio 0) scores accuracy 0 with tie rate 1",
        "runs": {},
    }
    ref = run_eval(model, tables["heldout"], out / "evals" / "reference", timer, "eval_reference", eval_opts)
    results["reference"] = {**summarize(ref["ranking"]), "eval_seconds": ref["seconds"]}

    for seed in args.seeds:
        per_seed = results["runs"].setdefault(str(seed), {})
        for method in METHODS:
            run_dir = out / "train" / f"{method}-seed{seed}"
            cfg = train_config(setting, model, tables["train"], run_dir, None, seed, args.max_steps, loss=method)
            if not (run_dir / "train_summary.json").exists():
                prefpool("train", cfg, timer=timer, name=f"train_{method}_seed{seed}")
            summary = json.loads((run_dir / "train_summary.json").read_text())
            ev = run_eval(
                run_dir,
                tables["heldout"],
                out / "evals" / f"{method}-seed{seed}",
                timer,
                f"eval_{method}_seed{seed}",
                eval_opts,
            )
            per_seed[method] = {
                **summarize(ev["ranking"]),
                **train_stats(run_dir),
                "train_seconds": round(summary["seconds"], 1),
                "train_steps": summary["steps"],
                "first_loss": summary["first_loss"],
                "final_loss": summary["final_loss"],
                "step0_max_abs_diff": summary["step0_max_abs_diff"],
                "eval_seconds": ev["seconds"],
            }
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    results["timings_seconds"] = timer.data
    results["wall_seconds_this_invocation"] = round(time.perf_counter() - wall, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))
    print(f"\nresults: {out / 'results.json'}; stage wall times: {out / 'timings.json'}")


if __name__ == "__main__":
    main()
