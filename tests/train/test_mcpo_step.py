"""MC-PO's two-pass step equals the one-pass computation through the whole pool.

The two-pass step scores the pool without gradient, draws ``M`` negatives per
prompt with ``mcpo_select`` and back-propagates through the preferred and the
distinct picked answers only. The one-pass reference here forwards all ``1 + K``
answers with gradient and calls ``mcpo_loss`` with a generator in the same
state: same picks, same loss, same parameter gradients.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from prefpool.losses import mcpo_loss
from prefpool.pipeline.model.scoring import completion_logps, pad_pairs, score_pairs
from prefpool.testing import build_tiny_llama
from prefpool.train.kinds import mcpo as mcpo_kind
from prefpool.train.kinds.mcpo import PoolBatch, mcpo_step_loss

torch.set_num_threads(1)

PAD = 0
BETA = 0.5


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", seed=3)


@pytest.fixture(scope="module")
def model(model_path):
    return AutoModelForCausalLM.from_pretrained(model_path).float()


def _tokens(gen: torch.Generator, n: int) -> list[int]:
    return torch.randint(10, 500, (n,), generator=gen).tolist()


def _batch(pool_sizes: list[int], seed: int = 0) -> PoolBatch:
    """Random prompts and answers of different lengths; ragged pools; made-up reference values."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [_tokens(gen, 3 + b) for b in range(len(pool_sizes))]
    chosen = [(p, _tokens(gen, 4 + b)) for b, p in enumerate(prompts)]
    pools = [
        [(p, _tokens(gen, 2 + (3 * i + b) % 6)) for i in range(m)]
        for b, (p, m) in enumerate(zip(prompts, pool_sizes, strict=True))
    ]
    width = max(pool_sizes)
    mask = torch.tensor([[i < m for i in range(width)] for m in pool_sizes])
    ref_pool = torch.randn(len(pool_sizes), width, generator=gen) * 3 - 40
    return PoolBatch(
        chosen,
        pools,
        torch.randn(len(pool_sizes), generator=gen) * 3 - 40,
        ref_pool.masked_fill(~mask, float("nan")),
        mask,
    )


def _one_pass(model, batch: PoolBatch, kernel: str, seed: int, num_negatives: int = 1):
    """All 1 + K answers forwarded with gradient, then ``mcpo_loss`` draws the negatives itself."""
    width = batch.pool_mask.shape[1]
    flat = [*batch.chosen, *(pool[i] for pool in batch.pools for i in range(len(pool)))]
    logps, _ = completion_logps(model, flat, PAD)
    size = len(batch.chosen)
    policy_pool = torch.zeros(size, width)
    rows, cols = batch.pool_mask.nonzero(as_tuple=True)
    policy_pool = policy_pool.index_put((rows, cols), logps[size:])
    return mcpo_loss(
        logps[:size],
        policy_pool,
        batch.ref_chosen_logps,
        batch.ref_pool_logps,
        candidate_mask=batch.pool_mask,
        beta=BETA,
        kernel=kernel,
        num_negatives=num_negatives,
        generator=torch.Generator().manual_seed(seed),
    )


