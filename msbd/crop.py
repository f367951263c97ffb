"""Crop geometry of MSBD: the mask's square crop, its placement, the stage ladder and per-stage sizes.

Implements ALGORITHM.md §3 (crop size and placement), §7 (upscaling-stage ladder) and §8 step 1 (target,
input and full-resolution crop size of one stage). Everything here is integer geometry on numpy masks;
no model is involved. Boxes are half-open pixel rectangles `[top, bottom) x [left, right)`.

Two crop rules are offered (`crop_rule`):

* ``"reference"`` reproduces the authors' code bug for bug: bbox extent ``max - min`` (no +1), the height
  clamped by the image *width* and vice versa, centre-of-mass placement with a bbox-centre fallback, and an
  error (the reference's assert) when the square does not fit. Images smaller than the first stage fail.
* ``"fixed"`` (default) fixes §14 items 1, 2 and 5: the extent is ``max - min + 1``; each side is clamped by
  its own image side and the square by ``min(H, W) // 64 * 64``; an image whose short side is below the
  first-stage size is upsampled first (`CropPlan.scaled_hw`); when the mask spans more of an axis than the
  largest multiple of 64 that fits, the image is padded to the next multiple of 64 (`CropPlan.pad`) so the
  final rectangle still covers every mask pixel; placement shifts the crop minimally to cover the bbox.
  If the mask is wider (taller) than the biggest square that fits, the first-stage square covers only part
  of it; the final ``diff_h x diff_w`` rectangle (and the stage ladder built from its long edge) still
  covers all of it, so the parts outside the square are regenerated only by the upscaling stages.

All boxes of a `CropPlan` are in *work* coordinates: the original image after the optional upsampling and
padding. `to_work_image` / `to_work_mask` build the work tensors, `from_work_image` and `box_to_original`
map results back. Typical use by the pipeline:

    plan = plan_crop(mask_soft, margin)                       # square, final rectangle, work space
    image_w, mask_w = to_work_image(image, plan), to_work_mask(mask, plan)
    for edge in stage_sizes(plan.long_edge, ...):             # §7
        geom = stage_geometry(edge, plan.diff_h, plan.diff_w, prev_hw, image_hw=plan.work_hw)
        box = place_crop(mask_w[0, 0].numpy() > 0, *geom.crop_hw, plan.crop_rule)  # §8 recrop
    # unscaled plan: orig_box, inner = box_to_original(box, plan); paste crop[..., inner] at orig_box
    # upsampled plan: paste into the work image, from_work_image(...), paste the whole image
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from msbd.errors import InputError
from msbd.mask import resize_image, resize_mask

CropRule = Literal["fixed", "reference"]


class Box(NamedTuple):
    """Half-open pixel rectangle: rows [top, bottom), cols [left, right)."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def slices(self) -> tuple[slice, slice]:
        """(row slice, col slice), for indexing ``array[box.slices]`` or ``tensor[..., *box.slices]``."""
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def contains(self, other: "Box") -> bool:
        return (self.top <= other.top and self.left <= other.left
                and other.bottom <= self.bottom and other.right <= self.right)

    def shift(self, d_row: int, d_col: int) -> "Box":
        return Box(self.top + d_row, self.left + d_col, self.bottom + d_row, self.right + d_col)


