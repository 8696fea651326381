"""``infonca_loss`` against a slow reference written here (no framework has it), with its limits."""

from __future__ import annotations

import math

import pytest
import torch

from prefpool.losses import dpo_loss, infonca_loss


def _slow_infonca(policy, ref, scores, mask, beta, alpha):
    """Row by row over the valid answers: w = softmax(s / alpha), loss = −Σ w_i log softmax(r)_i."""
    out = []
    for b in range(policy.shape[0]):
        idx = [i for i in range(policy.shape[1]) if mask[b, i]]
        r = [beta * (float(policy[b, i]) - float(ref[b, i])) for i in idx]
        s = [float(scores[b, i]) / alpha for i in idx]
        s_max, r_max = max(s), max(r)
        w = [math.exp(v - s_max) for v in s]
        w = [v / sum(w) for v in w]
        log_z = r_max + math.log(sum(math.exp(v - r_max) for v in r))
        out.append(-sum(wi * (ri - log_z) for wi, ri in zip(w, r, strict=True)))
    return torch.tensor(out, dtype=torch.float64)


def _pool(seed, b=4, k=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    policy = torch.randn(b, k, dtype=torch.float64, generator=g) * 4 - 20
    ref = policy + torch.randn(b, k, dtype=torch.float64, generator=g)
    scores = torch.randn(b, k, dtype=torch.float64, generator=g)
    mask = torch.ones(b, k, dtype=torch.bool)
    mask[1, 3:] = False
    mask[3, 1:] = False  # a row with one answer: loss 0
    policy[1, 3:] = float("nan")  # padding may hold anything
    return policy.to(dtype), ref.to(dtype), scores.to(dtype), mask


@pytest.mark.parametrize(("beta", "alpha"), [(0.1, 1.0), (1.0, 0.3), (2.0, 5.0)])
def test_infonca_matches_slow_reference_float64(beta, alpha):
    policy, ref, scores, mask = _pool(0)
    out = infonca_loss(policy, ref, scores, candidate_mask=mask, beta=beta, alpha=alpha)
    torch.testing.assert_close(out.loss, _slow_infonca(policy, ref, scores, mask, beta, alpha))
    assert out.loss[3] == 0


def test_infonca_gradients_match_slow_reference_float64():
    """Gradient by central differences of the slow reference, on the valid entries."""
    policy, ref, scores, mask = _pool(1)
    policy = torch.where(mask, policy, torch.zeros_like(policy)).requires_grad_(True)
    infonca_loss(policy, ref, scores, candidate_mask=mask, beta=0.7, alpha=0.5).loss.sum().backward()
    h = 1e-6
    for b, i in mask.nonzero().tolist():
        up, down = policy.detach().clone(), policy.detach().clone()
        up[b, i] += h
        down[b, i] -= h
        numeric = (
            _slow_infonca(up, ref, scores, mask, 0.7, 0.5).sum()
            - _slow_infonca(down, ref, scores, mask, 0.7, 0.5).sum()
        ) / (2 * h)
        assert float(policy.grad[b, i]) == pytest.approx(float(numeric), abs=1e-6)
    assert torch.all(policy.grad[~mask] == 0)


def test_infonca_bfloat16_close_to_float64():
    """bfloat16 inputs (8 significant bits: log-probs near −20 are rounded by up to 0.06) are
    upcast to float32 inside; the loss stays within 5e-2 of float64 on the same rounded inputs."""
    policy, ref, scores, mask = _pool(2, dtype=torch.bfloat16)
    out = infonca_loss(policy, ref, scores, candidate_mask=mask, beta=0.5, alpha=1.0)
    exact = _slow_infonca(policy.double(), ref.double(), scores.double(), mask, 0.5, 1.0)
    torch.testing.assert_close(out.loss.double(), exact, atol=5e-2, rtol=5e-2)


def test_infonca_with_two_answers_and_sharp_targets_is_dpo():
    """alpha → 0 puts all the target weight on the higher-scored answer: the loss is
    −log softmax(r)_w = −log σ(r_w − r_l), DPO's."""
    policy, ref, _, _ = _pool(3, k=2)
    mask = torch.ones(4, 2, dtype=torch.bool)
    scores = torch.tensor([[1.0, 0.0]] * 4, dtype=torch.float64)
    out = infonca_loss(policy, ref, scores, candidate_mask=mask, beta=0.3, alpha=1e-3)
    dpo = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=0.3)
    torch.testing.assert_close(out.loss, dpo.loss)


def test_infonca_gradcheck_float64():
    policy, ref, scores, mask = _pool(4)
    x = torch.where(mask, policy, torch.zeros_like(policy)).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda p: infonca_loss(p, ref, scores, candidate_mask=mask, beta=0.4, alpha=0.7).loss, (x,)
    )


def test_infonca_refuses_an_empty_row():
    policy, ref, scores, mask = _pool(5)
    mask[0] = False
    with pytest.raises(ValueError, match="candidate_mask"):
        infonca_loss(policy, ref, scores, candidate_mask=mask)
