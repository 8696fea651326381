"""``evaluate``: implicit-reward ranking metrics of a model on a held-out build table.

The reference log-probs come from the table (cached by the ``logprobs`` stage);
the model's are computed here without gradient by ``scoring.score_pairs`` on
the tokens of ``encode_pair`` with the same ``max_length`` as the cache (read
from the table's reference cache: the manifest chain of a build folder, or a
pushed table's card), so both sides score exactly the same tokens. ``data`` is a
build folder, a folder ``prefpool push`` wrote or the Hub id it was pushed to
(``pipeline.kinds.source``).
Before any scoring, the cache key is checked as ``train`` checks it
(``cache_check``): the model's tokenizer and chat template, ``max_length``,
truncation and dtype must be the cache's, else the log-ratios would compare
different token sequences and the metrics would be silently wrong. When the
model's weights are the cache's (the reference itself), every log-ratio must be
0: the step-0 comparison runs (``step0_max_abs_diff`` in the result). Each
pair's token count is also checked against the cached one.

``out``: the JSON result, written atomically; it records the evaluation's
identity (model and table hashes, settings), so the same evaluation again is a
no-op returning the stored result, and another one over it is refused unless
``overwrite``.

Metrics and the tie rule are in ``eval_ranking``; beta scales the margins only.
Optionally, with one scorer (``reward_fn``, ``reward_model``, ``preference_model``
or ``judge``: ``eval_scorers``), also fresh samples' win-rate against a reference
model's samples or the table's preferred answers, its length-controlled figure
and the mean sample lengths (``eval_samples``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from prefpool.core.errors import ConfigError, OutputExistsError
from prefpool.core.outputs import check_file, writing
from prefpool.pipeline.engines.judge import Mode as JudgeMode
from prefpool.pipeline.engines.logprob_engines import DTYPES
from prefpool.pipeline.io.atomic import write_json
from prefpool.pipeline.io.errors import PipelineInputError
from prefpool.pipeline.io.manifest import read_json_file
from prefpool.pipeline.io.out_folder import file_in_folder
from prefpool.pipeline.io.progress import announce, progress
from prefpool.pipeline.io.writer_lock import writes_folder
from prefpool.pipeline.kinds import TableRow
from prefpool.pipeline.kinds.source import TableSource, open_table
from prefpool.pipeline.model.cache_key import weights_hash
from prefpool.pipeline.model.device import resolve_device
from prefpool.pipeline.model.folder import check_model, load_tokenizer
from prefpool.pipeline.model.scoring import eval_mode, score_pairs

from .cache_check import cache_parts, check_cache, check_step0
from .data import decoded_rows, encode_row
from .eval_scorers import JudgeEngine, sample_scorer
from .kinds import TRAIN_KINDS

KINDS = tuple(TRAIN_KINDS)


def _table(data: str | Path | TableSource, split: str | None = None) -> TableSource:
    """A training table (pairwise, mcpo or mpo): a build folder, a pushed folder or a Hub id (default split:
    the only one, else test)."""
    table = open_table(data, split=split, default_split="test")
    if table.kind not in KINDS:
        raise PipelineInputError(f"holds a {table.kind!r} table; evaluate takes {', '.join(KINDS)}", file=table.label)
    return table


def cache_max_length(data: str | Path | TableSource) -> int:
    """The ``max_length`` the table's reference log-probs were computed with (from its reference cache)."""
    return int(cache_parts(_table(data))["max_length"])


EVAL_FILE = "eval.json"  # what `eval --out FOLDER` writes into FOLDER


def _load(model, tokenizer, device: str, dtype: str):
    """The model in the cache's dtype, and its tokenizer (the folder's, unless one is given)."""
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise ConfigError("tokenizer: required when model is a module, not a folder")
        return model, tokenizer
    source = check_model(model, adapter=True)
    tok = tokenizer or load_tokenizer(source)
    return source.causal_lm(DTYPES[dtype]).to(device), tok


def _dtype_of(module: torch.nn.Module) -> str:
    return str(next(module.parameters()).dtype).removeprefix("torch.")


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
    show_progress: bool | None = False,
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
    with eval_mode(model), progress("eval", len(flat), enabled=show_progress, unit="answers") as advance:
        logps = score_pairs(model, flat, pad, max_tokens=max_tokens, on_batch=advance).double()
    ratios = logps - torch.tensor(refs, dtype=torch.float64)
    return list(ratios.split(sizes))


