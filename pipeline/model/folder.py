"""A local model folder, checked before anything loads it, and its tokenizer.

Every command that takes a model (generate, logprobs, score's reward model,
train, eval, online) reads it through here, so a path that does not exist, a
folder without weights or without tokenizer files, or a tokenizer without a
chat template is one clear error naming the folder and what to do, never a
transformers traceback about Hub repo ids ("Repo id must be in the form ...").
"""

from __future__ import annotations

from pathlib import Path

from prefpool.pipeline.io.errors import PipelineConfigError

WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Files one of which a transformers tokenizer is built from (besides *.tiktoken).
TOKENIZER_VOCAB = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
LAYOUT = "a local folder saved with save_pretrained (config.json, *.safetensors weights, tokenizer files)"


def check_model_folder(model: str | Path, *, what: str = "model", weights: bool = True) -> Path:
    """``model`` as a path, after checking it is a model folder (with weight files unless ``weights=False``)."""
    path = Path(model)
    if not path.exists():
        raise PipelineConfigError(f"{what} {model}: not a local model folder (no such path); give {LAYOUT}")
    if not path.is_dir():
        raise PipelineConfigError(f"{what} {model}: not a local model folder (a file); give {LAYOUT}")
    if not (path / "config.json").is_file():
        raise PipelineConfigError(f"{what} {model}: not a local model folder (no config.json); give {LAYOUT}")
    if weights and not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        raise PipelineConfigError(f"{what} {model}: no *.safetensors or *.bin weights in the folder; give {LAYOUT}")
    return path


def load_tokenizer(model: str | Path, *, what: str = "model", chat_template: bool = True):
    """The folder's tokenizer (``AutoTokenizer``), refused without tokenizer files or (by default) a chat template."""
    path = check_model_folder(model, what=what, weights=False)
    if not any((path / f).is_file() for f in TOKENIZER_VOCAB) and not any(path.glob("*.tiktoken")):
        raise PipelineConfigError(
            f"{what} {model}: no tokenizer files ({', '.join(TOKENIZER_VOCAB)}): save the tokenizer into "
            "the model folder too (tokenizer.save_pretrained(folder))"
        )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if chat_template and not tokenizer.chat_template:
        raise PipelineConfigError(
            f"{what} {model}: the tokenizer in {path} has no chat template (chat_template.jinja, or "
            "'chat_template' in tokenizer_config.json); prefpool renders every prompt with it: add one, "
            "or use the chat (instruct) version of the model"
        )
    return tokenizer
