"""A GGUF's model as a plain float model (``gguf_float.plain_causal_lm``): the same numbers, the weights in
memory once (the plain model takes the loaded tensors over), tied weights still one parameter."""

from __future__ import annotations

import pytest
import torch

from prefpool.pipeline.model.gguf_float import plain_causal_lm
from prefpool.pipeline.model.source import resolve_model
from prefpool.testing import build_tiny_llama, write_tiny_gguf

torch.set_num_threads(1)


@pytest.mark.parametrize("tied", [False, True])
def test_plain_model_takes_the_gguf_weights_over_without_a_copy(tmp_path, tied):
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM

    folder = build_tiny_llama(tmp_path / "tiny", seed=0)
    if tied:
        model = AutoModelForCausalLM.from_pretrained(folder)
        model.config.tie_word_embeddings = True
        model.tie_weights()
        model.save_pretrained(folder)
    gguf = write_tiny_gguf(folder, tmp_path / "tiny-f32.gguf")
    source = resolve_model(gguf)
    loaded = AutoModelForCausalLM.from_pretrained(str(source.folder), dtype=torch.float32, **source.load_kwargs)
    ids = torch.randint(0, loaded.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = loaded(ids).logits
    storages = {p.data_ptr() for p in loaded.parameters()}
    buffers = {name: b.data_ptr() for name, b in loaded.named_buffers()}

    plain = plain_causal_lm(loaded)
    assert not hasattr(plain.config, "quantization_config")
    assert {p.data_ptr() for p in plain.parameters()} == storages  # the same tensors: no second copy
    assert {name: b.data_ptr() for name, b in plain.named_buffers()} == buffers  # rotary tables included
    assert (plain.lm_head.weight is plain.model.embed_tokens.weight) == tied
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, expected)
    plain.save_pretrained(tmp_path / "saved")  # a plain float model saves
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, expected)
