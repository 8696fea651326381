"""The probe: fresh samples drawn as `prefpool generate` draws them; reward and KL measured exactly."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from prefpool.controlled.probe import Probe
from prefpool.controlled.task import true_reward
from prefpool.pipeline.io.read import read_table

pytestmark = pytest.mark.xdist_group("controlled")


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _perturbed(path, seed=0, scale=0.05):
    model = _load(path)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def test_probe_samples_are_the_generate_stage_samples(task_data):
    """Same prompts, seed, sampling and model: the probe's texts are the held-out `generate` output."""
    rows = read_table(task_data.heldout_table.parent.parent / "generate").to_pylist()[:3]
    probe = Probe(task_data.reference, [r["prompt"] for r in rows], samples_per_prompt=4, max_new_tokens=24, seed=0)
    texts = [text for _, _, text in probe.samples(_load(task_data.reference))]
    assert texts == [s["text"] for r in rows for s in r["samples"]]


def test_reference_against_itself_has_zero_kl_and_is_deterministic(task_data):
    rows = read_table(task_data.heldout_table).to_pylist()[:4]
    probe = Probe(task_data.reference, [r["prompt"] for r in rows], samples_per_prompt=3, max_new_tokens=24, seed=7)
    model = _load(task_data.reference)
    model.train()
    first = probe.measure(model)
    assert model.training  # left in the mode it came in
    assert first == probe.measure(model)
    assert first["kl"] == 0.0 and first["kl_se"] == 0.0 and first["samples"] == 12
    texts = [t for _, _, t in probe.samples(model)]
    assert first["reward"] == pytest.approx(sum(map(true_reward, texts)) / len(texts))


def test_kl_is_the_mean_log_ratio_of_the_sampled_tokens(task_data):
    """Recomputed one unpadded sequence at a time with a plain log-softmax: the probe's batched,
    padded scoring gives the same KL estimate, and a perturbed policy is measurably away (KL > 0)."""
    rows = read_table(task_data.heldout_table).to_pylist()[:4]
    probe = Probe(
        task_data.reference,
        [r["prompt"] for r in rows],
        samples_per_prompt=4,
        max_new_tokens=24,
        seed=3,
        batch_size=5,
        score_max_tokens=60,  # several scoring batches
    )
    policy, reference = _perturbed(task_data.reference), _load(task_data.reference)
    measured = probe.measure(policy)

    def logp(model, prompt, completion):
        ids = torch.tensor([prompt + completion])
        logits = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
        targets = ids[0, 1:]
        return logits.gather(-1, targets[:, None])[len(prompt) - 1 :].sum().item()

    with torch.no_grad():
        ratios = [logp(policy, p, c) - logp(reference, p, c) for p, c, _ in probe.samples(policy)]
    mean = sum(ratios) / len(ratios)
    se = math.sqrt(sum((r - mean) ** 2 for r in ratios) / (len(ratios) - 1) / len(ratios))
    assert measured["kl"] == pytest.approx(mean, abs=1e-4)
    assert measured["kl_se"] == pytest.approx(se, abs=1e-4)
    assert measured["kl"] > 3 * measured["kl_se"] > 0
