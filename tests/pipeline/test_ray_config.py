"""The Ray executor's checks that need no cluster: worker sizes and counts, addresses, a missing Ray,
``prefpool run``'s executor keys, the progress display's unit count, and Ray staying an optional import."""

from __future__ import annotations

import ast
import io
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from prefpool.cli import app
from prefpool.core.config import ConfigError
from prefpool.pipeline.executors.base import WorkerNeeds, make_executor
from prefpool.pipeline.executors.resources import plan_workers, room_for, worker_shape
from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.io.progress import progress
from prefpool.pipeline.run import load_pipeline

REPO = Path(__file__).resolve().parents[2]
CPU_NODE = {"CPU": 2.0, "memory": 1e9}
GPU_NODE = {"CPU": 16.0, "GPU": 8.0}


def test_worker_shape_falls_back_to_the_cpu_only_where_the_engine_can():
    vllm = WorkerNeeds(gpus=2, gpu_optional=True, why="vllm tensor_parallel_size=2 x pipeline_parallel_size=1")
    assert worker_shape(vllm, [CPU_NODE, CPU_NODE]) == (1, 0)  # no GPU anywhere: vLLM's CPU build
    assert worker_shape(vllm, [CPU_NODE, GPU_NODE]) == (1, 2)
    hf_cuda = WorkerNeeds(gpus=1, why="hf engine on device=cuda")
    with pytest.raises(PipelineConfigError, match=r"needs 1 GPU\(s\) \(hf engine on device=cuda\).*largest node.* 0"):
        worker_shape(hf_cuda, [CPU_NODE])


def test_more_gpus_per_worker_than_any_node_has_is_refused():
    tp16 = WorkerNeeds(gpus=16, gpu_optional=True, why="vllm tensor_parallel_size=16 x pipeline_parallel_size=1")
    with pytest.raises(PipelineConfigError, match=r"needs 16 GPU\(s\) \(vllm tensor_parallel_size=16 .*has 8"):
        worker_shape(tp16, [GPU_NODE, GPU_NODE])  # 16 GPUs in all, but one engine must fit on one node
    with pytest.raises(PipelineConfigError, match="needs 4 CPU"):
        worker_shape(WorkerNeeds(cpus=4), [CPU_NODE])


def test_room_counts_whole_workers_per_node():
    # 8 GPUs / 3 per worker = 2 per node (the CPUs allow 16); a CPU node holds no GPU worker
    assert room_for([GPU_NODE, GPU_NODE, CPU_NODE], cpus=1, gpus=3) == 4
    assert room_for([GPU_NODE, CPU_NODE], cpus=1, gpus=0) == 18
    assert room_for([{"CPU": 3.5}], cpus=2, gpus=0) == 1


def test_plan_workers_count():
    cpu = WorkerNeeds()
    assert plan_workers(cpu, [CPU_NODE], workers=None, units=10).count == 2  # as many as the cluster holds
    assert plan_workers(cpu, [CPU_NODE], workers=None, units=1).count == 1  # never more than units
    assert plan_workers(cpu, [CPU_NODE, CPU_NODE], workers=3, units=10).count == 3
    with pytest.raises(PipelineConfigError, match=r"workers=5, but the Ray cluster \(2 node\(s\), 4 CPUs, 0 GPUs\)"):
        plan_workers(cpu, [CPU_NODE, CPU_NODE], workers=5, units=10)
    gpu = WorkerNeeds(gpus=1, gpu_optional=True)
    plan = plan_workers(gpu, [GPU_NODE, GPU_NODE], workers=None, units=100)
    assert (plan.count, plan.cpus, plan.gpus) == (16, 1, 1)


def test_executor_arguments_are_checked():
    with pytest.raises(PipelineConfigError, match="executor must be one of local, ray"):
        make_executor("dask")
    with pytest.raises(PipelineConfigError, match="workers must be >= 1"):
        make_executor("ray", workers=0)
    assert make_executor("local", workers=4, address="10.0.0.1:6379").name == "local"  # Ray's settings ignored


def test_missing_ray_is_a_user_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(PipelineConfigError, match=r"pip install 'prefpool\[ray\]'"):
        make_executor("ray")
    result = CliRunner().invoke(
        app, ["score", str(tmp_path / "in"), "--reward-fn", "x:y", "--out", str(tmp_path / "o"), "--executor", "ray"]
    )
    assert result.exit_code == 2 and "pip install 'prefpool[ray]'" in result.output
    assert not (tmp_path / "o").exists()  # refused before anything was read or written


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens on it once the socket is closed


