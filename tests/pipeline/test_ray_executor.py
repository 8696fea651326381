"""The Ray executor on a local 2-CPU Ray cluster: workers killed, a driver killed, errors in workers, bad requests.

One cluster serves the module (a Ray start costs seconds). Each test compares
a Ray run with a local run of the same stage on the same input (the hf engine,
a tiny model, one torch thread in both, so the values are bitwise equal), and
the module ends by checking that no process with its ``RAY_TMPDIR`` is left.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from ray_helpers import (
    assert_same_output,
    make_candidates,
    make_examples,
    ray_processes,
    short_tmpdir,
    wait_until,
    worker_processes,
)

from prefpool.cli import app
from prefpool.core.errors import ConfigError, UserCodeError
from prefpool.pipeline.generate import generate
from prefpool.pipeline.io.atomic import is_temp_name
from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.io.layout import REPORT, meta_dir, read_meta
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.io.shards import ShardName, open_shard
from prefpool.pipeline.logprobs import logprobs
from prefpool.pipeline.score import score
from prefpool.testing import build_tiny_llama

ray = pytest.importorskip("ray")
torch.set_num_threads(1)
pytestmark = pytest.mark.xdist_group("ray")
TIMEOUT_S = 120
WORKER_RUN = "ray::PrefpoolUnitWorker.run"  # an actor's process title while it runs a unit
GEN = {"n": 2, "max_new_tokens": 8, "seed": 1}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray with 2 CPUs; after the module, no process of it may be left."""
    assert not ray.is_initialized()
    tmp = short_tmpdir()
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp  # every Ray process inherits it: ray_processes(tmp) finds them
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20)
    try:
        yield {"address": ray.get_runtime_context().gcs_address, "tmp": tmp}
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("RAY_TMPDIR")
        else:
            os.environ["RAY_TMPDIR"] = old
    wait_until(lambda: not ray_processes(tmp), 30, "the cluster's processes to exit")
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-world")
    model = build_tiny_llama(root / "model", num_layers=1)
    examples = make_examples(root / "data", 12)
    return {"model": model, "examples": examples, "candidates": make_candidates(examples, model, root / "cands")}


def _no_workers_left(cluster) -> None:
    wait_until(lambda: not worker_processes(cluster["tmp"]), 30, "the run's actors to exit")


def _clean(folder: Path) -> None:
    """What a stopped run leaves: no manifest, no temporary file, only complete shards (or no folder at all:
    a run writes nothing before its first shard)."""
    if not folder.exists():
        return
    assert load_manifest(folder) is None
    assert not [p for p in [*folder.iterdir(), *meta_dir(folder).glob("*")] if is_temp_name(p)]
    for path in folder.iterdir():
        if ShardName.parse(path.name):
            assert open_shard(path).metadata.num_rows > 0


KILLER = '''
import os
import signal
from pathlib import Path

MARK = Path({mark!r})
CALLS = []


def reward(prompt, text):
    """len(text); the first process to score its second pair without MARK there kills itself (SIGKILL)."""
    CALLS.append(text)
    if len(CALLS) == 2:
        try:
            fd = os.open(MARK, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    return float(len(text))
'''


def test_worker_killed_mid_unit_is_retried_with_identical_output(cluster, world, tmp_path, caplog):
    """The reward function SIGKILLs its own actor half-way through a unit (after one of its pairs):
    the unit runs again on another actor, and the output equals a local run's."""
    mark = tmp_path / "killed-once"
    fn = tmp_path / "killer.py"
    fn.write_text(KILLER.format(mark=str(mark)))
    args = {"reward_fn": f"{fn}:reward", "rows_per_unit": 4, "show_progress": False}
    mark.write_text("local run: no kill")
    local = score(world["candidates"], out=tmp_path / "local", **args)
    mark.unlink()
    with caplog.at_level(logging.WARNING, logger="prefpool.executors.ray"):
        got = score(world["candidates"], out=tmp_path / "ray", executor="ray", workers=2, **args)
    killed = int(mark.read_text())
    assert killed != os.getpid()  # an actor died, not the driver
    assert any("a worker died during unit" in r.getMessage() for r in caplog.records)
    assert (got.rows, got.computed, got.units_written) == (local.rows, local.computed, local.units_written)
    assert_same_output(got.out, local.out)
    _no_workers_left(cluster)


