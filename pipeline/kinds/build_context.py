"""What one ``build`` shares between its steps and its kinds' plans: the inputs, the policies, the counters.

``build`` (``pipeline/build.py``) makes a ``BuildContext`` from its inputs and
hands it to the table kind's ``plan`` (``TableKind.plan``); the plan joins the
answers, pairs, pools and reference log-probs it needs through these helpers,
which apply the policies (``missing``, ``max_pool``, ``empty_pool``, hygiene)
and count every row they drop in ``counts`` (``report.json``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from prefpool.pipeline.io.errors import PipelineInputError

from . import hygiene
from . import select as sel
from .inputs import with_completion_id

if TYPE_CHECKING:
    from prefpool.pipeline.build import BuildConfig


def candidates_long(candidates: pl.LazyFrame) -> pl.LazyFrame:
    """A ``candidates`` table as one row per sample: ``[prompt_id, pos, text, cid, truncated]``."""
    return with_completion_id(hygiene.samples_long(candidates))


class BuildContext:
    """The inputs and counters one build shares between its steps."""

    def __init__(
        self,
        config: BuildConfig,
        examples: pl.LazyFrame,
        lp: pl.LazyFrame,
        lp_label: str,
        scores: pl.LazyFrame | None = None,
        candidates: pl.LazyFrame | None = None,
        all_examples: pl.LazyFrame | None = None,
    ) -> None:
        self.config = config
        self.examples = examples  # this build's prompts: its --shard's, less those the policies drop
        # the whole examples table, unfiltered (default: ``examples``): for a rule that relates a prompt
        # to other prompts (kto's mismatched pairs), so that a --shard build pairs it as an unsharded one
        self.all_examples = examples if all_examples is None else all_examples
        self.lp = lp
        self.lp_label = lp_label
        self.answers = sel.answers_long(examples, config.rank_by).with_columns(pl.lit(False).alias("truncated"))
        self.counts: dict[str, int] = {}
        if scores is not None:
            self._rank_by_scores(scores, candidates)
        if config.scores != "candidates":
            self.answers = self.clean(self.answers, "answers", "idx")
        if config.rank_by == "score":
            penalty = config.truncated_penalty if config.truncated == "penalize" else None
            self.answers = hygiene.adjusted_key(
                self.answers, lp, length_penalty=config.length_penalty, truncated_penalty=penalty
            )

    def clean(self, long: pl.LazyFrame, role: str, order: str, **overrides: str) -> pl.LazyFrame:
        """Pool hygiene (``kinds/hygiene.py``) on ``long``; prompts it drops leave ``examples`` too."""
        long, dropped = hygiene.clean(long, role=role, order=order, count=self.add, **self.config.hygiene(**overrides))
        if dropped is not None:
            self.examples = self.examples.join(dropped, on="prompt_id", how="anti")
        return long

    def _rank_by_scores(self, scores: pl.LazyFrame, candidates: pl.LazyFrame | None) -> None:
        """Replace the answers' keys by ``-score`` (see the module docstring); pairs are all derived."""
        answers = self.answers
        if self.config.scores == "candidates":
            assert candidates is not None
            samples = candidates_long(candidates).join(self.examples.select("prompt_id"), on="prompt_id", how="semi")
            answers = (
                self.clean(samples, "samples", "pos", duplicates="collapse")
                .group_by("prompt_id", "cid")
                .agg(pl.col("pos").min(), pl.col("text").first(), pl.col("truncated").sort_by("pos").first())
                .select("prompt_id", pl.col("pos").cast(pl.Int32).alias("idx"), "text", "cid", "truncated")
            )
            self.examples = self.examples.join(candidates.select("prompt_id"), on="prompt_id", how="semi")
        ranked = answers.select("prompt_id", "idx", "text", "cid", "truncated").join(
            scores.rename({"completion_id": "cid"}), on=["prompt_id", "cid"], how="left"
        )
        self.answers = ranked.select("prompt_id", "idx", "text", "cid", (-pl.col("score")).alias("key"), "truncated")
        self.add(
            "answers_without_score", self.answers.filter(pl.col("key").is_null()).select(pl.len()).collect().item()
        )
        self.examples = self.examples.with_columns(pl.col("pairs").list.slice(0, 0))

    def add(self, name: str, value: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + int(value)

    def with_logp(self, frame: pl.LazyFrame, cid: str, prefix: str) -> pl.LazyFrame:
        """Left-join the reference log-prob and token count of completion ``cid``."""
        lp = self.lp.rename({"cid": cid, "logp": f"{prefix}logp", "num_tokens": f"{prefix}num_tokens"})
        return frame.join(lp, on=["prompt_id", cid], how="left")

    def resolve_missing(
        self,
        frame: pl.LazyFrame,
        roles: dict[str, tuple[str, str]],
        *,
        named: str | None = None,
        note: str = "completion_id = ids.completion_id(text)",
        fix: str = "run `prefpool logprobs` over this table's texts",
    ) -> pl.LazyFrame:
        """Apply ``missing`` to rows where a role's log-prob is null; roles: name -> (text col, logp col).

        The error names the answer (``named``, default "the ROLE text"), says what it is (``note``) and what to
        run to cache its log-prob (``fix``)."""
        for role, (text, logp) in roles.items():
            absent = frame.filter(pl.col(logp).is_null())
            if self.config.missing == "error":
                first = absent.select("prompt_id", text).head(1).collect()
                if first.height:
                    pid, value = first.row(0)
                    shown = value if len(value) <= 80 else value[:77] + "..."
                    raise PipelineInputError(
                        f"no reference log-prob for {named or f'the {role} text'} of prompt_id {pid} ({note}, text "
                        f"{shown!r}); {fix}, or pass missing='drop' (--missing drop) to drop such rows",
                        file=self.lp_label,
                    )
            else:
                self.add(f"dropped_missing_logp_{role}", absent.select(pl.len()).collect().item())
                frame = frame.filter(pl.col(logp).is_not_null())
        return frame

    def pool(self, long: pl.LazyFrame, role: str, *, scores: bool = False) -> pl.LazyFrame:
        """``long`` [prompt_id, pos, text, cid] -> [prompt_id, texts, ids, logps, ntoks] (missing, max_pool applied).

        ``scores``: ``long`` has a ``score`` column too, listed as ``scores`` in pool order."""
        long = self.resolve_missing(self.with_logp(long, "cid", ""), {role: ("text", "logp")})
        if self.config.max_pool is not None:
            rank = pl.col("pos").rank("ordinal").over("prompt_id")
            self.add(
                f"{role}_members_over_max_pool",
                long.filter(rank > self.config.max_pool).select(pl.len()).collect().item(),
            )
            long = long.filter(rank <= self.config.max_pool)
        return long.group_by("prompt_id").agg(
            pl.col("text").sort_by("pos").alias("texts"),
            pl.col("cid").sort_by("pos").alias("ids"),
            pl.col("logp").sort_by("pos").alias("logps"),
            pl.col("num_tokens").sort_by("pos").alias("ntoks"),
            *([pl.col("score").sort_by("pos").alias("scores")] if scores else []),
        )

    def attach_pool(self, rows: pl.LazyFrame, pool: pl.LazyFrame, role: str) -> pl.LazyFrame:
        """Inner-join rows to their pool, applying ``empty_pool`` to rows with none."""
        empty = rows.join(pool, on="prompt_id", how="anti")
        if self.config.empty_pool == "error":
            first = empty.select("prompt_id").head(1).collect()
            if first.height:
                raise PipelineInputError(
                    f"prompt_id {first.item()} has an empty {role} list "
                    "(pass empty_pool='drop' / --empty-pool drop to drop such rows)"
                )
        else:
            self.add(f"dropped_empty_{role}", empty.select(pl.len()).collect().item())
        return rows.join(pool, on="prompt_id", how="inner")

    def answer(self, frame: pl.LazyFrame, idx: str, prefix: str) -> pl.LazyFrame:
        """Join text and completion id of the answer at index ``idx`` of each row."""
        ans = self.answers.select(
            "prompt_id",
            pl.col("idx").alias(idx),
            pl.col("text").alias(f"{prefix}text"),
            pl.col("cid").alias(f"{prefix}cid"),
        )
        return frame.join(ans, on=["prompt_id", idx], how="inner")

    def best(self) -> pl.LazyFrame:
        if self.config.best_ties == "drop":
            self.add("dropped_tie_for_best", sel.count_best_ties(self.answers))
        return sel.best_answers(self.answers, self.config.best_ties)

    def prompts(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame.join(self.examples.select("prompt_id", "prompt"), on="prompt_id", how="inner")
