"""`prefpool train` from a ``.gguf`` model: it trains the dequantized float weights and saves them.

transformers marks a model loaded from a GGUF as quantized and refuses to save
it ("QuantizationMethod.GGUF ... is not serializable"); the run would then lose
its trained weights at the very end. The GGUF here is the tiny Llama written by
``prefpool.testing.write_tiny_gguf`` (F32), and its reference log-probs come
from the real logprobs stage on the same file.
"""

from __future__ import annotations

import pytest
import torch
from trainer_tables import MAX_LENGTH, write_examples

from prefpool.pipeline.build import build
from prefpool.pipeline.logprobs import logprobs
from prefpool.pipeline.model.folder import load_tokenizer
from prefpool.pipeline.model.source import resolve_model
from prefpool.testing import build_tiny_llama, write_tiny_gguf
from prefpool.train.config import TrainConfig
from prefpool.train.trainer import Trainer

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def test_train_from_a_gguf_saves_the_trained_weights_as_a_model_folder(tmp_path):
    pytest.importorskip("gguf")
    gguf = write_tiny_gguf(build_tiny_llama(tmp_path / "tiny", seed=0), tmp_path / "tiny-f32.gguf")
    examples = write_examples(tmp_path)
    lp = logprobs(examples, model=gguf, out=tmp_path / "lp", max_length=MAX_LENGTH, show_progress=False).out
    table = build("pairwise", examples=examples, logprobs=lp, out=tmp_path / "pairwise").out
    out = tmp_path / "run"
    cfg = TrainConfig(
        model=str(gguf), data=str(table), output_dir=str(out), loss="dpo", lr=1e-2, batch_size=4, max_steps=2
    )
    trainer = Trainer(cfg)
    summary = trainer.run()
    assert summary["steps"] == 2 and summary["step0_max_abs_diff"] < 1e-4  # the cache is the GGUF's own

    trained = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    saved = resolve_model(out).causal_lm(torch.float32).state_dict()
    initial = resolve_model(gguf).causal_lm(torch.float32).state_dict()
    assert saved.keys() == trained.keys()
    assert all(torch.equal(saved[k], trained[k]) for k in trained)  # what was trained is what was saved
    assert any(not torch.equal(initial[k], trained[k]) for k in trained)  # and training changed it
    assert not hasattr(resolve_model(out).config(), "quantization_config")  # a plain float model folder
    assert load_tokenizer(out).chat_template == load_tokenizer(gguf).chat_template
