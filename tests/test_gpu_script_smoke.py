"""The GPU run's script works before a GPU is there: `benchmarks/gpu/run.sh --smoke` runs every part's code on
the CPU with a tiny model and writes one results file in which every variant has figures or says why not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.slow
def test_gpu_script_smoke(tmp_path):
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu" / "run.sh"), "--smoke", "--out", str(out), "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["environment"]["device"] == "cpu"
    parts = results["parts"]
    for part in ("train", "head", "engines"):
        assert "failed" not in parts[part], parts[part]

    train = parts["train"]["tiny"]
    for variant in ("prefpool-dpo", "prefpool-mcpo", "trl-ref-model", "trl-precompute"):
        assert train[variant]["peak_mib"] > 0 and train[variant]["tokens_per_s"] > 0, (variant, train[variant])
    assert len(train["prefpool-dpo"]["memory_x_trl"]) == 2

    head = parts["head"]["tiny"]
    assert head["prefpool"]["ms"] > 0 and head["full-logits"]["ms"] > 0
    assert "CUDA" in head["liger"]["skipped"] or "not installed" in head["liger"]["skipped"]

    engines = parts["engines"]
    if os.environ.get("PREFPOOL_REQUIRE_VLLM") == "1":
        assert _has("vllm"), "PREFPOOL_REQUIRE_VLLM=1 but vllm is not importable"
    if _has("vllm"):
        for variant, result in engines.items():
            assert result["seconds"] > 0, (variant, result)
    else:
        assert all("vLLM not installed" in r["skipped"] for r in engines.values())
