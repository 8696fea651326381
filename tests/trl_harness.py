"""Driving TRL 1.16's own loss code on crafted per-token log-probs, for the agreement tests.

``dpo_trainer`` builds a ``DPOTrainer`` without ``__init__`` that has only the
attributes ``_compute_loss`` reads on its precomputed-reference path;
``FusedHeadPolicy`` stands in for a model patched by TRL's ``add_fused_lm_head``
and returns fixed per-token log-probs. ``PAIRS`` are ``B`` pairs whose per-token
log-probs are integers / ``SCALE``, so sequence sums are exact in float32.
``dpo_trainer_loss`` runs one ``compute_loss`` with the per-token log-probs as
leaves, so a test can compare TRL's gradients with a loss's own.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer
from trl.trainer.utils import FusedCausalLMOutput

B = 7
SEED = 1234
SCALE = 256  # per-token log-probs are integers / SCALE, so their sums are exact in float32
KEYS = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")


def make_pairs(seed: int = SEED) -> list[dict]:
    """B preference pairs: token ids for TRL's collator and per-token log-probs (in 1/SCALE)."""
    g = torch.Generator().manual_seed(seed)

    def ints(low: int, high: int, n: int) -> torch.Tensor:  # uniform on [low, high]
        return torch.randint(low, high + 1, (n,), generator=g)

    pairs = []
    for _ in range(B):
        n_prompt, n_chosen, n_rejected = (
            ints(2, 5, 1).item(),
            ints(1, 15, 1).item(),
            ints(1, 15, 1).item(),
        )
        example = {
            "prompt_ids": ints(1, 99, n_prompt).tolist(),
            "chosen_ids": ints(1, 99, n_chosen).tolist(),
            "rejected_ids": ints(1, 99, n_rejected).tolist(),
        }
        tokens = {}
        for side, n in (("chosen", n_chosen), ("rejected", n_rejected)):
            policy = -ints(1, 2047, n)  # log-probs in (-8, 0)
            tokens[f"policy_{side}"] = policy
            tokens[f"ref_{side}"] = (policy + ints(-256, 256, n)).clamp(min=-2047, max=-1)
        pairs.append({"example": example, "tokens": tokens})
    return pairs


PAIRS = make_pairs()


def token_logps(pair: dict, key: str, dtype: torch.dtype) -> torch.Tensor:
    return pair["tokens"][key].to(dtype) / SCALE  # exact: SCALE is a power of two


