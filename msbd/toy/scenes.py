"""Procedural toy scenes: descriptions as data, captions, editing tasks and resolution-independent renders.

Coordinates. A scene has an `aspect` = width / height. World units make the shorter side 1, so the image
spans `[0, extent_x] x [0, extent_y]` with `extent = (aspect, 1)` if aspect >= 1 else `(1, 1 / aspect)`.
Object and mask *positions* are normalised, `(x, y)` in [0, 1]^2 (fractions of width and height, y down);
*sizes* are in short-side units (`SceneObject.size` is the diameter of the object's circumscribed circle),
so shapes never stretch with the aspect.

Palette constraint. Objects use 8 fully saturated colours (HSV S = V = 1, chroma 1, hues 30 degrees or more
apart except red/orange/yellow at 30). Backgrounds are muted: both gradient colours have chroma
(max - min channel) at most `BACKGROUND_MAX_CHROMA` and the texture is grey (it changes the value only), so
any pixel with chroma above ~0.4 belongs to an object and its hue names the colour. The analyser relies on it.

Render: `render(scene, height)` gives uint8 [H, W, 3]; the same scene at 128 px and 8192 px is the same
picture with more detail (see `msbd.toy.raster`), and `region=` renders a crop without the rest. Measured on
2 shared CPU cores (load ~7): 128^2 in ~3 ms, 2048^2 in ~1.1 s, 8192^2 in ~23 s with ~240 MB peak memory.
`python -m msbd.toy.scenes --seed 3 --size 512 out.png` writes one.

Editing tasks: `random_edit_task(seed)` gives a source scene, a mask region (ellipse or rectangle), a prompt
("a red triangle") and the requested object placed inside the mask; `task.target` is the ground-truth scene
and `render_mask(task, h)` the boolean mask (True = edit) on the render's pixel grid.
"""
from __future__ import annotations

import argparse
import colorsys
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from msbd.toy.raster import Grid, Shape, rasterise
from msbd.toy.shapes import SHAPES, check_shape

PALETTE_HUES = {
    "red": 0.0, "orange": 30.0, "yellow": 60.0, "green": 120.0,
    "cyan": 180.0, "blue": 225.0, "purple": 270.0, "magenta": 310.0,
}  # fmt: skip
PALETTE = {
    name: tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue / 360.0, 1.0, 1.0))
    for name, hue in PALETTE_HUES.items()
}  # name -> (r, g, b) uint8
COLOURS = tuple(PALETTE)
BACKGROUND_MAX_CHROMA = 0.2
MIN_SIZE, MAX_SIZE = 0.15, 0.45
MAX_OBJECTS = 3


@dataclass(frozen=True)
class Background:
    """Muted gradient with optional stripes and grey multi-octave noise; `seed` drives the noise lattice."""

    colour_a: tuple[float, float, float] = (0.55, 0.55, 0.55)
    colour_b: tuple[float, float, float] = (0.45, 0.45, 0.45)
    gradient_angle: float = 0.0
    stripe_period: float = 0.05  # short-side units
    stripe_angle: float = 0.0
    stripe_amplitude: float = 0.0  # 0: no stripes
    noise_amplitude: float = 0.04
    noise_roughness: float = 0.25  # octave k has amplitude noise_amplitude * 2**(-roughness * k)
    grain_amplitude: float = 0.0  # added to the three finest octaves (cells 1/512..1/2048 of the short side)
    seed: int = 0

    def __post_init__(self) -> None:
        for colour in (self.colour_a, self.colour_b):
            if len(colour) != 3 or max(colour) - min(colour) > BACKGROUND_MAX_CHROMA + 1e-9:
                raise ValueError(f"background colour {colour} must be RGB with chroma <= {BACKGROUND_MAX_CHROMA}")
        if self.stripe_period <= 0:
            raise ValueError(f"stripe_period must be positive, got {self.stripe_period}")

    @property
    def striped(self) -> bool:
        return self.stripe_amplitude > 0


