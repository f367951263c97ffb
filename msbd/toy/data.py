"""Training data for the toy world's small models: seed splits, render caches and the ×4 degradation pipeline.

Every toy image is a procedural scene drawn from an integer seed (`msbd.toy.scenes`). Training draws its seeds
from `TRAIN_SEEDS` and every evaluation from `HELDOUT_SEEDS`; the two ranges never overlap. A render cache holds
N scenes rendered at one size as a uint8 `.npy` memmap `[N, H, W, 3]` plus their captions; it is written chunk
by chunk and resumes where an interrupted run stopped. The degradation that makes super-resolution inputs follows
the first-order Real-ESRGAN recipe (Wang et al. 2021, sec. 3.1): blur, bicubic ×4 downscale with antialiasing,
Gaussian noise, optional JPEG, then 8-bit quantisation.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

TRAIN_SEEDS = range(0, 10**6)
HELDOUT_SEEDS = range(10**6, 2 * 10**6)
SPLITS = {"train": TRAIN_SEEDS, "heldout": HELDOUT_SEEDS}

# (seed, height, width) -> (uint8 image [H, W, 3], caption)
Renderer = Callable[[int, int, int], "tuple[np.ndarray, str]"]


def seed_range(split: str, n: int, offset: int = 0) -> range:
    """The seeds `offset .. offset + n - 1` of a split ('train' or 'heldout'), checked to stay inside it."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if n < 0 or offset < 0:
        raise ValueError(f"n and offset must be non-negative, got n={n}, offset={offset}")
    full = SPLITS[split]
    if offset + n > len(full):
        raise ValueError(f"{split} split holds {len(full)} seeds; offset {offset} + n {n} runs past it")
    return full[offset:offset + n]


def render_seed(seed: int, height: int, width: int) -> tuple[np.ndarray, str]:
    """Render the scene of `seed` (square scenes when height == width) as uint8 `[H, W, 3]`, with its caption."""
    from msbd.toy import scenes   # imported late: the renderer is an optional dependency of the helpers below

    scene = scenes.random_scene(seed, aspect=width / height)
    image = np.asarray(scenes.render(scene, height, width))
    return to_uint8(image), scenes.caption(scene)


def single_object_renderer(sizes: tuple[float, float]) -> Renderer:
    """A renderer (for `render_cache`) of square scenes with exactly one object whose size is drawn from `sizes`
    (short-side units): the extra text-to-image data of the toy UNet (`data.n_single` in train_toy.yaml)."""
    def render_single(seed: int, height: int, width: int) -> tuple[np.ndarray, str]:
        from msbd.toy import scenes
        scene = scenes.random_scene(seed, n_objects=1, aspect=width / height, sizes=tuple(sizes))
        return to_uint8(np.asarray(scenes.render(scene, height, width))), scenes.caption(scene)
    return render_single


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 images pass through; float images are read as [0, 1] and rounded."""
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"expected a uint8 or float image, got dtype {image.dtype}")
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Render caches
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RenderCache:
    images: np.ndarray     # [N, H, W, 3] uint8, a read-only memmap
    captions: list[str]    # N captions, in seed order
    seeds: range

    def __len__(self) -> int:
        return len(self.seeds)


def cache_path(cache_dir: str, seeds: range, height: int, width: int) -> str:
    """Directory of the cache for `seeds` at `height` x `width` (one directory per seed range and size)."""
    return os.path.join(cache_dir, f"renders_{seeds.start}-{seeds.stop}_{height}x{width}")


def render_cache(cache_dir: str, seeds: range, height: int, width: int | None = None, *, chunk: int = 64,
                 renderer: Renderer | None = None) -> RenderCache:
    """Render the scenes of `seeds` at `height` x `width` into `cache_dir`, reusing whatever is already there.

    A complete cache is returned without rendering anything; a partial one (an interrupted run) is continued from
    its last finished chunk. `renderer` defaults to `render_seed` (the toy scene renderer).
    """
    width = height if width is None else width
    if height < 1 or width < 1 or len(seeds) == 0 or seeds.step != 1:
        raise ValueError(f"need a positive size and a non-empty contiguous seed range, got {height}x{width}, {seeds}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    renderer = render_seed if renderer is None else renderer
    path = cache_path(cache_dir, seeds, height, width)
    os.makedirs(path, exist_ok=True)
    meta = _read_meta(path, seeds, height, width)
    images_file = os.path.join(path, "images.npy")
    if meta["done"] < len(seeds):
        mode = "r+" if os.path.exists(images_file) and meta["done"] > 0 else "w+"
        images = np.lib.format.open_memmap(images_file, mode=mode, dtype=np.uint8,
                                           shape=None if mode == "r+" else (len(seeds), height, width, 3))
        _fill(images, meta, path, seeds, chunk, renderer)
        del images
    images = np.load(images_file, mmap_mode="r")
    return RenderCache(images=images, captions=list(meta["captions"]), seeds=seeds)


def _read_meta(path: str, seeds: range, height: int, width: int) -> dict:
    meta_file = os.path.join(path, "meta.json")
    fresh = {"seed_start": seeds.start, "seed_stop": seeds.stop, "height": height, "width": width,
             "done": 0, "captions": []}
    if not os.path.exists(meta_file):
        return fresh
    with open(meta_file) as f:
        meta = json.load(f)
    if any(meta.get(k) != fresh[k] for k in ("seed_start", "seed_stop", "height", "width")):
        raise ValueError(f"render cache {path} was written for other seeds or another size: {meta_file}")
    return meta


def _fill(images: np.ndarray, meta: dict, path: str, seeds: range, chunk: int, renderer: Renderer) -> None:
    """Render the missing chunks; meta.json is rewritten (atomically) only after a chunk is flushed to disk."""
    height, width = images.shape[1:3]
    bar = tqdm(total=len(seeds), initial=meta["done"], desc=f"render {os.path.basename(path)}", unit="scene")
    while meta["done"] < len(seeds):
        stop = min(meta["done"] + chunk, len(seeds))
        for i in range(meta["done"], stop):
            image, text = renderer(seeds[i], height, width)
            if image.shape != (height, width, 3):
                raise ValueError(f"renderer returned shape {image.shape} for seed {seeds[i]}, "
                                 f"expected {(height, width, 3)}")
            images[i] = to_uint8(image)
            meta["captions"].append(text)
        images.flush()
        meta["done"] = stop
        tmp = os.path.join(path, "meta.json.tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, os.path.join(path, "meta.json"))
        bar.update(stop - bar.n)
    bar.close()


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 `[N, H, W, 3]` -> float `[N, 3, H, W]` in [0, 1]."""
    return torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255.0