def test_worker_killed_from_outside_is_retried_with_identical_output(cluster, world, tmp_path, caplog):
    """SIGKILL of an actor process while it runs a logprobs unit (found by its process title)."""
    args = {"model": world["model"], "max_length": 128, "rows_per_unit": 1, "show_progress": False}
    local = logprobs(world["candidates"], out=tmp_path / "local", **args)
    killed: list[int] = []
    stop = threading.Event()

    def kill_one_running_worker() -> None:
        while not stop.is_set() and not killed:
            actors = [pid for pid, _ in worker_processes(cluster["tmp"])]  # a scan of /proc: not too often
            for _ in range(100):  # then watch just these for the title of a running unit
                for pid in actors:
                    try:
                        title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                    except OSError:
                        continue
                    if title.startswith(WORKER_RUN):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                        return
                time.sleep(0.002)

    killer = threading.Thread(target=kill_one_running_worker)
    killer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="prefpool.executors.ray"):
            got = logprobs(world["candidates"], out=tmp_path / "ray", executor="ray", workers=2, **args)
    finally:
        stop.set()
        killer.join()
    assert killed, "no actor was caught running a unit"
    assert any("a worker died during unit" in r.getMessage() for r in caplog.records)
    assert got.computed == local.computed == got.rows
    assert_same_output(got.out, local.out)
    _no_workers_left(cluster)