def ranking_metrics(
    model: torch.nn.Module,
    tokenizer,
    data: str | Path | TableSource,
    *,
    max_length: int | None = None,
    beta: float = 0.1,
    tie_atol: float = 1e-4,
    max_tokens: int = 16384,
    model_path: str | Path | None = None,
    step0_tolerance: float = 1e-3,
    show_progress: bool | None = False,
) -> dict:
    """Ranking metrics of ``model`` on the build table ``data`` (see the module docstring).

    ``model_path``: the folder ``model`` was loaded from; its weights hash decides whether the model is
    the reference (then the step-0 comparison runs). None (a module built in memory): it does not run.
    """
    table = _table(data)
    kind = table.kind
    parts = cache_parts(table)
    if max_length is None:
        max_length = int(parts["max_length"])
    is_reference = check_cache(
        parts,
        model=model_path,
        tokenizer=tokenizer,
        max_length=max_length,
        truncation="completion",
        dtype=_dtype_of(model),
        reference_is_policy_init=None,
    )
    rows = decoded_rows(table)
    if not rows:
        raise PipelineInputError("the table holds no rows: there is nothing to evaluate", file=table.label)
    ratios = table_logratios(
        model, tokenizer, rows, max_length=max_length, max_tokens=max_tokens, show_progress=show_progress
    )
    step0 = None
    if is_reference:  # the reference itself: every log-ratio must be 0
        step0 = float(torch.cat(ratios).abs().max())
        check_step0(step0, step0_tolerance, data=table.label, model=model_path, engine=parts.get("engine"))
    metrics = TRAIN_KINDS[kind].ranking(ratios, beta=beta, tie_atol=tie_atol)
    return {
        "kind": kind,
        "max_length": max_length,
        "beta": beta,
        "tie_atol": tie_atol,
        "step0_max_abs_diff": step0,
        **metrics,
    }


