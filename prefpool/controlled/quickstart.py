"""`prefpool quickstart`: the whole system on a controlled task with a known reward, on the CPU.

In the spirit of the DPO paper's controlled sentiment experiment, everything is
made here, offline (``prefpool.controlled``):

1. a tiny reference model fit to a synthetic language of short descriptions;
2. the real pipeline, ``prefpool run pipeline.yaml``: ingest the prompts,
   generate 8 samples per prompt from the reference (vllm when installed, else
   the hf engine), label them with a noisy annotator (the hidden true reward
   plus Gumbel noise = Bradley-Terry labels), cache the reference log-probs,
   build the MC-PO table; once for the training topics and once for held-out topics;
3. ``prefpool train`` (the ``Trainer``; no reference model held) from the
   reference, with DPO (a uniformly random rejected answer from the pool) and
   with MC-PO (the negative drawn ∝ exp(implicit reward)), at a β where that
   kernel is far from uniform; every few steps the policy is probed on fresh
   samples for held-out prompts: true reward and KL(policy ‖ reference). With
   ``seeds`` > 1 both are trained again with the next training seeds (data order
   and kernel draws; same data);
4. ``prefpool eval`` of each final model on the held-out table (implicit-reward
   ranking of the annotator's pick; reward and win-rate of fresh samples
   against the reference's);
5. a report folder: ``REPORT.md`` (the final policies of the first training
   seed, the kernel's diagnostics, and with ``seeds`` > 1 the mean ± sd across
   seeds), ``curves.png``, ``summary.json``, the probe records
   (``runs/<method>/probe.jsonl``) and the trainer's ``metrics.jsonl``.

Deterministic for a seed on a given machine and engine.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import yaml

from prefpool.controlled.data import available_engine, prepare_data, run_prefpool
from prefpool.controlled.probe import Probe
from prefpool.controlled.report import markdown_table, plot_probe_curves
from prefpool.controlled.task import held_out_topics, task_prompts
from prefpool.controlled.training import kernel_summary, train_with_probe
from prefpool.core.errors import ConfigError, OutputExistsError
from prefpool.core.secrets import redact, redact_text
from prefpool.pipeline.engines.registry import ENGINES
from prefpool.pipeline.io.atomic import write_json, write_text
from prefpool.pipeline.io.swap import real_folder
from prefpool.pipeline.io.writer_lock import writes_folder
from prefpool.train.config import TrainConfig
from prefpool.train.evaluate import EVAL_FILE

MARKER = ".prefpool-quickstart"
REPORT = "REPORT.md"  # written last
# folder name -> (label, TrainConfig overrides)
METHODS = {
    "dpo-random": ("DPO (random rejected)", {"kernel": "uniform"}),
    "mcpo": ("MC-PO (sample kernel)", {"kernel": "sample"}),
}


def _help(text: str) -> dict:
    return {"help": text}


EngineChoice = Literal[("auto", *ENGINES)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class QuickstartConfig:
    out_dir: str = field(default="runs/quickstart", metadata=_help("Report folder: REPORT.md, curves.png, data, runs."))
    seed: int = field(
        default=0, metadata=_help("Seeds the reference model, the samples, the data order and the kernel.")
    )
    engine: EngineChoice = field(
        default="auto", metadata=_help(f"Generation engine: auto (vllm when installed) | {' | '.join(ENGINES)}.")
    )
    n: int = field(default=8, metadata=_help("Samples per prompt: the preferred answer and a pool of up to n - 1."))
    steps: int = field(default=80, metadata=_help("Training steps per method."))
    batch_size: int = field(default=8, metadata=_help("Prompts per training step."))
    lr: float = field(default=5e-4, metadata=_help("Peak learning rate."))
    beta: float = field(
        default=1.0,
        metadata=_help("KL strength of both methods; at 0.1 MC-PO's kernel is near uniform on this task."),
    )
    probe_every: int = field(default=10, metadata=_help("Probe the policy every N steps (true reward, KL)."))
    probe_samples: int = field(default=8, metadata=_help("Fresh samples per held-out prompt at each probe."))
    reference_steps: int = field(
        default=300, metadata=_help("Maximum-likelihood steps fitting the reference to the language.")
    )
    methods: tuple[str, ...] = field(default=tuple(METHODS), metadata=_help(f"Methods to train: {', '.join(METHODS)}."))
    seeds: int = field(
        default=1,
        metadata=_help("Training seeds per method (seed, seed + 1, ...; same data): > 1 adds mean ± sd across them."),
    )
    overwrite: bool = field(default=False, metadata=_help("Replace an earlier quickstart folder at --out."))


def earlier_folder(out: Path) -> Path:
    """Where ``--overwrite`` keeps the earlier quickstart folder until the new one is finished."""
    return out.parent / f".{out.name}.quickstart-earlier"


def _fresh_folder(out: Path, overwrite: bool) -> Path | None:
    """Make ``out`` a new quickstart folder; return where the earlier one was set aside (None: there was none).

    The files record absolute paths, so the new run cannot be built elsewhere and moved; ``--overwrite``
    renames the earlier folder aside instead (never deleting it) and ``run_quickstart`` removes it only
    once the new report is written. A run killed before that leaves the earlier folder aside; the next run
    puts it back first, so it is never lost.
    """
    earlier = earlier_folder(out)
    if earlier.is_dir() and not (out / REPORT).is_file():
        if out.exists():  # the killed run's partial work: made by quickstart, never the user's
            if not (out / MARKER).exists():
                raise OutputExistsError(f"{out} is not a quickstart folder (no {MARKER}); not removing it")
            shutil.rmtree(out)
        os.replace(earlier, out)  # the earlier result back under its name
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"{out} is not empty; pass --overwrite (replaces an earlier quickstart folder) or choose another --out"
            )
        if not (out / MARKER).exists():
            raise OutputExistsError(f"{out} is not a quickstart folder (no {MARKER}); not removing it")
        shutil.rmtree(earlier, ignore_errors=True)  # a leftover older than the folder in place
        os.replace(out, earlier)
    else:
        earlier = None
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `prefpool quickstart`; --overwrite may remove this folder\n")
    return earlier


def _eval(model: Path, data: Path, reference: Path, out: Path, seed: int) -> dict:
    """``prefpool eval ... --out OUT``; returns OUT/eval.json."""
    args = [
        "eval",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--reward-fn",
        "prefpool.controlled.task:reward",
        "--ref-model",
        str(reference),
        "--num-samples",
        "4",
        "--seed",
        str(seed),
    ]
    run_prefpool(args)
    return json.loads((out / EVAL_FILE).read_text())


@writes_folder(lambda a: a["cfg"].out_dir, command="quickstart")
def run_quickstart(cfg: QuickstartConfig = QuickstartConfig(), *, log=print) -> dict:
    """The main job on a controlled task with a known reward: pools, cached reference log-probs,
    DPO and MC-PO trained without a reference model, evaluated; a report with plots (CPU, minutes).

    Returns the summary that is also written to ``summary.json``.
    """
    import transformers

    say = log or (lambda _line: None)
    start = time.perf_counter()
    # One thread: tiny models gain little from more, OpenMP threads collapse when another process
    # holds a core, and results then do not depend on the machine's core count.
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"methods: unknown {unknown}; known: {list(METHODS)}")
    out = real_folder(cfg.out_dir)  # a link: the folder it names is replaced, the link kept
    earlier = _fresh_folder(out, cfg.overwrite)
    engine = available_engine(cfg.engine)
    data = prepare_data(out, seed=cfg.seed, engine=engine, n=cfg.n, reference_steps=cfg.reference_steps, log=log)
    data_seconds = time.perf_counter() - start

    probe = Probe(
        data.reference, task_prompts(held_out_topics()), samples_per_prompt=cfg.probe_samples, seed=cfg.seed + 1000
    )
    runs, results, seeded = {}, [], []
    for name in cfg.methods:
        label, overrides = METHODS[name]
        for k in range(cfg.seeds):
            folder = name if k == 0 else f"{name}-seed{cfg.seed + k}"
            tcfg = TrainConfig(
                model=str(data.reference),
                data=str(data.train_table),
                output_dir=str(out / "runs" / folder),
                loss="mcpo",
                beta=cfg.beta,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                max_steps=cfg.steps,
                seed=cfg.seed + k,
                progress=False,
                **overrides,
            )
            Path(tcfg.output_dir).mkdir(parents=True, exist_ok=True)
            write_text(out / "runs" / f"{folder}.yaml", yaml.safe_dump(redact(asdict(tcfg)), sort_keys=False))
            say(f"$ prefpool train {out / 'runs' / f'{folder}.yaml'}   # {label}, probed every {cfg.probe_every} steps")
            records = train_with_probe(tcfg, probe, every=cfg.probe_every, log=log, label=folder)
            kernel = kernel_summary(tcfg.output_dir)
            seeded.append({"method": name, "seed": tcfg.seed, "final": records[-1], "kernel": kernel})
            if k:
                continue
            runs[label] = records
            say(f"$ prefpool eval --model {tcfg.output_dir} --data {data.heldout_table} ...")
            evaluation = _eval(
                Path(tcfg.output_dir), data.heldout_table, data.reference, out / "runs" / f"{name}-eval", cfg.seed
            )
            results.append({"method": name, "label": label, "final": records[-1], "kernel": kernel, "eval": evaluation})

    plot = plot_probe_curves(
        runs,
        out / "curves.png",
        title=f"controlled task, β {cfg.beta:g}, {len(probe.requests)} fresh samples per point, "
        f"one training seed ({cfg.seed})",
    )
    summary = {
        "config": asdict(cfg),
        "engine": engine,
        "commands": list(data.commands),
        "reference": runs[next(iter(runs))][0],
        "runs": results,
        "seeds": seeded,
        "across_seeds": across_seeds(seeded, cfg.methods) if cfg.seeds > 1 else None,
        "data_seconds": round(data_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out / "summary.json", summary)
    write_text(out / REPORT, redact_text(_report(summary, plot.name)))  # last: the folder is complete
    if earlier is not None:
        shutil.rmtree(earlier)
    say(f"quickstart done in {summary['seconds']:.0f} s: report {out / 'REPORT.md'}, plot {plot}")
    return summary


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, sd


def across_seeds(seeded: list[dict], methods: tuple[str, ...]) -> dict:
    """Per method, the final true reward and KL as mean ± sd (n - 1) across training seeds; with two
    methods, the paired difference (second minus first, seed by seed) and how many seeds it is > 0."""
    out: dict[str, dict] = {}
    for name in methods:
        finals = [r["final"] for r in seeded if r["method"] == name]
        reward, kl = _mean_sd([f["reward"] for f in finals]), _mean_sd([f["kl"] for f in finals])
        out[name] = {"n": len(finals), "reward": reward, "kl": kl}
    if len(methods) == 2:
        first, second = ({r["seed"]: r["final"]["reward"] for r in seeded if r["method"] == m} for m in methods)
        diffs = [second[s] - first[s] for s in sorted(first)]
        out["paired"] = {
            "of": f"{methods[1]} - {methods[0]}",
            "reward": _mean_sd(diffs),
            "positive": sum(d > 0 for d in diffs),
            "n": len(diffs),
        }
    return out


def _report(summary: dict, plot: str) -> str:
    cfg = summary["config"]
    ref = summary["reference"]
    n = ref["samples"]
    rows = [["reference (step 0)", f"{ref['reward']:+.2f} ± {ref['reward_se']:.2f}", "0", "-", "-", "-", "-", "-"]]
    for run in summary["runs"]:
        final, ev, kernel = run["final"], run["eval"], run["kernel"]
        ranking, samples = ev["ranking"], ev["samples"]
        rows.append(
            [
                run["label"],
                f"{final['reward']:+.2f} ± {final['reward_se']:.2f}",
                f"{final['kl']:.2f} ± {final['kl_se']:.2f}",
                f"{ranking['top1_accuracy']:.2f}" if "top1_accuracy" in ranking else "-",
                f"{samples['win_rate']:.2f}",
                f"{kernel['kl_uniform']:.2f} ({kernel['kl_uniform_first']:.2f} → {kernel['kl_uniform_last']:.2f})",
                f"{kernel['chosen_drawn']:.2f}",
                f"{final['train_seconds']:.1f}",
            ]
        )
    table = markdown_table(
        [
            "policy",
            "true reward ± s.e.",
            "KL to reference (nats) ± s.e.",
            "held-out top-1 ranking",
            "win-rate vs reference",
            "kernel KL to uniform (first → last step)",
            "y0 draws",
            "training s",
        ],
        rows,
    )
    seeds = ""
    if summary.get("across_seeds"):
        across = summary["across_seeds"]
        labels = dict(METHODS)
        seed_rows = []
        for name in cfg["methods"]:
            a = across[name]
            seed_rows.append(
                [
                    labels[name][0],
                    f"{a['reward'][0]:+.2f} ± {a['reward'][1]:.2f}",
                    f"{a['kl'][0]:.2f} ± {a['kl'][1]:.2f}",
                    str(a["n"]),
                ]
            )
        seed_table = markdown_table(["policy", "true reward ± sd", "KL (nats) ± sd", "seeds"], seed_rows)
        paired = ""
        if "paired" in across:
            pair = across["paired"]
            paired = (
                f"\nPaired by seed, {pair['of']}: true reward {pair['reward'][0]:+.2f} ± {pair['reward'][1]:.2f} "
                f"(mean ± sd of the {pair['n']} differences), positive in {pair['positive']} of {pair['n']} seeds.\n"
            )
        seeds = f"""
