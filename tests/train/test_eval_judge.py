"""eval's win-rate by a pairwise preference model and by an LLM judge, against hand computations.

The policy's and the reference model's samples are fixed texts (``sample_texts`` replaced), so every
comparison is known; the judge runs its real path (its tokenizer and chat template, ``JudgeScorer``)
with a scripted engine that replies by a fixed rule, some replies unparsable. The preference model is a
tiny random Llama, read directly for the hand computation.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_eval_support import pairwise_row, write_table
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefpool.core.errors import ConfigError
from prefpool.pipeline.engines.generation import Completion
from prefpool.pipeline.engines.hf_engine import HF
from prefpool.pipeline.engines.preference import TEMPLATE, PreferenceScorer
from prefpool.pipeline.engines.registry import ENGINES
from prefpool.testing import build_tiny_llama
from prefpool.train import eval_samples
from prefpool.train.eval_winrate import length_controlled_win_rate
from prefpool.train.evaluate import evaluate

torch.set_num_threads(1)

# the table's preferred (chosen) answer of each prompt
CHOSEN = {"q0": "ref zero", "q1": "ref one"}


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("policy") / "policy", seed=1)


@pytest.fixture(scope="module")
def judge_model(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("judge") / "judge", num_layers=1)


@pytest.fixture
def data(policy, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(policy).float().eval()
    tok = AutoTokenizer.from_pretrained(policy)
    rows = [pairwise_row(model, tok, q, chosen, "a dog") for q, chosen in CHOSEN.items()]
    return write_table(tmp_path / "pw", "pairwise", rows, tokenizer=tok)


def fixed_samples(monkeypatch, samples: dict[str, dict[str, list[str]]]) -> None:
    """``sample_texts`` returns ``samples[what][prompt text]``: what = model | ref_model."""

    def sample_texts(model, prompts, *, num_samples, what="model", **_):
        rows = [samples[what][messages[0]["content"]] for _, messages in prompts]
        assert all(len(row) == num_samples for row in rows)
        return rows, {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8}

    monkeypatch.setattr(eval_samples, "sample_texts", sample_texts)


def _line(prompt: str, label: str) -> str:
    return prompt.split(f"[{label}]\n", 1)[1].split("\n", 1)[0]


def content_reply(prompt: str) -> str:
    """Pairwise: unparsable when an answer holds "junk"; else "good" wins; else the longer answer wins.
    Pointwise: "good" 8, "bad" 2, "junk" unparsable, else 5."""
    if "[Answer A]" not in prompt:
        answer = _line(prompt, "Answer")
        ratings = {"good": "Rating: 8", "bad": "Rating: 2", "junk": "hmm"}
        return next((reply for word, reply in ratings.items() if word in answer), "Rating: 5")
    a, b = _line(prompt, "Answer A"), _line(prompt, "Answer B")
    if "junk" in a + b:
        return "I cannot tell"
    if "good" in a or "good" in b:
        return "Verdict: A" if "good" in a else "Verdict: B"
    return "Verdict: A" if len(a) > len(b) else "Verdict: B"


class ScriptedJudge:
    """The hf engine of the judge: decodes the rendered judge prompt and replies by ``rule``."""

    rule = staticmethod(content_reply)
    prompts: list[str] = []

    def __init__(self, info, **_):
        self.info = info

    def generate(self, requests, params, *, on_done):
        assert params.greedy
        out = []
        for request in requests:
            text = self.info.tokenizer.decode(list(request.prompt_tokens))
            assert text.startswith("<|bos|><|user|>") and text.endswith("<|assistant|>"), text
            ScriptedJudge.prompts.append(text)
            reply = self.info.tokenizer(ScriptedJudge.rule(text), add_special_tokens=False)["input_ids"]
            out.append(Completion(tuple(reply), "stop"))
        return out


@pytest.fixture
def scripted(monkeypatch):
    ScriptedJudge.prompts = []
    ScriptedJudge.rule = staticmethod(content_reply)

    class Scripted(HF):
        def generator(self, info, **_):
            return ScriptedJudge(info)

    monkeypatch.setitem(ENGINES, "hf", Scripted())
    return ScriptedJudge


def test_pairwise_judge_against_the_tables_answers_by_hand(policy, data, judge_model, scripted, monkeypatch, tmp_path):
    fixed_samples(monkeypatch, {"model": {"q0": ["good x", "plain y"], "q1": ["junk z", "ref one"]}})
    out = evaluate(policy, data, judge=judge_model, num_samples=2, device="cpu", out=tmp_path / "ev")
    s = out["samples"]
    # "good x" beats "ref zero" in both orders: 1; "plain y" (7 chars) is shorter than "ref zero" (8): 0;
    # "junk z": unparsable, left out; "ref one" is the reference itself: 0.5, not judged
    assert s["win_rate"] == pytest.approx((1 + 0 + 0.5) / 3, abs=1e-12)
    lc = length_controlled_win_rate([1.0, 0.0, 0.5], [6.0 - 8.0, 7.0 - 8.0, 0.0])
    assert s["length_controlled_win_rate"] == pytest.approx(lc, abs=1e-12)
    assert s["mean_length_chars"] == (6 + 7 + 6 + 7) / 4 and s["ref_mean_length_chars"] == (8 + 8 + 7 + 7) / 4
    assert s["judge"] == {
        "mode": "pairwise",
        "comparisons": 4,
        "judged": 3,
        "unparsable": 1,
        "unparsable_rate": 1 / 3,
        "identical": 1,
        "orders_disagree": 0,
    }
    assert (s["scorer"], s["reference"]) == ("judge", "table")
    assert len(scripted.prompts) == 6  # three comparisons judged, each in both orders
    # both orders: the policy's sample as A, then as B
    good = [p for p in scripted.prompts if "good x" in p]
    assert [_line(p, "Answer A") == "good x" for p in good] == [True, False]
    # the same evaluation again is a no-op (its identity, the judge's included, reads back equal)
    assert evaluate(policy, data, judge=judge_model, num_samples=2, device="cpu", out=tmp_path / "ev")["status"] == (
        "done earlier"
    )
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["identity"]["settings"]["judge"]["mode"] == (
        "pairwise"
    )


def test_a_judge_biased_to_the_first_position_gives_one_half(policy, data, judge_model, scripted, monkeypatch):
    fixed_samples(
        monkeypatch,
        {"model": {"q0": ["good x"], "q1": ["a b c d e f g h"]}, "ref_model": {"q0": ["no"], "q1": ["long ref one"]}},
    )
    scripted.rule = staticmethod(lambda prompt: "Verdict: A")
    s = evaluate(policy, data, judge=judge_model, ref_model=policy, device="cpu")["samples"]
    assert s["win_rate"] == 0.5 and s["length_controlled_win_rate"] == pytest.approx(0.5, abs=1e-9)
    assert s["judge"]["orders_disagree"] == 2 and s["judge"]["unparsable"] == 0
    assert s["reference"] == "ref_model" and s["mean_length_chars"] == (6 + 15) / 2


def test_pointwise_judge_rates_both_and_leaves_unparsable_ratings_out(policy, data, judge_model, scripted, monkeypatch):
    fixed_samples(monkeypatch, {"model": {"q0": ["good a", "junk b"], "q1": ["bad c", "plain d"]}})
    s = evaluate(policy, data, judge=judge_model, judge_mode="pointwise", num_samples=2, device="cpu")["samples"]
    # ratings: good a 8, junk b none, bad c 2, plain d 5; the references 5 and 5 (rated once per prompt)
    assert s["win_rate"] == pytest.approx((1 + 0 + 0.5) / 3, abs=1e-12)
    assert s["mean_reward"] == pytest.approx(5.0) and s["ref_mean_reward"] == 5.0
    assert s["judge"] == {"mode": "pointwise", "comparisons": 4, "judged": 4, "unparsable": 1, "unparsable_rate": 0.25}
    assert len(scripted.prompts) == 4 + 2


def test_preference_model_win_rate_by_hand(policy, data, judge_model, monkeypatch):
    samples = {"q0": ["good x", "plain y"], "q1": ["other", "ref one"]}
    refs = {"q0": ["first", "second one"], "q1": ["third", "ref one"]}
    fixed_samples(monkeypatch, {"model": samples, "ref_model": refs})
    s = evaluate(policy, data, preference_model=judge_model, ref_model=policy, num_samples=2, device="cpu")["samples"]
    wins = [
        (_prefer_first(judge_model, q, a, b) + 1 - _prefer_first(judge_model, q, b, a)) / 2
        for q in samples
        for a, b in zip(samples[q], refs[q], strict=True)
    ]
    assert s["win_rate"] == pytest.approx(sum(wins) / 4, abs=1e-6)
    diffs = [float(len(a) - len(b)) for q in samples for a, b in zip(samples[q], refs[q], strict=True)]
    assert s["length_controlled_win_rate"] == pytest.approx(length_controlled_win_rate(wins, diffs), abs=1e-5)
    assert s["scorer"] == "preference_model" and "judge" not in s and "mean_reward" not in s


def test_a_preference_model_biased_to_the_first_position_gives_one_half(policy, data, judge_model, monkeypatch):
    fixed_samples(monkeypatch, {"model": {"q0": ["good x"], "q1": ["other"]}})
    monkeypatch.setattr(PreferenceScorer, "prefer_first", lambda self, prompt, pairs: [0.9] * len(pairs))
    s = evaluate(policy, data, preference_model=judge_model, device="cpu")["samples"]
    assert s["win_rate"] == pytest.approx(0.5, abs=1e-12) and s["reference"] == "table"


def _prefer_first(model_dir, question: str, a: str, b: str) -> float:
    """P(A > B) by one unbatched forward pass: sigmoid(logit "A" - logit "B") after the generation prompt."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = TEMPLATE.format(conversation=question, answer_a=a, answer_b=b)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        last = model(input_ids=ids).logits[0, -1]
    token_a, token_b = (tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in ("A", "B"))
    return torch.sigmoid((last[token_a] - last[token_b]).double()).item()


