"""``evaluate``: ranking metrics on hand-made build tables whose answers are known.

The reference values are the model's own log-probs plus a shift ``s`` per
completion, so each log-ratio is ``-s`` (see ``test_eval_support``). Tie rule
(``eval_ranking``): |difference| <= 1e-4 nats is a tie, never a win; ranks are
mid-ranks.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_eval_support import MAX_LENGTH, mcpo_row, pairwise_row, write_table
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefpool.pipeline.model.cache_key import weights_hash
from prefpool.testing import build_tiny_llama
from prefpool.train.cache_check import CacheMismatchError
from prefpool.train.eval_ranking import pool_metrics
from prefpool.train.evaluate import cache_max_length, evaluate

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_llama(tmp_path_factory.mktemp("eval") / "model", seed=1)
    return path, AutoModelForCausalLM.from_pretrained(path).float().eval(), AutoTokenizer.from_pretrained(path)


def test_policy_equal_reference_pairwise_is_all_ties(tiny, tmp_path):
    """Policy = reference: every reward is 0, every pair ties; a tie is not a win, so accuracy 0."""
    path, model, tok = tiny
    rows = [
        pairwise_row(model, tok, f"question {i}", f"the cat likes {i}", f"a dog sees the river {i}") for i in range(3)
    ]
    data = write_table(tmp_path / "pw", "pairwise", rows, tokenizer=tok, weights=weights_hash(path))
    out = evaluate(path, data, out=tmp_path / "ev")
    ranking = out["ranking"]
    assert ranking["kind"] == "pairwise" and ranking["max_length"] == MAX_LENGTH
    assert ranking["num_pairs"] == 3
    assert ranking["accuracy"] == 0.0 and ranking["tie_rate"] == 1.0
    assert abs(ranking["mean_margin"]) < 1e-5
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["ranking"] == ranking


def test_shifted_pairwise_reference_gives_known_accuracy_and_margin(tiny, tmp_path):
    """Log-ratios: rows 0, 1: chosen 0, rejected -1 (win, margin 1); row 2: chosen -2, rejected 0
    (loss, margin -2). Accuracy 2/3; mean log-ratio margin (1 + 1 - 2) / 3 = 0; with row 1's rejected
    at -3 instead: (1 + 3 - 2) / 3 = 2/3, mean_margin = beta * 2/3."""
    _, model, tok = tiny
    rows = [
        pairwise_row(model, tok, "q0", "the cat likes", "a dog sees", shifts=(0.0, 1.0)),
        pairwise_row(model, tok, "q1", "the robot reads", "our team moves", shifts=(0.0, 3.0)),
        pairwise_row(model, tok, "q2", "a bird hears", "the river counts", shifts=(2.0, 0.0)),
    ]
    data = write_table(tmp_path / "pw", "pairwise", rows, tokenizer=tok)
    for beta in (0.1, 2.0):
        r = evaluate(model, data, tokenizer=tok, beta=beta)["ranking"]
        assert r["accuracy"] == pytest.approx(2 / 3) and r["tie_rate"] == 0.0
        assert r["mean_logratio_margin"] == pytest.approx(2 / 3, abs=1e-5)
        assert r["mean_margin"] == pytest.approx(beta * 2 / 3, abs=1e-5)


def test_mcpo_mean_rank_by_hand(tiny, tmp_path):
    """Log-ratios (preferred first, then pool):
    A: 0 | -1, -2      -> nothing above, no tie: rank 1, top-1; wins 2 of 2.
    B: -0.5 | 0, -1, -0.5 -> one above, one tied: rank 1 + 1 + 1/2 = 2.5; wins 1 of 3.
    C: 0 | 0           -> one tied: rank 1 + 1/2 = 1.5; wins 0 of 1.
    Mean rank (1 + 2.5 + 1.5) / 3 = 5/3; top-1 1/3; pairwise accuracy 3/6; ties 2/6;
    log-ratio margins: A 1, 2; B -0.5, 0.5, 0; C 0 -> mean 3/6.
    """
    _, model, tok = tiny
    rows = [
        mcpo_row(model, tok, "prompt A", "the cat likes", ["a dog sees", "the model writes"], [0, 1, 2]),
        mcpo_row(
            model,
            tok,
            "prompt B",
            "my friend reads",
            ["the teacher finds", "a bird makes", "the robot moves"],
            [0.5, 0, 1, 0.5],
        ),
        mcpo_row(model, tok, "prompt C", "our team hears", ["the river answers"], [0, 0]),
    ]
    data = write_table(tmp_path / "mc", "mcpo", rows, tokenizer=tok)
    ranks = {}
    for beta in (0.1, 3.0):
        r = evaluate(model, data, tokenizer=tok, beta=beta)["ranking"]
        assert r["kind"] == "mcpo" and r["num_prompts"] == 3 and r["num_pool_pairs"] == 6
        assert r["mean_rank"] == pytest.approx(5 / 3)
        assert r["top1_accuracy"] == pytest.approx(1 / 3)
        assert r["pairwise_accuracy"] == pytest.approx(0.5)
        assert r["pairwise_tie_rate"] == pytest.approx(2 / 6)
        assert r["mean_margin"] == pytest.approx(beta * 0.5, abs=1e-5)
        ranks[beta] = {k: v for k, v in r.items() if k not in ("beta", "mean_margin")}
    assert ranks[0.1] == ranks[3.0]  # beta does not move a rank


def test_policy_equal_reference_mcpo_mid_rank():
    """All ties: rank 1 + M/2 for each prompt (pools of 1 and 4: 1.5 and 3 -> 2.25), top-1 0."""
    r = pool_metrics(torch.zeros(2), [torch.zeros(1), torch.zeros(4)], beta=0.1)
    assert r["mean_rank"] == 2.25 and r["top1_accuracy"] == 0.0 and r["pairwise_accuracy"] == 0.0


def test_max_length_is_read_from_the_manifest_and_checked(tiny, tmp_path):
    """A completion cut by the cache's max_length must be cut the same way here; another
    max_length gives other token counts, which is an error naming the prompt."""
    _, model, tok = tiny
    long = " ".join(["the cat likes the river"] * 8)
    rows = [pairwise_row(model, tok, "q", long, "a dog", max_length=16)]
    data = write_table(tmp_path / "pw", "pairwise", rows, tokenizer=tok, max_length=16)
    assert cache_max_length(data) == 16
    r = evaluate(model, data, tokenizer=tok)["ranking"]
    assert r["max_length"] == 16 and r["tie_rate"] == 1.0
    with pytest.raises(CacheMismatchError, match="max_length \\(cache 16, here 64\\)"):
        evaluate(model, data, tokenizer=tok, max_length=64)


def test_reward_fn_samples_and_win_rate_against_itself(tiny, tmp_path):
    """Sampling through the generate engine: the same model as reference draws the same samples
    (same per-sample seeds), so every comparison ties: win-rate exactly 1/2."""
    path, model, tok = tiny
    rows = [pairwise_row(model, tok, f"q{i}", "the cat", "a dog") for i in range(2)]
    data = write_table(tmp_path / "pw", "pairwise", rows, tokenizer=tok)
    out = evaluate(path, data, reward_fn=_length_reward, ref_model=path, num_samples=2, max_new_tokens=4, seed=7)
    s = out["samples"]
    assert s["num_prompts"] == 2 and s["num_samples"] == 2
    assert s["win_rate"] == 0.5 and s["mean_reward"] == s["ref_mean_reward"]


def _length_reward(prompt: list[dict], completion: str) -> float:
    return float(len(completion))


def test_cli_eval_writes_the_summary(tiny, tmp_path):
    """`prefpool eval --model M --data DIR --out FOLDER` writes FOLDER/eval.json; --out FILE or x.json is refused."""
    from click.testing import CliRunner

    from prefpool.cli import app

    path, model, tok = tiny
    data = write_table(
        tmp_path / "pw", "pairwise", [pairwise_row(model, tok, "q", "the cat", "a dog", (0.0, 1.0))], tokenizer=tok
    )
    out = tmp_path / "not-yet" / "ev"  # a folder that does not exist yet is made
    result = CliRunner().invoke(
        app, ["eval", "--model", str(path), "--data", str(data), "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "eval.json").read_text())["ranking"]["accuracy"] == 1.0
    assert f"written to {out / 'eval.json'}" in result.output
    bad = CliRunner().invoke(app, ["eval", "--model", str(path), "--data", str(tmp_path / "nothing")])
    assert bad.exit_code == 2
    (tmp_path / "taken.txt").write_text("keep me")
    for target, message in [
        (tmp_path / "e.json", "--out is a folder (eval writes eval.json into it), not a .json file"),
        (tmp_path / "taken.txt", "is a file; --out is a folder"),
    ]:
        refused = CliRunner().invoke(app, ["eval", "-m", str(path), "-d", str(data), "-o", str(target)])
        assert refused.exit_code == 2 and message in refused.output, refused.output
    assert not (tmp_path / "e.json").exists() and (tmp_path / "taken.txt").read_text() == "keep me"
    gpu = CliRunner().invoke(app, ["eval", "-m", str(path), "-d", str(data), "--device", "gpu"])
    assert gpu.exit_code == 2 and "'gpu' is not a device; expected auto, cpu, cuda, cuda:N or mps" in gpu.output


def test_cli_eval_talks_from_the_start_and_no_progress_silences_it(tiny, tmp_path, monkeypatch):
    """A line when the model starts loading, then progress lines over the scored answers; --no-progress: none."""
    from click.testing import CliRunner

    from prefpool.cli import app

    monkeypatch.setenv("PREFPOOL_PROGRESS_SECONDS", "1e-9")
    path, model, tok = tiny
    rows = [pairwise_row(model, tok, f"q{i}", "the cat", "a dog", (0.0, 1.0)) for i in range(2)]
    data = write_table(tmp_path / "pw", "pairwise", rows, tokenizer=tok)
    args = ["eval", "-m", str(path), "-d", str(data), "--device", "cpu", "--max-tokens", "8"]
    loud = CliRunner().invoke(app, args)
    assert loud.exit_code == 0, loud.output
    lines = loud.output.splitlines()
    assert lines[0] == f"eval: hashing and loading {path}, reading {data}; progress follows"
    assert any(line.startswith("eval: 4/4 answers (100%)") for line in lines)
    quiet = CliRunner().invoke(app, [*args, "--no-progress"])
    assert quiet.exit_code == 0 and not any(line.startswith("eval:") for line in quiet.output.splitlines())