def resize_area(image: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bicubic resize with antialiasing (a low-pass before downscaling), `[B, C, H, W]`, not clamped."""
    size = (size, size) if isinstance(size, int) else size
    return F.interpolate(image, size=size, mode="bicubic", antialias=True, align_corners=False)


# ---------------------------------------------------------------------------------------------------------------
# ×4 degradation
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DegradationConfig:
    blur_sigma: tuple[float, float] = (0.0, 1.6)     # Gaussian blur std in HR pixels, uniform; 0 = no blur
    noise_std: tuple[float, float] = (0.0, 0.02)     # Gaussian noise std on the [0, 1] LR image, uniform
    jpeg_prob: float = 0.3                           # probability of a JPEG round trip
    jpeg_quality: tuple[int, int] = (70, 95)         # PIL quality, uniform integer, inclusive
    scale: int = 4
    clean_prob: float = 0.0                          # share of plain bicubic-AA LR (no blur, noise or JPEG)

    def __post_init__(self) -> None:
        for name in ("blur_sigma", "noise_std", "jpeg_quality"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a range 0 <= lo <= hi, got {(lo, hi)}")
        for name in ("jpeg_prob", "clean_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.jpeg_quality[1] > 95 or self.jpeg_quality[0] < 1:
            raise ValueError(f"jpeg_quality must lie in [1, 95], got {self.jpeg_quality}")

    def to_dict(self) -> dict:
        return asdict(self)


# The evaluation LR: the mildest setting of the training distribution, i.e. plain bicubic-AA ×4 + 8-bit rounding.
MILDEST = DegradationConfig(blur_sigma=(0.0, 0.0), noise_std=(0.0, 0.0), jpeg_prob=0.0)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of `[B, C, H, W]` with reflect padding and a radius of 3 sigma; sigma 0 is identity."""
    if sigma <= 0:
        return image
    radius = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(image.dtype)
    c = image.shape[1]
    out = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode one `[3, H, W]` image in [0, 1] with PIL's JPEG at `quality`."""
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality))
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1).float() / 255.0


