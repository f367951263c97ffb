"""Resolution-independent rasteriser for toy scenes: background texture and antialiased shapes.

Everything is defined in continuous world coordinates in which the shorter image side has length 1 (the
image spans `[0, extent_x] x [0, extent_y]`). A pixel (row, col) of an H x W render is the box of side
`pixel = extent_y / H` centred at ((col + 0.5) * extent_x / W, (row + 0.5) * extent_y / H). Every value is a
function of the pixel's row and column alone, computed elementwise with no transcendental functions per pixel,
so a region render equals the crop of the full render bit for bit, whatever the strip or window boundaries.

Antialiasing (the render approximates the box-filtered picture):
* shapes: coverage `clip(0.5 - d / pixel, 0, 1)` from the signed distance `d`, a one-pixel ramp at any size;
* stripes: the square wave integrated exactly over a pixel-wide box along the stripe normal;
* noise: Perlin octaves of cell size `0.5 / 2**k` (k = 0..10, finest 1/2048 of the short side); an octave
  fades out as its cell shrinks from 4 to 2 pixels and is skipped below, so fine octaves only appear in
  large renders. The three finest carry extra 'grain', visible from 2048 px up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator, Sequence

import numpy as np

from msbd.toy.shapes import convex_pieces

N_OCTAVES = 11
GRAIN_OCTAVES = 3  # the finest octaves (cells 1/512 to 1/2048) also carry the background's grain
_MASK32 = np.uint64(0xFFFFFFFF)
_GRADIENTS = np.stack(
    [np.cos(2 * np.pi * (np.arange(16) + 0.5) / 16), np.sin(2 * np.pi * (np.arange(16) + 0.5) / 16)], axis=1
).astype(np.float32)  # [16, 2] unit gradient directions of the Perlin lattice
PERLIN_GAIN = 1.4  # brings 2-D Perlin noise to roughly [-1, 1]
STRIP_PIXELS = 1 << 18  # pixels per strip: bounds memory at any size


@dataclass(frozen=True)
class Grid:
    """Pixel grid of a full H x W render of a scene with world extents (extent_x, extent_y)."""

    height: int
    width: int
    extent_x: float
    extent_y: float

    @property
    def pixel(self) -> float:
        return self.extent_y / self.height

    def xs(self, left: int, w: int) -> np.ndarray:
        return (np.arange(left, left + w, dtype=np.float64) + 0.5) * (self.extent_x / self.width)

    def ys(self, top: int, h: int) -> np.ndarray:
        return (np.arange(top, top + h, dtype=np.float64) + 0.5) * (self.extent_y / self.height)


@dataclass(frozen=True)
class Shape:
    """An object ready to rasterise: world centre and circumradius, colour in [0, 1]."""

    shape: str
    rgb: tuple[float, float, float]
    cx: float
    cy: float
    radius: float
    rotation: float

    @cached_property
    def pieces(self) -> list[np.ndarray]:
        return [p.astype(np.float32) for p in convex_pieces(self.shape, self.radius, self.rotation)]


def _hash(ix: np.ndarray, iy: np.ndarray, key: int) -> np.ndarray:
    """32-bit integer hash of lattice points (ix, iy) under `key` (uint64 arithmetic, wraps)."""
    h = (ix.astype(np.uint64) * np.uint64(0x27D4EB2D)) ^ (iy.astype(np.uint64) * np.uint64(0x165667B1))
    h = (h ^ np.uint64((key * 0x9E3779B1) & 0xFFFFFFFF)) & _MASK32
    for shift, mult in ((16, 0x7FEB352D), (15, 0x846CA68B), (16, None)):
        h ^= h >> np.uint64(shift)
        if mult is not None:
            h = (h * np.uint64(mult)) & _MASK32
    return h


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def _lattice_axis(coord: np.ndarray, cell: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer lattice index and fractional position (float32) of 1-D world coordinates."""
    u = coord / cell + offset
    index = np.floor(u)
    return index.astype(np.int64), (u - index).astype(np.float32)


