"""The tiny world the fault-injection tests break things against (a plain module; the fixture is in conftest).

Made once per test process by the real stages on a 1-layer tiny Llama: ingest ->
generate -> score -> logprobs -> build (pairwise, mcpo, mpo) -> push --dry-run,
a finished and an unfinished ``train`` run, an ``eval`` result and a ``plot``.
Beside them: broken copies of the model (no tokenizer, no chat template, no
weights, another chat template), reward functions that misbehave, and two
``--shard`` runs for ``merge``.

Every test hashes the whole world before and after its command
(``tree_digest``): no bad input, refused run or fault may change a byte of an
earlier output.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from prefpool.pipeline.io.layout import MANIFEST, meta_path, read_meta
from prefpool.testing import build_tiny_llama

WORDS = ("apple", "river", "stone", "cloud", "green", "house", "light", "music")
MAX_LENGTH = 64
REWARDS = {
    "length": "def reward(prompt, completion):\n    return float(len(completion))\n",
    "raises": "def reward(prompt, completion):\n    raise KeyError('no score for ' + completion[:5])\n",
    "syntax": "def reward(prompt, completion)\n    return 1.0\n",
    "import_fails": "import no_such_module_for_prefpool_tests\n\ndef reward(prompt, completion):\n    return 1.0\n",
    "nan": "def reward(prompt, completion):\n    return float('nan')\n",
    "inf": "def reward(prompt, completion):\n    return float('-inf')\n",
    "text": "def reward(prompt, completion):\n    return 'good'\n",
    "none": "def reward(prompt, completion):\n    return None\n",
    "boolean": "def reward(prompt, completion):\n    return True\n",
    "not_callable": "reward = 3\n",
}
OTHER_TEMPLATE_PREFIX = "{{ bos_token }}<|system|>Answer briefly.<|end|>"


def tree_digest(root: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``root`` (folders by their files)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _model_copies(root: Path, model: Path) -> dict[str, Path]:
    copies = {}
    for name in ("no_tokenizer", "no_chat_template", "no_weights", "other_template"):
        folder = root / f"model-{name}"
        shutil.copytree(model, folder)
        copies[name] = folder
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (copies["no_tokenizer"] / f).unlink()
    (copies["no_chat_template"] / "chat_template.jinja").unlink()
    (copies["no_weights"] / "model.safetensors").unlink()
    template = copies["other_template"] / "chat_template.jinja"
    # Same completion tokens, other prompt tokens: what eval must not take for the reference's.
    template.write_text(template.read_text().replace("{{ bos_token }}", OTHER_TEMPLATE_PREFIX, 1))
    return copies


def build_world(root: Path) -> dict[str, Path]:
    """Every input and earlier output the fault tests use, by name."""
    from prefpool.pipeline.build import build
    from prefpool.pipeline.generate import generate
    from prefpool.pipeline.ingest import ingest
    from prefpool.pipeline.logprobs import logprobs
    from prefpool.pipeline.push import push
    from prefpool.pipeline.score import score
    from prefpool.train.config import TrainConfig
    from prefpool.train.evaluate import evaluate
    from prefpool.train.plot import plot_run
    from prefpool.train.trainer import Trainer, train

    root.mkdir(parents=True, exist_ok=True)
    w: dict[str, Path] = {"root": root}
    w["model"] = build_tiny_llama(root / "model", num_layers=1)
    w.update({f"model_{k}": v for k, v in _model_copies(root, w["model"]).items()})
    for name, source in REWARDS.items():
        (root / f"reward_{name}.py").write_text(source)
        w[f"reward_{name}"] = root / f"reward_{name}.py"

    src = root / "ranked.jsonl"
    rows = [
        {"prompt": f"Repeat the word {x}.", "answers": [{"text": x, "rank": 1}, {"text": x.upper(), "rank": 2}]}
        for x in WORDS
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    w["source"] = src
    w["ingest"] = ingest(src, format="ranked", out=root / "ingest").out
    w["shard0"] = ingest(src, format="ranked", out=root / "shard-0", shard="0/2").out
    w["shard1"] = ingest(src, format="ranked", out=root / "shard-1", shard="1/2").out
    bad_role = root / "bad_role.jsonl"
    bad_role.write_text(json.dumps({"prompt": [{"role": "narrator", "content": "hi"}], "chosen": "a", "rejected": "b"}))
    w["ingest_bad_role"] = ingest(bad_role, format="pairwise", out=root / "ingest-bad-role").out

    w["generate"] = generate(
        w["ingest"], model=w["model"], out=root / "generate", n=3, max_new_tokens=6, temperature=1.0, seed=1
    ).out
    w["score"] = score(w["generate"], out=root / "score", reward_fn=f"{w['reward_length']}:reward").out
    w["lp_ex"] = logprobs(w["ingest"], model=w["model"], out=root / "lp-ex", max_length=MAX_LENGTH).out
    w["lp_gen"] = logprobs(w["generate"], model=w["model"], out=root / "lp-gen", max_length=MAX_LENGTH).out
    w["lp_other_length"] = logprobs(w["ingest"], model=w["model"], out=root / "lp-ex-48", max_length=48).out
    lp = [w["lp_ex"], w["lp_gen"]]
    w["pairwise"] = build("pairwise", examples=w["ingest"], logprobs=lp, out=root / "pairwise").out
    w["mcpo"] = build("mcpo", examples=w["ingest"], logprobs=lp, out=root / "mcpo").out
    w["mpo"] = build("mpo", examples=w["ingest"], logprobs=lp, candidates=w["generate"], out=root / "mpo").out
    w["pairwise_relabelled"] = _relabelled_table(root, w)
    w["hub"] = push(w["mcpo"], repo_id="me/prefs", dry_run=True, out=root / "hub").folder

    def cfg(out: Path, **kw) -> TrainConfig:
        base = dict(model=str(w["model"]), data=str(w["pairwise"]), output_dir=str(out), loss="dpo")
        return TrainConfig(**{**base, "batch_size": 2, "max_steps": 2, "lr": 1e-3, "progress": False, **kw})

    w["train_done"] = root / "train-done"
    train(cfg(w["train_done"]))
    _reset_accelerate()
    w["train_unfinished"] = root / "train-unfinished"
    Trainer(cfg(w["train_unfinished"], max_steps=4, save_steps=1)).run(stop_after=2)
    _reset_accelerate()
    w["eval"] = root / "eval"  # a folder holding eval.json
    evaluate(w["train_done"], w["pairwise"], out=w["eval"], device="cpu")
    w["plot"] = plot_run(w["train_done"], root / "plot").parent  # a folder holding curves.png
    return w


def _relabelled_table(root: Path, w: dict[str, Path]) -> Path:
    """A pairwise table whose reference values come from another model, its manifest edited to claim
    ours: every cache-key part matches, so only the step-0 comparison can tell."""
    from prefpool.pipeline.build import build
    from prefpool.pipeline.logprobs import logprobs

    other = build_tiny_llama(root / "model-seed-1", num_layers=1, seed=1)
    lp = logprobs(w["ingest"], model=other, out=root / "lp-seed-1", max_length=MAX_LENGTH).out
    table = build("pairwise", examples=w["ingest"], logprobs=lp, out=root / "pairwise-seed-1").out
    manifest = read_meta(table, MANIFEST)
    ours = read_meta(w["pairwise"], MANIFEST)["identity"]["inputs"]["logprobs"][0]
    manifest["identity"]["inputs"]["logprobs"][0]["identity"]["config"]["cache"] = ours["identity"]["config"]["cache"]
    meta_path(table, MANIFEST).write_text(json.dumps(manifest))
    return table


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