def seq_logps(pairs: list[dict], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Per-sequence (token-summed) log-probs, (B,) each, as our losses take them."""
    return {k: torch.stack([token_logps(p, k, dtype).sum() for p in pairs]) for k in KEYS}


def n_tokens(pairs: list[dict], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        side: torch.tensor([len(p["example"][f"{side}_ids"]) for p in pairs], dtype=dtype)
        for side in ("chosen", "rejected")
    }


class FusedHeadPolicy:
    """Stands in for a causal LM patched by ``trl.trainer.utils.add_fused_lm_head``.

    Called with ``labels`` and ``fused_lm_head=True``, it returns per-token log-probs of shape
    ``(rows, T - 1)`` that are zero where the shifted label is -100, like the fused head.
    """

    training = True  # DPOTrainer._compute_loss reads model.training to pick train/eval metrics

    def __init__(self, completion_logps: list[torch.Tensor]):
        self.completion_logps = completion_logps  # one 1-D tensor per batch row, in row order

    def __call__(self, *, labels: torch.Tensor, fused_lm_head: bool = False, **kwargs):
        assert fused_lm_head, "DPOTrainer is expected to ask for the fused LM head"
        mask = labels[:, 1:] != -100
        lengths = [len(x) for x in self.completion_logps]
        assert mask.sum(dim=1).tolist() == lengths, "completion tokens do not line up with the batch"
        values = torch.cat(self.completion_logps)
        log_probs = values.new_zeros(mask.shape).masked_scatter(mask, values)
        zeros = torch.zeros_like(log_probs)
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / mask.sum(),
            log_probs=log_probs,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=torch.zeros_like(mask),
            label_mask=mask,
        )


def identity(x):
    return x


def dpo_trainer(model, *, loss_type: str, beta: float, label_smoothing: float) -> DPOTrainer:
    """A DPOTrainer without __init__ (no model loading, tokenizer, dataset or accelerate state).

    These are the attributes DPOTrainer._compute_loss reads (TRL 1.16) when the reference
    log-probs are precomputed and no ld_alpha / f-divergence / WPO weighting / MoE aux loss is used.
    """
    trainer = object.__new__(DPOTrainer)
    trainer.model = model
    # single process: gathers are the identity
    trainer.accelerator = SimpleNamespace(device=torch.device("cpu"), gather=identity, gather_for_metrics=identity)
    trainer.aux_loss_enabled = False
    trainer.precompute_ref_logps = True
    trainer.ld_alpha = None
    trainer.f_divergence_type = "reverse_kl"
    trainer.use_weighting = False
    trainer.loss_types = [loss_type]
    trainer.loss_weights = [1.0]
    trainer.beta = beta
    trainer.label_smoothing = label_smoothing
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens = 0
    trainer._tp_size = 1
    return trainer


def leaves(pairs: list[dict], dtype: torch.dtype) -> dict[str, list[torch.Tensor]]:
    """Per-token policy log-probs of every pair, as leaf tensors that require grad: ``{policy_chosen: [...], ...}``."""
    return {
        key: [token_logps(p, key, dtype).requires_grad_(True) for p in pairs]
        for key in ("policy_chosen", "policy_rejected")
    }


def dpo_trainer_loss(
    pairs: list[dict],
    dtype: torch.dtype,
    *,
    loss_type: str,
    beta: float,
    label_smoothing: float = 0.0,
    args: dict | None = None,
) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """TRL's batch-mean loss on ``pairs`` with gradient to the returned per-token leaves.

    ``args``: the ``DPOConfig`` fields a loss type reads from ``trainer.args`` (``discopop_tau``)."""
    examples = [
        {
            "prompt_ids": p["example"]["prompt_ids"],
            "chosen_ids": p["example"]["chosen_ids"],
            "rejected_ids": p["example"]["rejected_ids"],
        }
        for p in pairs
    ]
    batch = DataCollatorForPreference(pad_token_id=0)(examples)  # rows: [chosen..., rejected...]
    tokens = leaves(pairs, dtype)
    policy = FusedHeadPolicy(tokens["policy_chosen"] + tokens["policy_rejected"])
    seq = seq_logps(pairs, dtype)
    batch["ref_chosen_logps"] = seq["ref_chosen"]
    batch["ref_rejected_logps"] = seq["ref_rejected"]
    trainer = dpo_trainer(policy, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing)
    trainer.args = SimpleNamespace(**(args or {}))
    return trainer.compute_loss(policy, batch), tokens


def sequence_sums(tokens: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``(B,)`` sums of the leaves (with gradient to them), as the losses take them."""
    return {key: torch.stack([t.sum() for t in values]) for key, values in tokens.items()}


def gradients(tokens: dict[str, list[torch.Tensor]]) -> torch.Tensor:
    """Every leaf's gradient, concatenated in a fixed order (float64)."""
    return torch.cat([t.grad.double() for key in sorted(tokens) for t in tokens[key]])


# Tolerances of ours against TRL. float64: both compute the same formula in float64 from
# exact sums. bfloat16: TRL computes the loss in bfloat16 (8 significant bits: a relative
# rounding of 2^-8 = 0.4% per operation, compounded over a few operations), ours upcasts
# the bfloat16 log-probs to float32 first; both sum the same bfloat16 token log-probs.
TRL_TOL = {
    torch.float64: {"atol": 1e-9, "rtol": 1e-9},
    torch.bfloat16: {"atol": 3e-2, "rtol": 3e-2},
}


def assert_matches_dpo_trainer(
    ours,
    dtype: torch.dtype,
    *,
    loss_type: str,
    beta: float,
    label_smoothing: float = 0.0,
    pairs=None,
    tol: dict | None = None,
    args: dict | None = None,
) -> None:
    """``ours(seq) -> LossOutput``, with ``seq`` the ``(B,)`` tensors of ``KEYS`` (and ``n_chosen``,
    ``n_rejected`` token counts), agrees with ``DPOTrainer(loss_type=...)``: the per-example loss
    (one TRL call per pair), the batch-mean loss and its gradient to every per-token log-prob."""
    pairs = PAIRS if pairs is None else pairs
    tol = tol or TRL_TOL[dtype]
    counts = n_tokens(pairs, dtype)

    def our_seq(tokens):
        ref = seq_logps(pairs, dtype)
        return {
            **sequence_sums(tokens),
            "ref_chosen": ref["ref_chosen"],
            "ref_rejected": ref["ref_rejected"],
            "n_chosen": counts["chosen"],
            "n_rejected": counts["rejected"],
        }

    # per example
    trl_each = torch.stack(
        [
            dpo_trainer_loss([p], dtype, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing, args=args)[
                0
            ].detach()
            for p in pairs
        ]
    )
    ours_each = ours(our_seq(leaves(pairs, dtype))).loss.detach()
    torch.testing.assert_close(ours_each.double(), trl_each.double(), **tol, msg=lambda m: f"per-example loss: {m}")

    # batch mean and gradients
    trl_loss, trl_tokens = dpo_trainer_loss(
        pairs, dtype, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing, args=args
    )
    trl_loss.backward()
    tokens = leaves(pairs, dtype)
    our_loss = ours(our_seq(tokens)).loss.mean()
    our_loss.backward()
    torch.testing.assert_close(our_loss.double(), trl_loss.double(), **tol, msg=lambda m: f"batch-mean loss: {m}")
    torch.testing.assert_close(gradients(tokens), gradients(trl_tokens), **tol, msg=lambda m: f"gradients: {m}")
