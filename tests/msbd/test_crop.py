"""Crop size, placement, work-space plan and stage geometry (ALGORITHM.md §3, §7, §8, §14, §16)."""
import numpy as np
import pytest
import torch

from msbd.crop import (Box, fixed_crop_size, from_work_image, box_to_original, mask_bbox, place_crop,
                       plan_crop, reference_crop_size, stage_geometry, stage_sizes, to_work_image,
                       to_work_mask)
from msbd.errors import InputError


def rect_mask(hw, rows, cols):
    """Binary [H, W] mask with rows [r0, r1) x cols [c0, c1) set."""
    mask = np.zeros(hw, dtype=np.float32)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return mask


@pytest.fixture(scope="module")
def worked_example_mask():
    # §16: 3000x2000 image, bbox rows 800-1500, cols 1000-2100 (inclusive), centre of mass (1150, 1550).
    return rect_mask((2000, 3000), (800, 1501), (1000, 2101))


# 1. Crop size -----------------------------------------------------------------------------------


def test_worked_example_sizes_both_rules():
    assert reference_crop_size(700, 1100, (2000, 3000), 1.2) == (896, 1344, 1344)
    assert fixed_crop_size(701, 1101, (2000, 3000), 1.2) == (896, 1344, 1344)


@pytest.mark.parametrize("crop_rule", ["fixed", "reference"])
def test_worked_example_plan(worked_example_mask, crop_rule):
    plan = plan_crop(worked_example_mask, margin=1.2, crop_rule=crop_rule)
    assert (plan.diff_h, plan.diff_w, plan.side) == (896, 1344, 1344)
    assert plan.square == Box(478, 878, 1822, 2222)
    assert plan.final == Box(702, 878, 1598, 2222)
    assert plan.uncovered_px == 0 and not plan.upsampled and plan.pad == (0, 0, 0, 0)


def test_reference_swaps_width_and_height():
    # Tall mask on a landscape image: the height is clamped by the width (2944), not by 2000 (§14.1).
    assert reference_crop_size(1800, 100, (2000, 3000), 1.2)[0] == 2176
    # Wide mask on a landscape image: the width is clamped by the height.
    assert reference_crop_size(100, 2900, (2000, 3000), 1.0)[1] == 1984


def test_tall_mask_on_landscape_image_section_14_1():
    mask = rect_mask((2000, 3000), (100, 1901), (1400, 1501))  # 1800 px tall (max - min)
    with pytest.raises(InputError, match="does not fit"):
        plan_crop(mask, margin=1.2, crop_rule="reference")
    plan = plan_crop(mask, margin=1.2)
    assert plan.diff_h == 1984 and plan.side == 1984
    assert plan.final.contains(mask_bbox(mask)) and plan.uncovered_px == 0
    assert Box(0, 0, 2000, 3000).contains(plan.square)


@pytest.mark.parametrize("where", ["top", "bottom", "left", "right", "tl", "tr", "bl", "br"])
def test_masks_touching_borders_and_corners(where):
    hw = (700, 1000)
    rows = {"t": (0, 150), "b": (550, 700), "m": (300, 400)}
    cols = {"l": (0, 200), "r": (800, 1000), "m": (400, 600)}
    key = {"top": "tm", "bottom": "bm", "left": "ml", "right": "mr"}.get(where, where)
    mask = rect_mask(hw, rows[key[0]], cols[key[1]])
    for crop_rule in ("fixed", "reference"):
        plan = plan_crop(mask, margin=1.3, crop_rule=crop_rule)
        assert Box(0, 0, *hw).contains(plan.square) and Box(0, 0, *hw).contains(plan.final)
        assert plan.final.contains(mask_bbox(mask)) and plan.uncovered_px == 0


