"""Content hashes: the prompt id that joins rows across stages, and stable shard buckets.

Rows are joined by ``prompt_id`` and never by position or file order, so the id
must depend on the prompt's content only, and be identical however the prompt
was spelled in the source (a bare string or a one-message chat list).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prefpool.pipeline.io.errors import PipelineConfigError

PROMPT_ID_CHARS = 32  # 128 bits: collisions are not a practical concern


def normalize_messages(prompt: str | Iterable[Mapping[str, object]]) -> list[dict[str, str]]:
    """Return the prompt as a chat message list with stripped contents.

    A bare string becomes a single user turn; system messages are kept. Keys
    other than ``role`` and ``content`` are dropped, since they are not part of
    what the model sees.
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt.strip()}]
    messages = []
    for message in prompt:
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise TypeError("each message needs a string 'role' and a string 'content'")
        messages.append({"role": role, "content": content.strip()})
    return messages


def prompt_id(messages: list[dict[str, str]]) -> str:
    """sha256 of the canonical JSON of normalized messages, hex, first 32 chars."""
    canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:PROMPT_ID_CHARS]


def completion_id(text: str) -> str:
    """sha256 of a completion's exact text (no normalization: every byte is scored), 32 hex chars."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:PROMPT_ID_CHARS]


def stable_bucket(key: str, count: int) -> int:
    """Bucket in ``[0, count)``; unlike ``hash()`` it is the same in every process."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class ShardSpec:
    """``--shard i/N``: this run handles the rows whose ``stable_bucket(prompt_id, N) == i``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise PipelineConfigError(f"shard must be i/N with 0 <= i < N, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str | ShardSpec | None) -> ShardSpec:
        """Parse ``"i/N"``; ``None`` means the whole input (``0/1``)."""
        if text is None:
            return cls(0, 1)
        if isinstance(text, ShardSpec):
            return text
        index, sep, count = text.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise PipelineConfigError(f"shard must look like 'i/N' (e.g. 0/4), got {text!r}")
        return cls(int(index), int(count))

    def owns(self, key: str) -> bool:
        return self.count == 1 or stable_bucket(key, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
