"""What every benchmark here shares: each variant in a fresh subprocess, a small Llama, the table.

A benchmark script is both parent and child. The parent builds what the
variants share (a model folder, a table), then runs each variant as
``python SCRIPT --child --variant NAME ...`` (``run_child``): a fresh process,
so no allocator cache, high-water mark or warm-up is shared. The child does its
work and prints one JSON line last (``emit``), which the parent parses.

Run a benchmark as a script from the repository root
(``python benchmarks/bench_x.py``): its folder is then on ``sys.path``, so
``import harness`` and ``import peak_memory`` need no path edits.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def run_child(script: str, env: Mapping[str, str] | None = None, **options: Any) -> dict:
    """Run ``script --child --key value ...`` in a fresh interpreter; return the JSON of its last line.

    A ``True`` option is a bare flag, ``None``/``False`` options are left out. A failing child stops
    the benchmark with its output's tail."""
    cmd = [sys.executable, str(Path(script).resolve()), "--child"]
    for key, value in options.items():
        if value is None or value is False:
            continue
        cmd.append("--" + key.replace("_", "-"))
        if value is not True:
            cmd.append(str(value))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=None if env is None else dict(env))
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"{Path(script).name} {options.get('variant', '')}: child failed ({proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def emit(record: Mapping[str, Any]) -> None:
    """The child's result: one JSON line, the last one it prints."""
    print(json.dumps(dict(record)), flush=True)


def timed(function: Callable, record: Callable[[float], Any]) -> Callable:
    """``function``, passing the seconds of each call to ``record``, also when the call raises."""

    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            record(time.perf_counter() - start)

    return run


def dispatch(parser: argparse.ArgumentParser, parent: Callable, child: Callable) -> None:
    """Parse the arguments (plus the hidden ``--child`` flag) and run the parent or the child."""
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    (child if args.child else parent)(args)


def small_llama(folder: Path, *, vocab: int, hidden: int, layers: int, max_positions: int = 512) -> Path:
    """A random Llama of the given size (head dim 64, MLP 4x hidden) saved in ``folder``."""
    from prefpool.testing import build_tiny_llama

    return build_tiny_llama(
        folder,
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=hidden // 64,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_positions,
    )


WORDS = "the cat sees a red apple while the old dog walks by the blue river near a stone".split()


def short_prompts(count: int) -> list[str]:
    """``count`` short questions of 4 to 12 words, the same for every generation benchmark."""
    return [f"Q{i}: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(4 + i % 9)) + "?" for i in range(count)]
