"""An LLM as judge, run through the generation engines (hf, or vllm when installed), as a ``score`` scorer.

Each judgment is one prompt: a template filled with the conversation and the
answer(s), sent as one user turn and rendered with the *judge's own* chat
template (generation prompt added), decoded greedily (temperature 0) for at
most ``max_new_tokens`` tokens. The verdict is parsed strictly; an output that
does not parse is not scored (``score`` counts it and reports the rate).

- ``pointwise``: the template has ``{conversation}`` and ``{answer}`` and asks for
  ``Rating: N``, N an integer from 1 to 10. Parsed: exactly one ``Rating:``
  value in the output, an integer in 1..10; the score is N.
- ``pairwise``: each answer against its prompt's reference answer (the first
  answer of the prompt's row in the input table: ``answers[0]`` of an
  ``examples`` row, ``samples[0]`` of a ``candidates`` row), a tournament
  against one answer: n - 1 pairs per prompt instead of the n(n - 1) / 2 of a
  round robin. The template has ``{conversation}``, ``{answer_a}`` and
  ``{answer_b}`` and asks for ``Verdict: A`` or ``Verdict: B``. Every pair is
  judged in both orders (the answer as A, then as B) against position bias;
  the score is the answer's share of the two wins: 1, 0.5 (the orders
  disagree: a position-biased or undecided judge) or 0. The reference itself
  scores 0.5 without a judgment. Parsed: exactly one ``Verdict:`` value, A or
  B; if either order does not parse, the answer is not scored. ``compare``
  judges given pairs (a, b) by the same rule (``eval``'s win-rate).

A template file (``template``) replaces the built-in one of its mode and must
keep the fields and ask for the same reply format. The judge model's
fingerprint, the mode, the template's sha256, the engine and
``max_new_tokens`` are the scorer's identity.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from prefpool.pipeline.engines.generation import Generator, Request
from prefpool.pipeline.engines.registry import engine_named
from prefpool.pipeline.engines.sampling import SamplingParams
from prefpool.pipeline.io.errors import PipelineConfigError

Mode = Literal["pointwise", "pairwise"]
Item = tuple[list[dict], str]  # (prompt messages, completion text)

POINTWISE = """Rate how well the assistant's answer responds to the conversation, on a scale of 1 to 10.

[Conversation]
{conversation}

[Answer]
{answer}

Reply with one line, "Rating: N", where N is an integer from 1 to 10."""

PAIRWISE = """Which answer responds better to the conversation?

[Conversation]
{conversation}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Reply with one line, "Verdict: A" or "Verdict: B"."""

TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "pointwise": (POINTWISE, ("conversation", "answer")),
    "pairwise": (PAIRWISE, ("conversation", "answer_a", "answer_b")),
}

_RATING = re.compile(r"\bRating:\s*(\S+)", re.IGNORECASE)
_VERDICT = re.compile(r"\bVerdict:\s*(\S+)", re.IGNORECASE)


def parse_rating(output: str) -> int | None:
    """N of the one ``Rating: N`` in ``output`` (1 <= N <= 10, trailing ``.`` allowed); None if it is not so."""
    found = [m.rstrip(".") for m in _RATING.findall(output)]
    if len(found) != 1 or not found[0].isdigit() or not 1 <= int(found[0]) <= 10:
        return None
    return int(found[0])


def parse_verdict(output: str) -> str | None:
    """``"A"`` or ``"B"`` from the one ``Verdict: X`` in ``output``; None if it is not so."""
    found = [m.rstrip(".").strip("[]").upper() for m in _VERDICT.findall(output)]
    if len(found) != 1 or found[0] not in ("A", "B"):
        return None
    return found[0]


def conversation_text(messages: list[dict]) -> str:
    """A prompt's messages as text: a lone user turn as it is, else one ``role: content`` block per turn."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def load_template(path: str | Path | None, mode: Mode) -> str:
    """The template of ``mode``: the built-in one, or the file at ``path`` (checked for the mode's fields)."""
    if mode not in TEMPLATES:
        raise PipelineConfigError(f"judge_mode must be one of {', '.join(TEMPLATES)}; got {mode!r}")
    builtin, fields = TEMPLATES[mode]
    if path is None:
        return builtin
    file = Path(path)
    if not file.is_file():
        raise PipelineConfigError(f"judge_template: no such file {str(path)!r}")
    text = file.read_text(encoding="utf-8")
    missing = [f for f in fields if "{" + f + "}" not in text]
    if missing:
        raise PipelineConfigError(
            f"judge_template {path}: a {mode} template needs the fields {', '.join('{' + f + '}' for f in fields)}; "
            f"missing {', '.join('{' + f + '}' for f in missing)}"
        )
    return text


