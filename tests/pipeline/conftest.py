"""Fixtures for the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_helpers import FIXTURES


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES
