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

import pytest
import torch

pytest.importorskip("trl")

from trl.trainer.dpo_trainer import DataCollatorForPreference  # noqa: E402
from trl_harness import KEYS, PAIRS, FusedHeadPolicy, dpo_trainer, n_tokens, seq_logps, token_logps  # noqa: E402

from prefpool.losses import dpo_loss, ipo_loss  # noqa: E402

torch.set_num_threads(1)

BETAS = (0.1, 0.5, 1.0, 2.0)
DTYPES = (torch.float32, torch.float64)
TOL = {
    torch.float32: {"atol": 1e-6, "rtol": 2e-6},
    torch.float64: {"atol": 1e-6, "rtol": 0.0},
}
# float32 IPO on token means: the means are rounded before the loss (see the module docstring)
IPO_TOL = {**TOL, torch.float32: {"atol": 1e-5, "rtol": 1e-5}}


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
    policy = FusedHeadPolicy(
        [token_logps(p, f"policy_{first}", dtype) for p in pairs]
        + [token_logps(p, f"policy_{second}", dtype) for p in pairs]
    )
    seq = seq_logps(pairs, dtype)
    batch["ref_chosen_logps"] = seq[f"ref_{first}"]
    batch["ref_rejected_logps"] = seq[f"ref_{second}"]

    trainer = dpo_trainer(policy, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing)
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
    seq = seq_logps(PAIRS, dtype)
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
    seq = seq_logps(PAIRS, dtype)
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
    seq = seq_logps(PAIRS, dtype)
    n = n_tokens(PAIRS, dtype)
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