@dataclass(frozen=True)
class SceneObject:
    """A flat-coloured shape: centre (x, y) normalised, size = circumdiameter in short-side units,
    rotation in radians (clockwise on screen; 0 puts a vertex of a triangle or star straight up)."""

    shape: str
    colour: str
    x: float
    y: float
    size: float
    rotation: float = 0.0

    def __post_init__(self) -> None:
        check_shape(self.shape)
        if self.colour not in PALETTE:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {COLOURS}")
        if self.size <= 0:
            raise ValueError(f"object size must be positive, got {self.size}")

    @property
    def noun(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    aspect: float = 1.0
    background: Background = field(default_factory=Background)
    objects: tuple[SceneObject, ...] = ()

    def __post_init__(self) -> None:
        if not self.aspect > 0:
            raise ValueError(f"aspect must be positive, got {self.aspect}")
        object.__setattr__(self, "objects", tuple(self.objects))

    @property
    def extent(self) -> tuple[float, float]:
        """World size (x, y) of the image; the shorter side is 1."""
        return (self.aspect, 1.0) if self.aspect >= 1 else (1.0, 1.0 / self.aspect)

    def world(self, x: float, y: float) -> tuple[float, float]:
        ex, ey = self.extent
        return x * ex, y * ey

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        bg = d["background"]
        bg = Background(**{**bg, "colour_a": tuple(bg["colour_a"]), "colour_b": tuple(bg["colour_b"])})
        return cls(aspect=d["aspect"], background=bg, objects=tuple(SceneObject(**o) for o in d["objects"]))


def caption(scene: Scene) -> str:
    """'a red triangle', 'a blue circle and a green star on a striped background', 'a plain background'."""
    nouns = [o.noun for o in scene.objects]
    if not nouns:
        return "a striped background" if scene.background.striped else "a plain background"
    text = nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " and " + nouns[-1]
    return text + (" on a striped background" if scene.background.striped else "")


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _muted_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    hue, value = rng.uniform(0, 1), rng.uniform(0.3, 0.85)
    sat = rng.uniform(0, 0.95 * BACKGROUND_MAX_CHROMA) / value
    return tuple(float(c) for c in colorsys.hsv_to_rgb(hue, sat, value))


def random_background(rng: int | np.random.Generator) -> Background:
    rng = _rng(rng)
    striped = rng.uniform() < 0.5
    return Background(
        colour_a=_muted_colour(rng),
        colour_b=_muted_colour(rng),
        gradient_angle=float(rng.uniform(0, 2 * math.pi)),
        stripe_period=float(math.exp(rng.uniform(math.log(1 / 40), math.log(1 / 8)))),
        stripe_angle=float(rng.uniform(0, math.pi)),
        stripe_amplitude=float(rng.uniform(0.04, 0.1)) if striped else 0.0,
        noise_amplitude=float(rng.uniform(0.02, 0.06)),
        noise_roughness=float(rng.uniform(0.1, 0.35)),
        grain_amplitude=float(rng.uniform(0.03, 0.08)),
        seed=int(rng.integers(0, 2**31)),
    )


def _separated(candidate: SceneObject, others: Sequence[SceneObject], scene: Scene, factor: float) -> bool:
    cx, cy = scene.world(candidate.x, candidate.y)
    for o in others:
        ox, oy = scene.world(o.x, o.y)
        if math.hypot(cx - ox, cy - oy) < factor * (candidate.size + o.size) / 2:
            return False
    return True


def random_object(
    rng: np.random.Generator, scene: Scene, size: float | None = None, colour: str | None = None
) -> SceneObject:
    """An object fully inside the image with random shape, colour, size, position and rotation."""
    size = float(rng.uniform(MIN_SIZE, MAX_SIZE)) if size is None else size
    ex, ey = scene.extent
    r = size / 2
    return SceneObject(
        shape=str(rng.choice(SHAPES)),
        colour=str(rng.choice(COLOURS)) if colour is None else colour,
        x=float(rng.uniform(r / ex, 1 - r / ex)),
        y=float(rng.uniform(r / ey, 1 - r / ey)),
        size=size,
        rotation=float(rng.uniform(0, 2 * math.pi)),
    )


def random_scene(seed: int | np.random.Generator, n_objects: int | None = None, aspect: float = 1.0,
                 sizes: tuple[float, float] = (MIN_SIZE, MAX_SIZE)) -> Scene:
    """A scene with `n_objects` (default uniform 0..3) objects that overlap little (centres >= 0.7 radii apart),
    their sizes drawn uniformly from `sizes` (short-side units, at most 1 so that an object fits)."""
    rng = _rng(seed)
    n = int(rng.integers(0, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    if not 0 <= n <= 8:
        raise ValueError(f"n_objects must be in 0..8, got {n}")
    if not 0 < sizes[0] <= sizes[1] <= 1:
        raise ValueError(f"object sizes must satisfy 0 < min <= max <= 1, got {tuple(sizes)}")
    scene = Scene(aspect=aspect, background=random_background(rng))
    objects: list[SceneObject] = []
    while len(objects) < n:
        for attempt in range(200):
            size = rng.uniform(*sizes) * (0.5 ** (attempt // 50))
            candidate = random_object(rng, scene, size=float(size))
            if _separated(candidate, objects, scene, 0.7):
                break
        objects.append(candidate)
    return replace(scene, objects=tuple(objects))


def _check_size(scene: Scene, height: int, width: int | None) -> tuple[int, int]:
    if not isinstance(height, (int, np.integer)) or height < 1:
        raise ValueError(f"height must be a positive integer, got {height!r}")
    expected = max(1, round(height * scene.aspect))
    width = expected if width is None else width
    if not isinstance(width, (int, np.integer)) or abs(width - height * scene.aspect) > 1:
        raise ValueError(f"width {width!r} does not match height {height} at aspect {scene.aspect}")
    return int(height), int(width)


def _check_region(region: Sequence[int] | None, height: int, width: int) -> tuple[int, int, int, int]:
    if region is None:
        return 0, 0, height, width
    top, left, h, w = (int(v) for v in region)
    if h < 1 or w < 1 or top < 0 or left < 0 or top + h > height or left + w > width:
        raise ValueError(f"region {tuple(region)} (top, left, h, w) is not inside the {height}x{width} image")
    return top, left, h, w


def _shapes(scene: Scene) -> list[Shape]:
    out = []
    for o in scene.objects:
        cx, cy = scene.world(o.x, o.y)
        rgb = tuple(c / 255 for c in PALETTE[o.colour])
        out.append(Shape(o.shape, rgb, cx, cy, o.size / 2, o.rotation))
    return out


def render(
    scene: Scene,
    height: int,
    width: int | None = None,
    region: Sequence[int] | None = None,
    as_float: bool = False,
) -> np.ndarray:
    """Render the scene at H x W (W defaults to round(H * aspect)), or only `region` = (top, left, h, w).

    Returns uint8 [h, w, 3] (float32 in [0, 1] with `as_float`). A region equals the crop of the full render.
    """
    height, width = _check_size(scene, height, width)
    top, left, h, w = _check_region(region, height, width)
    grid = Grid(height, width, *scene.extent)
    return rasterise(scene.background, _shapes(scene), grid, (top, left, h, w), as_float)


@dataclass(frozen=True)
class MaskRegion:
    """Edit region: an axis-aligned ellipse or rectangle, centre (x, y) normalised, half-axes in short-side units."""

    kind: str
    x: float
    y: float
    rx: float
    ry: float

    def __post_init__(self) -> None:
        if self.kind not in ("ellipse", "rect"):
            raise ValueError(f"mask kind must be 'ellipse' or 'rect', got {self.kind!r}")
        if self.rx <= 0 or self.ry <= 0:
            raise ValueError(f"mask half-axes must be positive, got {self.rx}, {self.ry}")

    @property
    def inradius(self) -> float:
        """Radius of the largest circle centred in the region (short-side units)."""
        return min(self.rx, self.ry)


@dataclass(frozen=True)
class EditTask:
    """Add `obj` (described by `prompt`) inside `mask` of `source`; the ground truth is `render(task.target)`."""

    source: Scene
    mask: MaskRegion
    obj: SceneObject
    prompt: str

    @property
    def target(self) -> Scene:
        return replace(self.source, objects=self.source.objects + (self.obj,))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source.to_dict(), "mask": asdict(self.mask), "obj": asdict(self.obj), "prompt": self.prompt
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EditTask:
        return cls(Scene.from_dict(d["source"]), MaskRegion(**d["mask"]), SceneObject(**d["obj"]), d["prompt"])


def render_mask(task: EditTask | MaskRegion, height: int, width: int | None = None, aspect: float | None = None,
                region: Sequence[int] | None = None) -> np.ndarray:
    """Boolean edit mask [h, w] (True = edit) of pixels whose centres lie in the region; same grid as `render`."""
    if isinstance(task, EditTask):
        mask, aspect = task.mask, task.source.aspect
    else:
        mask, aspect = task, 1.0 if aspect is None else aspect
    scene = Scene(aspect=aspect)
    height, width = _check_size(scene, height, width)
    top, left, h, w = _check_region(region, height, width)
    grid = Grid(height, width, *scene.extent)
    cx, cy = scene.world(mask.x, mask.y)
    dx = (grid.xs(left, w) - cx)[None, :] / mask.rx
    dy = (grid.ys(top, h) - cy)[:, None] / mask.ry
    if mask.kind == "ellipse":
        return dx**2 + dy**2 <= 1
    return (np.abs(dx) <= 1) & (np.abs(dy) <= 1)


def _overlaps(obj: SceneObject, mask: MaskRegion, scene: Scene, margin: float) -> bool:
    """Whether the object's circumcircle may reach the mask's bounding box grown by `margin`."""
    ox, oy = scene.world(obj.x, obj.y)
    mx, my = scene.world(mask.x, mask.y)
    gap_x = max(abs(ox - mx) - mask.rx, 0.0)
    gap_y = max(abs(oy - my) - mask.ry, 0.0)
    return math.hypot(gap_x, gap_y) < obj.size / 2 + margin


def random_edit_task(
    seed: int | np.random.Generator,
    n_objects: int | None = None,
    aspect: float = 1.0,
    mask_radius: tuple[float, float] = (0.15, 0.3),
    fill: tuple[float, float] = (0.6, 0.85),
) -> EditTask:
    """A source scene (0..2 objects by default), an ellipse/rect mask, and a new object centred in the mask.

    The new object's circumradius is `fill` times the mask's inradius, so it lies inside the mask with a
    margin; its colour differs from every source object that comes near the mask, so inside the mask the
    prompt's colour appears only where the edit put it.
    """
    rng = _rng(seed)
    n = int(rng.integers(0, MAX_OBJECTS)) if n_objects is None else n_objects
    source = random_scene(rng, n_objects=n, aspect=aspect)
    ex, ey = source.extent
    rx, ry = (float(rng.uniform(*mask_radius)) for _ in range(2))
    mask = MaskRegion(
        kind=str(rng.choice(["ellipse", "rect"])),
        x=float(rng.uniform(rx / ex, 1 - rx / ex)),
        y=float(rng.uniform(ry / ey, 1 - ry / ey)),
        rx=rx,
        ry=ry,
    )
    taken = {o.colour for o in source.objects if _overlaps(o, mask, source, 0.05)}
    colour = str(rng.choice([c for c in COLOURS if c not in taken]))
    shape = str(rng.choice(SHAPES))
    size = 2 * mask.inradius * float(rng.uniform(*fill))
    obj = SceneObject(shape, colour, mask.x, mask.y, size, float(rng.uniform(0, 2 * math.pi)))
    return EditTask(source=source, mask=mask, obj=obj, prompt=obj.noun)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a render of a random toy scene to a PNG file.")
    parser.add_argument("out", help="output .png path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=512, help="height in pixels (1..16384)")
    parser.add_argument("--objects", type=int, default=None, help="number of objects (0..3, default random)")
    parser.add_argument("--aspect", type=float, default=1.0, help="width / height (0.25..4)")
    args = parser.parse_args(argv)
    if not 1 <= args.size <= 16384:
        parser.error(f"--size must be in 1..16384, got {args.size}")
    if args.objects is not None and not 0 <= args.objects <= MAX_OBJECTS:
        parser.error(f"--objects must be in 0..{MAX_OBJECTS}, got {args.objects}")
    if not 0.25 <= args.aspect <= 4:
        parser.error(f"--aspect must be in 0.25..4, got {args.aspect}")
    if not args.out.lower().endswith(".png"):
        parser.error(f"output must be a .png file, got {args.out}")
    from PIL import Image

    scene = random_scene(args.seed, n_objects=args.objects, aspect=args.aspect)
    Image.fromarray(render(scene, args.size)).save(args.out)
    print(f"{args.out}: {caption(scene)}")


if __name__ == "__main__":
    main()