## Across {cfg["seeds"]} training seeds

The same data; training seeds {cfg["seed"]}..{cfg["seed"] + cfg["seeds"] - 1} (data order and kernel draws).
Final policies; here ± is the standard deviation across the seeds, not a standard error.

{seed_table}{paired}"""
    return f"""# prefpool quickstart report

Controlled task (`prefpool.controlled`): a tiny reference model of a synthetic
language; the hidden true reward counts positive minus negative adjectives;
preferences come from a noisy annotator (true reward + Gumbel noise, i.e.
Bradley-Terry labels) over {cfg["n"]} samples per prompt from the reference.
Trained from the reference for {cfg["steps"]} steps (batch {cfg["batch_size"]},
lr {cfg["lr"]}, β {cfg["beta"]}, seed {cfg["seed"]}) with no reference model in
memory: the reference enters only through the cached log-probs.

Generation engine: {summary["engine"]}. Made in {summary["seconds"]:.0f} s
(data and reference model {summary["data_seconds"]:.0f} s).

![curves]({plot})

## One training seed ({cfg["seed"]})

Final policies, on fresh samples for the held-out topics. Every ± in this table
is the standard error of the mean over the {n} probe samples of this one run:
it measures the probe's sampling noise, not how much another training seed
would change the result{" (see below)" if seeds else " (`--seeds N` measures that)"}.

{table}
- *true reward*, *KL*: {n} fresh samples (temperature 1) per point;
  KL is the mean of log π(y|x) − log π_ref(y|x) over them.
- *held-out top-1 ranking*: how often the annotator's pick has the highest
  implicit reward in its held-out pool (`prefpool eval`).
- *win-rate*: fresh samples against the reference's samples for the same
  seeds, by the true reward (ties count 1/2).
- *kernel KL to uniform*: KL of the method's kernel to the uniform distribution
  over the answers it draws from, the mean over training steps (MC-PO's
  `sample` kernel: over {{y0}} ∪ pool; near 0, it draws as a uniform pick would
  and MC-PO is DPO-random minus its y0 draws). DPO-random's kernel is uniform
  by construction (0). *y0 draws*: the fraction of draws that were the
  preferred answer itself, which give no gradient.
{seeds}
Commands that made the data:

```
{chr(10).join(summary["commands"])}
```

Per-method training configs: `runs/<method>.yaml` (`prefpool train` runs them);
per-step trainer metrics: `runs/<method>/metrics.jsonl`; probes:
`runs/<method>/probe.jsonl`.
"""
