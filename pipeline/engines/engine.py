"""An inference engine as one object: everything a stage asks of it, so no stage names an engine.

``generate``, ``logprobs`` and ``score``'s judge take an engine by name (the
choices of their ``engine`` option are ``registry.ENGINES``) and ask the
``Engine`` it names:

- ``require()``: whether what it needs is installed, and if not what to install;
- ``device(device)``: the ``--device`` it runs on (checked for spelling only by
  an engine that places itself);
- ``generator_options`` / ``scorer_options``: its own options (``--engine-args``),
  checked; none for an engine that takes no options;
- ``generator(...)``: a ``generation.Generator`` for ``generate`` and the judge;
  ``scorer(...)``: a ``logprob_engines.TokenScorer`` for ``logprobs``;
- ``generator_needs`` / ``scorer_needs``: the GPUs one Ray worker holds for it.

Its ``name`` is its identity: the ``generate`` run's config and the logprobs
cache key record it (``cache_key.cache_components``), so two engines' rows are
never taken for each other.

The defaults here are those of an engine that takes no options and runs on the
torch device it is given; a subclass overrides what differs. Each engine is one
module (``hf_engine``, ``vllm_engine``) registered in ``registry``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from prefpool.pipeline.engines.engine_args import refuse_options
from prefpool.pipeline.executors.base import WorkerNeeds
from prefpool.pipeline.io.errors import PipelineConfigError
from prefpool.pipeline.model.device import resolve_device

if TYPE_CHECKING:
    from prefpool.pipeline.engines.generation import Generator
    from prefpool.pipeline.engines.logprob_engines import TokenScorer
    from prefpool.pipeline.model.info import ModelInfo
    from prefpool.pipeline.model.source import ModelSource


class Engine:
    """One inference engine; one instance of each is registered in ``registry.ENGINES``."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line, for --help
    requires: ClassVar[tuple[str, ...]] = ()  # packages it imports beyond prefpool's own dependencies
    install: ClassVar[str] = ""  # what to install to get them
    takes_options: ClassVar[bool] = False  # whether it has options of its own (``--engine-args``)

    def installed(self) -> bool:
        """Whether ``requires`` can be imported (found, not imported)."""
        return all(importlib.util.find_spec(package) is not None for package in self.requires)

    def require(self) -> None:
        """Import ``requires``; a missing one is a ``PipelineConfigError`` saying what to install."""
        for package in self.requires:
            try:
                importlib.import_module(package)
            except ImportError as exc:
                raise PipelineConfigError(
                    f"engine {self.name!r} needs the {package} package ({exc}); install {self.install}"
                ) from None

    def device(self, device: str) -> str:
        """The torch device ``--device`` names on this machine (``auto``: CUDA when present, else the CPU)."""
        return resolve_device(device)

    def generator_options(self, engine_args: Mapping | None) -> dict:
        """The options its generator gets (``--engine-args``), checked."""
        return refuse_options(self.name, engine_args)

    def scorer_options(self, engine_args: Mapping | None) -> dict:
        """The options its log-prob scorer gets (``--engine-args``), checked."""
        return refuse_options(self.name, engine_args)

    def generator_needs(self, device: str, options: Mapping, *, who: str | None = None) -> WorkerNeeds:
        """A generating worker's resources: one GPU on a CUDA ``device``. ``who``: what runs, for messages."""
        if device.startswith("cuda"):
            return WorkerNeeds(gpus=1, why=f"{who or f'{self.name} engine'} on device={device}")
        return WorkerNeeds()

    def scorer_needs(self, device: str, options: Mapping) -> WorkerNeeds:
        """A scoring worker's resources: a GPU when its node has one."""
        return WorkerNeeds(gpus=1, gpu_optional=True, why=f"{self.name} engine, on the GPU when the node has one")

    def generator(self, info: ModelInfo, *, batch_size: int, device: str, options: dict) -> Generator:
        """A loaded generator of ``info``'s model. ``options``: from ``generator_options``."""
        raise NotImplementedError(f"the {self.name} engine does not generate")

    def scorer(
        self,
        source: str | ModelSource,
        *,
        dtype: str,
        batch_tokens: int,
        pad_token_id: int,
        device: str,
        options: dict,
    ) -> TokenScorer:
        """A loaded log-prob scorer of ``source``'s model in ``dtype``. ``options``: from ``scorer_options``."""
        raise NotImplementedError(f"the {self.name} engine does not score log-probs")
