"""The Hub dataset card's metadata fields prefpool fills, and the checks on what a user passes for them.

The Hub reads these keys of a card's YAML front matter: ``license`` (an id
from its licence list, ``other`` or ``unknown``), ``language`` (ISO 639 codes),
``task_categories``, ``size_categories`` (fixed buckets of the row count) and
``source_datasets`` (Hub ids). A malformed value is a ``PipelineConfigError``
naming the option, before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from prefpool.pipeline.io.errors import PipelineConfigError

# Preference data trains text-generation models; the Hub's own preference datasets use this category.
DEFAULT_TASK_CATEGORIES = ("text-generation",)
UNKNOWN_LICENSE = "unknown"

_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")  # apache-2.0, mit, cc-by-nc-4.0, other, unknown
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-zA-Z0-9]{2,8})*$")  # en, zh, pt-br, gsw
_TASK = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")  # text-generation
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_SPLIT = re.compile(r"^\w+$")  # datasets' own split-name rule
_TAG = re.compile(r"^\S(?:[^\n\r]{0,98}\S)?$")
_TITLE = re.compile(r"^\S(?:[^\n\r]{0,198}\S)?$")

# The Hub's size buckets, upper bounds exclusive (its card metadata spec).
_SIZES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
)


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` bucket of ``rows`` (all splits together)."""
    for bound, name in _SIZES:
        if rows < bound:
            return name
    return "n>1T"


def _check(option: str, values: Sequence[str], pattern: re.Pattern, what: str) -> list[str]:
    out = []
    for value in values:
        if not isinstance(value, str) or not pattern.match(value):
            raise PipelineConfigError(f"{option}: {value!r} is not {what}")
        out.append(value)
    return out


def check_license(value: str | None, option: str = "license") -> str | None:
    if value is None:
        return None
    return _check(option, [value], _LICENSE, "a licence id (lowercase, e.g. mit, apache-2.0, cc-by-4.0, other)")[0]


def check_languages(values: Sequence[str] | None, option: str = "language") -> list[str]:
    return _check(option, values or [], _LANGUAGE, "an ISO 639 language code (e.g. en, fr, zh, pt-br)")


def check_task_categories(values: Sequence[str] | None, option: str = "task_category") -> list[str]:
    return _check(
        option, values or [], _TASK, "a Hub task category (lowercase words joined by '-', e.g. text-generation)"
    )


def check_tags(values: Sequence[str] | None, option: str = "tag") -> list[str]:
    return _check(option, values or [], _TAG, "a tag (one line, no surrounding spaces, at most 100 characters)")


def check_title(value: str | None, option: str = "pretty_name") -> str | None:
    if value is None:
        return None
    return _check(option, [value], _TITLE, "a title (one line, not empty, at most 200 characters)")[0]


def check_repo_id(value: str | None, option: str = "repo_id", *, owner: bool = False) -> str | None:
    """A Hub repo id by ``huggingface_hub``'s own rules (``validate_repo_id``): ``name`` or ``owner/name``;
    ``owner=True`` asks for ``owner/name`` (a dataset the rows come from is always someone's)."""
    if value is None:
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
        valid = not owner or bool(_REPO_ID.match(value))
    except HFValidationError:
        valid = False
    if not valid:
        form = "owner/name (e.g. me/my-pairs)" if owner else "name or owner/name (e.g. me/my-pairs)"
        raise PipelineConfigError(
            f"{option}: {value!r} is not a valid Hub repo id: give {form} of letters, digits, '-', '_' and '.', "
            "without '--' or '..', not starting or ending with '-' or '.', at most 96 characters"
        )
    return value


def is_repo_id(value: str) -> bool:
    """Whether ``value`` has the form ``owner/name`` (what a dataset location names on the Hub)."""
    return bool(_REPO_ID.match(value))


def is_split_name(value: object) -> bool:
    """Whether ``value`` is a split name (never a path: no '/', no '..')."""
    return isinstance(value, str) and bool(_SPLIT.match(value))


def check_split(value: str, option: str = "split") -> str:
    return _check(option, [value], _SPLIT, "a split name (letters, digits and '_')")[0]