def perlin(xs: np.ndarray, ys: np.ndarray, cell: float, key: int) -> np.ndarray:
    """Perlin gradient noise of lattice size `cell` on the grid ys x xs, factored by lattice row. [h, w]"""
    offset_x, offset_y = (int(v) % 4096 + 64 for v in _hash(np.array([key]), np.array([7, 11]), 0x5EED))
    ix, fx = _lattice_axis(xs, cell, offset_x)
    iy, fy = _lattice_axis(ys, cell, offset_y)
    lat_x = np.arange(ix.min(), ix.max() + 2)
    lat_y = np.arange(iy.min(), iy.max() + 2)
    g = _GRADIENTS[(_hash(lat_x[None, :], lat_y[:, None], key) & np.uint64(15)).astype(np.intp)]  # [ny, nx, 2]
    cx = ix - lat_x[0]
    u = _fade(fx)
    gx0, gx1 = g[:, cx, 0], g[:, cx + 1, 0]  # [ny, w]
    gy0, gy1 = g[:, cx, 1], g[:, cx + 1, 1]
    a = (1 - u) * gx0 * fx + u * gx1 * (fx - 1)  # x-interpolated noise at each lattice row, [ny, w]
    b = (1 - u) * gy0 + u * gy1  # its slope in y
    ry = iy - lat_y[0]
    fy_col, v = fy[:, None], _fade(fy)[:, None]
    n0 = a[ry] + b[ry] * fy_col  # [h, w]
    n1 = a[ry + 1] + b[ry + 1] * (fy_col - 1)
    return n0 + v * (n1 - n0)


def octave_weight(cell: float, pixel: float) -> float:
    """Band limit: 1 for cells of 4+ pixels, 0 below 2 pixels, smooth in between."""
    t = min(max((cell / pixel - 2.0) / 2.0, 0.0), 1.0)
    return t * t * (3 - 2 * t)


def _square_wave_integral(s: np.ndarray) -> np.ndarray:
    whole = np.floor(s)
    return 0.5 * whole + np.minimum(s - whole, 0.5)


def stripes(xs: np.ndarray, ys: np.ndarray, period: float, angle: float, pixel: float) -> np.ndarray:
    """Square wave (duty 1/2) across direction `angle`, box-filtered over one pixel, in [-1, 1]. [h, w]"""
    sx, sy = xs * (math.cos(angle) / period), ys * (math.sin(angle) / period)  # phase in periods, float64
    sx, sy = (sx - np.floor(sx)).astype(np.float32), (sy - np.floor(sy)).astype(np.float32)
    s = sy[:, None] + sx[None, :]  # the wave has period 1, so only the fractional phases matter
    half = np.float32(0.5 * pixel / period)
    mean = (_square_wave_integral(s + half) - _square_wave_integral(s - half)) / (2 * half)
    return (2 * mean - 1).astype(np.float32)