def _grads(model, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.mean().backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


KERNELS = ["sample", "sample_pool", "max", "min", "uniform", "listwise", "rao_blackwell"]
CASES = [(kernel, 1, [3, 1, 4, 2]) for kernel in KERNELS] + [
    (kernel, 3, [3, 1, 4, 2]) for kernel in ("sample", "sample_pool", "uniform", "rao_blackwell")
]
# max / min take M distinct answers, so every pool holds at least M = 3.
CASES += [(kernel, 3, [3, 5, 4, 3]) for kernel in ("max", "min")]


@pytest.mark.parametrize(("kernel", "m", "pools"), CASES)
def test_two_pass_equals_one_pass(model, kernel, m, pools):
    batch = _batch(pools)
    seed = 11
    one = _one_pass(model, batch, kernel, seed, m)
    one_grads = _grads(model, one.loss)
    two = mcpo_step_loss(
        model,
        batch,
        pad_token_id=PAD,
        beta=BETA,
        kernel=kernel,
        num_negatives=m,
        generator=torch.Generator().manual_seed(seed),
        score_max_tokens=24,
    )
    two_grads = _grads(model, two.loss)

    assert torch.equal(one.metrics["mcpo/selected"], two.metrics["mcpo/selected"])
    torch.testing.assert_close(two.loss, one.loss, rtol=1e-5, atol=1e-6)
    for name in ("rewards/chosen", "rewards/rejected", "mcpo/entropy", "mcpo/pool_accuracy", "mcpo/chosen_drawn"):
        torch.testing.assert_close(two.metrics[name], one.metrics[name], rtol=1e-5, atol=1e-6)
    assert len(one_grads) == len(two_grads) > 0
    for g1, g2 in zip(one_grads, two_grads, strict=True):
        torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kernel", ["sample", "max"])
def test_shared_prompt_pool_pass_equals_the_unshared_one(model, kernel):
    """Pass 1 with each prompt run once (its keys and values cached) picks the same answers, with the
    same pool scores up to float rounding, as pass 1 over full sequences; eval mode in both."""
    batch = _batch([3, 1, 4, 2], seed=7)
    model.train()
    out = {}
    for share in (True, False):
        out[share] = mcpo_step_loss(
            model,
            batch,
            pad_token_id=PAD,
            beta=BETA,
            kernel=kernel,
            generator=torch.Generator().manual_seed(3),
            score_max_tokens=40,
            share_prompts=share,
        )
    assert model.training  # pass 1 ran in eval mode and left the mode as it was
    assert torch.equal(out[True].metrics["mcpo/selected"], out[False].metrics["mcpo/selected"])
    torch.testing.assert_close(out[True].loss, out[False].loss, rtol=1e-5, atol=1e-6)
    for name in ("mcpo/entropy", "mcpo/pool_accuracy", "mcpo/kernel_top_prob"):
        torch.testing.assert_close(out[True].metrics[name], out[False].metrics[name], rtol=1e-5, atol=1e-6)


def test_two_pass_gradient_reaches_only_the_picked_answers(model):
    """With the ``max`` kernel the gradient equals that of DPO on (chosen, picked) alone."""
    batch = _batch([4, 4], seed=5)
    two = mcpo_step_loss(model, batch, pad_token_id=PAD, beta=BETA, kernel="max")
    grads = _grads(model, two.loss)
    picked = two.metrics["mcpo/selected"][:, 0]
    pairs = [*batch.chosen, *(batch.pools[b][i] for b, i in enumerate(picked.tolist()))]
    logps, _ = completion_logps(model, pairs, PAD)
    ref_picked = batch.ref_pool_logps[torch.arange(2), picked]
    r0 = BETA * (logps[:2] - batch.ref_chosen_logps)
    r1 = BETA * (logps[2:] - ref_picked)
    dpo = -torch.nn.functional.logsigmoid(r0 - r1)
    for g_ref, g in zip(_grads(model, dpo), grads, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-7)


def test_pass_two_forwards_the_distinct_picks_only(model, monkeypatch):
    """At M = 3 the gradient pass forwards the B preferred answers and each distinct picked pool
    answer once (a pick drawn twice, or a draw of y0, costs no extra forward)."""
    batch = _batch([3, 1, 4, 2], seed=9)
    forwarded = []

    def spy(model, pairs, *args, **kwargs):
        forwarded.append(list(pairs))
        return completion_logps(model, pairs, *args, **kwargs)

    monkeypatch.setattr(mcpo_kind, "completion_logps", spy)
    out = mcpo_step_loss(
        model,
        batch,
        pad_token_id=PAD,
        beta=BETA,
        kernel="sample",
        num_negatives=3,
        generator=torch.Generator().manual_seed(4),
    )
    (pairs,) = forwarded
    picks = out.metrics["mcpo/selected"]
    distinct = [sorted({i for i in row if i >= 0}) for row in picks.tolist()]
    assert pairs == [*batch.chosen, *(batch.pools[b][i] for b, row in enumerate(distinct) for i in row)]
    assert out.metrics["mcpo/distinct_negatives"].tolist() == [len(row) for row in distinct]
    # The case is informative: some pick repeats, and some row has fewer distinct picks than draws.
    assert sum(len(row) for row in distinct) < picks.numel()


def test_pass_two_forwards_a_slot_drawn_beside_y0(model, monkeypatch):
    """Fixed picks where a pool slot and a y0 draw share a row, in either order: pass 2 still
    back-propagates through that slot, so the parameter gradients equal the one-pass ones."""
    batch = _batch([3, 2], seed=6)
    picks = torch.tensor([[0, 0, -1], [-1, 1, -1]])
    monkeypatch.setattr(mcpo_kind, "mcpo_select", lambda *args, **kwargs: picks.clone())
    two = mcpo_step_loss(model, batch, pad_token_id=PAD, beta=BETA, kernel="sample", num_negatives=3)
    two_grads = _grads(model, two.loss)
    width = batch.pool_mask.shape[1]
    flat = [*batch.chosen, *(pool[i] for pool in batch.pools for i in range(len(pool)))]
    logps, _ = completion_logps(model, flat, PAD)
    rows, cols = batch.pool_mask.nonzero(as_tuple=True)
    policy_pool = torch.zeros(2, width).index_put((rows, cols), logps[2:])
    one = mcpo_loss(
        logps[:2],
        policy_pool,
        batch.ref_chosen_logps,
        batch.ref_pool_logps,
        candidate_mask=batch.pool_mask,
        beta=BETA,
        kernel="sample",
        num_negatives=3,
        selected=picks,
    )
    torch.testing.assert_close(two.loss, one.loss, rtol=1e-5, atol=1e-6)
    for g1, g2 in zip(_grads(model, one.loss), two_grads, strict=True):
        torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-7)


