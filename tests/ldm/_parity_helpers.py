"""Shared by the parity tests of tests/ldm."""
from __future__ import annotations

import torch


@torch.no_grad()
def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Noise on every parameter, so that norms (init 1) and biases (init 0) are not trivial; returns it in eval."""
    for p in model.parameters():
        p.add_(0.05 * torch.randn_like(p))
    return model.eval()
