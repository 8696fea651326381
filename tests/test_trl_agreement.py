"""prefpool's ``dpo_loss`` / ``ipo_loss`` agree with TRL's ``DPOTrainer`` on the same inputs.

The reference is TRL's own code, not a re-implementation: ``DPOTrainer.compute_loss`` (which
calls ``DPOTrainer._compute_loss``) runs on an instance made with ``object.__new__`` that has
only the attributes ``_compute_loss`` reads on its precomputed-reference path (checked against
TRL 1.16). The batch comes from TRL's ``DataCollatorForPreference``, the reference log-probs are
passed in the batch as ``precompute_ref_log_probs=True`` would, and the policy is a stub that
behaves like a model patched by TRL's ``add_fused_lm_head``: it returns fixed per-token
log-probs, zero where the label is ``-100``. TRL sums those over the completion, exactly the
per-sequence log-probs our losses take.

``_compute_loss`` returns only the batch mean and logs the batch-mean rewards, so per-example
values come from one call per pair (B=1); one call on the whole batch (B=7) checks the mean.

Conventions found in TRL 1.16 (``trl/trainer/dpo_trainer.py``, ``_compute_loss``):

- ``loss_type="sigmoid"``: ``-logsigmoid(beta * h)`` with
  ``h = (pi_c - ref_c) - (pi_r - ref_r)`` on token-summed log-probs; it ignores
  ``label_smoothing`` (TRL documents that option for "robust" and "exo_pair" only, neither of
  which is cDPO). Our ``label_smoothing`` is conservative DPO,
  ``-(1 - eps) logsigmoid(beta h) - eps logsigmoid(-beta h)``. TRL's ``DPOTrainer`` has that exact
  formula only in its ``loss_type="aot"`` branch, which applies it to
  ``sort(pi_c - pi_r) - sort(ref_c - ref_r)`` over the batch; on a single pair the sort is the
  identity and the branch is cDPO, so the label-smoothed case is checked against "aot" at B=1,
  and also against TRL's "sigmoid" through cDPO's definition as the expected DPO loss with the
  label flipped with probability eps: ``(1 - eps) * sigmoid(c, r) + eps * sigmoid(r, c)``.
- ``loss_type="ipo"``: TRL length-normalizes. It divides each log-ratio ``pi - ref`` by that
  completion's token count (``completion_mask.sum(1)``) before
  ``(h - 1 / (2 beta)) ** 2``. Our ``ipo_loss`` uses whatever per-sequence log-probs it is
  given (the paper's sequence-level form), so the test feeds it the per-token means
  ``logps / n_tokens`` of all four inputs, which gives TRL's ``h`` exactly. It also checks
  that token sums would not match, so a TRL change to this convention is noticed.
- Rewards: TRL logs ``beta * (pi - ref)`` on token sums for every loss type, IPO included. Ours
  are ``beta * (pi - ref)`` of the inputs, so they match TRL for DPO. For IPO, with normalized
  inputs, ours equal TRL's divided by the token count.

Tolerances: ``atol=1e-6`` (float64: ``rtol=0``). Per-token log-probs are multiples of 1/256
with fewer than 16 tokens per completion, so sequence sums and their differences are exact in
float32 whatever the summation order; what remains is rounding in the loss itself, hence a small
``rtol`` in float32 too. IPO in float32 gets ``1e-5``: the token means fed to ours are rounded
(up to ~5e-7 each for ``|mean| < 8``) where TRL divides the exact difference once, so ``h``
differs by ~1e-6 and the loss by ``2 |h - 1/(2 beta)|`` times that (observed: 5.7e-6 on a loss
of 27 at beta 0.1; 7e-7 on the rewards at beta 2).
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")

from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer  # noqa: E402
from trl.trainer.utils import FusedCausalLMOutput  # noqa: E402

from prefpool.losses import dpo_loss, ipo_loss  # noqa: E402

torch.set_num_threads(1)

B = 7
SEED = 1234
SCALE = 256  # per-token log-probs are integers / SCALE, so their sums are exact in float32
BETAS = (0.1, 0.5, 1.0, 2.0)
DTYPES = (torch.float32, torch.float64)
TOL = {
    torch.float32: {"atol": 1e-6, "rtol": 2e-6},
    torch.float64: {"atol": 1e-6, "rtol": 0.0},
}
# float32 IPO on token means: the means are rounded before the loss (see the module docstring)
IPO_TOL = {**TOL, torch.float32: {"atol": 1e-5, "rtol": 1e-5}}
KEYS = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")


def _make_pairs(seed: int = SEED) -> list[dict]:
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


PAIRS = _make_pairs()


def _token_logps(pair: dict, key: str, dtype: torch.dtype) -> torch.Tensor:
    return pair["tokens"][key].to(dtype) / SCALE  # exact: SCALE is a power of two


def _seq_logps(pairs: list[dict], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Per-sequence (token-summed) log-probs, (B,) each, as our losses take them."""
    return {k: torch.stack([_token_logps(p, k, dtype).sum() for p in pairs]) for k in KEYS}


