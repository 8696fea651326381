"""The fault-injection tests' shared world, built once per test process."""

from __future__ import annotations

import pytest
import torch
from fault_world import build_world

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Inputs and earlier outputs (see ``fault_world``); tests read them, and write elsewhere."""
    return build_world(tmp_path_factory.mktemp("fault-world"))
