"""Grid layout, alpha ramps and compositing (§9), fusion weights, and paste-back (§11)."""
import math

import numpy as np
import pytest
import torch

from msbd.crop import Box
from msbd.stitch import (alpha_composite, alpha_composite_pil, alpha_ramp, alpha_weights, fusion_weights,
                         grid_tiles, mask_tiles, paste_back, reference_grid_base)

# 1. Layout ----------------------------------------------------------------------------------------


def spans(boxes, axis):
    key = (lambda b: (b.top, b.bottom)) if axis == 0 else (lambda b: (b.left, b.right))
    return sorted({key(b) for b in boxes})


def test_worked_example_tiles():
    tiles = grid_tiles(896, 1344, drop_redundant=False)
    assert spans(tiles, 0) == [(0, 768), (384, 896)]
    assert spans(tiles, 1) == [(0, 768), (640, 1344), (832, 1344)]
    assert len(tiles) == 6 and tiles[:3] == [Box(0, 0, 768, 768), Box(0, 640, 768, 1344),
                                             Box(0, 832, 768, 1344)]  # row-major
    assert spans(grid_tiles(896, 1344), 1) == [(0, 768), (640, 1344)]


def test_redundant_rows_and_single_tile():
    assert spans(grid_tiles(768, 1344, drop_redundant=False), 0) == [(0, 768), (256, 768)]
    assert spans(grid_tiles(768, 1344), 0) == [(0, 768)]
    assert grid_tiles(700, 767) == [Box(0, 0, 700, 767)]
    assert spans(grid_tiles(300, 1344), 0) == [(0, 300)]  # short side: no negative start


def test_redundant_tile_exactly_when_w_mod_640_is_64_or_128():
    for width in range(768, 4097, 64):
        n_ref = len(spans(grid_tiles(768, width, drop_redundant=False), 1))
        n_new = len(spans(grid_tiles(768, width), 1))
        assert n_ref - n_new == (1 if width % 640 in (64, 128) else 0), width


@pytest.mark.parametrize("hw", [(768, 768), (896, 1344), (1984, 2944), (1024, 3008)])
def test_tiles_cover_and_respect_minimum(hw):
    for drop in (True, False):
        tiles = grid_tiles(*hw, drop_redundant=drop)
        cover = np.zeros(hw, dtype=int)
        for b in tiles:
            cover[b.slices] += 1
            assert 512 <= b.height <= 768 and 512 <= b.width <= 768
        assert cover.min() >= 1


# 2. Alpha -----------------------------------------------------------------------------------------


def test_alpha_ramp_values():
    ramp = alpha_ramp(128)
    assert ramp.numel() == 64
    assert math.isclose(ramp[0].item(), 1 / (1 + math.exp(5)), rel_tol=1e-12)  # 0.00669
    assert round(ramp[0].item(), 5) == 0.00669 and round(ramp[-1].item(), 5) == 0.99331
    assert torch.all(ramp[1:] > ramp[:-1])


def test_alpha_weights_edges_and_corners():
    boxes = grid_tiles(896, 1344)
    alphas = alpha_weights(boxes, 896, 1344)
    ramp = alpha_ramp(128)
    first = alphas[0]  # top-left tile: ramps only on its right and bottom edges
    assert first[0, 0] == 1 and first[:704, :704].min() == 1
    assert torch.allclose(first[0, 704:], ramp.flip(0))
    assert torch.isclose(first[-1, -1], ramp[0] ** 2)  # corners multiply
    last = alphas[-1]  # bottom-right tile [384, 896) x [640, 1344): ramps on its top and left edges
    assert torch.allclose(last[-1, :64], ramp) and torch.allclose(last[:64, -1], ramp)
    assert last[64:, 64:].min() == 1
    q = alpha_weights(boxes, 896, 1344, quantize=True)[0] * 255
    assert torch.equal(q, q.round()) and q.max() == 255 and q[0, 704:].min() == 1 and q[0, 704:].max() == 253


def test_composite_constant_tiles_analytic():
    boxes = grid_tiles(768, 1344)  # two tiles [0,768), [640,1344), no row ramps
    a, b, c = 0.2, 0.9, 0.5
    tiles = [torch.full((1, 3, 768, 768), a), torch.full((1, 3, 768, 704), b)]
    out = alpha_composite(tiles, boxes, torch.full((1, 3, 768, 1344), c))
    ramp = alpha_ramp(128)
    expected = torch.full((1344,), a, dtype=torch.float64)
    expected[640:704] = ramp * b + (1 - ramp) * a  # B's rising ramp over A (opaque there)
    expected[704:] = b  # B is opaque over A's falling ramp: A's ramp never shows
    assert torch.allclose(out[0, 1, 300].double(), expected, atol=1e-6)
    assert torch.allclose(out[0, :, 0], out[0, :, -1])  # constant along rows