def _n_tokens(pairs: list[dict], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        side: torch.tensor([len(p["example"][f"{side}_ids"]) for p in pairs], dtype=dtype)
        for side in ("chosen", "rejected")
    }


class _FusedHeadPolicy:
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


def _identity(x):
    return x


def _trl_trainer(model, *, loss_type: str, beta: float, label_smoothing: float) -> DPOTrainer:
    """A DPOTrainer without __init__ (no model loading, tokenizer, dataset or accelerate state).

    These are the attributes DPOTrainer._compute_loss reads (TRL 1.16) when the reference
    log-probs are precomputed and no ld_alpha / f-divergence / WPO weighting / MoE aux loss is used.
    """
    trainer = object.__new__(DPOTrainer)
    trainer.model = model
    # single process: gathers are the identity
    trainer.accelerator = SimpleNamespace(device=torch.device("cpu"), gather=_identity, gather_for_metrics=_identity)
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


def _trl_step(
    pairs: list[dict],
    dtype: torch.dtype,
    *,
    loss_type: str,
    beta: float,
    label_smoothing: float = 0.0,
    swap: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One DPOTrainer.compute_loss call on ``pairs``: (mean loss, mean chosen reward, mean rejected reward).

    Each is a float64 scalar holding the value TRL computed in ``dtype`` (the rewards as logged).

    ``swap=True`` exchanges chosen and rejected (the flipped preference label).
    """
    first, second = ("rejected", "chosen") if swap else ("chosen", "rejected")
    examples = [
        {
            "prompt_ids": p["example"]["prompt_ids"],
            "chosen_ids": p["example"][f"{first}_ids"],
            "rejected_ids": p["example"][f"{second}_ids"],
        }
        for p in pairs
    ]
    batch = DataCollatorForPreference(pad_token_id=0)(examples)  # rows: [chosen..., rejected...]
    policy = _FusedHeadPolicy(
        [_token_logps(p, f"policy_{first}", dtype) for p in pairs]
        + [_token_logps(p, f"policy_{second}", dtype) for p in pairs]
    )
    seq = _seq_logps(pairs, dtype)
    batch["ref_chosen_logps"] = seq[f"ref_{first}"]
    batch["ref_rejected_logps"] = seq[f"ref_{second}"]

    trainer = _trl_trainer(policy, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing)
    loss = trainer.compute_loss(policy, batch)
    assert loss.dtype == dtype
    metrics = trainer._metrics["train"]
    values = (loss.item(), metrics["rewards/chosen"][-1], metrics["rewards/rejected"][-1])
    return tuple(torch.tensor(v, dtype=torch.float64) for v in values)


def _trl_per_example(dtype: torch.dtype, **kwargs) -> dict[str, torch.Tensor]:
    """Per-example loss and rewards from one TRL call per pair (the mean over one pair is the value)."""
    rows = [_trl_step([pair], dtype, **kwargs) for pair in PAIRS]
    loss, chosen, rejected = (torch.stack(col) for col in zip(*rows, strict=True))
    return {"loss": loss, "rewards/chosen": chosen, "rewards/rejected": rejected}


def _assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    dtype: torch.dtype,
    what: str,
    tol: dict | None = None,
) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), **(tol or TOL)[dtype], msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dpo_matches_trl_sigmoid(dtype, beta):
    seq = _seq_logps(PAIRS, dtype)
    ours = dpo_loss(
        seq["policy_chosen"],
        seq["policy_rejected"],
        seq["ref_chosen"],
        seq["ref_rejected"],
        beta=beta,
    )
    trl = _trl_per_example(dtype, loss_type="sigmoid", beta=beta)

    _assert_close(ours.loss, trl["loss"], dtype, "per-example loss")
    _assert_close(ours.metrics["rewards/chosen"], trl["rewards/chosen"], dtype, "rewards/chosen")
    _assert_close(ours.metrics["rewards/rejected"], trl["rewards/rejected"], dtype, "rewards/rejected")

    mean_loss, mean_chosen, mean_rejected = _trl_step(PAIRS, dtype, loss_type="sigmoid", beta=beta)
    _assert_close(ours.loss.mean(), mean_loss, dtype, "batch-mean loss")
    _assert_close(
        ours.metrics["rewards/chosen"].mean(),
        mean_chosen,
        dtype,
        "batch-mean rewards/chosen",
    )
    _assert_close(
        ours.metrics["rewards/rejected"].mean(),
        mean_rejected,
        dtype,
        "batch-mean rewards/rejected",
    )


@pytest.mark.parametrize("label_smoothing", (0.1, 0.3))
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_label_smoothed_dpo_matches_trl(dtype, beta, label_smoothing):
    seq = _seq_logps(PAIRS, dtype)
    ours = dpo_loss(
        seq["policy_chosen"],
        seq["policy_rejected"],
        seq["ref_chosen"],
        seq["ref_rejected"],
        beta=beta,
        label_smoothing=label_smoothing,
    )

    # TRL's cDPO formula: the "aot" branch, whose batch sort is the identity on one pair.
    aot = _trl_per_example(dtype, loss_type="aot", beta=beta, label_smoothing=label_smoothing)
    _assert_close(ours.loss, aot["loss"], dtype, "per-example loss vs TRL aot (B=1)")
    _assert_close(ours.metrics["rewards/chosen"], aot["rewards/chosen"], dtype, "rewards/chosen")
    _assert_close(ours.metrics["rewards/rejected"], aot["rewards/rejected"], dtype, "rewards/rejected")

    # cDPO as the expected DPO loss under a label flipped with probability label_smoothing.
    kept = _trl_per_example(dtype, loss_type="sigmoid", beta=beta)
    flipped = _trl_per_example(dtype, loss_type="sigmoid", beta=beta, swap=True)
    mixture = (1 - label_smoothing) * kept["loss"] + label_smoothing * flipped["loss"]
    _assert_close(ours.loss, mixture, dtype, "per-example loss vs TRL sigmoid label-flip mixture")


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ipo_matches_trl_with_token_mean_logps(dtype, beta):
    seq = _seq_logps(PAIRS, dtype)
    n = _n_tokens(PAIRS, dtype)
    # TRL's IPO divides each log-ratio by its completion's token count; feed ours the token means.
    mean_logps = {k: seq[k] / n[k.split("_")[1]] for k in KEYS}
    ours = ipo_loss(
        mean_logps["policy_chosen"],
        mean_logps["policy_rejected"],
        mean_logps["ref_chosen"],
        mean_logps["ref_rejected"],
        beta=beta,
    )
    trl = _trl_per_example(dtype, loss_type="ipo", beta=beta)

    _assert_close(ours.loss, trl["loss"], dtype, "per-example loss", IPO_TOL)
    mean_loss, _, _ = _trl_step(PAIRS, dtype, loss_type="ipo", beta=beta)
    _assert_close(ours.loss.mean(), mean_loss, dtype, "batch-mean loss", IPO_TOL)

    # TRL logs rewards on token sums even for IPO; ours are on the inputs, here token means.
    for side in ("chosen", "rejected"):
        _assert_close(
            ours.metrics[f"rewards/{side}"],
            trl[f"rewards/{side}"] / n[side].double(),
            dtype,
            f"rewards/{side} vs TRL's / n_tokens",
            IPO_TOL,
        )

    # Token sums (the paper's form, our default) are not what TRL computes.
    summed = ipo_loss(
        seq["policy_chosen"],
        seq["policy_rejected"],
        seq["ref_chosen"],
        seq["ref_rejected"],
        beta=beta,
    )
    assert not torch.allclose(summed.loss.double(), trl["loss"], atol=1e-3, rtol=1e-3)