class JudgeScorer:
    """Scores (prompt, completion) items with a judge model; ``None`` for an output that does not parse."""

    abstains = True  # an unparsable verdict leaves the item unscored

    def __init__(
        self,
        info,
        *,
        mode: Mode,
        template: str | Path | None,
        engine: str,
        max_new_tokens: int,
        batch_size: int,
        device: str,
        references: dict[str, str] | None = None,
        engine_options: dict | None = None,
    ) -> None:
        self.engine = engine_named(engine)
        if max_new_tokens < 1:
            raise PipelineConfigError(f"judge_max_new_tokens must be >= 1, got {max_new_tokens}")
        self.info = info
        self.mode = mode
        self.template = load_template(template, mode)
        self.batch_size = batch_size
        self.device = device
        self.options = dict(engine_options or {})
        self.references = references or {}  # prompt_id -> its reference answer (pairwise ``score``)
        self.params = SamplingParams(
            temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, eos_token_ids=info.eos_token_ids
        )
        self.identity = {
            "kind": "judge",
            "mode": mode,
            "model": info.describe(),
            "template_sha256": hashlib.sha256(self.template.encode("utf-8")).hexdigest(),
            "engine": self.engine.name,
            "max_new_tokens": max_new_tokens,
            "decoding": "greedy",
        }
        self._generator: Generator | None = None
        self.outputs: list[str] = []  # the judge's raw replies of the last ``score`` call, for inspection

    def load(self) -> Generator:
        if self._generator is None:
            self._generator = self.engine.generator(
                self.info, batch_size=self.batch_size, device=self.device, options=self.options
            )
        return self._generator

    def _ask(self, filled: list[str]) -> list[str]:
        requests = [Request(tuple(self.info.render([{"role": "user", "content": f}])), seed=0) for f in filled]
        done = self.load().generate(requests, self.params, on_done=lambda _tokens: None)
        return [self.info.decode(list(c.token_ids)) for c in done]

    def score(
        self, items: Sequence[Item], where: Sequence[str] | None = None, prompt_ids: Sequence[str] | None = None
    ) -> list[float | None]:
        """One value per item (None: not parsed). ``prompt_ids`` (pairwise): each item's prompt, for its reference."""
        if self.mode == "pointwise":
            self.outputs = self._ask(
                [self.template.format(conversation=conversation_text(p), answer=t) for p, t in items]
            )
            ratings = [parse_rating(o) for o in self.outputs]
            return [None if r is None else float(r) for r in ratings]
        assert prompt_ids is not None and len(prompt_ids) == len(items)
        return self.compare([(p, t, self.references[pid]) for (p, t), pid in zip(items, prompt_ids, strict=True)])

    def compare(self, comparisons: Sequence[tuple[list[dict], str, str]]) -> list[float | None]:
        """Pairwise mode: per ``(prompt messages, a, b)``, a's share of the two wins, a judged as A then as B: 1, 0.5
        or 0; None when either reply does not parse; 0.5 unjudged when ``a`` and ``b`` are the same text."""
        if self.mode != "pairwise":
            raise PipelineConfigError(f"compare needs a pairwise judge; this one is {self.mode}")
        judged, filled = [], []
        for i, (prompt, a, b) in enumerate(comparisons):
            if a == b:
                continue
            conversation = conversation_text(prompt)
            judged.append(i)
            filled.append(self.template.format(conversation=conversation, answer_a=a, answer_b=b))
            filled.append(self.template.format(conversation=conversation, answer_a=b, answer_b=a))
        self.outputs = self._ask(filled)
        values: list[float | None] = [0.5] * len(comparisons)
        for k, i in enumerate(judged):
            first, second = parse_verdict(self.outputs[2 * k]), parse_verdict(self.outputs[2 * k + 1])
            if first is None or second is None:
                values[i] = None
            else:
                values[i] = ((first == "A") + (second == "B")) / 2
        return values