@pytest.mark.slow  # a fresh interpreter and two rounds of actors (~20 s on 2 idle cores)
def test_driver_killed_then_rerun_resumes_with_finished_units_skipped(cluster, world, tmp_path):
    """``prefpool logprobs --executor ray`` (RAY_ADDRESS: this cluster) gets SIGKILL once a shard exists;
    its actors go with it, and the same command run again skips the finished units."""
    out = tmp_path / "ray"
    cmd = ["logprobs", str(world["candidates"]), "--model", str(world["model"]), "--out", str(out)]
    cmd += ["--max-length", "128", "--rows-per-unit", "1", "--no-progress", "--executor", "ray", "--workers", "2"]
    env = {**os.environ, "RAY_ADDRESS": cluster["address"], "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = tmp_path / "driver.log"
    with open(log, "w") as handle:
        driver = subprocess.Popen([sys.executable, "-m", "prefpool.cli", *cmd], stdout=handle, stderr=handle, env=env)
    try:
        wait_until(
            lambda: driver.poll() is not None or any(ShardName.parse(p.name) for p in out.glob("*.parquet")),
            TIMEOUT_S,
            "a first shard",
        )
        assert driver.poll() is None, log.read_text()
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=TIMEOUT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert load_manifest(out) is None
    _no_workers_left(cluster)  # Ray ends the actors of a driver that died

    result = CliRunner().invoke(app, cmd)
    assert result.exit_code == 0, result.output
    skipped = int(result.output.split("units_skipped=")[1].split("]")[0])
    assert skipped >= 1
    local = logprobs(world["candidates"], model=world["model"], out=tmp_path / "local", max_length=128, rows_per_unit=1)
    assert_same_output(out, local.out)


def _cli(args: list[str]) -> tuple[int, list[str], str]:
    """Exit code, the ``error:`` lines, and all the output (stdout and stderr, with the model loading's bars)."""
    result = CliRunner().invoke(app, args)
    return result.exit_code, [line for line in result.output.splitlines() if line.startswith("error:")], result.output


def test_bad_row_in_a_worker_gives_the_local_error_and_exit_2(cluster, world, tmp_path):
    """Two prompts too long for max_length with long_prompts=error, in different units: the Ray run
    reports the first one in unit order, word for word as the local run, and stops cleanly."""
    examples = make_examples(tmp_path / "long", 12, long_prompts=(3, 8))
    base = ["logprobs", str(examples), "--model", str(world["model"]), "--max-length", "64"]
    base += ["--long-prompts", "error", "--rows-per-unit", "2", "--no-progress"]
    code_local, said_local, _ = _cli([*base, "--out", str(tmp_path / "local")])
    code_ray, said_ray, everything = _cli(
        [*base, "--out", str(tmp_path / "ray"), "--executor", "ray", "--workers", "2"]
    )
    assert code_local == code_ray == 2
    assert len(said_local) == 1 and "prompt_id" in said_local[0] and "max_length=64" in said_local[0]
    assert said_ray == said_local
    assert "Traceback" not in everything
    _clean(tmp_path / "ray")
    _no_workers_left(cluster)


def test_reward_function_that_raises_gives_the_local_error(cluster, world, tmp_path):
    fn = tmp_path / "bad.py"
    fn.write_text(
        "def reward(prompt, text):\n    if len(text) % 2 == 0:\n        raise KeyError(text[:8])\n    return 1.0\n"
    )
    args = {"reward_fn": f"{fn}:reward", "rows_per_unit": 3, "show_progress": False}
    with pytest.raises(UserCodeError) as local:
        score(world["candidates"], out=tmp_path / "local", **args)
    with pytest.raises(UserCodeError) as remote:
        score(world["candidates"], out=tmp_path / "ray", executor="ray", **args)
    assert str(remote.value) == str(local.value)
    assert "raised KeyError" in str(local.value) and "completion_id" in str(local.value)
    assert str(world["candidates"]) in str(local.value) and "row " in str(local.value)  # file and row named
    _clean(tmp_path / "ray")
    _no_workers_left(cluster)


def test_more_than_the_cluster_holds_is_refused_before_any_work(cluster, world, tmp_path):
    args = {"model": world["model"], "show_progress": False, "executor": "ray", "rows_per_unit": 2, **GEN}
    # No CUDA on this machine: device=cuda is refused before Ray plans any actor (the GPU-per-actor check
    # itself is tested on made-up clusters in test_ray_config.py).
    with pytest.raises(ConfigError, match="torch sees no CUDA device"):
        generate(world["examples"], out=tmp_path / "gpu", device="cuda", **args)
    with pytest.raises(PipelineConfigError, match="workers=3, but the Ray cluster .* holds 2 worker"):
        generate(world["examples"], out=tmp_path / "many", workers=3, **args)
    for folder in ("gpu", "many"):
        assert not list((tmp_path / folder).glob("*.parquet"))
    assert not worker_processes(cluster["tmp"])  # no actor was started


ORDERED = """
import time
from pathlib import Path

SLOW_FIRST, FAST_LATER, LATER_FAILED = {first!r}, {later!r}, Path({flag!r})


def reward(prompt, text):
    if text == SLOW_FIRST:  # fails only once the later pair has failed (in another worker)
        deadline = time.monotonic() + 60
        while not LATER_FAILED.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        raise ValueError("the first bad pair")
    if text == FAST_LATER:
        LATER_FAILED.touch()
        raise ValueError("a later bad pair")
    return 1.0
"""


def test_the_error_raised_is_the_first_failing_unit_in_unit_order(cluster, world, tmp_path):
    """Unit 0 fails only after unit 3 has failed on the other worker: the Ray run still raises unit 0's
    error, as the local run does, and writes the units in between."""
    from prefpool.pipeline.io.completions import distinct_completions, read_completion_table
    from prefpool.pipeline.io.ids import ShardSpec

    schema, table, _ = read_completion_table(world["candidates"], stage="score")
    pairs = distinct_completions(table, schema, ShardSpec.parse(None))
    flag = tmp_path / "later-failed"
    fn = tmp_path / "ordered.py"
    fn.write_text(ORDERED.format(first=pairs[0][3], later=pairs[3 * 2][3], flag=str(flag)))
    args = {"reward_fn": f"{fn}:reward", "rows_per_unit": 2, "show_progress": False}
    flag.touch()  # the local run reaches unit 0 first: no need to wait
    with pytest.raises(UserCodeError, match="the first bad pair") as local:
        score(world["candidates"], out=tmp_path / "local", **args)
    flag.unlink()
    with pytest.raises(UserCodeError, match="the first bad pair") as remote:
        score(world["candidates"], out=tmp_path / "ray", executor="ray", workers=2, **args)
    assert flag.exists()  # unit 3 did fail first
    assert str(remote.value) == str(local.value)
    written = sorted(ShardName.parse(p.name).unit for p in (tmp_path / "ray").glob("*.parquet"))
    assert written == [1, 2]  # the other worker's units before unit 3; none after it was started
    _clean(tmp_path / "ray")
    _no_workers_left(cluster)


def test_judge_on_ray_actors_equals_a_local_run(cluster, world, tmp_path):
    """The LLM judge (pairwise, both orders) on Ray actors: the same rows and report as in this process."""
    args = {"judge": world["model"], "judge_mode": "pairwise", "judge_max_new_tokens": 4, "rows_per_unit": 4}
    local = score(world["examples"], out=tmp_path / "local", **args)
    on_ray = score(
        world["examples"], out=tmp_path / "ray", executor="ray", workers=2, ray_address=cluster["address"], **args
    )
    assert read_table(on_ray.out).to_pylist() == read_table(local.out).to_pylist()
    assert read_meta(on_ray.out, REPORT)["judge"] == read_meta(local.out, REPORT)["judge"]
    _no_workers_left(cluster)
