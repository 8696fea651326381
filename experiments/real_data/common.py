"""What both real-data experiments share: the model, the pipeline driver, train and eval runs, options.

``run_alpaca.py`` (ranked pools) and ``run_ultrafeedback.py`` (pairs) import this
module by name; it sits beside them, and a script's own folder is on
``sys.path`` when it runs, so no path edit is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from prefpool.train.evaluate import EVAL_FILE

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


GET_SMOLLM2 = REPO.parent / "shared" / "tools" / "get-smollm2"


GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Timer:
    """Wall seconds per stage, kept in OUT/timings.json: the first invocation that finished the stage
    (a rerun that finds it done is not timed again; a stage killed midway is timed by the rerun that
    finishes it, so only its remainder counts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def record(self, name: str, seconds: float) -> None:
        if name in self.data:
            return
        self.data[name] = round(seconds, 1)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")


def prefpool(*args: str, timer: Timer | None = None, name: str | None = None) -> None:
    """Run one ``prefpool`` CLI command (the venv's), stop on failure."""
    exe = Path(sys.executable).with_name("prefpool")
    cmd = [str(exe), *map(str, args)]
    log("$ " + " ".join(cmd))
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    if timer is not None and name is not None:
        timer.record(name, time.perf_counter() - start)


def prepare_model(cache: Path, gguf_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a float32 ``save_pretrained`` folder with its chat template.

    ``gguf_dir``: a folder already holding the GGUF (default: fetched by ``get-smollm2`` into
    ``cache/gguf``). The library's ``float_folder`` converts it once into ``cache`` (a folder named
    by the file's hash, written under a temporary name); every call checks the folder: it loads,
    has the GGUF's chat template and a generation config, and renders the assistant turn.
    """
    from prefpool.pipeline.model.gguf_float import float_folder
    from prefpool.pipeline.model.source import resolve_model

    if gguf_dir is None:
        gguf_dir = Path(
            subprocess.run([str(GET_SMOLLM2), str(cache / "gguf")], check=True, capture_output=True, text=True)
            .stdout.strip()
            .splitlines()[-1]
        )
    source = resolve_model(gguf_dir / GGUF_NAME)
    dest = float_folder(source, cache=cache)
    tok = resolve_model(dest).tokenizer()
    if not tok.chat_template or tok.chat_template != source.tokenizer().chat_template:
        raise SystemExit(f"{dest}: the saved chat template is missing or differs from the GGUF's")
    if not (dest / "generation_config.json").exists():
        raise SystemExit(f"{dest}: no generation_config.json")
    rendered = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    if not rendered.rstrip().endswith("<|im_start|>assistant"):
        raise SystemExit(f"{dest}: unexpected chat rendering {rendered!r}")
    return dest


def build_tables(
    model: Path, out: Path, timer: Timer, *, fmt: str, kind: str, max_length: int, build_options: tuple = ()
) -> dict[str, Path]:
    """ingest (``fmt``) -> logprobs -> build ``kind``, separately for the train and held-out files of
    ``out/split``; returns the two tables. Shared by both real-data scripts."""
    tables = {}
    for side in ("train", "heldout"):
        work = out / "pipeline" / side
        prefpool(
            "ingest",
            out / "split" / f"{side}.jsonl",
            "--format",
            fmt,
            "--out",
            work / "ingest",
            timer=timer,
            name=f"ingest_{side}",
        )
        prefpool(
            "logprobs",
            work / "ingest",
            "--model",
            model,
            "--out",
            work / "logprobs",
            "--max-length",
            max_length,
            timer=timer,
            name=f"logprobs_{side}",
        )
        prefpool(
            "build",
            "--kind",
            kind,
            "--examples",
            work / "ingest",
            "--logprobs",
            work / "logprobs",
            "--out",
            work / kind,
            "--missing",
            "drop",
            *build_options,
            timer=timer,
            name=f"build_{side}",
        )
        tables[side] = work / kind
    return tables


def train_config(
    setting: dict,
    model: Path,
    data: Path,
    run_dir: Path,
    kernel: str | None,
    seed: int,
    max_steps: int | None,
    loss: str = "mcpo",
    num_negatives: int = 1,
) -> Path:
    """Write RUN_DIR.yaml, a ``TrainConfig`` for ``prefpool train``. ``kernel=None`` leaves it out (non-mcpo losses);
    ``num_negatives`` (MC-PO's M) is written only when it is not 1."""
    import yaml

    cfg = {
        "model": str(model),
        "data": str(data),
        "output_dir": str(run_dir),
        "loss": loss,
        "kernel": kernel,
        "seed": seed,
        "num_negatives": num_negatives if num_negatives != 1 else None,
        "resume": True,
        "progress": False,
        **setting["train"],
    }
    if max_steps is not None:
        cfg["max_steps"] = max_steps
    cfg = {k: v for k, v in cfg.items() if v is not None}
    path = run_dir.with_name(run_dir.name + ".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_eval(model: Path, heldout: Path, dest: Path, timer: Timer, name: str, extra: tuple = ()) -> dict:
    """``prefpool eval --out DEST``; returns DEST/eval.json (the eval is skipped when that file exists).

    ``extra``: more eval options, e.g. ``("--device", "cpu")``.
    """
    result = dest / EVAL_FILE
    if not result.exists():
        prefpool("eval", "--model", model, "--data", heldout, "--out", dest, *extra, timer=timer, name=name)
    return json.loads(result.read_text())


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def common_arguments(ap: argparse.ArgumentParser, settings: dict, out_default: str, unit: str) -> None:
    """The options both real-data scripts take (``unit``: prompts or pairs)."""
    ap.add_argument("--setting", choices=sorted(settings), default="reduced")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=None, help=f"default: experiments/real_data/runs/{out_default}")
    ap.add_argument(
        "--model-cache",
        type=Path,
        default=HERE / "runs" / "models",
        help="where the GGUF and the converted float32 folder are kept",
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="OMP/MKL threads for every stage (torch's default when left out)"
    )
    ap.add_argument("--n-train", type=int, default=None, help=f"override the setting's train {unit}")
    ap.add_argument("--n-heldout", type=int, default=None, help=f"override the setting's held-out {unit}")
    ap.add_argument("--max-steps", type=int, default=None, help="override the number of optimizer steps")


def set_threads(threads: int | None) -> None:
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
