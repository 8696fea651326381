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
   with MC-PO (the negative drawn ∝ exp(implicit reward)); every few steps
   the policy is probed on fresh samples for held-out prompts: true reward and
   KL(policy ‖ reference);
4. ``prefpool eval`` of each final model on the held-out table (implicit-reward
   ranking of the annotator's pick; reward and win-rate of fresh samples
   against the reference's);
5. a report folder: ``REPORT.md``, ``curves.png``, ``summary.json``, the
   probe records (``runs/<method>/probe.jsonl``) and the trainer's
   ``metrics.jsonl``.

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
from prefpool.controlled.training import train_with_probe
from prefpool.core.errors import ConfigError, OutputExistsError
from prefpool.core.secrets import redact, redact_text
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


@dataclass(frozen=True)
class QuickstartConfig:
    out_dir: str = field(default="runs/quickstart", metadata=_help("Report folder: REPORT.md, curves.png, data, runs."))
    seed: int = field(
        default=0, metadata=_help("Seeds the reference model, the samples, the data order and the kernel.")
    )
    engine: Literal["auto", "hf", "vllm"] = field(
        default="auto", metadata=_help("Generation engine: auto (vllm when installed) | hf | vllm.")
    )
    n: int = field(default=8, metadata=_help("Samples per prompt: the preferred answer and a pool of up to n - 1."))
    steps: int = field(default=80, metadata=_help("Training steps per method."))
    batch_size: int = field(default=8, metadata=_help("Prompts per training step."))
    lr: float = field(default=5e-4, metadata=_help("Peak learning rate."))
    beta: float = field(default=0.1, metadata=_help("KL strength of both methods."))
    probe_every: int = field(default=10, metadata=_help("Probe the policy every N steps (true reward, KL)."))
    probe_samples: int = field(default=8, metadata=_help("Fresh samples per held-out prompt at each probe."))
    reference_steps: int = field(
        default=300, metadata=_help("Maximum-likelihood steps fitting the reference to the language.")
    )
    methods: tuple[str, ...] = field(default=tuple(METHODS), metadata=_help(f"Methods to train: {', '.join(METHODS)}."))
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
    runs, results = {}, []
    for name in cfg.methods:
        label, overrides = METHODS[name]
        tcfg = TrainConfig(
            model=str(data.reference),
            data=str(data.train_table),
            output_dir=str(out / "runs" / name),
            loss="mcpo",
            beta=cfg.beta,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            max_steps=cfg.steps,
            seed=cfg.seed,
            progress=False,
            **overrides,
        )
        Path(tcfg.output_dir).mkdir(parents=True, exist_ok=True)
        write_text(out / "runs" / f"{name}.yaml", yaml.safe_dump(redact(asdict(tcfg)), sort_keys=False))
        say(f"$ prefpool train {out / 'runs' / f'{name}.yaml'}   # {label}, probed every {cfg.probe_every} steps")
        runs[label] = train_with_probe(tcfg, probe, every=cfg.probe_every, log=log, label=name)
        say(f"$ prefpool eval --model {tcfg.output_dir} --data {data.heldout_table} ...")
        evaluation = _eval(
            Path(tcfg.output_dir), data.heldout_table, data.reference, out / "runs" / f"{name}-eval", cfg.seed
        )
        results.append({"method": name, "label": label, "final": runs[label][-1], "eval": evaluation})

    plot = plot_probe_curves(
        runs,
        out / "curves.png",
        title=f"controlled task, {len(probe.requests)} fresh samples per point, seed {cfg.seed}",
    )
    summary = {
        "config": asdict(cfg),
        "engine": engine,
        "commands": list(data.commands),
        "reference": runs[next(iter(runs))][0],
        "runs": results,
        "data_seconds": round(data_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out / "summary.json", summary)
    write_text(out / REPORT, redact_text(_report(summary, plot.name)))  # last: the folder is complete
    if earlier is not None:
        shutil.rmtree(earlier)
    say(f"quickstart done in {summary['seconds']:.0f} s: report {out / 'REPORT.md'}, plot {plot}")
    return summary


def _report(summary: dict, plot: str) -> str:
    cfg = summary["config"]
    ref = summary["reference"]
    rows = [["reference (step 0)", f"{ref['reward']:+.2f} ± {ref['reward_se']:.2f}", "0", "-", "-", "-"]]
    for run in summary["runs"]:
        final, ev = run["final"], run["eval"]
        ranking, samples = ev["ranking"], ev["samples"]
        rows.append(
            [
                run["label"],
                f"{final['reward']:+.2f} ± {final['reward_se']:.2f}",
                f"{final['kl']:.2f} ± {final['kl_se']:.2f}",
                f"{ranking['top1_accuracy']:.2f}" if "top1_accuracy" in ranking else "-",
                f"{samples['win_rate']:.2f}",
                f"{final['train_seconds']:.1f}",
            ]
        )
    table = markdown_table(
        [
            "policy",
            "true reward",
            "KL to reference (nats)",
            "held-out top-1 ranking",
            "win-rate vs reference",
            "training s",
        ],
        rows,
    )
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

Final policies, on fresh samples for the held-out topics (mean ± standard error):

{table}
- *true reward*, *KL*: {ref["samples"]} fresh samples (temperature 1) per point;
  KL is the mean of log π(y|x) − log π_ref(y|x) over them.
- *held-out top-1 ranking*: how often the annotator's pick has the highest
  implicit reward in its held-out pool (`prefpool eval`).
- *win-rate*: fresh samples against the reference's samples for the same
  seeds, by the true reward (ties count 1/2).

Commands that made the data:

```
{chr(10).join(summary["commands"])}
```

Per-method training configs: `runs/<method>.yaml` (`prefpool train` runs them);
per-step trainer metrics: `runs/<method>/metrics.jsonl`; probes:
`runs/<method>/probe.jsonl`.
"""