@writes_folder(lambda a: a["out"], command="eval")
def evaluate(
    model: str | Path | torch.nn.Module,
    data: str | Path,
    *,
    tokenizer=None,
    split: str | None = None,
    max_length: int | None = None,
    beta: float = 0.1,
    tie_atol: float = 1e-4,
    max_tokens: int = 16384,
    out: str | Path | None = None,
    reward_fn: Callable[[list[dict], str], float] | str | None = None,
    reward_model: str | Path | None = None,
    preference_model: str | Path | None = None,
    judge: str | Path | None = None,
    judge_mode: JudgeMode = "pairwise",
    judge_template: str | Path | None = None,
    judge_engine: JudgeEngine = "hf",
    judge_max_new_tokens: int = 32,
    ref_model: str | Path | None = None,
    num_samples: int = 1,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int = 0,
    max_prompts: int | None = None,
    device: str = "auto",
    step0_tolerance: float = 1e-3,
    overwrite: bool = False,
    show_progress: bool | None = None,
) -> dict:
    """Implicit-reward ranking metrics on a held-out build table (+ sampled reward / win-rate).

    ``model`` is a local folder, a ``.gguf`` file, a Hub id, or a module given
    with ``tokenizer``. Returns (and writes to ``out/eval.json``, atomically)
    ``{"ranking": {...}}`` plus
    ``"samples"`` when a scorer is given: see ``eval_samples.sample_metrics``
    (needs ``model`` as a folder, a .gguf file or a Hub id).

    Args:
        model: Policy: a local save_pretrained folder, a .gguf file or a Hub id (from the local HF cache when there).
        data: A held-out `build` output folder (pairwise, mcpo or mpo), a folder `prefpool push` wrote, or the
            Hub dataset id it was pushed to (offline: from the local HF cache).
        tokenizer: With a module as ``model``: its tokenizer (Python only).
        split: Split of a pushed folder or Hub id. Default: its only split, else test.
        max_length: Default: the reference cache's, read from the manifests.
        beta: Scales the reported margins only; ranks do not depend on it.
        tie_atol: Log-ratios within this many nats tie (a tie is not a win).
        max_tokens: Padded-token budget of one scoring batch; does not change the values.
        out: Output folder: the JSON summary goes to OUT/eval.json (the folder is made; the file replaced).
        reward_fn: Score fresh samples by module:function(prompt messages, completion) -> float. Give at most one
            of --reward-fn, --reward-model, --preference-model and --judge.
        reward_model: Score fresh samples by a one-label sequence-classification reward model (folder, .gguf, Hub
            id).
        preference_model: Score fresh samples by a pairwise preference model (a causal LM read as P(A better than
            B) at its next token): each sample against its reference, both orders averaged.
        judge: Score fresh samples by an LLM judge (a causal LM: folder, .gguf or Hub id) run through the generation
            engine, greedy, in its own chat template; a comparison whose reply does not parse is left out of the
            win-rate and counted.
        judge_mode: pairwise (each sample against its reference, in both orders: 1, 0.5 or 0) | pointwise (a 1-10
            rating of each; the higher wins).
        judge_template: A text file replacing the mode's built-in judge prompt (same fields and reply format).
        judge_engine: The judge's generation engine: hf | vllm (when installed).
        judge_max_new_tokens: The judge's reply length limit, in tokens.
        ref_model: With a scorer: the win-rate is against this model's samples (a folder, a .gguf file or a Hub
            id). Default: against each prompt's preferred answer in the table.
        num_samples: With a scorer: samples per prompt.
        max_new_tokens: With a scorer. Default: generation_config, else 256.
        temperature: With a scorer. Default: generation_config, else 1.0.
        top_p: With a scorer. Default: generation_config, else 1.0.
        seed: With a scorer: sample seeds, shared by both models.
        max_prompts: With a scorer: sample for the first N prompts only.
        device: auto (CUDA when present, else CPU) | cpu | cuda | cuda:N | mps.
        step0_tolerance: When the model is the reference (same weights as the cache's): the largest allowed
            |log-ratio|, in nats.
        overwrite: Replace an OUT/eval.json holding another evaluation (another model, table or settings).
        show_progress: Progress on stderr: a line when the model starts loading, then a bar on a terminal, else a
            line every $PREFPOOL_PROGRESS_SECONDS (30).
    """
    start = time.perf_counter()
    target = eval_file(out) if out is not None else None  # refuse a file before any work
    _check_settings(tie_atol=tie_atol, max_tokens=max_tokens, num_samples=num_samples, tolerance=step0_tolerance)
    device = resolve_device(device)  # a module given as ``model`` stays where it is
    is_folder = not isinstance(model, torch.nn.Module)
    if is_folder:
        announce("eval", f"hashing and loading {model}, reading {data}; progress follows", enabled=show_progress)
        model = check_model(model, adapter=True)  # a LoRA run's output folder too
    if ref_model is not None:
        ref_model = check_model(ref_model, what="ref_model")  # a bad one fails now, not after the ranking
    scorer = sample_scorer(
        reward_fn=reward_fn,
        reward_model=reward_model,
        preference_model=preference_model,
        judge=judge,
        judge_mode=judge_mode,
        judge_template=judge_template,
        judge_engine=judge_engine,
        judge_max_new_tokens=judge_max_new_tokens,
        device=device,
    )
    if scorer is not None and not is_folder:
        raise ConfigError(
            f"{scorer.kind}: sampling needs model as a folder, .gguf or Hub id (the generate engine loads it)"
        )
    table = _table(data, split)
    parts = cache_parts(table)
    settings = {
        "max_length": max_length,
        "beta": beta,
        "tie_atol": tie_atol,
        "reward_fn": scorer.identity if scorer is not None and scorer.kind == "reward_fn" else repr(None),
        **({scorer.kind: scorer.identity} if scorer is not None and scorer.kind != "reward_fn" else {}),
        "ref_model": None if ref_model is None else weights_hash(ref_model),
        "num_samples": num_samples,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "max_prompts": max_prompts,
        "step0_tolerance": step0_tolerance,
    }
    identity = {
        "model": weights_hash(model, adapter=True) if is_folder else None,
        "data": table.fingerprint,
        "settings": settings,
    }
    if target is not None:
        done = _earlier_result(check_file(target), identity, overwrite)
        if done is not None:
            return done
    module, tok = _load(model, tokenizer, device, str(parts["dtype"]))
    summary: dict = {
        "model": model.given if is_folder else type(model).__name__,
        "data": table.label,
        "ranking": ranking_metrics(
            module,
            tok,
            table,
            max_length=max_length,
            beta=beta,
            tie_atol=tie_atol,
            max_tokens=max_tokens,
            model_path=model if is_folder else None,
            step0_tolerance=step0_tolerance,
            show_progress=show_progress,
        ),
    }
    if scorer is not None:
        from .eval_samples import sample_metrics

        summary["samples"] = sample_metrics(
            model,
            table,
            scorer=scorer,
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
        with writing(target):
            target.parent.mkdir(parents=True, exist_ok=True)
        # identity: only rerunning a model unknown by hash (a module) always recomputes
        write_json(target, json.loads(json.dumps({**summary, "identity": identity if is_folder else None})))
    return summary


def _check_settings(*, tie_atol: float, max_tokens: int, num_samples: int, tolerance: float) -> None:
    if not tie_atol >= 0:
        raise ConfigError(f"tie_atol (--tie-atol): must be >= 0 nats, got {tie_atol}")
    if max_tokens < 1 or num_samples < 1:
        raise ConfigError(f"max_tokens and num_samples must be >= 1, got {max_tokens} and {num_samples}")
    if not tolerance >= 0:
        raise ConfigError(f"step0_tolerance (--step0-tolerance): must be >= 0 nats, got {tolerance}")


def _earlier_result(out: Path, identity: dict, overwrite: bool) -> dict | None:
    """The stored result when ``out`` holds this very evaluation; refuse replacing another one."""
    if not out.exists():
        return None
    try:
        earlier = read_json_file(out, "eval result")
    except PipelineInputError:
        earlier = None
    if isinstance(earlier, dict) and earlier.get("identity") == identity:
        return {**earlier, "status": "done earlier"}
    if overwrite:
        return None
    what = (
        "another evaluation" if isinstance(earlier, dict) and "ranking" in earlier else "a file that is no eval result"
    )
    raise OutputExistsError(
        f"--out {out.parent} holds {what} in {out.name} (another model, table or settings); pass --overwrite to "
        "replace it, or choose another --out folder"
    )