def degrade(hr: torch.Tensor, rng: np.random.Generator, config: DegradationConfig = DegradationConfig()
            ) -> torch.Tensor:
    """LR input for ×4 SR from one HR image `[3, H, W]` in [0, 1] (H, W divisible by 4): `[3, H/4, W/4]`.

    1. blur with a random sigma; 2. bicubic downscale with antialiasing; 3. Gaussian noise;
    4. with probability `jpeg_prob`, a JPEG round trip; 5. clamp and round to 8 bits (an LR image is a file).
    With probability `clean_prob` steps 1, 3 and 4 are skipped (the evaluation protocol of `msbd.toy.sr_model`).
    """
    if hr.ndim != 3 or hr.shape[0] != 3:
        raise ValueError(f"expected one RGB image [3, H, W], got shape {tuple(hr.shape)}")
    h, w = hr.shape[1:]
    s = config.scale
    if h % s or w % s:
        raise ValueError(f"HR size {h}x{w} is not divisible by the scale {s}")
    sigma = rng.uniform(*config.blur_sigma)
    noise_std = rng.uniform(*config.noise_std)
    use_jpeg = rng.random() < config.jpeg_prob
    quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    noise = torch.from_numpy(rng.standard_normal((3, h // s, w // s)).astype(np.float32))
    if config.clean_prob > 0 and rng.random() < config.clean_prob:   # drawn last: other configs keep their stream
        sigma, noise_std, use_jpeg = 0.0, 0.0, False

    lr = gaussian_blur(hr[None], sigma)
    lr = resize_area(lr, (h // s, w // s))[0]                    # [3, H/4, W/4]
    lr = lr + noise_std * noise
    if use_jpeg:
        lr = jpeg_roundtrip(lr, quality)
    return (lr.clamp(0, 1) * 255).round() / 255


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A `size` x `size` window at a uniform random position of `[H, W, C]`."""
    h, w = image.shape[:2]
    if size > min(h, w):
        raise ValueError(f"crop {size} does not fit in a {h}x{w} image")
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return image[top:top + size, left:left + size]


def object_edge_points(image: np.ndarray, chroma_min: float = 0.4, max_points: int = 256) -> np.ndarray:
    """Up to `max_points` (row, col) positions, evenly spaced in raster order, on the outlines of a render's objects.

    Objects are the saturated pixels (chroma = max - min channel above `chroma_min`, the palette constraint of
    `msbd.toy.scenes`); an outline pixel is an object pixel with a 4-neighbour outside. `[K, 2]` int64, K may be 0.
    """
    rgb = np.asarray(image, dtype=np.int16)
    mask = (rgb.max(axis=-1) - rgb.min(axis=-1)) > chroma_min * 255
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    points = np.argwhere(mask & ~inner)
    if len(points) > max_points:
        points = points[np.linspace(0, len(points) - 1, max_points).round().astype(np.int64)]
    return points.astype(np.int64)


def edge_crop(image: np.ndarray, size: int, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A `size` x `size` window of `[H, W, C]` centred, up to a quarter window of jitter, on one of `points`."""
    h, w = image.shape[:2]
    if size > min(h, w):
        raise ValueError(f"crop {size} does not fit in a {h}x{w} image")
    row, col = points[int(rng.integers(0, len(points)))]
    jitter = rng.integers(-(size // 4), size // 4 + 1, size=2)
    top = int(np.clip(row - size // 2 + jitter[0], 0, h - size))
    left = int(np.clip(col - size // 2 + jitter[1], 0, w - size))
    return image[top:top + size, left:left + size]


class SRPatches(torch.utils.data.Dataset):
    """(LR, HR) patch pairs cut at random from render caches: item i is drawn with the generator seeded (seed, i).

    HR `[3, P, P]`, LR `[3, P/4, P/4]`, both float in [0, 1]. The length is virtual (the number of samples a run
    draws), so every index gives a fresh crop and degradation. With probability `edge_prob` the crop is centred
    (within a quarter patch) on a random point of an object's outline (`object_edge_points`) instead of uniformly:
    at 1024 px most uniform 64 px crops hold background only, while the bicubic error sits at the outlines.
    """

    def __init__(self, caches: list[np.ndarray], patch: int, length: int, seed: int,
                 config: DegradationConfig = DegradationConfig(), edge_prob: float = 0.0):
        if not caches:
            raise ValueError("need at least one render cache")
        if patch % config.scale:
            raise ValueError(f"patch {patch} is not divisible by the scale {config.scale}")
        if not 0.0 <= edge_prob <= 1.0:
            raise ValueError(f"edge_prob must lie in [0, 1], got {edge_prob}")
        self.caches, self.patch, self.length, self.seed, self.config = caches, patch, length, seed, config
        self.weights = np.array([len(c) for c in caches], dtype=np.float64)
        self.weights /= self.weights.sum()
        self.edge_prob = edge_prob
        # per cache, per image: sampled pixel positions on object outlines (only computed when they are used)
        self.edges = [[object_edge_points(im) for im in c] for c in caches] if edge_prob > 0 else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, i))
        c = int(rng.choice(len(self.caches), p=self.weights))
        k = int(rng.integers(0, len(self.caches[c])))
        image = self.caches[c][k]
        points = None if self.edges is None else self.edges[c][k]
        if points is not None and len(points) and rng.random() < self.edge_prob:
            crop = edge_crop(image, self.patch, points, rng)
        else:
            crop = random_crop(image, self.patch, rng)
        hr = images_to_tensor(crop[None])[0]
        return degrade(hr, rng, self.config), hr
