"""score with a two-head reward model (head choice, weighted heads) and batching under a token budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_build_helpers import example, write_rows

from prefpool.pipeline.engines.reward_model import length_batches
from prefpool.pipeline.io.errors import OutputConflictError, PipelineConfigError
from prefpool.pipeline.io.ids import completion_id
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.io.read import read_table
from prefpool.pipeline.score import score

torch.set_num_threads(1)

EXAMPLES = [
    example(f"question {i}", [(f"a {i}", None, None), (f"a longer answer {i} " * (i + 1), None, None)])
    for i in range(4)
]


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    """A tiny LlamaForSequenceClassification with two labels ("helpful", "concise")."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from prefpool.testing import build_tiny_llama

    base = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "lm", num_layers=1)
    tokenizer = AutoTokenizer.from_pretrained(base)
    config = LlamaConfig.from_pretrained(
        base,
        num_labels=2,
        id2label={0: "helpful", 1: "concise"},
        label2id={"helpful": 0, "concise": 1},
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(config)
    out = tmp_path_factory.mktemp("rm") / "rm2"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def ex(tmp_path):
    return write_rows(tmp_path / "ex", "examples", EXAMPLES, stage="ingest")


def _scores(folder) -> dict[tuple[str, str], float]:
    return {(r["prompt_id"], r["completion_id"]): r["score"] for r in read_table(folder, schema="scores").to_pylist()}


def _direct_outputs(model, tokenizer) -> dict[tuple[str, str], object]:
    """Each answer's model output from one unbatched forward pass of its chat-templated conversation."""
    found = {}
    for row in EXAMPLES:
        for answer in row["answers"]:
            ids = tokenizer.apply_chat_template(
                [*row["prompt"], {"role": "assistant", "content": answer["text"]}],
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
            )
            with torch.no_grad():
                found[(row["prompt_id"], completion_id(answer["text"]))] = model(**ids)
    return found


def _direct(model_dir) -> dict[tuple[str, str], torch.Tensor]:
    """Each answer's two logits from one unbatched forward pass."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    outputs = _direct_outputs(model, AutoTokenizer.from_pretrained(model_dir))
    return {key: out.logits[0].double() for key, out in outputs.items()}


def test_head_and_weighted_heads_equal_the_direct_logits(ex, tmp_path, two_heads):
    direct = _direct(two_heads)
    head = _scores(score(ex, out=tmp_path / "h", reward_model=two_heads, reward_head=1, batch_size=3).out)
    mixed = _scores(score(ex, out=tmp_path / "w", reward_model=two_heads, reward_weights=[0.25, -2.0]).out)
    assert head.keys() == mixed.keys() == direct.keys()
    for key, logits in direct.items():
        assert head[key] == pytest.approx(logits[1].item(), abs=1e-5)
        assert mixed[key] == pytest.approx(0.25 * logits[0].item() - 2.0 * logits[1].item(), abs=1e-5)
    scorer = load_manifest(tmp_path / "w").identity.config["scorer"]
    assert scorer["labels"] == 2 and scorer["head"] is None and scorer["head_weights"] == [0.25, -2.0]
    assert load_manifest(tmp_path / "h").identity.config["scorer"]["head"] == 1
    # another head is another scorer: refused over the same output
    with pytest.raises(OutputConflictError):
        score(ex, out=tmp_path / "h", reward_model=two_heads, reward_head=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, r"has 2 labels \(0: helpful, 1: concise\); choose one with reward_head"),
        ({"reward_head": 2}, "reward_head 2 is not a head of its 2 labels"),
        ({"reward_weights": [1.0]}, "1 reward_weights for 2 labels"),
        ({"reward_head": 0, "reward_weights": [1.0, 1.0]}, "not both"),
    ],
)
def test_head_choice_errors(ex, tmp_path, two_heads, kwargs, match):
    with pytest.raises(PipelineConfigError, match=match):
        score(ex, out=tmp_path / "s", reward_model=two_heads, **kwargs)


def test_head_options_need_a_reward_model(ex, tmp_path):
    with pytest.raises(PipelineConfigError, match="apply to a reward_model only"):
        score(ex, out=tmp_path / "s", reward_fn="test_score:count_good", reward_head=0)


def test_length_batches_by_hand():
    # longest first: 10 (index 1), 7 (3), 5 (2), 3 (0)
    assert length_batches([3, 10, 5, 7], batch_size=3) == [[1, 3, 2], [0]]
    # budget 20: [10, 7] pads to 2 x 10 = 20; adding 5 would make 30; [5, 3] pads to 10
    assert length_batches([3, 10, 5, 7], batch_size=3, max_tokens=20) == [[1, 3], [2, 0]]
    # a sequence over the budget goes alone
    assert length_batches([30, 2, 2], batch_size=8, max_tokens=8) == [[0], [1, 2]]


def test_token_budget_does_not_change_values(ex, tmp_path, two_heads):
    one = _scores(score(ex, out=tmp_path / "one", reward_model=two_heads, reward_head=0, batch_size=1).out)
    budget = score(ex, out=tmp_path / "b", reward_model=two_heads, reward_head=0, batch_size=8, max_batch_tokens=64)
    values = _scores(budget.out)
    assert values.keys() == one.keys()
    for key in one:
        assert values[key] == pytest.approx(one[key], abs=1e-5)


REMOTE_CODE = '''
import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class TinyRMConfig(PretrainedConfig):
    model_type = "tiny-remote-rm"

    def __init__(self, vocab_size=1024, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size


class TinyRM(PreTrainedModel):
    """Logits: the sum over real tokens of a per-token vector of num_labels values."""

    config_class = TinyRMConfig

    def __init__(self, config):
        super().__init__(config)
        self.table = torch.nn.Embedding(config.vocab_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return SequenceClassifierOutput(logits=(self.table(input_ids) * attention_mask.unsqueeze(-1)).sum(1))
'''


def _model_with_its_own_code(folder: Path, code: str, tokenizer_dir: Path, make, classes: dict[str, str]):
    """Save ``make(module, pad_token_id)`` (seeded) with ``code`` as ``folder/modeling_own.py``, the tokenizer of
    ``tokenizer_dir``, and a config whose ``auto_map`` sends the auto classes to ``classes`` (as ArmoRM's does).
    Returns ``(model, tokenizer)``."""
    import importlib.util
    import json

    from transformers import AutoTokenizer

    folder.mkdir()
    (folder / "modeling_own.py").write_text(code)
    spec = importlib.util.spec_from_file_location(f"modeling_own_{folder.name}", folder / "modeling_own.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = make(module, tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    saved["auto_map"] = {auto: f"modeling_own.{name}" for auto, name in classes.items()}
    (folder / "config.json").write_text(json.dumps(saved))
    return model, tokenizer


def test_a_model_with_its_own_code_needs_trust_remote_code(ex, tmp_path, two_heads):
    """A folder whose config maps the auto classes to code shipped beside the weights (as ArmoRM's does)."""
    folder = tmp_path / "remote"
    model, tokenizer = _model_with_its_own_code(
        folder,
        REMOTE_CODE,
        two_heads,
        lambda module, pad: module.TinyRM(module.TinyRMConfig(num_labels=2, pad_token_id=pad)),
        {"AutoConfig": "TinyRMConfig", "AutoModelForSequenceClassification": "TinyRM"},
    )
    with pytest.raises(PipelineConfigError, match="--trust-remote-code"):
        score(ex, out=tmp_path / "refused", reward_model=folder, reward_head=1)
    out = score(ex, out=tmp_path / "s", reward_model=folder, reward_head=1, trust_remote_code=True).out
    values = _scores(out)
    # by hand: the sum of head 1's per-token values over the chat-templated conversation's tokens
    row = EXAMPLES[0]
    text = row["answers"][0]["text"]
    ids = tokenizer.apply_chat_template([*row["prompt"], {"role": "assistant", "content": text}], tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    expected = model.table.weight[ids, 1].double().sum().item()
    assert values[(row["prompt_id"], completion_id(text))] == pytest.approx(expected, abs=1e-5)


ARMO_LIKE_CODE = '''
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput


@dataclass
class ObjectivesOutput(ModelOutput):
    rewards: torch.FloatTensor = None
    score: torch.FloatTensor = None


class ArmoLikeConfig(PretrainedConfig):
    model_type = "tiny-armo-like"

    def __init__(self, vocab_size=1024, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size


class ArmoLike(PreTrainedModel):
    """No logits: ``rewards`` (B, num_labels) sums per-token objective values over real tokens; ``score``
    (B, 1) is their softmax-gated sum, as ArmoRM's output class holds its objectives and its score."""

    config_class = ArmoLikeConfig

    def __init__(self, config):
        super().__init__(config)
        self.table = torch.nn.Embedding(config.vocab_size, config.num_labels)
        self.gate = torch.nn.Parameter(torch.randn(config.num_labels))
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        rewards = (self.table(input_ids) * attention_mask.unsqueeze(-1)).sum(1)
        score = (rewards * torch.softmax(self.gate, 0)).sum(-1, keepdim=True)
        return ObjectivesOutput(rewards=rewards, score=score)
'''


@pytest.fixture(scope="module")
def armo_like(tmp_path_factory, two_heads):
    """A model with its own code and its own output class (three objectives and a score, no logits)."""
    folder = tmp_path_factory.mktemp("armo") / "armo"
    model, tokenizer = _model_with_its_own_code(
        folder,
        ARMO_LIKE_CODE,
        two_heads,
        lambda module, pad: module.ArmoLike(module.ArmoLikeConfig(num_labels=3, pad_token_id=pad)),
        {"AutoConfig": "ArmoLikeConfig", "AutoModelForSequenceClassification": "ArmoLike"},
    )
    return folder, model, tokenizer


def test_an_output_class_without_logits_is_read_by_its_field(ex, tmp_path, armo_like):
    """ArmoRM-like: ``score`` is one value per answer; ``rewards`` takes a head or weights. Each equals the
    model's own output from an unbatched forward pass."""
    folder, model, tokenizer = armo_like
    direct = _direct_outputs(model, tokenizer)
    common = dict(reward_model=folder, trust_remote_code=True, batch_size=3)
    gated = _scores(score(ex, out=tmp_path / "score", reward_output="score", **common).out)
    weighted = _scores(
        score(ex, out=tmp_path / "w", reward_output="rewards", reward_weights=[1.0, -0.5, 2.0], **common).out
    )
    assert gated.keys() == weighted.keys() == direct.keys()
    for key, result in direct.items():
        assert gated[key] == pytest.approx(result.score[0, 0].item(), abs=1e-5)
        r = result.rewards[0].double()
        assert weighted[key] == pytest.approx((r[0] - 0.5 * r[1] + 2.0 * r[2]).item(), abs=1e-5)
    assert load_manifest(tmp_path / "score").identity.config["scorer"]["output"] == "score"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reward_head": 0}, r"its output has no field 'logits'; its fields: rewards, score \(choose one with "),
        ({"reward_output": "rewards"}, r"\(output 'rewards'\): has 3 labels \(0: 0, 1: 1, 2: 2\); choose one"),
        ({"reward_output": "score", "reward_head": 1}, r"reward_head 1 is not a head of its 1 labels"),
        ({"reward_output": "rewards", "reward_weights": [1.0]}, r"1 reward_weights for 3 labels"),
    ],
)
def test_an_output_field_that_does_not_fit_is_refused(ex, tmp_path, armo_like, kwargs, match):
    with pytest.raises(PipelineConfigError, match=match):
        score(ex, out=tmp_path / "s", reward_model=armo_like[0], trust_remote_code=True, **kwargs)
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").glob("*.parquet"))


def test_reward_output_needs_a_reward_model(ex, tmp_path):
    with pytest.raises(PipelineConfigError, match="apply to a reward_model only"):
        score(ex, out=tmp_path / "s", reward_fn="test_score:count_good", reward_output="score")
