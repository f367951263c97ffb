"""Baselines: one pass at a larger size (naive) and independent native windows (segmented)."""
from __future__ import annotations

import numpy as np
import pytest

from _pipeline_helpers import scene, tiny_config
import msbd.baselines
from msbd.baselines import naive, segmented, window_boxes, window_cells
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


def test_window_cells_partition_the_crop():
    for height, width in [(64, 64), (80, 100), (70, 32), (32, 33)]:
        owner = np.zeros((height, width), int)
        for win, cell in window_cells(height, width, 32):
            assert win.contains(cell) and (win.height, win.width) == (32, 32)
            owner[cell.slices] += 1
        assert (owner == 1).all()


def test_segmented_windows_are_edited_from_the_original_in_any_order(bundle, monkeypatch):
    """Issue 23: the last, shifted-in window took earlier windows' output as its source and regenerated the
    overlap, so the result depended on the window order. Native 48 on a 64 px crop: windows at 0 and 16 overlap."""
    image, mask = scene(70, 75, (10, 10, 60, 65))
    cfg = tiny_config(first_stage__size=48)
    forward = segmented(image, mask, "a red cube", cfg, bundle)
    _check(forward, image, mask)
    assert any(w.top % 48 or w.left % 48 for w in window_boxes(64, 64, 48))  # overlapping windows exist
    original = msbd.baselines.window_boxes
    monkeypatch.setattr(msbd.baselines, "window_boxes", lambda *a: original(*a)[::-1])
    assert np.array_equal(segmented(image, mask, "a red cube", cfg, bundle), forward)


def test_segmented_windows_batched_match_one_by_one(bundle, monkeypatch):
    """Windows go through the UNet together (grid.batch); per-window generators keep the result that of one window
    per call, up to the kernels' batch-dependent rounding."""
    image, mask = scene(70, 75, (10, 10, 60, 65))
    real, batches = msbd.baselines.sample, []

    def spy(model, cfg, generators, **kw):
        batches.append(len(generators))
        return real(model, cfg, generators=generators, **kw)

    monkeypatch.setattr(msbd.baselines, "sample", spy)
    outs = {}
    for batch in (1, 4):
        batches.clear()
        outs[batch] = segmented(image, mask, "a red cube", tiny_config(grid__batch=batch), bundle).astype(int)
        assert batches == ([1, 1, 1, 1] if batch == 1 else [4])                # the crop's 4 masked windows
    assert np.abs(outs[4] - outs[1]).max() <= 1


def test_seed_minus_one_draws_a_seed(bundle):
    """Issue 23: seed -1 (random) passed validation and then failed in numpy's SeedSequence."""
    image, mask = scene(70, 75, (10, 10, 60, 65))
    _check(naive(image, mask, "a red cube", tiny_config(seed=-1), bundle, size=64), image, mask)