def as_mask_array(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """A 2-D float numpy view of a mask given as [H, W], [1, H, W] or [1, 1, H, W] (array or tensor)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().float().numpy()
    mask = np.asarray(mask)
    while mask.ndim > 2 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (or with leading singleton dims), got shape {mask.shape}")
    return mask


def mask_bbox(mask: np.ndarray) -> Box | None:
    """Tight half-open bounding box of the nonzero pixels of a 2-D mask, or None if it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return Box(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def _ceil64(x: float) -> int:
    return int(math.ceil(x / 64) * 64)


def reference_crop_size(mask_h: int, mask_w: int, image_hw: tuple[int, int], margin: float,
                        first_stage_size: int = 512) -> tuple[int, int, int]:
    """(diff_h, diff_w, S) exactly as the reference computes them (§3), W/H-swap BUG included.

    mask_h, mask_w: the reference's bbox extents ``max - min`` (no +1) of the *raw* (nonzero) mask.
    """
    img_h, img_w = image_hw
    diff_h = max(min(int(np.ceil(mask_h / 64 * margin) * 64), img_w // 64 * 64), first_stage_size)  # BUG: W
    diff_w = max(min(int(np.ceil(mask_w / 64 * margin) * 64), img_h // 64 * 64), first_stage_size)  # BUG: H
    return diff_h, diff_w, max(diff_h, diff_w)


def fixed_crop_size(extent_h: int, extent_w: int, image_hw: tuple[int, int], margin: float,
                    first_stage_size: int = 512) -> tuple[int, int, int]:
    """(diff_h, diff_w, S) with each side clamped by its own image side and S by the short side.

    extent_h, extent_w: bbox extents ``max - min + 1``. Assumes ``min(image_hw) >= first_stage_size``
    (upsample first otherwise). S may be smaller than ``max(diff_h, diff_w)`` when the mask's long side
    exceeds the largest square that fits; the final rectangle is then ``diff_h x diff_w``.
    """
    img_h, img_w = image_hw
    diff_h = max(min(_ceil64(extent_h * margin), img_h // 64 * 64), first_stage_size)
    diff_w = max(min(_ceil64(extent_w * margin), img_w // 64 * 64), first_stage_size)
    side = min(max(diff_h, diff_w), min(img_h, img_w) // 64 * 64)
    return diff_h, diff_w, side


def _place_axis(centre: int, size: int, length: int) -> int:
    """Start of a crop of `size` centred at `centre` (floor/ceil halves) and shifted inside [0, length)."""
    start = centre - size // 2
    return min(max(start, 0), length - size)


def place_crop(mask: np.ndarray, height: int, width: int, crop_rule: CropRule = "fixed") -> Box:
    """Place a height x width crop around a binary mask (`crop_image_and_mask`, §3).

    Both rules centre on the truncated centre of mass and shift the crop inside the image.
    * "reference": if mask pixels fall outside and the bbox extent (max-min) is smaller than both sides,
      recentre on the bbox centre; a crop larger than the image raises InputError (the reference asserts).
    * "fixed": a crop larger than the image is scaled down, keeping its aspect ratio (to within a pixel of
      rounding), until it fits: a stage's crop is resized to its target size, so clamping one side alone would
      squash the stage anisotropically (issue 23: a 682 x 2048 crop of a 600 px high image gave a 600 x 2048 box
      for a 256 x 768 target, 12% squashed); then, per axis, the crop is shifted by the least amount that covers
      the bbox whenever the bbox fits.
    """
    img_h, img_w = mask.shape
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise InputError("mask is empty: no pixel to edit")
    bbox = Box(int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
    if crop_rule == "reference":
        if height > img_h or width > img_w:
            raise InputError(f"crop {height}x{width} does not fit into the {img_h}x{img_w} image "
                             "(reference crop rule; use crop_rule='fixed')")
        box = _centred_box(int(rows.mean()), int(cols.mean()), height, width, (img_h, img_w))
        if not box.contains(bbox) and bbox.height - 1 < height and bbox.width - 1 < width:
            box = _centred_box((bbox.top + bbox.bottom - 1) // 2, (bbox.left + bbox.right - 1) // 2,
                               height, width, (img_h, img_w))
        return box
    if crop_rule != "fixed":
        raise ValueError(f"crop_rule must be 'fixed' or 'reference', got {crop_rule!r}")
    height, width = _fit_keeping_aspect(height, width, img_h, img_w)
    top = _cover_axis(_place_axis(int(rows.mean()), height, img_h), height, bbox.top, bbox.bottom)
    left = _cover_axis(_place_axis(int(cols.mean()), width, img_w), width, bbox.left, bbox.right)
    return Box(top, left, top + height, left + width)


def _fit_keeping_aspect(height: int, width: int, img_h: int, img_w: int) -> tuple[int, int]:
    """(height, width) scaled down by one factor until it fits img_h x img_w; unchanged when it fits."""
    if height <= img_h and width <= img_w:
        return height, width
    if img_h * width <= img_w * height:       # height binds: img_h / height <= img_w / width
        return img_h, min(img_w, max(1, round(width * img_h / height)))
    return min(img_h, max(1, round(height * img_w / width))), img_w


def _centred_box(c_row: int, c_col: int, height: int, width: int, image_hw: tuple[int, int]) -> Box:
    top = _place_axis(c_row, height, image_hw[0])
    left = _place_axis(c_col, width, image_hw[1])
    return Box(top, left, top + height, left + width)


def _cover_axis(start: int, size: int, lo: int, hi: int) -> int:
    """Shift [start, start+size) minimally so it covers [lo, hi), if hi - lo <= size."""
    if hi - lo > size:
        return start
    if lo < start:
        return lo
    if hi > start + size:
        return hi - size
    return start


@dataclass(frozen=True)
class CropPlan:
    """Where and how big the MSBD crops are, in work coordinates (see the module docstring)."""

    image_hw: tuple[int, int]              # original image (H, W)
    scaled_hw: tuple[int, int]             # after upsampling; == image_hw when no upsampling is needed
    pad: tuple[int, int, int, int]         # (top, bottom, left, right) zero/reflect padding after scaling
    diff_h: int                            # final-stage rectangle height (multiple of 64)
    diff_w: int                            # final-stage rectangle width (multiple of 64)
    side: int                              # S, side of the first-stage square crop
    square: Box                            # first-stage square crop (side x side)
    final: Box                             # final-stage rectangle (diff_h x diff_w)
    uncovered_px: int                      # binary mask pixels outside `final` (0 unless unavoidable)
    crop_rule: str

    @property
    def work_hw(self) -> tuple[int, int]:
        top, bottom, left, right = self.pad
        return self.scaled_hw[0] + top + bottom, self.scaled_hw[1] + left + right

    @property
    def scale(self) -> tuple[float, float]:
        """Upsampling factor per axis (rows, cols) applied before cropping; (1, 1) when none."""
        return self.scaled_hw[0] / self.image_hw[0], self.scaled_hw[1] / self.image_hw[1]

    @property
    def upsampled(self) -> bool:
        return self.scaled_hw != self.image_hw

    @property
    def long_edge(self) -> int:
        """Long edge of the final rectangle: the last entry of the stage ladder (= S in the reference)."""
        return max(self.diff_h, self.diff_w)


def _scaled_size(image_hw: tuple[int, int], first_stage_size: int) -> tuple[int, int]:
    """Upsampled size whose short side equals first_stage_size (identity if already large enough)."""
    short = min(image_hw)
    if short >= first_stage_size:
        return image_hw
    k = first_stage_size / short
    return max(first_stage_size, round(image_hw[0] * k)), max(first_stage_size, round(image_hw[1] * k))


def _cover_pad(length: int, extent: int) -> tuple[int, int]:
    """Padding (before, after) so an axis with a mask extent > length//64*64 can hold a covering crop."""
    if extent <= length // 64 * 64:
        return 0, 0
    total = _ceil64(length) - length
    return total // 2, total - total // 2


def plan_crop(mask: np.ndarray | torch.Tensor, margin: float = 1.0, first_stage_size: int = 512,
              crop_rule: CropRule = "fixed", threshold: float = 0.5, pad_to_cover: bool = True) -> CropPlan:
    """Compute the first-stage square and final rectangle for a mask (§3 steps 1-2, §14.1/2/5 fixes).

    mask: [H, W] in [0, 1] (soft or binary, full resolution); pixels >= threshold are edited.
    The reference takes the bbox of the raw nonzero mask; the fixed rule uses the binary mask for both.
    """
    if margin < 1.0:
        raise ValueError(f"margin must be >= 1, got {margin}")
    if first_stage_size % 64:
        raise ValueError(f"first_stage_size must be a multiple of 64, got {first_stage_size}")
    soft = as_mask_array(mask)
    binary = soft >= threshold
    if not binary.any():
        raise InputError(f"mask is empty: no pixel reaches {threshold:.0%} of full scale")
    image_hw = (int(soft.shape[0]), int(soft.shape[1]))
    if crop_rule == "reference":
        return _plan_reference(soft, binary, image_hw, margin, first_stage_size)
    scaled_hw = _scaled_size(image_hw, first_stage_size)
    if scaled_hw != image_hw:
        binary = resize_mask(torch.from_numpy(binary).float()[None, None], scaled_hw)[0, 0].numpy() > 0
    bbox = mask_bbox(binary)
    pad = (0, 0, 0, 0)
    if pad_to_cover:
        pad = _cover_pad(scaled_hw[0], bbox.height) + _cover_pad(scaled_hw[1], bbox.width)
        binary = np.pad(binary, ((pad[0], pad[1]), (pad[2], pad[3])))
        bbox = bbox.shift(pad[0], pad[2])
    work_hw = binary.shape
    diff_h, diff_w, side = fixed_crop_size(bbox.height, bbox.width, work_hw, margin, first_stage_size)
    square = place_crop(binary, side, side, "fixed")
    final = place_crop(binary, diff_h, diff_w, "fixed")
    uncovered = int(binary.sum() - binary[final.slices].sum())
    return CropPlan(image_hw, scaled_hw, pad, diff_h, diff_w, side, square, final, uncovered, "fixed")


def _plan_reference(soft: np.ndarray, binary: np.ndarray, image_hw: tuple[int, int], margin: float,
                    first_stage_size: int) -> CropPlan:
    raw = mask_bbox(soft > 0)
    diff_h, diff_w, side = reference_crop_size(raw.height - 1, raw.width - 1, image_hw, margin,
                                               first_stage_size)
    square = place_crop(binary, side, side, "reference")
    final = place_crop(binary, diff_h, diff_w, "reference")
    uncovered = int(binary.sum() - binary[final.slices].sum())
    return CropPlan(image_hw, image_hw, (0, 0, 0, 0), diff_h, diff_w, side, square, final, uncovered,
                    "reference")


def to_work_image(image: torch.Tensor, plan: CropPlan, pad_mode: str = "reflect") -> torch.Tensor:
    """[B, C, H, W] original image -> work image: bilinear-AA upsampling (§4 image rule), then padding."""
    if plan.upsampled:
        image = resize_image(image, plan.scaled_hw)
    top, bottom, left, right = plan.pad
    if any(plan.pad):
        image = F.pad(image, (left, right, top, bottom), mode=pad_mode)
    return image


def to_work_mask(mask: torch.Tensor, plan: CropPlan) -> torch.Tensor:
    """[B, 1, H, W] binary mask -> work mask: §4 mask rule (bilinear, > 0) when upsampled, zero padding."""
    if plan.upsampled:
        mask = resize_mask(mask, plan.scaled_hw)
    top, bottom, left, right = plan.pad
    return F.pad(mask, (left, right, top, bottom))


def from_work_image(image: torch.Tensor, plan: CropPlan) -> torch.Tensor:
    """Inverse of `to_work_image`: drop the padding, then bilinear-AA back to the original size."""
    top, bottom, left, right = plan.pad
    image = image[..., top:image.shape[-2] - bottom, left:image.shape[-1] - right]
    return resize_image(image, plan.image_hw) if plan.upsampled else image


def box_to_original(box: Box, plan: CropPlan) -> tuple[Box, Box]:
    """Map a work-space box back to original pixels when no upsampling happened.

    Returns (box in the original image, the same region relative to the work box), the latter for slicing
    a crop tensor: ``crop[..., *inner.slices]`` is the part that lies inside the original image.
    """
    if plan.upsampled:
        raise ValueError("box_to_original needs an unscaled plan; use from_work_image on the whole image")
    top, _, left, _ = plan.pad
    orig = box.shift(-top, -left)
    clipped = Box(max(orig.top, 0), max(orig.left, 0),
                  min(orig.bottom, plan.image_hw[0]), min(orig.right, plan.image_hw[1]))
    inner = clipped.shift(-orig.top, -orig.left)
    return clipped, inner


def stage_sizes(long_edge: int, first_stage_size: int = 512, max_edgelen: int = 768,
                straight_to_grid: bool = False, dedupe_same_size: bool = False) -> list[int]:
    """Long edges of the upscaling stages (§7), reproducing the reference's float arithmetic.

    long_edge: max(diff_h, diff_w), the reference's S. Factors 2^e for e in arange(0, log2(S/F), 0.5),
    sizes ceil(F*2^e/64)*64, keep those <= max_edgelen, drop the first, append S.
    QUIRK: S=768 gives [768, 768] (two passes at 768). The default keeps it for parity;
    dedupe_same_size=True drops a final stage equal to the one before it.
    """
    if straight_to_grid:
        return [long_edge]
    exponents = np.arange(0.0, np.log2(long_edge / first_stage_size), 0.5)
    sizes = np.ceil(np.power(2, exponents) * first_stage_size / 64).astype(int) * 64
    stages = [int(s) for s in sizes[sizes <= max_edgelen]][1:] + [long_edge]
    if dedupe_same_size and len(stages) > 1 and stages[-1] == stages[-2]:
        stages.pop()
    return stages


@dataclass(frozen=True)
class StageGeometry:
    """Sizes of one upscaling stage (§8 step 1), all (height, width)."""

    target_hw: tuple[int, int]             # diffusion resolution of the stage (multiples of 64)
    input_hw: tuple[int, int]              # size the previous result is resized to before upsampling
    crop_hw: tuple[int, int]               # full-resolution crop size that this stage re-crops


def stage_geometry(edge: int, diff_h: int, diff_w: int, prev_hw: tuple[int, int],
                   long_edge: int | None = None, check_aspect: bool = True,
                   round_crop: bool = False, image_hw: tuple[int, int] | None = None) -> StageGeometry:
    """Target, input and full-resolution crop size for a stage with long edge `edge` (§8 step 1).

    prev_hw: size of the previous stage's output. long_edge: last entry of the ladder (default
    max(diff_h, diff_w)). The crop is int(side / (edge / long_edge)) as in the reference, which can lose a
    pixel to float error (S=3776 at E=768 gives 3775); round_crop=True rounds instead.
    image_hw: the (work) image size. The short side of the target is rounded *up* to a multiple of 64, so its
    crop can be taller (wider) than the image; given image_hw, such a side is rounded down instead, so the crop
    fits and keeps the target's aspect ratio (issue 23; without it `place_crop` scales the crop down, keeping the
    aspect too, but then the long side may no longer cover the mask).
    """
    long_edge = max(diff_h, diff_w) if long_edge is None else long_edge
    zoom = edge / long_edge

    def fitted(t: int, axis: int) -> int:
        """t, or the largest multiple of 64 whose crop fits the image when t's would not."""
        if image_hw is None or int(t / zoom) <= image_hw[axis]:
            return t
        return max(64, int(image_hw[axis] * zoom) // 64 * 64)

    if diff_w > diff_h:
        w_t, h_t = edge, fitted(int(np.ceil((edge * diff_h / diff_w) / 64) * 64), 0)
        w_in = prev_hw[1]
        h_in = int(w_in * h_t / w_t)
    elif diff_h > diff_w:
        h_t, w_t = edge, fitted(int(np.ceil((edge * diff_w / diff_h) / 64) * 64), 1)
        h_in = prev_hw[0]
        w_in = int(h_in * w_t / h_t)
    else:
        h_t = w_t = edge
        h_in, w_in = prev_hw
    if check_aspect and abs(w_in / h_in - w_t / h_t) > 0.05 + 0.05 * (w_t / h_t):
        raise ValueError(f"stage aspect mismatch: input {h_in}x{w_in} vs target {h_t}x{w_t}")
    to_full = (lambda s: round(s / zoom)) if round_crop else (lambda s: int(s / zoom))
    return StageGeometry((h_t, w_t), (h_in, w_in), (to_full(h_t), to_full(w_t)))
