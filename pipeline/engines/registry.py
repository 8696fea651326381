"""Every inference engine, by name: the one place an engine is registered.

The stages' ``engine`` options take their choices (``EngineName``) and their
``--help`` (``document_engines``) from ``ENGINES``; a stage looks its engine up
with ``engine_named`` and asks the object (``engine.Engine``), never its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

from prefpool.pipeline.engines.engine import Engine
from prefpool.pipeline.engines.hf_engine import HF
from prefpool.pipeline.engines.vllm_engine import VLLM
from prefpool.pipeline.io.errors import PipelineConfigError

ENGINES: dict[str, Engine] = {engine.name: engine for engine in (HF(), VLLM())}
EngineName = Literal[tuple(ENGINES)]  # type: ignore[valid-type]

F = TypeVar("F", bound=Callable)


def engine_named(name: str) -> Engine:
    """The registered engine called ``name``; any other name is a ``PipelineConfigError`` listing them."""
    engine = ENGINES.get(name) if isinstance(name, str) else None
    if engine is None:
        raise PipelineConfigError(f"engine must be one of {sorted(ENGINES)}, got {name!r}")
    return engine


def engines_help() -> str:
    """``hf (...) | vllm (...)``: each registered engine with its one-line summary."""
    return " | ".join(f"{name} ({engine.summary})" for name, engine in ENGINES.items())


def document_engines(fn: F) -> F:
    """Fill ``{engines}`` in ``fn``'s docstring (its ``Args:``, hence ``--help``) with ``engines_help()``."""
    fn.__doc__ = (fn.__doc__ or "").replace("{engines}", engines_help())
    return fn
