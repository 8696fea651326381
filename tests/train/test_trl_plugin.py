"""MC-PO and MPO inside TRL 1.16's DPOTrainer (``prefpool.train.trl_plugin``), on a tiny model.

Step-0 checks compare the trainer's loss on its first batch with our loss computed
independently: policy log-probs from ``score_pairs`` on ``encode_pair`` tokens, the
reference values from the table. With reference = policy every log-ratio is 0, so a
selection kernel (and ``rao_blackwell``) gives ln 2 = 0.6931 and ``listwise`` gives ln(1 + M).
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("trl")

from test_eval_support import MAX_LENGTH, full_cache, mcpo_row, own_logps, write_table  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from prefpool.losses import mcpo_loss, mcpo_select, mpo_loss  # noqa: E402
from prefpool.pipeline.io.ids import completion_id  # noqa: E402
from prefpool.testing import build_tiny_llama  # noqa: E402
from prefpool.train.trainer import kernel_seed  # noqa: E402
from prefpool.train.trl_plugin import (  # noqa: E402
    MCPOConfig,
    MCPODPOTrainer,
    MPOConfig,
    MPODPOTrainer,
    mcpo_dataset,
    mpo_dataset,
)

torch.set_num_threads(1)
# TRL's trainer makes an Accelerator (bf16 on CPU): reset it, or a later trainer in this process fails
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

PROMPTS = [
    ("what does the cat do", "the cat likes the river", ["a dog sees", "the model writes a bird"]),
    ("tell me about a dog", "a dog hears our team", ["the robot", "my friend reads", "the teacher"]),
    ("say something", "the child counts", ["our team moves"]),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_llama(tmp_path_factory.mktemp("trl") / "model", seed=2)
    return path, AutoTokenizer.from_pretrained(path)


def _model(path):
    return AutoModelForCausalLM.from_pretrained(path).float()


def _args(cls, tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=3,
        max_steps=3,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        max_length=MAX_LENGTH,
        dataloader_num_workers=0,
        seed=0,
    )
    return cls(**{**base, **kw})


def _mcpo_table(path, tok, tmp_path, shifts=None):
    model = _model(path).eval()
    rows = [
        mcpo_row(model, tok, q, pref, pool, None if shifts is None else shifts[i])
        for i, (q, pref, pool) in enumerate(PROMPTS)
    ]
    return write_table(tmp_path / "mcpo", "mcpo", rows, cache=full_cache(path, tok)), rows


def _first_batch_loss(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()  # no dropout either way; eval keeps TRL's metrics under "eval"
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch)), batch


def _independent_mcpo(path, tok, rows_in_batch, kernel, beta, num_negatives=1, selected=None):
    model = _model(path).eval()
    pol_c, pol_pool, ref_c, ref_pool = [], [], [], []
    width = max(len(r["pool"]) for r in rows_in_batch)
    for r in rows_in_batch:
        logps, _ = own_logps(model, tok, r["prompt"], [r["preferred"], *r["pool"]])
        pad = width - len(r["pool"])
        pol_c.append(logps[0])
        pol_pool.append(logps[1:] + [0.0] * pad)
        ref_c.append(r["ref_preferred_logp"])
        ref_pool.append(r["ref_pool_logps"] + [0.0] * pad)
    mask = torch.tensor([[i < len(r["pool"]) for i in range(width)] for r in rows_in_batch])
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return float(
        mcpo_loss(
            t(pol_c),
            t(pol_pool),
            t(ref_c),
            t(ref_pool),
            candidate_mask=mask,
            beta=beta,
            kernel=kernel,
            num_negatives=num_negatives,
            selected=selected,
        ).loss.mean()
    )


def _rows_of_batch(batch, rows, tok):
    """Table rows in the batch's order (the sampler shuffles), matched by the preferred text's ids."""
    by_ids = {}
    for r in rows:
        by_ids[completion_id(r["preferred"])] = r
    out = []
    b = batch["ref_chosen_logps"].shape[0]
    for i in range(b):
        ids = batch["input_ids"][i][batch["completion_mask"][i].bool()].tolist()
        text = tok.decode(ids, skip_special_tokens=True)
        out.append(by_ids[completion_id(text)])
    return out


@pytest.mark.parametrize("kernel", ["sample", "sample_pool", "rao_blackwell", "listwise"])
def test_mcpo_step0_policy_is_reference(tiny, tmp_path, kernel):
    """Reference = policy: every reward 0; selection kernels and rao_blackwell ln 2, listwise mean ln(1 + M)."""
    path, tok = tiny
    data, rows = _mcpo_table(path, tok, tmp_path)
    trainer = MCPODPOTrainer(
        _model(path),
        args=_args(MCPOConfig, tmp_path, mcpo_kernel=kernel),
        train_dataset=mcpo_dataset(data),
        processing_class=tok,
    )
    loss, batch = _first_batch_loss(trainer)
    sizes = [len(r["pool"]) for r in _rows_of_batch(batch, rows, tok)]
    want = math.log(2) if kernel != "listwise" else sum(math.log(1 + m) for m in sizes) / len(sizes)
    assert loss == pytest.approx(want, abs=1e-5)


def test_mcpo_step0_equals_independent_loss_then_trains(tiny, tmp_path):
    """Shifted reference values, kernel ``max`` (deterministic): the trainer's first-batch loss equals
    mcpo_loss on score_pairs log-probs; then 3 training steps run and change the parameters. The step-0
    check measures the largest shift (2 nats; allowed here by step0_tolerance)."""
    path, tok = tiny
    shifts = [[0.0, 1.0, -2.0], [0.5, 0.0, 1.5, -1.0], [-1.0, 0.3]]
    data, rows = _mcpo_table(path, tok, tmp_path, shifts)
    model = _model(path)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = _args(MCPOConfig, tmp_path, mcpo_kernel="max", beta=0.5, step0_tolerance=3.0)
    trainer = MCPODPOTrainer(model, args=args, train_dataset=mcpo_dataset(data), processing_class=tok)
    loss, batch = _first_batch_loss(trainer)
    want = _independent_mcpo(path, tok, _rows_of_batch(batch, rows, tok), "max", 0.5)
    assert loss == pytest.approx(want, abs=1e-4)
    trainer.model.train()
    result = trainer.train()
    assert result.global_step == 3 and math.isfinite(result.training_loss)
    assert trainer.step0_max_abs_diff == pytest.approx(2.0, abs=1e-4)
    changed = sum(not torch.equal(before[n], p.detach()) for n, p in trainer.model.named_parameters())
    assert changed > 0
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and "mcpo/entropy" in logged[0] and "rewards/accuracies" in logged[0]


def _record_draws(monkeypatch) -> list[dict]:
    """Spy on the MC-PO step's ``mcpo_select`` (which the plug-in runs): each call's generator seed and picks."""
    from prefpool.train.kinds import mcpo as mcpo_kind

    calls = []

    def spy(*args, **kwargs):
        selected = mcpo_select(*args, **kwargs)
        calls.append({"seed": kwargs["generator"].initial_seed(), "selected": selected.tolist()})
        return selected

    monkeypatch.setattr(mcpo_kind, "mcpo_select", spy)
    return calls


def test_mcpo_kernel_generator_is_seeded_per_process(tiny, tmp_path, monkeypatch):
    """Process ``p`` draws from a generator seeded ``kernel_seed(seed, p)``, as ``prefpool train``'s
    processes do: processes 0 and 1 get different streams (one seed for all would give every process
    the same draws for its different rows)."""
    path, tok = tiny
    data, _ = _mcpo_table(path, tok, tmp_path)
    calls = _record_draws(monkeypatch)
    streams = {}
    for process in (0, 1):
        monkeypatch.setattr(MCPOConfig, "process_index", property(lambda self, p=process: p))
        trainer = MCPODPOTrainer(
            _model(path),
            args=_args(MCPOConfig, tmp_path, mcpo_kernel="sample", seed=7),
            train_dataset=mcpo_dataset(data),
            processing_class=tok,
        )
        batch = next(iter(trainer.get_train_dataloader()))
        trainer._loss(trainer.model, batch)
        assert calls[-1]["seed"] == kernel_seed(7, process)
        streams[process] = torch.rand(64, generator=trainer._generator)
    assert kernel_seed(7, 0) != kernel_seed(7, 1)
    assert not torch.equal(streams[0], streams[1])


@pytest.mark.parametrize("num_negatives", [1, 2])
def test_mcpo_resume_makes_the_uninterrupted_draws(tiny, tmp_path, monkeypatch, num_negatives):
    """A run resumed from its step-2 checkpoint makes the kernel draws of steps 3-4 that the
    uninterrupted run made, at M = 1 and M = 2 negatives: the checkpoint holds the generator
    (``kernel_generator_0.safetensors``) and resuming restores it. Without the restore the resumed draws
    restart the stream."""
    path, tok = tiny
    data, _ = _mcpo_table(path, tok, tmp_path)
    calls = _record_draws(monkeypatch)
    kw = dict(
        mcpo_kernel="sample", mcpo_num_negatives=num_negatives, max_steps=4, save_strategy="steps", save_steps=2, seed=3
    )
    whole = MCPODPOTrainer(
        _model(path), args=_args(MCPOConfig, tmp_path, **kw), train_dataset=mcpo_dataset(data), processing_class=tok
    )
    whole.train()
    uninterrupted = [c["selected"] for c in calls]
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert len(uninterrupted) == 4 and (checkpoint / "kernel_generator_0.safetensors").is_file()

    calls.clear()
    resumed = MCPODPOTrainer(
        _model(path),
        args=_args(MCPOConfig, tmp_path, **{**kw, "output_dir": str(tmp_path / "resumed")}),
        train_dataset=mcpo_dataset(data),
        processing_class=tok,
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert [c["selected"] for c in calls] == uninterrupted[2:]
    assert all(len(row) == num_negatives for picks in uninterrupted for row in picks)


def test_mcpo_two_negatives_equals_independent_loss(tiny, tmp_path, monkeypatch):
    """M = 2 with the paper's kernel: the plug-in draws (B, 2) picks, and its first-batch loss equals
    mcpo_loss at num_negatives = 2 on score_pairs log-probs with those picks; rao_blackwell at M = 2
    (no draw) equals the independent loss too. Then 2 training steps run and log
    mcpo/distinct_negatives."""
    path, tok = tiny
    shifts = [[0.0, 1.0, -2.0], [0.5, 0.0, 1.5, -1.0], [-1.0, 0.3]]
    data, rows = _mcpo_table(path, tok, tmp_path, shifts)
    calls = _record_draws(monkeypatch)
    for kernel in ("sample", "rao_blackwell"):
        args = _args(MCPOConfig, tmp_path, mcpo_kernel=kernel, mcpo_num_negatives=2, beta=0.5, step0_tolerance=3.0)
        trainer = MCPODPOTrainer(_model(path), args=args, train_dataset=mcpo_dataset(data), processing_class=tok)
        loss, batch = _first_batch_loss(trainer)
        selected = None
        if kernel == "sample":
            selected = torch.tensor(calls[-1]["selected"])
            assert selected.shape == (3, 2)
        want = _independent_mcpo(path, tok, _rows_of_batch(batch, rows, tok), kernel, 0.5, 2, selected)
        assert loss == pytest.approx(want, abs=1e-4)
    trainer.args.max_steps = 2
    trainer.model.train()
    assert trainer.train().global_step == 2
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and "mcpo/distinct_negatives" in logged[0]


@pytest.mark.parametrize(("kernel", "m"), [("sample", 0), ("listwise", 2)])
def test_mcpo_config_refuses_bad_num_negatives(kernel, m, tmp_path):
    from prefpool.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^mcpo_num_negatives: "):
        _args(MCPOConfig, tmp_path, mcpo_kernel=kernel, mcpo_num_negatives=m)


def _mpo_table(path, tok, tmp_path):
    from test_eval_support import pairwise_row

    model = _model(path).eval()
    rows = []
    for q, pref, pool in PROMPTS:
        row = pairwise_row(model, tok, q, pref, pool[0])
        samples = pool[1:] or ["the river"]
        row.update(
            {
                "label": 1.0,
                "ref_samples": samples,
                "ref_sample_ids": [completion_id(s) for s in samples],
                "ref_sample_logps": own_logps(model, tok, row["prompt"], samples)[0],
            }
        )
        rows.append(row)
    return write_table(tmp_path / "mpo", "mpo", rows, cache=full_cache(path, tok)), rows


@pytest.mark.parametrize("tau", [0.0, 0.5])
def test_mpo_step0_equals_independent_loss(tiny, tmp_path, tau):
    """Reference = policy, so KL = 0 and loss = -sigmoid(log pi(y_w) - log pi(y_l)) + tau * NLL of
    the reference samples; compared with mpo_loss on score_pairs log-probs (whole table = one batch)."""
    path, tok = tiny
    data, rows = _mpo_table(path, tok, tmp_path)
    trainer = MPODPOTrainer(
        _model(path),
        args=_args(MPOConfig, tmp_path, mpo_tau=tau, beta=0.2),
        train_dataset=mpo_dataset(data),
        processing_class=tok,
    )
    loss, _ = _first_batch_loss(trainer)
    model = _model(path).eval()
    pc, pr, samples = [], [], []
    for r in rows:
        (c, rj), _ = own_logps(model, tok, r["prompt"], [r["chosen"][0]["content"], r["rejected"][0]["content"]])
        pc.append(c)
        pr.append(rj)
        samples.append(own_logps(model, tok, r["prompt"], r["ref_samples"])[0])
    width = max(map(len, samples))
    mask = torch.tensor([[i < len(s) for i in range(width)] for s in samples])
    s = torch.tensor([x + [0.0] * (width - len(x)) for x in samples], dtype=torch.float64)
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    want = mpo_loss(
        t(pc),
        t(pr),
        t([r["ref_chosen_logps"] for r in rows]),
        t([r["ref_rejected_logps"] for r in rows]),
        ref_sample_logps=s,
        ref_sample_mask=mask,
        beta=0.2,
        tau=tau,
    ).loss.mean()
    assert loss == pytest.approx(float(want), abs=1e-4)


def test_example_script_runs(tiny, tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "trl_mcpo", Path(__file__).resolve().parents[2] / "examples" / "trl_mcpo.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.main(["--work-dir", str(tmp_path), "--max-steps", "2"])
    assert summary["global_step"] == 2 and math.isfinite(summary["loss"])


@pytest.mark.parametrize("which", ["mcpo", "mpo"])
def test_mcpo_and_mpo_trainers_check_the_cache_and_step0(tiny, tmp_path, which):
    """The checks CachedRefDPOTrainer runs (tests/train/test_trl_cached_ref.py), in the MC-PO and MPO trainers:
    another max_length than the cache's is refused before training; bf16 autocast at step 0."""
    from prefpool.train.cache_check import CacheMismatchError
    from prefpool.train.trainer import Step0MismatchError

    path, tok = tiny
    data = _mcpo_table(path, tok, tmp_path)[0] if which == "mcpo" else _mpo_table(path, tok, tmp_path)[0]
    cls, config, dataset = (
        (MCPODPOTrainer, MCPOConfig, mcpo_dataset) if which == "mcpo" else (MPODPOTrainer, MPOConfig, mpo_dataset)
    )
    args = _args(config, tmp_path)
    args.max_length = 24
    with pytest.raises(CacheMismatchError, match=r"max_length \(cache 48, here 24\)"):
        cls(_model(path), args=args, train_dataset=dataset(data), processing_class=tok)
    trainer = cls(
        _model(path), args=_args(config, tmp_path, bf16=True), train_dataset=dataset(data), processing_class=tok
    )
    with pytest.raises(Step0MismatchError, match="bf16/fp16 is on"):
        trainer.train()
    other = {"mcpo": "mpo", "mpo": "mcpo"}[which]
    with pytest.raises(CacheMismatchError, match=f"holds a {which!r} table; this trainer takes a {other!r} table"):
        (mpo_dataset if which == "mcpo" else mcpo_dataset)(data)