def test_full_span_mask_pads_to_cover():
    # A mask spanning every row of a 1000-row image: floor-to-64 (960) would lose 40 rows.
    mask = rect_mask((1000, 1500), (0, 1000), (600, 700))
    plan = plan_crop(mask, margin=1.0)
    assert plan.pad == (12, 12, 0, 0) and plan.work_hw == (1024, 1500)
    assert plan.diff_h == 1024 and plan.uncovered_px == 0
    unpadded = plan_crop(mask, margin=1.0, pad_to_cover=False)
    assert unpadded.diff_h == 960 and unpadded.uncovered_px == 40 * 100
    with pytest.raises(InputError):  # the reference clamps the height by the width: 1024 > 1000 rows
        plan_crop(mask, margin=1.0, crop_rule="reference")
    wide = rect_mask((1000, 1010), (400, 500), (0, 1010))
    ref = plan_crop(wide, margin=1.0, crop_rule="reference")
    assert ref.diff_w == 960 and ref.uncovered_px == 50 * 100  # never edited (§14.5)
    assert plan_crop(wide, margin=1.0).uncovered_px == 0


def test_exact_multiple_of_64_with_margin_one():
    # §14.5: extent (max - min) = 64*k with margin 1 -> the reference crop is 1 px short of the bbox.
    mask = rect_mask((800, 800), (100, 613), (100, 200))  # rows 100..612: max - min = 512
    ref = plan_crop(mask, margin=1.0, crop_rule="reference")
    assert ref.diff_h == 512
    fixed = plan_crop(mask, margin=1.0)
    assert fixed.diff_h == 576 and fixed.uncovered_px == 0


def test_tiny_image_plans_upsampling():
    mask = rect_mask((200, 300), (50, 120), (100, 200))
    with pytest.raises(InputError):
        plan_crop(mask, crop_rule="reference")
    plan = plan_crop(mask)
    assert plan.upsampled and plan.scaled_hw == (512, 768) and plan.work_hw == (512, 768)
    assert plan.scale == (512 / 200, 768 / 300)
    assert plan.side == 512 and Box(0, 0, 512, 768).contains(plan.square)
    assert plan.uncovered_px == 0
    image = torch.rand(1, 3, 200, 300)
    work = to_work_image(image, plan)
    assert work.shape == (1, 3, 512, 768)
    back = from_work_image(work, plan)
    assert back.shape == image.shape
    work_mask = to_work_mask(torch.from_numpy(mask)[None, None], plan)
    assert work_mask[0, 0][plan.final.slices].sum() == work_mask.sum() > 0


def test_wide_mask_wider_than_square():
    # The square is limited to the short side (576); the final rectangle still covers the whole mask.
    mask = rect_mask((600, 1500), (200, 300), (100, 1401))
    plan = plan_crop(mask, margin=1.1)
    assert plan.side == 576 and plan.long_edge == plan.diff_w == 1472 > plan.side
    assert plan.final.contains(mask_bbox(mask)) and plan.uncovered_px == 0


def test_random_masks_always_covered():
    rng = np.random.default_rng(0)
    for _ in range(40):
        hw = (int(rng.integers(300, 1400)), int(rng.integers(300, 1400)))
        r0, c0 = int(rng.integers(0, hw[0])), int(rng.integers(0, hw[1]))
        r1, c1 = int(rng.integers(r0 + 1, hw[0] + 1)), int(rng.integers(c0 + 1, hw[1] + 1))
        mask = rect_mask(hw, (r0, r1), (c0, c1))
        mask[rng.integers(0, hw[0], 3), rng.integers(0, hw[1], 3)] = 1  # stray pixels
        plan = plan_crop(mask, margin=float(rng.uniform(1.0, 1.5)))
        work = Box(0, 0, *plan.work_hw)
        assert plan.uncovered_px == 0
        assert work.contains(plan.square) and work.contains(plan.final)
        assert plan.diff_h % 64 == plan.diff_w % 64 == plan.side % 64 == 0
        assert 512 <= plan.side <= min(plan.work_hw)
        assert plan.square.height == plan.square.width == plan.side
        assert (plan.final.height, plan.final.width) == (plan.diff_h, plan.diff_w)


