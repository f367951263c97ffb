"""Deterministic analysis of a toy-world edit: did the edit add exactly one object of the prompt's colour and
shape, as sharp as the renderer's, without a seam, leaving the rest of the image untouched?

Measures (all on uint8 images, no learning):
* `count`: connected components (8-connected) of pixels of the prompt's colour inside the dilated mask with
  at least `min_area_frac` of the expected object area. One is right; several is the repeated-object failure.
  Colour membership uses the palette constraint of `msbd.toy.scenes`: chroma >= `chroma_min` and the nearest
  palette hue.
* `dominant_colour` / `colour_ok`: the palette colour covering most pixels inside the mask whose colour class
  changed from the input.
* `shape` / `shape_ok`: template matching of the largest component against each shape at the component's
  centroid and area, best rotation in 3 degree steps; `shape_score` is the best IoU.
* `edge_width_px`: 10-90 % width of the median edge profile sampled along outward normals of the largest
  component, each profile aligned at its own 50 % crossing. `edge_width_ref_px` is the same on the ground
  truth render at that size; a Gaussian blur of a sharp edge gives about 2.56 sigma.
* `seam`: mean gradient energy in a band along the mask contour divided by the same in the input image
  (1 for an untouched contour); `seam_ref` is that ratio for the ground truth.
* `psnr_outside`: PSNR (peak 255) between edited and input over pixels outside the mask, inf if identical.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from msbd.toy.scenes import COLOURS, PALETTE_HUES, EditTask, render
from msbd.toy.shapes import SHAPES, SYMMETRY, inside, shape_area

_HUES = np.array([PALETTE_HUES[c] for c in COLOURS])
_EIGHT = np.ones((3, 3), dtype=bool)
_CROP_MARGIN_PX = 30  # room around the dilated mask for edge profiles (reach <= 24 px)


@dataclass(frozen=True)
class AnalyserConfig:
    chroma_min: float = 0.4  # min (max - min channel) in [0, 1] of an object pixel
    min_area_frac: float = 0.1  # components smaller than this fraction of the expected area are ignored
    min_area_px: int = 4
    dilate_frac: float = 0.02  # the mask is grown by this fraction of the short side (at least 2 px)
    seam_band_frac: float = 1 / 128  # half-width of the contour band: one pixel of a 128 px render (>= 2 px)
    halo_ring_frac: float = 1 / 16  # width of the rings either side of the contour compared by `halo`
    shape_step_deg: float = 3.0
    speck_px_per_mp: float = 4.0  # smallest blob `specks_per_tile` counts, in pixels per megapixel of short side^2
    shape_max_px: int = 64  # components are downsampled to about this size before template matching
    edge_max_points: int = 1000
    edge_step_px: float = 0.05


@dataclass(frozen=True)
class EditReport:
    count: int
    dominant_colour: str | None
    colour_ok: bool
    shape: str | None
    shape_score: float
    shape_ok: bool
    edge_width_px: float
    edge_width_ref_px: float
    edge_ratio: float
    seam: float
    seam_ref: float
    psnr_outside: float
    seam_bg: float = math.nan       # seam along the contour away from the prompt's colour (the object's outline)
    halo_colour: float = math.nan  # mean-colour distance (0-255) between the repainted ring inside and the original
    halo_texture: float = math.nan  # high-frequency energy inside the ring over outside (1 = same texture)
    # with the grid stage's tiles (analyse_edit(tiles=...)): steps between neighbouring tiles inside the mask, the
    # same on lines through the tiles' centres (control), blobs of the prompt's colour and the tile cells they are in
    tile_step: float = math.nan     # mean luminance step across tile borders (0-255)
    tile_texture_step: float = math.nan  # mean |log2| gradient-energy ratio across tile borders
    tile_step_ctrl: float = math.nan
    tile_texture_ctrl: float = math.nan
    blobs: int = -1                 # components of the prompt's colour in the mask (>= speck size), object included
    blob_cells: int = -1            # tile cells holding a blob's centroid
    mask_cells: int = -1            # tile cells holding mask pixels

    def to_dict(self) -> dict:
        return asdict(self)


def colour_classes(image: np.ndarray, chroma_min: float = 0.4) -> np.ndarray:
    """Palette index (into `COLOURS`) of each pixel of a uint8 [H, W, 3] image, -1 where the chroma is too
    low for an object (`chroma_min` in [0, 1] units). [H, W] int8"""
    hi, lo = image.max(axis=-1), image.min(axis=-1)
    classes = np.full(image.shape[:2], -1, dtype=np.int8)
    chosen = (hi.astype(np.int16) - lo) >= chroma_min * 255
    rgb = image[chosen].astype(np.float32)  # [P, 3], only the saturated pixels
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    top = rgb.max(axis=1)
    chroma = top - rgb.min(axis=1)
    hue = np.where(top == r, (g - b) / chroma % 6, np.where(top == g, (b - r) / chroma + 2, (r - g) / chroma + 4)) * 60
    diff = np.abs(hue[:, None] - _HUES) % 360
    classes[chosen] = np.minimum(diff, 360 - diff).argmin(axis=-1)
    return classes


def components(member: np.ndarray, min_area: float) -> list[np.ndarray]:
    """Boolean masks of the 8-connected components of `member` with area >= min_area, largest first."""
    labels, n = ndimage.label(member, structure=_EIGHT)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = [i for i in np.argsort(-areas, kind="stable") if areas[i] >= min_area]
    return [labels == i + 1 for i in order]


def _block_mean(mask: np.ndarray, factor: int) -> np.ndarray:
    h, w = -(-mask.shape[0] // factor) * factor, -(-mask.shape[1] // factor) * factor
    padded = np.zeros((h, w), dtype=np.float32)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    return padded.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def classify_shape(component: np.ndarray, step_deg: float = 3.0, max_px: int = 64) -> tuple[str | None, float]:
    """Best-matching shape of a boolean component and its IoU (None, 0 for tiny components)."""
    rows, cols = np.nonzero(component)
    if len(rows) < 9:
        return None, 0.0
    crop = component[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    factor = max(1, math.ceil(max(crop.shape) / max_px))
    small = _block_mean(crop, factor) >= 0.5 if factor > 1 else crop
    small = np.pad(small, 2)
    ys, xs = np.nonzero(np.ones_like(small))
    weight = small.ravel()
    area = weight.sum()
    dx = xs + 0.5 - (xs + 0.5)[weight].mean()
    dy = ys + 0.5 - (ys + 0.5)[weight].mean()
    best = (None, -1.0)
    for shape in SHAPES:
        radius = math.sqrt(area / shape_area(shape, 1.0))
        n_angles = 1 if shape == "circle" else max(1, round(math.degrees(SYMMETRY[shape]) / step_deg))
        angles = SYMMETRY[shape] * np.arange(n_angles)[:, None] / n_angles
        templates = inside(shape, radius, angles, dx, dy)  # [A, N]
        iou = (templates & weight).sum(axis=1) / (templates | weight).sum(axis=1)
        if iou.max() > best[1]:
            best = (shape, float(iou.max()))
    return best


def _crossing(profile: np.ndarray, start: int, level: float, direction: int, step: float) -> float:
    """Sub-sample position (in samples) where `profile` first passes `level` walking from `start`."""
    i = start
    while 0 <= i + direction < len(profile):
        a, b = profile[i], profile[i + direction]
        if (a - level) * (b - level) <= 0 and a != b:
            return i + direction * (a - level) / (a - b)
        i += direction
    return float(i)


def edge_width(image: np.ndarray, component: np.ndarray, max_points: int = 1000, step: float = 0.05) -> float:
    """10-90 % width (pixels) of the component's edge in `image`, from profiles along outward normals."""
    rgb = image.astype(np.float32) / 255
    area = float(component.sum())
    reach = min(max(0.5 * math.sqrt(area / math.pi), 3.0), 24.0)
    core = ndimage.binary_erosion(component, iterations=2)
    colour = np.median(rgb[core if core.any() else component], axis=0)
    by, bx = np.nonzero(component & ~ndimage.binary_erosion(component))
    keep = slice(None, None, max(1, len(by) // max_points))
    by, bx = by[keep], bx[keep]
    smooth = ndimage.gaussian_filter(component.astype(np.float32), 1.5)
    gy, gx = np.gradient(smooth)
    norm = np.hypot(gy[by, bx], gx[by, bx])
    ok = norm > 1e-3
    ny, nx = -gy[by, bx][ok] / norm[ok], -gx[by, bx][ok] / norm[ok]  # outward unit normals
    s = np.arange(-reach, reach + step / 2, step)
    coords = [by[ok][:, None] + s * ny[:, None], bx[ok][:, None] + s * nx[:, None]]  # [N, S] each
    samples = np.stack([ndimage.map_coordinates(rgb[..., c], coords, order=1, mode="nearest") for c in range(3)])
    dist = np.linalg.norm(samples - colour[:, None, None], axis=0)  # [N, S], 0 inside, contrast outside
    end = max(1, round(1.0 / step))
    d_in, d_out = dist[:, :end].mean(axis=1), dist[:, -end:].mean(axis=1)
    contrast = d_out - d_in
    good = contrast > 0.5 * np.median(contrast)
    if good.sum() < 3:
        return float("nan")
    alpha = (d_out[good, None] - dist[good]) / contrast[good, None]  # 1 inside, 0 outside
    centre = (alpha > 0.5).sum(axis=1)  # index of the 50 % crossing of a monotone profile
    half = len(s) // 2 - round(1.5 / step)
    offsets = np.arange(-half, half + 1)
    aligned = np.take_along_axis(alpha, np.clip(centre[:, None] + offsets, 0, len(s) - 1), axis=1)
    profile = np.median(aligned, axis=0)
    lo, hi = profile[-end:].mean(), profile[:end].mean()
    profile = (profile - lo) / max(hi - lo, 1e-6)
    mid = half
    return float(_crossing(profile, mid, 0.1, +1, step) - _crossing(profile, mid, 0.9, -1, step)) * step


def contour_band(mask: np.ndarray, band_px: float) -> np.ndarray:
    """Pixels within `band_px` of the mask contour, on both sides. [H, W] bool"""
    inner = ndimage.distance_transform_edt(mask)
    outer = ndimage.distance_transform_edt(~mask)
    return np.where(mask, inner, outer) <= band_px


def gradient_energy(image: np.ndarray) -> np.ndarray:
    """Squared gradient magnitude summed over channels (central differences), [H, W]."""
    rgb = image.astype(np.float32) / 255
    gy, gx = np.gradient(rgb, axis=(0, 1))
    return (gy**2 + gx**2).sum(axis=-1)


def seam_strength(edited: np.ndarray, source: np.ndarray, mask: np.ndarray, band_px: float,
                  exclude: np.ndarray | None = None) -> float:
    """Mean gradient energy along the mask contour in `edited` over the same in `source`.

    exclude: pixels whose neighbourhood (band_px + 1 around them) leaves the band, e.g. the new object: where an
    object reaches the contour its own outline is not a seam. nan when nothing of the band is left."""
    if mask.all() or not mask.any():
        raise ValueError("the mask has no contour (it is empty or covers everything)")
    band = contour_band(mask, band_px)
    if exclude is not None and exclude.any():
        band &= ndimage.distance_transform_edt(~exclude) > band_px + 1
        if not band.any():
            return math.nan
    return float(gradient_energy(edited)[band].mean() / max(gradient_energy(source)[band].mean(), 1e-12))


def halo(edited: np.ndarray, source: np.ndarray, mask: np.ndarray, ring_px: float,
         exclude: np.ndarray | None = None) -> tuple[float, float]:
    """(colour, texture) of the repainted background around an edit: the ring of `ring_px` inside the mask
    contour (from 2 px in, minus `exclude`, e.g. the new object's pixels) in `edited` against the ring just outside it in
    `source`. colour: distance between the rings' mean RGB (0-255 units); texture: the inner ring's mean gradient
    energy over the outer ring's (1 = the same texture, < 1 smoother, as a visible lighter, flatter halo)."""
    if mask.all() or not mask.any():
        raise ValueError("the mask has no contour (it is empty or covers everything)")
    d_in, d_out = ndimage.distance_transform_edt(mask), ndimage.distance_transform_edt(~mask)
    # rings start 2 px from the contour, so the step across it (the seam, measured by seam_strength) is not texture
    inner, outer = mask & (d_in > 2) & (d_in <= ring_px + 2), ~mask & (d_out > 2) & (d_out <= ring_px + 2)
    if exclude is not None and (inner & ~exclude).sum() >= 0.25 * inner.sum():
        inner &= ~exclude
    colour = float(np.linalg.norm(edited[inner].astype(np.float64).mean(0) - source[outer].astype(np.float64).mean(0)))
    texture = float(gradient_energy(edited)[inner].mean() / max(gradient_energy(source)[outer].mean(), 1e-12))
    return colour, texture


def tile_cells(tiles, shape: tuple[int, int]) -> np.ndarray:
    """Index of the tile whose centre is nearest (per axis) to each pixel: the lattice's non-overlapping cells, split
    in the middle of every overlap. tiles: (top, left, bottom, right) boxes on a row x column lattice. [H, W] int"""
    rows = sorted({(t[0], t[2]) for t in tiles})
    cols = sorted({(t[1], t[3]) for t in tiles})
    cy = np.array([(a + b) / 2 for a, b in rows])
    cx = np.array([(a + b) / 2 for a, b in cols])
    iy = np.abs(np.arange(shape[0])[:, None] + 0.5 - cy).argmin(axis=1)
    ix = np.abs(np.arange(shape[1])[:, None] + 0.5 - cx).argmin(axis=1)
    return iy[:, None] * len(cols) + ix[None, :]


def _cell_borders(tiles, shape: tuple[int, int], control: bool) -> list[tuple[str, float, float, int, int]]:
    """(axis, position, room, start, stop) of every border between neighbouring cells ("x": a vertical line at
    column `position` from row start to stop; room: distance to the nearest other cell edge, which patches beside
    the line must not cross). control=True gives the lines through the centres of the cells after each border
    instead: the control of `tile_steps`, where no tile border lies."""
    rows = sorted({(t[0], t[2]) for t in tiles})
    cols = sorted({(t[1], t[3]) for t in tiles})
    out = []
    for axis, spans, other in (("x", cols, rows), ("y", rows, cols)):
        centres = [(a + b) / 2 for a, b in spans]
        edges = [spans[0][0]] + [(a + b) / 2 for a, b in itertools.pairwise(centres)] + [spans[-1][1]]
        lo, hi = max(0, min(s[0] for s in other)), min(max(s[1] for s in other), shape[0 if axis == "x" else 1])
        for k in range(1, len(edges) - 1):                  # edges[k]: border between cells k-1 and k
            if control:
                line = centres[k]
                room = min(line - edges[k], edges[k + 1] - line)
            else:
                line = edges[k]
                room = min(line - edges[k - 1], edges[k + 1] - line)
            out.append((axis, line, room, lo, hi))
    return out


def lattice_spacing(tiles) -> tuple[float, int]:
    """(gap, patch) in pixels for `tile_steps` from a tile lattice: half the overlap of neighbouring tiles (the
    blending ramp) and a patch as wide as the overlap (without overlap: 1/8 of the stride), at least 4 px;
    `tile_steps` narrows it where a cell is too small to hold it."""
    overlaps, strides = [], []
    for spans in (sorted({(t[0], t[2]) for t in tiles}), sorted({(t[1], t[3]) for t in tiles})):
        for (a0, a1), (b0, _) in itertools.pairwise(spans):
            overlaps.append(max(0, a1 - b0))
            strides.append(b0 - a0)
    if not strides:
        return 1.0, 8
    overlap, stride = float(np.median(overlaps)), float(np.median(strides))
    return max(1.0, overlap / 2), int(max(4, overlap if overlap > 0 else stride / 8))


def tile_steps(edited: np.ndarray, mask: np.ndarray, tiles, exclude: np.ndarray | None = None, control: bool = False,
               gap_px: float | None = None, patch_px: int | None = None) -> tuple[float, float, int]:
    """Brightness and texture steps between neighbouring grid tiles inside the mask.

    Along every border of the tile lattice (`tile_cells`), square patches of `patch_px` are compared either side,
    `gap_px` clear of the line (the blending ramp of the overlap; both default to `lattice_spacing`), using only pixels inside the mask eroded by 2 px
    and not in `exclude` (the new object, whose outline would count as a step). Returns (mean absolute difference of
    the patches' mean luminance, 0-255; mean |log2| ratio of their gradient energies; number of patch pairs). With
    `control=True` the same is measured on lines through the cells' centres, where no tile border lies: a tiled image
    whose tiles do not show gives about the same numbers on both."""
    if gap_px is None or patch_px is None:
        gap_px, patch_px = lattice_spacing(tiles)
    keep = ndimage.binary_erosion(mask, iterations=2)
    if exclude is not None:
        keep &= ~exclude
    luma = edited.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    energy = gradient_energy(edited)
    d_luma, d_tex = [], []
    for axis, line, room, start, stop in _cell_borders(tiles, mask.shape, control):
        p = int(min(patch_px, room - gap_px))
        if p < 4:
            continue
        a0, b0 = round(line - gap_px - p), round(line + gap_px)
        for s in range(start, stop - patch_px + 1, patch_px):
            along, side_a, side_b = slice(s, s + patch_px), slice(a0, a0 + p), slice(b0, b0 + p)
            pa, pb = ((along, side_a), (along, side_b)) if axis == "x" else ((side_a, along), (side_b, along))
            if a0 < 0 or b0 + p > (mask.shape[1] if axis == "x" else mask.shape[0]):
                continue
            ka, kb = keep[pa], keep[pb]
            if ka.sum() < max(4, ka.size // 4) or kb.sum() < max(4, kb.size // 4):
                continue
            d_luma.append(abs(float(luma[pa][ka].mean() - luma[pb][kb].mean())))
            ea, eb = float(energy[pa][ka].mean()), float(energy[pb][kb].mean())
            d_tex.append(abs(math.log2(max(ea, 1e-8) / max(eb, 1e-8))))
    if not d_luma:
        return math.nan, math.nan, 0
    return float(np.mean(d_luma)), float(np.mean(d_tex)), len(d_luma)


def specks_per_tile(edited: np.ndarray, mask: np.ndarray, tiles, colour: int, min_px: int = 3,
                    chroma_min: float = 0.4) -> tuple[int, int, int]:
    """Objects and specks of palette colour `colour` repeated per tile: (blobs of that colour inside the mask with
    at least `min_px` pixels, tile cells holding at least one blob centroid, tile cells that hold mask pixels).
    A grid whose every tile paints its own object scores about as many blobs and busy cells as masked cells."""
    member = (colour_classes(edited, chroma_min) == colour) & mask
    labels, n = ndimage.label(member, structure=_EIGHT)
    if n:
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        big = np.flatnonzero(areas >= min_px) + 1
        centres = ndimage.center_of_mass(member, labels, big) if len(big) else []
    else:
        centres = []
    cells = tile_cells(tiles, mask.shape)
    busy = {int(cells[min(int(r), mask.shape[0] - 1), min(int(c), mask.shape[1] - 1)]) for r, c in centres}
    return len(centres), len(busy), len(np.unique(cells[mask]))


def psnr_outside(edited: np.ndarray, source: np.ndarray, mask: np.ndarray, rows_per_chunk: int = 512) -> float:
    """PSNR (dB, peak 255) over pixels where mask is False; inf if identical there."""
    total, count = 0.0, 0
    for r in range(0, mask.shape[0], rows_per_chunk):
        keep = ~mask[r : r + rows_per_chunk]
        diff = edited[r : r + rows_per_chunk][keep].astype(np.float64) - source[r : r + rows_per_chunk][keep]
        total += float((diff**2).sum())
        count += diff.size
    if count == 0:
        raise ValueError("the mask covers the whole image")
    mse = total / count
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _check_inputs(edited: np.ndarray, mask: np.ndarray, source: np.ndarray) -> None:
    if edited.dtype != np.uint8 or edited.ndim != 3 or edited.shape[2] != 3:
        raise ValueError(f"edited must be uint8 [H, W, 3], got {edited.dtype} {edited.shape}")
    if source.shape != edited.shape or source.dtype != np.uint8:
        raise ValueError(f"source must be uint8 {edited.shape}, got {source.dtype} {source.shape}")
    if mask.shape != edited.shape[:2] or mask.dtype != bool:
        raise ValueError(f"mask must be bool {edited.shape[:2]}, got {mask.dtype} {mask.shape}")
    if not mask.any():
        raise ValueError("the mask is empty")


def _crop_box(mask: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    top, left = max(rows[0] - margin, 0), max(cols[0] - margin, 0)
    bottom, right = min(rows[-1] + 1 + margin, mask.shape[0]), min(cols[-1] + 1 + margin, mask.shape[1])
    return int(top), int(left), int(bottom - top), int(right - left)


def _largest(classes: np.ndarray, colour: int, region: np.ndarray, min_area: float):
    found = components((classes == colour) & region, min_area)
    return found, (found[0] if found else None)


def analyse_edit(
    edited: np.ndarray, mask: np.ndarray, source: np.ndarray, task: EditTask, config: AnalyserConfig = AnalyserConfig(),
    tiles=None,
) -> EditReport:
    """All measures of one edit. edited/source uint8 [H, W, 3] at any size, mask bool [H, W] (True = edit).

    tiles: the grid stage's (top, left, bottom, right) tiles in image pixels, for the tile measures."""
    # 1. Sizes: pixel scale of this render, expected object area, a crop holding the mask and its surroundings.
    _check_inputs(edited, mask, source)
    height, width = mask.shape
    short = min(height, width)
    expected_px = shape_area(task.obj.shape, task.obj.size / 2) * short**2
    min_area = max(config.min_area_px, config.min_area_frac * expected_px)
    dilate_px = max(2, round(config.dilate_frac * short))
    band_px = max(2.0, config.seam_band_frac * short)
    top, left, h, w = _crop_box(mask, dilate_px + _CROP_MARGIN_PX + math.ceil(band_px))
    crop = (slice(top, top + h), slice(left, left + w))
    m, ed, src = mask[crop], edited[crop], source[crop]
    truth = render(task.target, height, width, region=(top, left, h, w))
    region = ndimage.distance_transform_edt(~m) <= dilate_px

    # 2. Objects of the prompt's colour: count, shape and edge of the largest, against the ground truth.
    colour = COLOURS.index(task.obj.colour)
    classes_ed = colour_classes(ed, config.chroma_min)
    found, obj = _largest(classes_ed, colour, region, min_area)
    _, ref = _largest(colour_classes(truth, config.chroma_min), colour, region, min_area)
    shape, score = (None, 0.0) if obj is None else classify_shape(obj, config.shape_step_deg, config.shape_max_px)
    width_px = math.nan if obj is None else edge_width(ed, obj, config.edge_max_points, config.edge_step_px)
    width_ref = math.nan if ref is None else edge_width(truth, ref, config.edge_max_points, config.edge_step_px)

    # 3. Which colour the edit introduced: classes that changed from the input inside the dilated mask.
    new = region & (classes_ed >= 0) & (classes_ed != colour_classes(src, config.chroma_min))
    votes = np.bincount(classes_ed[new].astype(np.int64), minlength=len(COLOURS))
    dominant = COLOURS[int(votes.argmax())] if votes.any() else None
    halo_colour, halo_texture = halo(ed, src, m, max(2.0, config.halo_ring_frac * short), classes_ed == colour)
    tile = _tile_measures(ed, m, tiles, (top, left), classes_ed == colour, colour, config, short) if tiles else {}

    return EditReport(
        count=len(found),
        dominant_colour=dominant,
        colour_ok=dominant == task.obj.colour,
        shape=shape,
        shape_score=score,
        shape_ok=shape == task.obj.shape,
        edge_width_px=width_px,
        edge_width_ref_px=width_ref,
        edge_ratio=width_px / width_ref if width_ref > 0 else math.nan,  # nan if either is missing
        seam=seam_strength(ed, src, m, band_px),
        seam_bg=seam_strength(ed, src, m, band_px, classes_ed == colour),
        seam_ref=seam_strength(truth, src, m, band_px),
        psnr_outside=psnr_outside(edited, source, mask),
        halo_colour=halo_colour,
        halo_texture=halo_texture,
        **tile,
    )


def _tile_measures(edited: np.ndarray, mask: np.ndarray, tiles, offset: tuple[int, int], exclude: np.ndarray,
                   colour: int, config: AnalyserConfig, short: int) -> dict:
    """The tile fields of EditReport on a crop whose top-left corner is `offset` in image pixels."""
    shifted = [(t[0] - offset[0], t[1] - offset[1], t[2] - offset[0], t[3] - offset[1]) for t in tiles]
    step, tex, _ = tile_steps(edited, mask, shifted, exclude)
    step_c, tex_c, _ = tile_steps(edited, mask, shifted, exclude, control=True)
    min_px = max(3, round(config.speck_px_per_mp * short**2 / 2**20))
    blobs, busy, cells = specks_per_tile(edited, mask, shifted, colour, min_px, config.chroma_min)
    return {"tile_step": step, "tile_texture_step": tex, "tile_step_ctrl": step_c, "tile_texture_ctrl": tex_c,
            "blobs": blobs, "blob_cells": busy, "mask_cells": cells}
