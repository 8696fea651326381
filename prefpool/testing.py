"""Tiny Llama models built on the spot, for tests, examples and the quickstart.

There is no model hub in CI or on an air-gapped machine, so every test that
needs "a model" builds one here: a byte-level BPE tokenizer trained on a small
synthetic corpus, a chat template, and a randomly initialised ``LlamaForCausalLM``
saved with ``save_pretrained``. The result loads back with the ``Auto*`` classes
(and with vLLM: ``head_dim`` is 64, the smallest its CPU attention backend takes).

The chat template puts a special token at every boundary between turns and
between the prompt and the answer, and no whitespace after the role markers.
BPE never merges across a special token, so

    apply_chat_template(prompt, add_generation_prompt=True)

is a token-level prefix of ``apply_chat_template(prompt + [answer])`` and the
completion is exactly ``tokens(answer) + [<|end|>]``. The pipeline splits
prompt and completion tokens on that property.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
# End of turn doubles as eos: generation stops where an answer ends.
EOS_TOKEN = "<|end|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
# Order fixes the ids: pad 0, bos 1, eos 2, then the role markers.
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS.values()]

# Role markers are written out in full (not built from the role name) so an
# unknown role fails loudly instead of rendering a token that is not special.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>' }}"
    "{% else %}{{ raise_exception('unknown role: ' + message['role']) }}{% endif %}"
    "{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

_SUBJECTS = [
    "the cat",
    "a dog",
    "the model",
    "my friend",
    "the teacher",
    "a bird",
    "the robot",
    "our team",
    "the river",
    "a child",
]
_VERBS = ["likes", "sees", "writes", "reads", "finds", "makes", "moves", "hears", "answers", "counts"]
_OBJECTS = [
    "a red apple",
    "the blue sky",
    "two green books",
    "a short poem",
    "the big house",
    "three small stones",
    "a long answer",
    "the old map",
    "a bright star",
    "the next word",
]
_QUESTIONS = [
    "What is {a} plus {b}?",
    "Name a word that starts with {c}.",
    "Repeat the word {w}.",
    "Say {w} in capital letters.",
    "How many letters are in {w}?",
    "Give a word that rhymes with {w}.",
]
_WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "green",
    "house",
    "light",
    "music",
    "tiger",
    "paper",
    "water",
    "dream",
    "north",
    "smile",
    "train",
    "bread",
]


def default_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """A deterministic synthetic corpus: plain sentences, arithmetic and short Q&A.

    Enough variety for a 512-token BPE to learn common English pieces, digits
    and punctuation, so tokenized toy prompts stay short.
    """
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            texts.append(f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}.")
        elif kind == 1:
            a, b = rng.randrange(100), rng.randrange(100)
            texts.append(f"{a} plus {b} is {a + b}. {a} times 2 is {2 * a}.")
        else:
            w = rng.choice(_WORDS)
            q = rng.choice(_QUESTIONS).format(a=rng.randrange(10), b=rng.randrange(10), c=w[0], w=w)
            texts.append(f"{q} The answer is {w.upper()}, {w}, {len(w)}.")
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with chat special tokens and a chat template.

    Args:
        texts: training corpus; any text is encodable whatever it holds, since
            all 256 bytes are in the base alphabet.
        vocab_size: target vocabulary size, special tokens and bytes included
            (so at least ``256 + len(SPECIAL_TOKENS)``). A corpus too small to
            supply enough merges gives a smaller vocabulary.

    Returns:
        A fast tokenizer with bos ``<|bos|>``, eos ``<|end|>`` (end of turn),
        pad ``<|pad|>``, role markers ``<|system|>``, ``<|user|>``,
        ``<|assistant|>``, and ``CHAT_TEMPLATE``. It adds no special tokens on
        its own: the chat template writes bos.
    """
    floor = 256 + len(SPECIAL_TOKENS)
    if vocab_size < floor:
        raise ValueError(f"vocab_size: must be >= {floor} (bytes + special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: text right after a special token must encode the
    # same as at the start of a string, or the prefix property breaks.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS.values()),
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def build_tiny_llama(
    out_dir: str | Path,
    *,
    texts: Iterable[str] | None = None,
    vocab_size: int = 512,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 256,
    max_position_embeddings: int = 512,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Build a randomly initialised tiny Llama with its tokenizer and save it to ``out_dir``.

    The same arguments give bit-identical weights (the tokenizer trainer is
    deterministic too); the global torch RNG is left as it was.

    Args:
        out_dir: directory to write; created if missing, files in it overwritten.
        texts: tokenizer training corpus; ``default_corpus()`` when None.
        vocab_size: tokenizer target and model embedding rows (the model gets
            ``max(vocab_size, len(tokenizer))`` rows so its shape does not depend
            on how many merges the corpus supplied).
        hidden_size, num_layers, num_heads, intermediate_size,
        max_position_embeddings: the ``LlamaConfig`` fields of the same meaning.
            ``head_dim = hidden_size // num_heads``, which must be >= 64.
        seed: seeds the weight initialisation.
        dtype: dtype of the saved weights.

    Returns:
        ``Path(out_dir)``, loadable offline with ``AutoModelForCausalLM`` and
        ``AutoTokenizer``.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size: {hidden_size} is not divisible by num_heads={num_heads}")
    head_dim = hidden_size // num_heads
    if head_dim < 64:
        raise ValueError(
            f"num_heads: head_dim = {hidden_size}//{num_heads} = {head_dim} < 64, which vLLM's CPU backend rejects"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(default_corpus() if texts is None else texts, vocab_size)
    tokenizer.model_max_length = max_position_embeddings
    config = LlamaConfig(
        vocab_size=max(vocab_size, len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # fork_rng: seeding must not leak into the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.to(dtype)
    model.config.dtype = dtype
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=64,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# transformers' Llama parameter -> llama.cpp's GGUF tensor name (per layer, after "model.layers.N.")
_GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GGUF_TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def _llama_cpp_permute(weight, heads: int):
    """llama.cpp stores q/k rows interleaved per rotary pair; transformers' GGUF loader undoes this."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def write_tiny_gguf(model_dir: str | Path, path: str | Path) -> Path:
    """Write a ``build_tiny_llama`` folder as an unquantized (F32) llama.cpp GGUF file at ``path``.

    The file holds what a real GGUF does: the config as ``llama.*`` metadata, the
    byte-level BPE vocabulary and merges (``tokenizer.ggml.*``, special tokens as
    control tokens), the chat template, and the tensors under llama.cpp's names.
    ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)`` gives back the
    same weights and the tokenizer the same token ids, so a test can check that a
    ``.gguf`` model scores exactly as its folder does. Needs the ``gguf`` package.
    """
    import json

    import gguf
    import numpy as np
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    folder, path = Path(model_dir), Path(path)
    config = json.loads((folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    rope = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(folder.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_rope_freq_base(float(rope))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    rows = state["model.embed_tokens.weight"].shape[0]  # may exceed the tokenizer's size: unused ids
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    special = set(tokenizer.all_special_ids)
    tokens = [by_id.get(i, f"<|unused{i}|>") for i in range(rows)]
    types = [
        gguf.TokenType.UNUSED if i not in by_id else gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
        for i in range(rows)
    ]
    merges = json.loads((folder / "tokenizer.json").read_text())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)  # the chat template writes bos
    writer.add_chat_template(tokenizer.chat_template)

    for name, tensor in state.items():
        array = tensor.float().numpy()
        if name in _GGUF_TOP_NAMES:
            gguf_name = _GGUF_TOP_NAMES[name]
        else:
            layer, rest = name.split(".")[2], ".".join(name.split(".")[3:])
            gguf_name = f"blk.{layer}.{_GGUF_LAYER_NAMES[rest]}"
            if rest == "self_attn.q_proj.weight":
                array = _llama_cpp_permute(array, heads)
            elif rest == "self_attn.k_proj.weight":
                array = _llama_cpp_permute(array, kv_heads)
        writer.add_tensor(gguf_name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def cache_as_hub_model(model_dir: str | Path, repo_id: str, cache_dir: str | Path, *, revision: str = "main") -> Path:
    """Put a model folder into ``cache_dir`` exactly as ``huggingface_hub`` lays out a download; return the snapshot.

    ``models--OWNER--NAME/blobs/<sha256>`` holds each file's bytes,
    ``snapshots/<commit>/<file>`` links to its blob and ``refs/<revision>``
    names the commit, so ``snapshot_download(repo_id, local_files_only=True)``
    (and ``from_pretrained(repo_id)`` offline) find it with no network: a Hub id
    that tests can use. The commit is a hash of the files, so the same folder
    gives the same snapshot.
    """
    import hashlib
    import os
    import shutil

    source, cache = Path(model_dir), Path(cache_dir)
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in source.iterdir() if p.is_file())
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    commit = hashlib.sha1("".join(f"{n}:{d}\n" for n, d in digests.items()).encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in files:
        blob = repo / "blobs" / digests[path.name]
        if not blob.exists():
            shutil.copyfile(path, blob)
        link = snapshot / path.name
        if not link.is_symlink():
            os.symlink(os.path.relpath(blob, snapshot), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot
