"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps process-wide singletons; each training run in a test is its own "process"."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test starts on one torch thread, whatever the test before it in this worker set: an in-process
    run compared bit for bit with a subprocess (which runs with OMP_NUM_THREADS=1) must do the same
    reductions in the same order."""
    torch.set_num_threads(1)
    yield