def background(bg, grid: Grid, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Gradient + stripes + multi-octave noise, float32 [h, w, 3] (bg: a scenes.Background)."""
    c, s = math.cos(bg.gradient_angle), math.sin(bg.gradient_angle)
    span = grid.extent_x * abs(c) + grid.extent_y * abs(s)
    tx = ((xs - grid.extent_x / 2) * (c / span)).astype(np.float32)
    ty = ((ys - grid.extent_y / 2) * (s / span) + 0.5).astype(np.float32)
    t = np.clip(ty[:, None] + tx[None, :], 0, 1)
    colour_a = np.asarray(bg.colour_a, dtype=np.float32)
    colour_b = np.asarray(bg.colour_b, dtype=np.float32)
    value = np.zeros(t.shape, dtype=np.float32)
    if bg.stripe_amplitude > 0:
        value += np.float32(bg.stripe_amplitude) * stripes(xs, ys, bg.stripe_period, bg.stripe_angle, grid.pixel)
    for k in range(N_OCTAVES):
        cell = 0.5 / 2**k
        amplitude = bg.noise_amplitude * 2.0 ** (-bg.noise_roughness * k)
        amplitude += bg.grain_amplitude if k >= N_OCTAVES - GRAIN_OCTAVES else 0.0
        weight = octave_weight(cell, grid.pixel) * amplitude
        if weight > 0:
            value += np.float32(weight * PERLIN_GAIN) * perlin(xs, ys, cell, bg.seed * 16 + k)
    return colour_a + t[..., None] * (colour_b - colour_a) + value[..., None]


def _window(lo: float, hi: float, origin: int, n: int, step: float) -> tuple[int, int]:
    """Index range [i0, i1) within [origin, origin + n) of pixels whose centres may lie in [lo, hi]."""
    i0 = max(origin, int(math.floor(lo / step - 0.5)))
    i1 = min(origin + n, int(math.ceil(hi / step + 0.5)) + 1)
    return i0, max(i0, i1)


def coverage(obj: Shape, xs: np.ndarray, ys: np.ndarray, pixel: float) -> np.ndarray:
    """Antialiased coverage in [0, 1] of one object on the grid ys x xs (float32 [h, w])."""
    dx = (xs - obj.cx).astype(np.float32)
    dy = (ys - obj.cy).astype(np.float32)
    inv = np.float32(1.0 / pixel)
    if obj.shape == "circle":
        d = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2) - np.float32(obj.radius)
        return np.clip(0.5 - d * inv, 0, 1)
    total = np.zeros((len(ys), len(xs)), dtype=np.float32)
    for p in obj.pieces:
        d = (p[0, 1] * dy - p[0, 2])[:, None] + (p[0, 0] * dx)[None, :]
        for nx, ny, c in p[1:]:
            np.maximum(d, (ny * dy - c)[:, None] + (nx * dx)[None, :], out=d)
        total += np.clip(0.5 - d * inv, 0, 1)
    return np.minimum(total, 1)


def composite(image: np.ndarray, objects: Sequence[Shape], grid: Grid, top: int, left: int) -> None:
    """Paint objects in order over `image` ([h, w, 3] float32 whose pixel (0, 0) is (top, left)) in place."""
    h, w = image.shape[:2]
    step_x, step_y = grid.extent_x / grid.width, grid.extent_y / grid.height
    for obj in objects:
        reach = obj.radius + 2 * grid.pixel
        r0, r1 = _window(obj.cy - reach, obj.cy + reach, top, h, step_y)
        c0, c1 = _window(obj.cx - reach, obj.cx + reach, left, w, step_x)
        if r1 <= r0 or c1 <= c0:
            continue
        alpha = coverage(obj, grid.xs(c0, c1 - c0), grid.ys(r0, r1 - r0), grid.pixel)[..., None]
        patch = image[r0 - top : r1 - top, c0 - left : c1 - left]
        patch += alpha * (np.asarray(obj.rgb, dtype=np.float32) - patch)


def strips(top: int, height: int, width: int) -> Iterator[tuple[int, int]]:
    """Row ranges (start, stop) covering [top, top + height) with about STRIP_PIXELS pixels each."""
    rows = max(1, STRIP_PIXELS // max(width, 1))
    for start in range(top, top + height, rows):
        yield start, min(start + rows, top + height)


def rasterise(
    bg, objects: Sequence[Shape], grid: Grid, region: tuple[int, int, int, int], as_float: bool = False
) -> np.ndarray:
    """Render `region` = (top, left, h, w) of the grid: uint8 [h, w, 3], or float32 in [0, 1] with `as_float`.

    Works strip by strip, so memory beyond the output stays about STRIP_PIXELS * 64 bytes at any size.
    """
    top, left, h, w = region
    out = np.empty((h, w, 3), dtype=np.float32 if as_float else np.uint8)
    xs = grid.xs(left, w)
    for r0, r1 in strips(top, h, w):
        part = background(bg, grid, xs, grid.ys(r0, r1 - r0))
        composite(part, objects, grid, r0, left)
        np.clip(part, 0, 1, out=part)
        out[r0 - top : r1 - top] = part if as_float else np.rint(part * 255)
    return out
