"""``evaluate``: implicit-reward ranking metrics of a model on a held-out build table.

The reference log-probs come from the table (cached by the ``logprobs`` stage);
the model's are computed here without gradient by ``scoring.score_pairs`` on
the tokens of ``encode_pair`` with the same ``max_length`` as the cache (read
from the table's manifest chain), so both sides score exactly the same tokens.
Each pair's token count is checked against the cached one: a mismatch means a
different tokenizer, chat template or max length, and the metrics would be wrong.

Metrics and the tie rule are in ``eval_ranking``; beta scales the margins only.
Optionally (``reward_fn``) also the mean reward of fresh samples and their
win-rate against a reference model's samples (``eval_samples``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from prefpool.core.errors import ConfigError
from prefpool.pipeline.io.atomic import write_json
from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.manifest import load_manifest
from prefpool.pipeline.io.out_folder import file_in_folder
from prefpool.pipeline.kinds import TableRow
from prefpool.pipeline.model.device import resolve_device
from prefpool.pipeline.model.scoring import eval_mode, score_pairs
from prefpool.pipeline.model.source import resolve_model

from .data import decoded_rows, encode_row
from .kinds import TRAIN_KINDS


def cache_max_length(data: str | Path) -> int:
    """The ``max_length`` the table's reference log-probs were computed with.

    Read from the build manifest's inputs: every ``logprobs`` input records its
    cache components; they must agree (build already refuses mixed cache keys).
    """
    manifest = load_manifest(data)
    if manifest is None:
        raise PipelineInputError("no manifest.json: not a finished build output", file=data)
    inputs = manifest.identity.inputs if isinstance(manifest.identity.inputs, dict) else {}
    found = set()
    for lp in inputs.get("logprobs") or []:
        try:
            found.add(int(lp["identity"]["config"]["cache"]["max_length"]))
        except (KeyError, TypeError):
            continue
    if len(found) != 1:
        what = "no logprobs input with a cache max_length" if not found else f"several: {sorted(found)}"
        raise PipelineInputError(f"cannot tell the reference cache's max_length ({what}); pass max_length", file=data)
    return found.pop()


EVAL_FILE = "eval.json"  # what `eval --out FOLDER` writes into FOLDER


def _load(model, tokenizer, device: str):
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise ValueError("tokenizer: required when model is a module, not a folder")
        return model, tokenizer
    source = resolve_model(model)
    tok = tokenizer or source.tokenizer()
    return source.causal_lm(torch.float32).to(device), tok


def eval_file(out: str | Path) -> Path:
    """``OUT/eval.json`` (``out``: a folder, or a new folder's name)."""
    return file_in_folder(out, EVAL_FILE, command="eval")


def table_logratios(
    model: torch.nn.Module,
    tokenizer,
    rows: list[TableRow],
    *,
    max_length: int | None,
    max_tokens: int = 16384,
) -> list[torch.Tensor]:
    """Per row, ``log pi - log pi_ref`` of its answers, float64 ``(1 + M,)``, the preferred answer first."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    flat, refs, sizes = [], [], []
    encoded: dict = {}
    for row in rows:
        answers, _ = encode_row(tokenizer, row, max_length=max_length, cache=encoded)
        flat.extend(answers)
        refs.extend(a.ref_logp for a in row.answers)
        sizes.append(len(answers))
    with eval_mode(model):
        logps = score_pairs(model, flat, pad, max_tokens=max_tokens).double()
    ratios = logps - torch.tensor(refs, dtype=torch.float64)
    return list(ratios.split(sizes))


def ranking_metrics(
    model: torch.nn.Module,
    tokenizer,
    data: str | Path,
    *,
    max_length: int | None = None,
    beta: float = 0.1,
    tie_atol: float = 1e-4,
    max_tokens: int = 16384,
) -> dict:
    """Ranking metrics of ``model`` on the build table in ``data`` (see the module docstring)."""
    manifest = load_manifest(data)
    if manifest is None:
        raise PipelineInputError("no manifest.json: not a finished build output", file=data)
    kind = manifest.identity.schema
    if kind not in TRAIN_KINDS:
        raise PipelineInputError(f"holds a {kind!r} table; evaluate takes {', '.join(TRAIN_KINDS)}", file=data)
    if max_length is None:
        max_length = cache_max_length(data)
    rows = decoded_rows(data, kind)
    ratios = table_logratios(model, tokenizer, rows, max_length=max_length, max_tokens=max_tokens)
    metrics = TRAIN_KINDS[kind].ranking(ratios, beta=beta, tie_atol=tie_atol)
    return {"kind": kind, "max_length": max_length, "beta": beta, "tie_atol": tie_atol, **metrics}


def evaluate(
    model: str | Path | torch.nn.Module,
    data: str | Path,
    *,
    tokenizer=None,
    max_length: int | None = None,
    beta: float = 0.1,
    tie_atol: float = 1e-4,
    max_tokens: int = 16384,
    out: str | Path | None = None,
    reward_fn: Callable[[list[dict], str], float] | str | None = None,
    ref_model: str | Path | None = None,
    num_samples: int = 1,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int = 0,
    max_prompts: int | None = None,
    device: str = "auto",
) -> dict:
    """Implicit-reward ranking metrics on a held-out build table (+ sampled reward / win-rate).

    ``model`` is a local folder, a ``.gguf`` file, a Hub id, or a module given
    with ``tokenizer``. Returns (and writes to ``out/eval.json``, atomically)
    ``{"ranking": {...}}`` plus
    ``"samples"`` when ``reward_fn`` is given: see ``eval_samples.sample_metrics``
    (needs ``model`` and ``ref_model`` as folders).

    Args:
        model: Policy: a local save_pretrained folder, a .gguf file or a Hub id (from the local HF cache when there).
        data: A held-out `build` output folder (pairwise, mcpo or mpo).
        tokenizer: With a module as ``model``: its tokenizer (Python only).
        max_length: Default: the reference cache's, read from the manifests.
        beta: Scales the reported margins only; ranks do not depend on it.
        tie_atol: Log-ratios within this many nats tie (a tie is not a win).
        max_tokens: Padded-token budget of one scoring batch; does not change the values.
        out: Output folder: the JSON summary goes to OUT/eval.json (the folder is made; the file replaced).
        reward_fn: module:function(prompt messages, completion) -> float.
        ref_model: With --reward-fn: win-rate against this model's samples (a folder, a .gguf file or a Hub id).
        num_samples: With --reward-fn: samples per prompt.
        max_new_tokens: With --reward-fn. Default: generation_config, else 256.
        temperature: With --reward-fn. Default: generation_config, else 1.0.
        top_p: With --reward-fn. Default: generation_config, else 1.0.
        seed: With --reward-fn: sample seeds, shared by both models.
        max_prompts: With --reward-fn: sample for the first N prompts only.
        device: auto (CUDA when present, else CPU) | cpu | cuda | cuda:N | mps.
    """
    start = time.perf_counter()
    target = eval_file(out) if out is not None else None  # refuse a file before any work
    device = resolve_device(device)  # a module given as ``model`` stays where it is
    if ref_model is not None:
        ref_model = resolve_model(ref_model, what="ref_model")  # a bad one fails now, not after the ranking
    module, tok = _load(model, tokenizer, device)
    summary: dict = {
        "model": str(model) if not isinstance(model, torch.nn.Module) else type(model).__name__,
        "data": str(data),
        "ranking": ranking_metrics(
            module, tok, data, max_length=max_length, beta=beta, tie_atol=tie_atol, max_tokens=max_tokens
        ),
    }
    if reward_fn is not None:
        from .eval_samples import sample_metrics

        if isinstance(model, torch.nn.Module):
            raise ConfigError(
                "reward_fn: sampling needs model as a folder, .gguf or Hub id (the generate engine loads it)"
            )
        summary["samples"] = sample_metrics(
            model,
            data,
            reward_fn=reward_fn,
            ref_model=ref_model,
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            max_prompts=max_prompts,
            device=device,
        )
    summary["seconds"] = round(time.perf_counter() - start, 3)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, json.loads(json.dumps(summary)))
    return summary
