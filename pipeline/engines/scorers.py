"""What gives a (prompt, completion) its score: a user function or a sequence-classification reward model.

Both expose ``identity`` (stored in the ``scores`` manifest, part of the run's
identity: another scorer over the same output folder is refused) and
``score(items) -> list[float]`` over ``(prompt messages, completion text)``.

``--reward-fn`` takes ``"module:function"`` where ``module`` is an importable
module name (``my_pkg.rewards``, found on ``sys.path``: the current folder
is on it for ``python -m``, set ``PYTHONPATH`` otherwise) or a path to a
``.py`` file (``rewards/length.py:score``). The function is called as
``function(prompt_messages, completion_text)`` and must return a real number.
Its source file's sha256 is part of the identity, so editing the function
makes a new run rather than silently mixing old and new scores on resume.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path

from prefpool.pipeline.io.errors import PipelineConfigError

RewardFn = Callable[[list[dict], str], float]
Item = tuple[list[dict], str]  # (prompt messages, completion text)


class RewardFunctionError(Exception):
    """The reward function raised on ``items[index]``; the stage names that row in its error."""

    def __init__(self, index: int, cause: Exception) -> None:
        super().__init__(index, cause)
        self.index = index
        self.cause = cause


def _file_sha256(path: str | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _import(module: str):
    if module.endswith(".py") or "/" in module:
        path = Path(module)
        if not path.is_file():
            raise PipelineConfigError(f"reward_fn: no such file {module!r}")
        name = "prefpool_reward_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PipelineConfigError(f"reward_fn: cannot import module {module!r}: {exc}") from None


class FunctionScorer:
    """Calls ``fn(prompt_messages, completion_text)`` once per completion."""

    def __init__(self, spec: str) -> None:
        module, sep, name = spec.rpartition(":")
        if not sep or not module or not name:
            raise PipelineConfigError(f"reward_fn: expected 'module:function', got {spec!r}")
        fn = getattr(_import(module), name, None)
        if not callable(fn):
            raise PipelineConfigError(f"reward_fn: {spec!r} is not a callable")
        self.fn: RewardFn = fn
        try:
            source = inspect.getsourcefile(fn)
        except TypeError:
            source = None
        self.identity = {"kind": "function", "name": spec, "source_sha256": _file_sha256(source)}

    def load(self) -> None:
        """Nothing to load: the function was imported when the scorer was made."""

    def score(self, items: Sequence[Item]) -> list[object]:
        values = []
        for index, (prompt, text) in enumerate(items):
            try:
                values.append(self.fn(prompt, text))
            except Exception as exc:  # the user's function raises whatever its author chose
                raise RewardFunctionError(index, exc) from exc
        return values


class RewardModelScorer:
    """``AutoModelForSequenceClassification`` with one label: the logit of the last non-pad token.

    The conversation ``prompt + [{"role": "assistant", "content": text}]`` is
    rendered with the tokenizer's chat template (no generation prompt) and
    scored as one sequence; sequences are right-padded in batches of
    ``batch_size`` (padding does not change a value: the model reads the logit
    at the last non-pad position, and attention masks the pads).
    """

    def __init__(self, model: str | Path, *, batch_size: int, weights_sha256: str, tokenizer) -> None:
        from prefpool.pipeline.model.tokenize import template_hash

        self.path = str(model)
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        if tokenizer.chat_template is None:
            raise PipelineConfigError(f"reward model {model}: its tokenizer has no chat template")
        self.identity = {
            "kind": "model",
            "path": str(Path(model).resolve()),
            "weights_sha256": weights_sha256,
            "tokenizer_sha256": template_hash(tokenizer),
            "dtype": "float32",
        }
        self._model = None
        self._check_config()  # fail before any work

    def load(self):
        """The model, loaded on first use (a scorer made on the driver and sent to workers loads there)."""
        return self._model or self._load()

    def _load(self):
        import torch
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(self.path, torch_dtype=torch.float32)
        self._model = model.eval()
        return self._model

    def _check_config(self) -> None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self.path)
        if config.num_labels != 1:
            raise PipelineConfigError(
                f"reward model {self.path}: has {config.num_labels} labels, need 1 (a scalar reward)"
            )
        if config.pad_token_id is None:
            raise PipelineConfigError(f"reward model {self.path}: config.pad_token_id is not set (needed to batch)")

    def encode(self, prompt: list[dict], text: str) -> list[int]:
        conversation = [*prompt, {"role": "assistant", "content": text}]
        ids = self.tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=False)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def score(self, items: Sequence[Item]) -> list[float]:
        import torch

        model = self.load()
        pad = model.config.pad_token_id
        out: list[float] = []
        for start in range(0, len(items), self.batch_size):
            seqs = [self.encode(p, t) for p, t in items[start : start + self.batch_size]]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # (B, T)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits  # (B, 1)
            out.extend(logits[:, 0].double().tolist())
        return out
