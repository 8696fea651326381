"""A sequence-classification reward model as practitioners use one: its own chat template, one head or a
weighted sum of heads, batched by length under a token budget.

The conversation ``prompt + [{"role": "assistant", "content": text}]`` is
rendered with the reward model's own tokenizer and chat template (no
generation prompt), whatever the policy's template is, and scored as one
sequence: the model's logits at the last non-pad token, shape ``(L,)`` for a
model with ``L`` labels.

- One label: the reward is that logit.
- Several labels (ArmoRM-like multi-objective models): give ``head`` (the
  reward is logit ``head``) or ``head_weights`` (one weight per label: the
  reward is their weighted sum). Either is part of the scorer's identity,
  stored in the ``scores`` manifest with the weights' and tokenizer's hashes.
- ``trust_remote_code`` loads a model whose class ships with its weights
  (ArmoRM's does); it runs that code, so it is off unless asked for.
- ``output`` names the field of the model's output that holds the values:
  ``logits`` for a transformers sequence classifier; a model with its own
  output class names its own (ArmoRM's ``score`` is its gated preference score,
  one value; its ``rewards`` are its 19 objectives, a head or weights apply). A
  field's width is known from ``config.num_labels`` for ``logits`` and checked
  on the first batch for any other field.

Batching: sequences are sorted by length and cut into batches of at most
``batch_size`` sequences and, with ``max_batch_tokens``, at most that many
padded tokens (``length_batches``); a sequence longer than the budget goes
alone. Right padding and the attention mask make a value independent of its
batch (within float32 rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.model.source import ModelSource, resolve_model

if TYPE_CHECKING:
    import torch

Item = tuple[list[dict], str]  # (prompt messages, completion text)


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices into ``lengths`` grouped longest first: each group has at most ``batch_size`` members and, when
    ``max_tokens`` is set, ``members * longest <= max_tokens`` (a lone sequence may exceed it)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        last = batches[-1] if batches else None
        # longest first: the batch's width is its first member's length
        fits = last is not None and len(last) < batch_size
        if fits and max_tokens is not None:
            fits = (len(last) + 1) * lengths[last[0]] <= max_tokens
        if fits:
            last.append(i)
        else:
            batches.append([i])
    return batches


class RewardModelScorer:
    """``AutoModelForSequenceClassification``: see the module docstring."""

    def __init__(
        self,
        model: str | Path | ModelSource,
        *,
        batch_size: int,
        weights_sha256: str,
        tokenizer,
        device: str = "cpu",
        head: int | None = None,
        head_weights: Sequence[float] | None = None,
        max_batch_tokens: int | None = None,
        trust_remote_code: bool = False,
        output: str = "logits",
    ) -> None:
        from prefpool.pipeline.model.tokenize import template_hash

        self.source = resolve_model(model, what="reward_model")
        self.path = self.source.given
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.tokenizer = tokenizer
        self.device = device
        self.trust_remote_code = trust_remote_code
        self.output = output
        if tokenizer.chat_template is None:
            raise PipelineConfigError(f"reward model {self.path}: its tokenizer has no chat template")
        self.head = head
        self.head_weights = None if head_weights is None else [float(w) for w in head_weights]
        labels = self._check_config()  # fail before any work
        self.identity = {
            "kind": "model",
            "path": str(self.source.path.resolve()),
            "weights_sha256": weights_sha256,
            "tokenizer_sha256": template_hash(tokenizer),
            "dtype": "float32",
        }
        if labels is None or labels > 1:
            self.identity.update(labels=labels, head=head, head_weights=self.head_weights)
        if output != "logits":
            self.identity["output"] = output
        self._model = None

    def load(self):
        """The model, loaded on first use (a scorer made on the driver and sent to workers loads there)."""
        return self._model or self._load()

    def _load(self):
        import torch

        model = self.source.sequence_classifier(torch.float32, trust_remote_code=self.trust_remote_code)
        self._model = model.to(self.device).eval()
        return self._model

    def _check_config(self) -> int | None:
        """The number of values the model gives per sequence (None: known on the first batch), checked."""
        where = f"reward model {self.path}"
        try:
            config = self.source.config(trust_remote_code=self.trust_remote_code)
        except ValueError as exc:  # transformers refuses a model whose code ships with it, unless trusted
            if "trust_remote_code" not in str(exc):
                raise
            raise PipelineConfigError(
                f"{where}: its model class ships as code with its weights; pass trust_remote_code "
                "(--trust-remote-code) if you trust that code (it runs on this machine)"
            ) from exc
        if self.head is not None and self.head_weights is not None:
            raise PipelineConfigError(f"{where}: give reward_head or reward_weights, not both")
        if config.pad_token_id is None:
            raise PipelineConfigError(f"{where}: config.pad_token_id is not set (needed to batch)")
        if self.output != "logits":
            return None
        labels = int(config.num_labels)
        self._check_width(labels, getattr(config, "id2label", None) or {})
        return labels

    def _check_width(self, labels: int, names: dict) -> None:
        """The head or the weights fit ``labels`` values per sequence; several values need one of them."""
        where = f"reward model {self.path}" + (f" (output {self.output!r})" if self.output != "logits" else "")
        if self.head is not None and not 0 <= self.head < labels:
            raise PipelineConfigError(f"{where}: reward_head {self.head} is not a head of its {labels} labels")
        if self.head_weights is not None and len(self.head_weights) != labels:
            raise PipelineConfigError(
                f"{where}: {len(self.head_weights)} reward_weights for {labels} labels (give one weight per label)"
            )
        if labels > 1 and self.head is None and self.head_weights is None:
            shown = ", ".join(f"{i}: {names.get(i, i)}" for i in range(labels))
            raise PipelineConfigError(
                f"{where}: has {labels} labels ({shown}); choose one with reward_head (--reward-head i) or "
                "weigh them with reward_weights (--reward-weights w, once per label)"
            )

    def encode(self, prompt: list[dict], text: str) -> list[int]:
        conversation = [*prompt, {"role": "assistant", "content": text}]
        ids = self.tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=False)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def values(self, result) -> torch.Tensor:
        """The ``(B, L)`` values in the model's output field ``output`` (a ``(B,)`` field is one value each)."""
        found = getattr(result, self.output, None)
        if found is None:
            fields = [k for k, v in (result.items() if hasattr(result, "items") else []) if v is not None]
            raise PipelineConfigError(
                f"reward model {self.path}: its output has no field {self.output!r}; its fields: "
                f"{', '.join(fields) or type(result).__name__} (choose one with --reward-output)"
            )
        values = found.double()
        values = values[:, None] if values.dim() == 1 else values
        if self.output != "logits":
            self._check_width(values.shape[1], {})
        return values

    def reward(self, logits):
        """``(B, L)`` logits -> ``(B,)`` rewards: the one label, the chosen head, or the weighted sum."""
        import torch

        if self.head_weights is not None:
            return logits @ torch.tensor(self.head_weights, dtype=logits.dtype, device=logits.device)
        return logits[:, self.head or 0]

    def score(self, items: Sequence[Item], where: Sequence[str] | None = None) -> list[float]:
        import torch

        model = self.load()
        pad = model.config.pad_token_id
        seqs = [self.encode(p, t) for p, t in items]
        out: list[float] = [0.0] * len(items)
        for batch in length_batches([len(s) for s in seqs], self.batch_size, self.max_batch_tokens):
            width = len(seqs[batch[0]])
            ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T)
            mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
            for row, i in enumerate(batch):
                ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[row, : len(seqs[i])] = 1
            with torch.no_grad():
                result = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
            for i, value in zip(batch, self.reward(self.values(result)).tolist(), strict=True):  # values (B, L)
                out[i] = value
        return out


def load_reward_model(model: str | Path | ModelSource, **options) -> RewardModelScorer:
    """A ``RewardModelScorer`` of ``model`` (checked, its weights hashed, its tokenizer loaded); ``options``:
    the scorer's keyword arguments (``batch_size``, ``device``, ``head``, ...)."""
    from prefpool.pipeline.model.cache_key import weights_hash
    from prefpool.pipeline.model.folder import check_model, load_tokenizer

    source = check_model(model, what="reward_model")
    weights = weights_hash(source, what="reward_model")
    tokenizer = load_tokenizer(source, what="reward_model")
    return RewardModelScorer(source, weights_sha256=weights, tokenizer=tokenizer, **options)
