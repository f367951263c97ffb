"""Shared tiny-model setup for the pipeline tests (random tiny-test weights, native size 32)."""
from __future__ import annotations

import numpy as np

from msbd.config import MSBDConfig


def tiny_config(**overrides) -> MSBDConfig:
    """Few steps, bilinear upscaling, no decoder optimisation; native 32 -> tile 48, overlap 8, max_edgelen 48."""
    cfg = MSBDConfig.for_native_size(32, seed=3)
    cfg.first_stage.steps, cfg.first_stage.batch, cfg.first_stage.repaint_steps = 4, 2, 1
    cfg.upscale.steps, cfg.upscale.strength, cfg.upscale.grid_strength = 4, 0.5, 0.5
    cfg.upscale.mode = "bilinear"
    cfg.decoder_opt.enabled = False
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            setattr(getattr(cfg, section), name, value)
        else:
            setattr(cfg, section, value)
    return cfg


def scene(height: int = 80, width: int = 96, box=(20, 30, 50, 70), seed: int = 0):
    """A random uint8 image and a binary mask with a rectangle (rows, cols half-open) set to 1."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.float32)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = 1
    return image, mask
