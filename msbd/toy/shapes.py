"""Geometry of the toy world's object shapes, shared by the renderer and the analyser.

Every shape is centred on its circumcentre and described by its circumradius `radius` (half the object's
`size`). Polygonal shapes are unions of convex pieces; each piece is a stack of half-planes
`nx * X + ny * Y - c <= 0` in coordinates relative to the centre (X to the right, Y downwards). The renderer
turns each piece into an antialiased coverage and sums the pieces (they tile the shape without overlap, so
coverages add like areas); the analyser uses the same pieces as templates.

Shapes: circle, square, triangle (equilateral), star (5 points, inner radius `STAR_INNER_RATIO` of the outer,
fatter than a pentagram so that its points survive at 64 px).
"""
import math
from functools import lru_cache

import numpy as np

SHAPES = ("circle", "square", "triangle", "star")
STAR_INNER_RATIO = 0.5
# Rotational symmetry period of each shape (radians); a circle needs no rotation search.
SYMMETRY = {"circle": 2 * math.pi, "square": math.pi / 2, "triangle": 2 * math.pi / 3, "star": 2 * math.pi / 5}


def check_shape(shape: str) -> None:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def shape_area(shape: str, radius: float) -> float:
    """Area of `shape` with circumradius `radius`."""
    check_shape(shape)
    factor = {
        "circle": math.pi,
        "square": 2.0,
        "triangle": 3 * math.sqrt(3) / 4,
        "star": 5 * STAR_INNER_RATIO * math.sin(math.pi / 5),
    }[shape]
    return factor * radius**2


def _ring(n: int, radius: float, phase: float) -> np.ndarray:
    """`n` points on a circle, the first at angle `phase` measured from 'up' (-Y), clockwise on screen."""
    angles = phase + 2 * math.pi * np.arange(n) / n
    return radius * np.stack([np.sin(angles), -np.cos(angles)], axis=1)  # [n, 2]


def _half_planes(vertices: np.ndarray) -> np.ndarray:
    """Half-planes [K, 3] = (nx, ny, c) of a convex polygon, outward unit normals."""
    centre = vertices.mean(axis=0)
    edges = np.roll(vertices, -1, axis=0) - vertices
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    c = np.einsum("kd,kd->k", normals, vertices)
    outward = np.einsum("kd,d->k", normals, centre) < c
    sign = np.where(outward, 1.0, -1.0)
    return np.concatenate([normals * sign[:, None], (c * sign)[:, None]], axis=1)


def convex_pieces(shape: str, radius: float, rotation: float) -> list[np.ndarray]:
    """The shape as non-overlapping convex pieces, each [K, 3] half-planes; empty list for a circle."""
    check_shape(shape)
    if shape == "circle":
        return []
    if shape == "square":
        return [_half_planes(_ring(4, radius, rotation + math.pi / 4))]
    if shape == "triangle":
        return [_half_planes(_ring(3, radius, rotation))]
    outer = _ring(5, radius, rotation)
    inner = _ring(5, radius * STAR_INNER_RATIO, rotation + math.pi / 5)
    origin = np.zeros(2)
    # Kite k: centre, inner vertex k-1, tip k, inner vertex k. Kites share only the centre-to-inner edges.
    return [_half_planes(np.stack([origin, inner[k - 1], outer[k], inner[k]])) for k in range(5)]


@lru_cache(maxsize=None)
def _unit_pieces(shape: str) -> tuple[np.ndarray, ...]:
    return tuple(convex_pieces(shape, 1.0, 0.0))


def inside(shape: str, radius: float, rotation: float | np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Boolean membership of the points (dx, dy) (relative to the centre) in the shape.

    `rotation` may be an array that broadcasts against dx, dy (e.g. [A, 1] against [N]) to test many at once.
    """
    c, s = np.cos(rotation), np.sin(rotation)
    x0 = (c * dx + s * dy) / radius  # the points rotated back into the unrotated unit shape's frame
    y0 = (c * dy - s * dx) / radius
    if shape == "circle":
        return x0**2 + y0**2 <= 1
    result = np.zeros(x0.shape, dtype=bool)
    for planes in _unit_pieces(shape):
        d = planes[0, 0] * x0 + planes[0, 1] * y0 - planes[0, 2]
        for nx, ny, offset in planes[1:]:
            d = np.maximum(d, nx * x0 + ny * y0 - offset)
        result |= d <= 0
    return result