def test_exactly_one_scorer(policy, data, judge_model, tmp_path):
    from click.testing import CliRunner

    from prefpool.cli import app

    with pytest.raises(ConfigError, match="not several; got preference_model, judge"):
        evaluate(policy, data, preference_model=judge_model, judge=judge_model)
    with pytest.raises(ConfigError, match="judge_template"):
        evaluate(policy, data, reward_fn="test_score:count_good", judge_template=tmp_path / "t.txt")
    both = CliRunner().invoke(
        app, ["eval", "-m", str(policy), "-d", str(data), "--judge", str(judge_model), "--reward-model", str(policy)]
    )
    assert both.exit_code == 2 and "not several; got reward_model, judge" in both.output, both.output
    assert "Traceback" not in both.output


def test_a_tiny_random_judge_through_the_hf_engine(policy, data, judge_model):
    """No stand-ins: the policy samples and the judge replies through the hf engine; a random judge's replies
    rarely parse, and every comparison is either in the win-rate or counted as unparsable."""
    s = evaluate(policy, data, judge=judge_model, judge_max_new_tokens=8, max_new_tokens=4, num_samples=2)["samples"]
    counts = s["judge"]
    assert counts["comparisons"] == 4 and counts["judged"] + counts["identical"] == 4
    assert counts["unparsable_rate"] == (counts["unparsable"] / counts["judged"] if counts["judged"] else 0.0)
    assert (s["win_rate"] is None) == (counts["unparsable"] == 4)
