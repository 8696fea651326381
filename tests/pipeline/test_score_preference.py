"""score --preference-model: P(a > b | x) from a tiny causal LM, both orders, ranked by BT / Copeland / tournament."""

from __future__ import annotations

import math

import pytest
import torch
from test_build_helpers import example, write_rows

from prefpool.pipeline.engines.preference import TEMPLATE, PreferenceScorer, bradley_terry, copeland
from prefpool.pipeline.io.ids import completion_id
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.model.info import load_model_info
from prefpool.pipeline.score import score

torch.set_num_threads(1)


def test_bradley_terry_by_hand():
    # two items, P(0 > 1) = 0.75: s0 - s1 = logit(0.75) = ln 3, mean 0
    assert bradley_terry([[0.5, 0.75], [0.25, 0.5]]) == pytest.approx([math.log(3) / 2, -math.log(3) / 2], abs=1e-9)
    # outcomes made from strengths 1, 0, -1 give those strengths back
    s = [1.0, 0.0, -1.0]
    p = [[1 / (1 + math.exp(s[j] - s[i])) for j in range(3)] for i in range(3)]
    assert bradley_terry(p) == pytest.approx(s, abs=1e-6)


def test_copeland_by_hand():
    p = [[0.5, 0.6, 0.4], [0.4, 0.5, 0.5], [0.6, 0.5, 0.5]]
    # 0 beats 1; 1 ties 2 (0.5 each); 2 beats 0
    assert copeland(p) == [1.0, 0.5, 1.5]


ROWS = [example("pick one", [("first", None, None), ("second answer", None, None), ("third", None, None)])]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from prefpool.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("pm") / "pm", num_layers=1)


def _prefer_first(model_dir, a: str, b: str) -> float:
    """P(A > B) by a direct unbatched forward pass: sigmoid(logit "A" - logit "B") after the generation prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = TEMPLATE.format(conversation="pick one", answer_a=a, answer_b=b)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        last = model(input_ids=ids).logits[0, -1]
    token_a, token_b = (tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in ("A", "B"))
    return torch.sigmoid((last[token_a] - last[token_b]).double()).item()


def _direct_matrix(model_dir, texts):
    n = len(texts)
    p = [[0.5] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i != j:
                # both orders: i as A, then i as B
                p[i][j] = (
                    _prefer_first(model_dir, texts[i], texts[j]) + 1 - _prefer_first(model_dir, texts[j], texts[i])
                ) / 2
    return p


@pytest.mark.parametrize("rule", ["bradley-terry", "copeland", "tournament"])
def test_stage_scores_equal_the_hand_computation(tmp_path, model_dir, rule):
    ex = write_rows(tmp_path / "ex", "examples", ROWS, stage="ingest")
    out = score(ex, out=tmp_path / "s", preference_model=model_dir, preference_rule=rule, batch_size=2)
    found = {r["completion_id"]: r["score"] for r in read_table(out.out, schema="scores").to_pylist()}
    texts = [a["text"] for a in ROWS[0]["answers"]]
    p = _direct_matrix(model_dir, texts)
    if rule == "tournament":
        expected = [0.5, p[1][0], p[2][0]]  # against the row's first answer
    else:
        expected = bradley_terry(p) if rule == "bradley-terry" else copeland(p)
    assert [found[completion_id(t)] for t in texts] == pytest.approx(expected, abs=1e-5)
    identity = load_manifest(out.out).identity.config["scorer"]
    assert identity["kind"] == "preference_model" and identity["rule"] == rule


def test_both_orders_cancel_position_bias_and_tournament_is_the_cheap_mode(model_dir):
    info = load_model_info(model_dir)
    texts = ["first", "second answer", "third", "fourth one"]
    full = PreferenceScorer(info, rule="copeland", pools={"p": texts}, batch_size=4)
    cheap = PreferenceScorer(info, rule="tournament", pools={"p": texts}, batch_size=4)
    items = [([{"role": "user", "content": "pick one"}], t) for t in texts]
    full.score(items, prompt_ids=["p"] * 4)
    cheap.score(items, prompt_ids=["p"] * 4)
    # n = 4: n(n - 1) = 12 forward passes for a ranking of every pair, 2(n - 1) = 6 against the reference
    assert (full.forward_passes, cheap.forward_passes) == (12, 6)
    one_way = full.prefer_first(items[0][0], [("first", "third")])[0]
    swapped = full.prefer_first(items[0][0], [("third", "first")])[0]
    assert full.preference(items[0][0], [("first", "third")])[0] == pytest.approx((one_way + 1 - swapped) / 2)
    # the symmetrized preference of (b, a) is 1 - that of (a, b), whatever the model's position bias
    ab, ba = full.preference(items[0][0], [("first", "third"), ("third", "first")])
    assert ab + ba == pytest.approx(1.0, abs=1e-12)
