"""The LLM judge on the vLLM engine: greedy, so its raw replies and its values equal the hf engine's, in both
modes, on the tiny model (a vLLM engine starts once, in a child process)."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from vllm_runs import require_vllm, run_python

from prefpool.pipeline.engines.judge import JudgeScorer
from prefpool.pipeline.model.info import load_model_info
from prefpool.testing import build_tiny_llama

require_vllm()
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm_judge")]
torch.set_num_threads(1)

MAX_NEW = 10
ITEMS = [
    ([{"role": "user", "content": "What is 2 plus 3?"}], "It is 5."),
    ([{"role": "user", "content": "Name a colour."}], "Blue."),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}], "Hello there, friend!"),
]
COMPARISONS = [(p, t, "I do not know.") for p, t in ITEMS]

CHILD = textwrap.dedent("""
    import json, sys

    from prefpool.pipeline.engines.judge import JudgeScorer
    from prefpool.pipeline.model.info import load_model_info

    if __name__ == "__main__":
        model, items, comparisons, max_new = sys.argv[1], *map(json.loads, sys.argv[2:4]), int(sys.argv[4])
        info = load_model_info(model, what="judge")
        found = {}
        for mode in ("pointwise", "pairwise"):
            judge = JudgeScorer(info, mode=mode, template=None, engine="vllm", max_new_tokens=max_new,
                                batch_size=4, device="cpu")
            values = judge.score(items) if mode == "pointwise" else judge.compare(comparisons)
            found[mode] = {"values": values, "outputs": judge.outputs}
        print(json.dumps(found))
""")


def _hf(model, mode: str) -> dict:
    judge = JudgeScorer(
        load_model_info(model, what="judge"),
        mode=mode,
        template=None,
        engine="hf",
        max_new_tokens=MAX_NEW,
        batch_size=4,
        device="cpu",
    )
    values = judge.score(ITEMS) if mode == "pointwise" else judge.compare(COMPARISONS)
    return {"values": values, "outputs": judge.outputs}


def test_vllm_judge_replies_equal_the_hf_engine(tmp_path):
    model = build_tiny_llama(tmp_path / "judge")
    (tmp_path / "child.py").write_text(CHILD)
    stdout = run_python(
        str(tmp_path / "child.py"), str(model), json.dumps(ITEMS), json.dumps(COMPARISONS), str(MAX_NEW)
    )
    found = json.loads(stdout.strip().splitlines()[-1])
    for mode in ("pointwise", "pairwise"):
        expected = _hf(model, mode)
        assert len(found[mode]["outputs"]) == (3 if mode == "pointwise" else 6)
        assert found[mode]["outputs"] == expected["outputs"], mode
        assert found[mode]["values"] == expected["values"], mode
