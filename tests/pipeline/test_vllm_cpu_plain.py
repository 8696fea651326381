"""`prefpool generate --engine vllm` from a plain shell: no VLLM_* variable, no $PREFPOOL_VLLM_ARGS.

vLLM's CPU defaults do not start on an ordinary machine (it reserves 0.92 of
all memory), and long prompts in one scheduling step exceed its token budget
(4096 on the CPU), get chunked, and break per-sample seeds ("CPU Generator
does not use offset"). Here five prompts of ~450 tokens with two samples each
(~4,500 prompt tokens) are generated with nothing set but ``enforce_eager``
(a faster start, not something the engine needs): prefpool sets the rest and
says so in one line. One engine start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from vllm_runs import require_vllm

from prefpool.pipeline.ingest import ingest
from prefpool.pipeline.io.read import read_table
from prefpool.testing import build_tiny_llama

require_vllm()
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm_cpu_plain")]
WORDS = "the cat sees a red apple while the old dog walks by the blue river near a stone".split()


def test_generate_from_a_plain_shell_on_long_prompts(tmp_path):
    model = build_tiny_llama(tmp_path / "tiny")
    prompts = [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(420)) + f" Question {i}?" for i in range(5)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    ingest(tmp_path / "p.jsonl", format="prompts", out=tmp_path / "ex")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_") and k != "PREFPOOL_VLLM_ARGS"}
    args = ["generate", str(tmp_path / "ex"), "-m", str(model), "-o", str(tmp_path / "out"), "--engine", "vllm"]
    args += ["-n", "2", "--max-new-tokens", "8", "--engine-args", '{"enforce_eager": true}']
    done = subprocess.run(
        [sys.executable, "-m", "prefpool.cli", *args], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-6000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("prefpool: vLLM on the CPU")]
    assert len(said) == 1 and "enable_chunked_prefill=False" in said[0], done.stderr[-3000:]
    rows = read_table(tmp_path / "out").to_pylist()
    assert len(rows) == 5 and all(len(r["samples"]) == 2 for r in rows)
