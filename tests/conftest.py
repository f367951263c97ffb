"""Shared fixtures: CPU, float32, deterministic seeds."""
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
