"""The TRL round trip on SmolLM2-135M-Instruct with real UltraFeedback pairs (skipped without them).

ingest (4 pairs of ``../shared/data/ultrafeedback``) -> logprobs (float32) -> build pairwise, then:

- TRL's own reference pass (``DPOTrainer`` with ``precompute_ref_log_probs=True`` on the table without
  its cached columns) gives the values prefpool cached, within 1e-4 nats in float32;
- ``CachedRefDPOTrainer`` trains on the table without computing them, its step-0 check within 1e-4;
- under ``DPOConfig``'s default ``bf16=True`` the step-0 values move by far more than the tolerance
  (issue 13 measured 0.68 nats on this model), and the trainer refuses.

Needs ``../shared/data`` and the GGUF that ``../shared/tools/get-smollm2`` fetches (in its default
cache folder; this test does not download it) and the ``gguf`` package. The float32 folder converted
from the GGUF (75 s, once) is kept beside it, in the same cache folder, for later runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

pytest.importorskip("trl")
pytest.importorskip("gguf")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from prefpool.pipeline.build import build  # noqa: E402
from prefpool.pipeline.ingest import ingest  # noqa: E402
from prefpool.pipeline.io.ids import normalize_messages  # noqa: E402
from prefpool.pipeline.logprobs import logprobs  # noqa: E402
from prefpool.pipeline.model.tokenize import encode_pair  # noqa: E402
from prefpool.train.trainer import Step0MismatchError  # noqa: E402
from prefpool.train.trl_plugin import CachedRefConfig, CachedRefDPOTrainer, prefpool_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PAIRS = REPO.parent / "shared" / "data" / "ultrafeedback" / "train_clean.jsonl"
GGUF = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_LENGTH = 128
N_PAIRS = 4

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("smollm2"),  # one worker converts the model, once
    pytest.mark.usefixtures("fresh_accelerate_state"),
    pytest.mark.skipif(not PAIRS.is_file(), reason=f"{PAIRS} is absent (a fresh clone)"),
    pytest.mark.skipif(not GGUF.is_file(), reason=f"{GGUF} is absent: run ../shared/tools/get-smollm2 once"),
]


@pytest.fixture(scope="module")
def smollm2_table(tmp_path_factory):
    torch.set_num_threads(2)  # for the model's preparation; each test starts on one thread again (conftest)
    spec = importlib.util.spec_from_file_location("real_data_common", REPO / "experiments" / "real_data" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    root = tmp_path_factory.mktemp("smollm2")
    model = common.prepare_model(GGUF.parent, gguf_dir=GGUF.parent)
    tok = AutoTokenizer.from_pretrained(model)
    src = root / "pairs.jsonl"
    # real UltraFeedback pairs whose prompt fits in MAX_LENGTH tokens (answers may be cut: truncation is checked too)
    picked = []
    for line in PAIRS.read_text().splitlines():
        prompt = normalize_messages(json.loads(line)["prompt"])
        if len(encode_pair(tok, prompt, "", max_length=None).prompt_ids) < MAX_LENGTH // 2:
            picked.append(line)
        if len(picked) == N_PAIRS:
            break
    src.write_text("\n".join(picked) + "\n")
    examples = ingest(src, format="pairwise", out=root / "ingest", license="mit", language=["en"]).out
    lp = logprobs(examples, model=model, out=root / "logprobs", max_length=MAX_LENGTH, show_progress=False).out
    table = build("pairwise", examples=examples, logprobs=lp, out=root / "pairwise").out
    return model, table


def _kw(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=N_PAIRS,
        precompute_ref_batch_size=N_PAIRS,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        max_length=MAX_LENGTH,
        learning_rate=1e-6,
        gradient_checkpointing=False,
        seed=0,
    )
    return {**base, **kw}


def test_trls_reference_pass_equals_prefpools_cache(smollm2_table, tmp_path):
    model, table = smollm2_table
    ours = prefpool_dataset(table)
    cached = {r["prompt_id"]: (r["ref_chosen_logps"], r["ref_rejected_logps"]) for r in ours}
    plain = DPOTrainer(
        AutoModelForCausalLM.from_pretrained(model),
        args=DPOConfig(**_kw(tmp_path, bf16=False, precompute_ref_log_probs=True)),
        train_dataset=ours.remove_columns(["ref_chosen_logps", "ref_rejected_logps"]),
        processing_class=AutoTokenizer.from_pretrained(model),
    )
    trl_values = {r["prompt_id"]: (r["ref_chosen_logps"], r["ref_rejected_logps"]) for r in plain.train_dataset}
    assert trl_values.keys() == cached.keys() and len(cached) == N_PAIRS
    diff = max(abs(a - b) for pid in cached for a, b in zip(cached[pid], trl_values[pid], strict=True))
    assert diff < 1e-4, f"TRL's reference log-probs differ from prefpool's cache by {diff} nats"


def test_cached_ref_trainer_float32_and_bf16(smollm2_table, tmp_path):
    """One step on 2 pairs (the step-0 check covers the batch); the bf16 run stops at its step-0 check."""
    model, table = smollm2_table
    tok = AutoTokenizer.from_pretrained(model)
    trainer = CachedRefDPOTrainer(
        AutoModelForCausalLM.from_pretrained(model),
        args=CachedRefConfig(**_kw(tmp_path, per_device_train_batch_size=2)),
        train_dataset=prefpool_dataset(table),
        processing_class=tok,
    )
    assert trainer.ref_model is None
    result = trainer.train()
    assert result.global_step == 1 and trainer.step0_max_abs_diff < 1e-4, trainer.step0_max_abs_diff
    AcceleratorState._reset_state(reset_partial_state=True)  # the bf16 run is another "process"
    GradientState._reset_state()
    bf16 = CachedRefDPOTrainer(
        AutoModelForCausalLM.from_pretrained(model),
        args=DPOConfig(**_kw(tmp_path / "bf16", per_device_train_batch_size=2)),  # TRL's default bf16=True
        train_dataset=prefpool_dataset(table),
        processing_class=tok,
    )
    with pytest.raises(Step0MismatchError, match="bf16=True is DPOConfig's default") as refused:
        bf16.train()
    assert bf16.step0_max_abs_diff > 0.05, refused.value  # far beyond the float32 noise