# 2. Placement -----------------------------------------------------------------------------------


def test_placement_fallbacks():
    mask = rect_mask((1000, 2000), (0, 1000), (500, 601))
    mask[500, 1400] = 1  # one far pixel: the centre of mass stays near col 550
    ref = place_crop(mask > 0, 1000, 1024, "reference")
    assert (ref.left, ref.right) == (438, 1462)  # recentred on the bbox centre (500 + 1400) // 2 = 950
    fixed = place_crop(mask > 0, 1000, 1024, "fixed")
    assert (fixed.left, fixed.right) == (377, 1401)  # minimal shift from the centre-of-mass placement


def test_placement_scales_an_oversized_crop_down_keeping_its_aspect():
    mask = rect_mask((600, 800), (10, 20), (10, 20)) > 0
    assert place_crop(mask, 700, 900, "fixed") == Box(0, 0, 600, 771)  # 900 * 600 / 700 = 771.4
    assert place_crop(mask, 500, 1600, "fixed") == Box(0, 0, 250, 800)  # the width binds
    with pytest.raises(InputError):
        place_crop(mask, 700, 900, "reference")


def test_empty_mask_and_bad_margin():
    with pytest.raises(InputError, match="empty"):
        plan_crop(np.zeros((600, 600)))
    with pytest.raises(InputError, match="empty"):  # values below half of full scale are not edited
        plan_crop(np.full((600, 600), 0.4))
    with pytest.raises(ValueError, match="margin"):
        plan_crop(rect_mask((600, 600), (0, 10), (0, 10)), margin=0.9)


def test_padding_roundtrip_and_box_mapping():
    mask = rect_mask((1000, 700), (0, 1000), (100, 200))
    plan = plan_crop(mask)
    image = torch.rand(1, 3, 1000, 700)
    work = to_work_image(image, plan)
    assert work.shape[-2:] == plan.work_hw
    assert torch.equal(from_work_image(work, plan), image)
    orig, inner = box_to_original(plan.final, plan)
    assert orig == Box(0, plan.final.left, 1000, plan.final.right)
    assert (inner.height, inner.width) == (orig.height, orig.width) and inner.top == plan.pad[0]


# 3. Stage ladder and per-stage geometry ------------------------------------------------------------


@pytest.mark.parametrize("side,stages", [
    (512, [512]), (576, [576]), (640, [640]), (704, [704]), (768, [768, 768]),
    (832, [768, 832]), (1344, [768, 1344]), (2048, [768, 2048]), (3776, [768, 3776]),
])
def test_stage_table(side, stages):
    assert stage_sizes(side) == stages


def test_stage_options():
    assert stage_sizes(1088, max_edgelen=1024) == [768, 1024, 1088]
    assert stage_sizes(2048, max_edgelen=1024) == [768, 1024, 2048]
    assert stage_sizes(1344, straight_to_grid=True) == [1344]
    assert stage_sizes(768, dedupe_same_size=True) == [768]
    assert stage_sizes(1344, dedupe_same_size=True) == [768, 1344]


def test_worked_example_stage_geometry(worked_example_mask):
    first = stage_geometry(768, 896, 1344, (512, 512))
    assert first.target_hw == (512, 768) and first.input_hw == (341, 512) and first.crop_hw == (896, 1344)
    recrop = place_crop(worked_example_mask > 0, *first.crop_hw)
    assert recrop == Box(702, 878, 1598, 2222)
    last = stage_geometry(1344, 896, 1344, first.target_hw)
    assert last.target_hw == (896, 1344) and last.input_hw == (512, 768) and last.crop_hw == (896, 1344)


