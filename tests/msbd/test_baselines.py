"""Baselines: one pass at a larger size (naive) and independent native windows (segmented)."""
from __future__ import annotations

import numpy as np
import pytest

from _pipeline_helpers import scene, tiny_config
from msbd.baselines import naive, segmented, window_boxes
from msbd.models import build_bundle


@pytest.fixture(scope="module")
def bundle():
    return build_bundle("tiny-test", seed=0)


def _check(out, image, mask):
    keep = mask < 0.5
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[keep], image[keep])
    assert not np.array_equal(out[~keep], image[~keep])


def test_naive_keeps_outside_and_is_deterministic(bundle):
    image, mask = scene(70, 75, (10, 10, 60, 65))
    cfg = tiny_config()
    a = naive(image, mask, "a red cube", cfg, bundle, size=64)
    _check(a, image, mask)
    assert np.array_equal(a, naive(image, mask, "a red cube", cfg, bundle, size=64))


def test_segmented_edits_each_masked_window(bundle):
    image, mask = scene(70, 75, (10, 10, 60, 65))
    cfg = tiny_config()
    out = segmented(image, mask, "a red cube", cfg, bundle)
    _check(out, image, mask)
    windows = window_boxes(64, 64, 32)
    assert len(windows) == 4 and all((w.height, w.width) == (32, 32) for w in windows)