def test_pil_composite_matches_quantized_float():
    torch.manual_seed(0)
    hw, kw = (192, 320), dict(tile=128, overlap=32, min_tile=64)
    boxes = grid_tiles(*hw, **kw)
    tiles = [torch.floor(torch.rand(1, 3, b.height, b.width) * 255) / 255 for b in boxes]
    base = reference_grid_base(torch.rand(1, 3, 48, 80), *hw)
    ref = alpha_composite_pil(tiles, boxes, base, overlap=32)
    base_t = torch.from_numpy(np.asarray(base, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    ours = alpha_composite(tiles, boxes, base_t, overlap=32, quantize=True)
    assert ref.shape == ours.shape == (1, 3, *hw)
    assert (ref - ours).abs().max() <= 2 / 255 + 1e-6


def test_mask_tiles_cover_mask_and_keep_composite():
    torch.manual_seed(0)
    hw, kw = (256, 448), dict(tile=128, overlap=32, min_tile=64)
    boxes = grid_tiles(*hw, **kw)
    mask = np.zeros(hw, dtype=bool)
    mask[20:60, 30:90] = True
    mask[200, 400] = True
    kept = mask_tiles(boxes, mask)
    assert 0 < len(kept) < len(boxes)
    covered = np.zeros(hw, dtype=bool)
    for b in kept:
        covered[b.slices] = True
    assert covered[mask].all()
    tiles = {b: torch.rand(1, 3, b.height, b.width) for b in boxes}
    base = torch.rand(1, 3, *hw)
    full = alpha_composite([tiles[b] for b in boxes], boxes, base, overlap=32)
    part = alpha_composite([tiles[b] for b in kept], kept, base, overlap=32)
    m = torch.from_numpy(mask)
    assert torch.equal(full[..., m], part[..., m])


@pytest.mark.parametrize("hw", [(112, 168), (96, 96), (240, 100)])
def test_fusion_weights_sum_to_one(hw):
    boxes = grid_tiles(*hw, tile=96, overlap=16, min_tile=64)  # latent-sized tiles (768/8, 128/8)
    weights = fusion_weights(boxes, *hw, overlap=16)
    total = torch.zeros(hw, dtype=torch.float64)
    for b, w in zip(boxes, weights):
        assert w.shape == (b.height, b.width) and w.min() > 0
        total[b.slices] += w
    assert torch.allclose(total, torch.ones(hw, dtype=torch.float64))
    partial = fusion_weights(boxes[:1], *hw, overlap=16)[0]
    assert torch.allclose(partial, torch.ones_like(partial))


# 3. Paste-back ------------------------------------------------------------------------------------


def random_case(seed, hw=(90, 120), box=Box(10, 20, 74, 100)):
    rng = np.random.default_rng(seed)
    original = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    mask = rng.random(hw) > 0.6
    edited = torch.rand(1, 3, box.height, box.width, generator=torch.Generator().manual_seed(seed))
    return original, mask, edited, box


@pytest.mark.parametrize("seed", range(5))
def test_paste_back_identity_outside_mask(seed):
    original, mask, edited, box = random_case(seed)
    for feather in (0, 3):
        for truncate in (False, True):
            out = paste_back(original, edited, box, mask, feather_px=feather, truncate=truncate)
            inside = np.zeros_like(mask)
            inside[box.slices] = mask[box.slices]
            assert out.dtype == np.uint8 and np.array_equal(out[~inside], original[~inside])


def test_paste_back_rounding_and_truncation():
    original, mask, edited, box = random_case(7)
    crop_mask = mask[box.slices]
    x = edited[0].permute(1, 2, 0).double().numpy() * 255
    rounded = paste_back(original, edited, box, mask)[box.slices]
    truncated = paste_back(original, edited, box, mask, truncate=True)[box.slices]
    assert np.array_equal(rounded[crop_mask], np.floor(x + 0.5).astype(np.uint8)[crop_mask])
    assert np.array_equal(truncated[crop_mask], np.floor(x).astype(np.uint8)[crop_mask])
    same = paste_back(original, edited, box, crop_mask)  # crop-sized mask gives the same result
    assert np.array_equal(same[box.slices], rounded)


def test_paste_back_feather_only_inside():
    original = np.zeros((64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 16:48] = True
    box = Box(0, 0, 64, 64)
    out = paste_back(original, torch.ones(3, 64, 64), box, mask, feather_px=4)
    row = out[32, :, 0].astype(int)
    assert row[:16].max() == 0 and row[48:].max() == 0  # outside untouched
    assert 0 < row[16] < row[17] < row[18] < row[19] < 255 and row[20:44].min() == 255
    hard = paste_back(original, torch.ones(3, 64, 64), box, mask)
    assert hard[32, 16, 0] == 255


def test_paste_back_feather_not_at_image_border():
    original = np.zeros((64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=bool)
    mask[:32] = True  # touches the top, left and right image borders
    out = paste_back(original, torch.ones(3, 64, 64), Box(0, 0, 64, 64), mask, feather_px=4)
    assert (out[:27] == 255).all()  # no fade towards the image border
    assert 0 < out[31, 32, 0] < out[28, 32, 0] < 255 and (out[32:] == 0).all()
    inner = paste_back(original, torch.ones(3, 32, 64), Box(0, 0, 32, 64), mask, feather_px=4)
    assert inner[31, 32, 0] < 255  # the crop's inner edge is treated as unedited


def test_paste_back_validates_shapes():
    original, mask, edited, box = random_case(0)
    with pytest.raises(ValueError, match="box"):
        paste_back(original, edited[..., :-1], box, mask)
    with pytest.raises(ValueError, match="mask_px"):
        paste_back(original, edited, box, mask[:-1])
