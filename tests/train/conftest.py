"""Fixtures shared by the trainer tests."""

from __future__ import annotations

import pytest
from trainer_tables import make_tables

from prefpool.testing import build_tiny_llama


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A tiny model and its pairwise/mcpo/mpo tables made by the real ingest -> logprobs -> build.

    Built once per test process; tests read it and write their own outputs elsewhere.
    """
    root = tmp_path_factory.mktemp("trainer-world")
    model = build_tiny_llama(root / "model", seed=0)
    return {"root": root, "model": model, **make_tables(root / "data", model)}