def test_scores_do_not_depend_on_batching(model):
    """Sorting by length and packing into token-bounded batches changes no value."""
    batch = _batch([4, 3, 4, 2], seed=2)
    pairs = [pair for pool in batch.pools for pair in pool]
    one_by_one = torch.stack([completion_logps(model, [pair], PAD)[0][0] for pair in pairs])
    for max_tokens in (1, 30, 10_000):
        torch.testing.assert_close(
            score_pairs(model, pairs, PAD, max_tokens=max_tokens), one_by_one.detach(), rtol=1e-5, atol=1e-5
        )


def test_pad_pairs_marks_completion_tokens_only():
    batch = pad_pairs([([5, 6], [7]), ([5], [8, 9, 10])], pad_token_id=PAD)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [5, 8, 9, 10]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["completion_mask"].tolist() == [[False, False, True, False], [False, True, True, True]]


def _lora_with_dropout(model_path, dropout: float):
    """The tiny Llama with LoRA adapters (``lora_dropout``) whose ``B`` is not zero: peft starts ``B``
    at zero, and then dropout inside the adapter would change nothing."""
    peft = pytest.importorskip("peft")
    base = AutoModelForCausalLM.from_pretrained(model_path).float()
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(base, lora)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen))
    return model.train()


def test_pass1_scores_are_deterministic_under_lora_dropout(model_path, monkeypatch):
    """Pass 1 of the trainer's step (``mcpo_step_loss``) scores with dropout off: one sequence, scored
    four times per step (three pool copies and the preferred answer, which the paper's kernel can draw)
    over three steps of a LoRA policy with ``lora_dropout = 0.3`` in train mode, gets one value, the
    eval-mode value; and the model is back in train mode for pass 2. Removing ``eval_mode`` from
    ``train/kinds/mcpo.py`` fails this test (the twelve scores then spread over about 2 nats)."""
    model = _lora_with_dropout(model_path, 0.3)
    gen = torch.Generator().manual_seed(1)
    prompt, answer = _tokens(gen, 5), _tokens(gen, 9)
    pair = (prompt, answer)
    mask = torch.ones(1, 3, dtype=torch.bool)
    batch = PoolBatch([pair], [[pair, pair, pair]], torch.tensor([-40.0]), torch.full((1, 3), -40.0), mask)

    # The set-up can fail: in train mode the adapters' dropout does change the scores.
    noisy = score_pairs(model, [pair] * 4, PAD)
    assert model.training and noisy.unique().numel() > 1

    recorded = []

    def spy(*args, **kwargs):
        scores = score_pairs(*args, **kwargs)
        recorded.append(scores.clone())
        return scores

    monkeypatch.setattr(mcpo_kind, "score_pairs", spy)
    for _ in range(3):
        out = mcpo_step_loss(
            model, batch, pad_token_id=PAD, beta=BETA, kernel="sample", generator=torch.Generator().manual_seed(2)
        )
        out.loss.sum().backward()  # pass 2 runs in train mode; the backward just has to work
        assert model.training
    scores = torch.cat(recorded)
    assert scores.numel() == 12
    assert torch.equal(scores, scores[:1].expand(12)), scores
    model.eval()
    with torch.no_grad():
        clean = completion_logps(model, [pair], PAD)[0]
    torch.testing.assert_close(scores[:1], clean.to(scores.dtype), rtol=0, atol=1e-5)
