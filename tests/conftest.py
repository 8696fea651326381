"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest
from accelerate.state import AcceleratorState, GradientState


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps process-wide singletons; each training run in a test is its own "process"."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
