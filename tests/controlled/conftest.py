"""A small controlled-task data set, made once per test process by the real commands."""

from __future__ import annotations

import pytest
import torch

from prefpool.controlled.data import prepare_data

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def task_data(tmp_path_factory):
    """A briefly trained reference (60 steps: enough for sentences of the language) and the
    train/held-out mcpo tables of 4 samples per prompt, through `prefpool run` (hf engine)."""
    root = tmp_path_factory.mktemp("controlled")
    return prepare_data(root, seed=0, engine="hf", n=4, max_new_tokens=24, reference_steps=60, log=None)