def test_unreachable_ray_address_is_refused_before_any_work(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray is already initialized in this process: it would be used as it is")
    address = f"127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    start = time.perf_counter()
    result = CliRunner().invoke(
        app, ["score", str(tmp_path / "in"), "--reward-fn", "x:y", "--out", str(tmp_path / "o"), "--executor", "ray"]
    )
    assert result.exit_code == 2, result.output
    assert f"cannot reach the Ray cluster at {address} ($RAY_ADDRESS)" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()
    assert time.perf_counter() - start < 30  # not ray.init's minutes of retrying
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(PipelineConfigError, match="is not host:port"):
        make_executor("ray", address="head-node")


def _pipeline(tmp_path: Path, config: dict, name: str = "pipeline") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"workdir": str(tmp_path / "w"), "model": "m", **config}, sort_keys=False))
    return path


STAGES = {
    "ingest": {"source": "d.jsonl", "format": "ranked"},
    "generate": {"n": 2, "workers": 3},
    "score": {"reward_fn": "r:f"},
    "logprobs": {},
    "build": {"kind": "mcpo"},
}


def test_run_executor_key_reaches_the_ray_stages_only(tmp_path):
    path = _pipeline(tmp_path, {"executor": "ray", "ray_address": "10.0.0.1:6379", **STAGES})
    calls = {c.label: c.kwargs for c in load_pipeline(path)}
    for label in ("generate", "score", "logprobs[ingest]", "logprobs[generate]"):
        assert calls[label]["executor"] == "ray" and calls[label]["ray_address"] == "10.0.0.1:6379", label
    assert calls["generate"]["workers"] == 3
    assert "executor" not in calls["ingest"] and "executor" not in calls["build"]
    local = {c.label: c.kwargs for c in load_pipeline(path, ["executor=local"])}
    assert local["generate"]["executor"] == "local"
    own = {c.label: c.kwargs for c in load_pipeline(path, ["score.executor=local"])}
    assert own["score"]["executor"] == "local" and own["generate"]["executor"] == "ray"  # a section's own wins


def test_run_refuses_ray_for_a_stage_that_runs_here_and_bad_executor_keys(tmp_path):
    path = _pipeline(tmp_path, {**STAGES, "build": {"kind": "mcpo", "executor": "ray"}})
    with pytest.raises(ConfigError, match="section 'build': executor: build runs in this process"):
        load_pipeline(path)
    with pytest.raises(ConfigError, match="executor: expected local or ray, got 'slurm'"):
        load_pipeline(_pipeline(tmp_path, {"executor": "slurm", **STAGES}, "slurm"))
    two = {**STAGES, "score": {"reward_fn": "r:f", "ray_address": "10.0.0.2:6379"}}
    with pytest.raises(ConfigError, match="name different clusters"):
        load_pipeline(_pipeline(tmp_path, {"executor": "ray", "ray_address": "10.0.0.1:6379", **two}, "two"))
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "only generate, score, logprobs run on Ray" in result.output


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_units_done(monkeypatch):
    with progress("x", 10, enabled=True, units=4, stream=_Terminal()) as bar:  # the bar of a terminal
        bar(3)
        bar.unit_done()
        bar.unit_done()
        task = bar.bar.tasks[0]
        assert (task.completed, task.fields["units"]) == (3, "2/4 units")
    monkeypatch.setenv("PREFPOOL_PROGRESS_SECONDS", "1e-9")  # a log: a line at every advance
    log = io.StringIO()
    with progress("x", 10, enabled=True, units=4, stream=log) as bar:
        bar.unit_done()
        bar(3)
    assert log.getvalue().splitlines()[0].startswith("x: 3/10 rows (30%), 1/4 units, ")
    with progress("x", 10, enabled=False, units=4) as bar:
        bar(3)
        bar.unit_done()  # no display: counts only
        assert bar.units_done == 1


def test_ray_is_imported_only_inside_functions():
    """prefpool imports and runs without Ray: no module imports it at import time."""
    offenders = []
    for folder in ("prefpool", "pipeline", "train", "losses"):
        for path in (REPO / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in tree.body:  # module level only: imports inside functions are lazy
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                offenders += [f"{path}:{node.lineno}" for n in names if n == "ray" or n.startswith("ray.")]
    assert not offenders