def test_stage_geometry_tall_and_float_quirk():
    tall = stage_geometry(768, 1344, 896, (512, 512))
    assert tall.target_hw == (768, 512) and tall.input_hw == (512, 341)
    assert stage_geometry(768, 3776, 3776, (512, 512)).crop_hw == (3775, 3775)  # int() loses a pixel
    assert stage_geometry(768, 3776, 3776, (512, 512), round_crop=True).crop_hw == (3776, 3776)


def _within_a_pixel_of_a_scaled_target(box: Box, target_hw: tuple[int, int]) -> bool:
    """Some scale s puts both box sides within one pixel of s x the target's (aspect kept up to rounding)."""
    h_t, w_t = target_hw
    lo = max((box.height - 1) / h_t, (box.width - 1) / w_t)
    hi = min((box.height + 1) / h_t, (box.width + 1) / w_t)
    return lo <= hi


def _stage_boxes(mask: np.ndarray, margin: float = 1.2, first: int = 512, max_edgelen: int = 768,
                 pass_image: bool = False):
    """(target_hw, box) of every upscaling stage, placed as the pipeline places them (pass_image: with
    stage_geometry's image_hw, so the target is chosen to fit)."""
    plan = plan_crop(mask, margin, first)
    work = np.pad(mask > 0, ((plan.pad[0], plan.pad[1]), (plan.pad[2], plan.pad[3])))
    prev_hw, out = (first, first), []
    for edge in stage_sizes(plan.long_edge, first, max_edgelen):
        geom = stage_geometry(edge, plan.diff_h, plan.diff_w, prev_hw, plan.long_edge,
                              image_hw=plan.work_hw if pass_image else None)
        box = place_crop(work, *geom.crop_hw)
        assert Box(0, 0, *work.shape).contains(box)
        out.append((geom.target_hw, box))
        prev_hw = geom.target_hw
    return out


def test_intermediate_stage_is_not_squashed_issue_example():
    """Issue 23: 600 x 2400, mask rows 100-560, cols 200-1900: stage 768 had a 256 x 768 target (aspect 3.00)
    over a 600 x 2048 box (aspect 3.41), the content squashed 12% vertically."""
    mask = rect_mask((600, 2400), (100, 561), (200, 1901))
    stages = _stage_boxes(mask)
    assert [t for t, _ in stages] == [(256, 768), (576, 2048)]
    for target_hw, box in stages:
        assert _within_a_pixel_of_a_scaled_target(box, target_hw), (target_hw, box)
    box = stages[0][1]
    assert box.height == 600 and box.left <= 200 and box.right >= 1901  # still covers the mask's long side
    # given the image size, stage_geometry picks a target whose crop fits: 192 x 768 over 512 x 2048
    stages = _stage_boxes(mask, pass_image=True)
    assert [t for t, _ in stages] == [(192, 768), (576, 2048)]
    assert (stages[0][1].height, stages[0][1].width) == (512, 2048)
    assert stages[0][1].contains(Box(100, 200, 561, 1901))


def test_every_stage_keeps_its_aspect_ratio_random_masks():
    rng = np.random.default_rng(23)
    for _ in range(60):
        hw = (int(rng.integers(520, 1400)), int(rng.integers(520, 3600)))
        if rng.random() < 0.5:
            hw = hw[::-1]
        r0, c0 = int(rng.integers(0, hw[0] - 8)), int(rng.integers(0, hw[1] - 8))
        r1, c1 = int(rng.integers(r0 + 8, hw[0] + 1)), int(rng.integers(c0 + 8, hw[1] + 1))
        mask = rect_mask(hw, (r0, r1), (c0, c1))
        margin = float(rng.choice([1.0, 1.2, 1.4]))
        for pass_image in (False, True):
            for target_hw, box in _stage_boxes(mask, margin, pass_image=pass_image):
                assert _within_a_pixel_of_a_scaled_target(box, target_hw), (hw, (r0, r1, c0, c1), target_hw, box)
