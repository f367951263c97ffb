"""Grid tiles, alpha compositing and the final paste-back of MSBD (ALGORITHM.md §9 and §11).

* `grid_tiles`: the reference's tile layout (`determine_upsampling_split`), row-major, stride tile-overlap,
  short tiles moved back to `min_tile`; `drop_redundant=False` keeps its redundant last tiles.
* `alpha_weights` / `alpha_composite`: per-tile sigmoid ramps (`get_alpha_masks`) and "over" compositing
  in row-major order (`alpha_compose_grid`), in float; `alpha_composite_pil` is the reference's uint8 PIL
  path bit for bit.
* `mask_tiles`: keep only tiles that touch the mask (tiles without mask pixels need no diffusion).
* `fusion_weights`: MultiDiffusion-style per-pixel weights that sum to 1, for fusing tiles in latent space.
* `paste_back`: hard (or inward-feathered) paste of the edited crop into the uint8 original; every pixel
  outside the mask stays byte-identical.

Tiles are `Box`es from `msbd.crop`. Images are float tensors [B, 3, h, w] in [0, 1] unless stated.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from msbd.crop import Box

# 1. Tile layout ------------------------------------------------------------------------------------


def _axis_spans(length: int, tile: int, overlap: int, min_tile: int) -> list[tuple[int, int]]:
    """1-D spans of the reference loop: starts 0, s, 2s, ... (s = tile - overlap); short spans moved back."""
    spans, start = [], 0
    while start < length:
        end = min(length, start + tile)
        if end - start < min_tile:
            start = max(0, end - min_tile)  # the moved start persists for the next increment
        spans.append((start, end))
        start += tile - overlap
    return spans


def _drop_redundant(spans: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """Drop spans emitted after a previous span already reached the end (QUIRK of §9)."""
    kept: list[tuple[int, int]] = []
    for span in spans:
        if kept and kept[-1][1] == length:
            continue
        kept.append(span)
    return kept


def grid_tiles(height: int, width: int, tile: int = 768, overlap: int = 128, min_tile: int = 512,
               drop_redundant: bool = True) -> list[Box]:
    """Tiles of a height x width image in row-major (= compositing) order (§9).

    One tile if both sides are < tile. drop_redundant=False reproduces the reference's extra tiles
    (W mod (tile-overlap) in {64, 128}); e.g. W=1344 -> cols [0,768), [640,1344), [832,1344).
    Deviation: a side shorter than min_tile gives one span [0, side) (the reference's start goes negative).
    """
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    if height < tile and width < tile:
        return [Box(0, 0, height, width)]
    rows = _axis_spans(height, tile, overlap, min_tile)
    cols = _axis_spans(width, tile, overlap, min_tile)
    if drop_redundant:
        rows, cols = _drop_redundant(rows, height), _drop_redundant(cols, width)
    return [Box(r0, c0, r1, c1) for r0, r1 in rows for c0, c1 in cols]


def mask_tiles(boxes: list[Box], mask: np.ndarray | torch.Tensor) -> list[Box]:
    """The tiles that contain at least one mask pixel (mask: [H, W], nonzero = edit), order kept."""
    mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    mask = mask.reshape(mask.shape[-2:])
    return [box for box in boxes if mask[box.slices].any()]


# 2. Alpha compositing ------------------------------------------------------------------------------


def alpha_ramp(overlap: int) -> torch.Tensor:
    """sigmoid(linspace(-5, 5, overlap//2)), float64: 64 values from 0.00669 to 0.99331 for overlap 128."""
    return torch.sigmoid(torch.linspace(-5.0, 5.0, overlap // 2, dtype=torch.float64))


def _tile_alpha(box: Box, height: int, width: int, ramp: torch.Tensor) -> torch.Tensor:
    alpha = torch.ones(box.height, box.width, dtype=torch.float64)
    n = ramp.numel()
    if box.top != 0:
        alpha[:n] *= ramp[:, None]
    if box.left != 0:
        alpha[:, :n] *= ramp[None, :]
    if box.bottom != height:
        alpha[alpha.shape[0] - n:] *= ramp.flip(0)[:, None]
    if box.right != width:
        alpha[:, alpha.shape[1] - n:] *= ramp.flip(0)[None, :]
    return alpha


def alpha_weights(boxes: list[Box], height: int, width: int, overlap: int = 128,
                  quantize: bool = False) -> list[torch.Tensor]:
    """Per-tile alpha [h, w] (float64): 1 inside, ramps on every edge that is not the image border.

    Corners multiply. quantize=True applies the reference's uint8 step, floor(alpha*255)/255.
    """
    ramp = alpha_ramp(overlap)
    alphas = [_tile_alpha(box, height, width, ramp) for box in boxes]
    if quantize:
        alphas = [torch.floor(a * 255) / 255 for a in alphas]
    return alphas


def alpha_composite(tiles: list[torch.Tensor], boxes: list[Box], base: torch.Tensor, overlap: int = 128,
                    quantize: bool = False) -> torch.Tensor:
    """'Over'-composite tiles [B, C, h, w] onto an opaque base [B, C, H, W] in list (row-major) order.

    out = alpha * tile + (1 - alpha) * out, per tile, as the reference's `alpha_compose_grid` (in float).
    """
    out = base.clone()
    alphas = alpha_weights(boxes, base.shape[-2], base.shape[-1], overlap, quantize)
    for tile, box, alpha in zip(tiles, boxes, alphas, strict=True):
        a = alpha.to(out.device, out.dtype)
        region = out[..., box.top:box.bottom, box.left:box.right]
        out[..., box.top:box.bottom, box.left:box.right] = a * tile + (1 - a) * region
    return out


def to_uint8(image: torch.Tensor, truncate: bool = True) -> np.ndarray:
    """[3, H, W] or [1, 3, H, W] float in [0, 1] -> [H, W, 3] uint8 (reference: truncation)."""
    x = image.detach().cpu().double().clamp(0, 1).reshape(-1, *image.shape[-2:]).permute(1, 2, 0) * 255
    x = x.floor() if truncate else (x + 0.5).floor()
    return x.numpy().astype(np.uint8)


def reference_grid_base(low_res: torch.Tensor, height: int, width: int) -> Image.Image:
    """The reference's compositing base: the low-res 01 input as uint8, PIL-resized (bicubic) to the target."""
    return Image.fromarray(to_uint8(low_res)).resize((width, height), Image.Resampling.BICUBIC)


def alpha_composite_pil(tiles: list[torch.Tensor], boxes: list[Box], base: Image.Image,
                        overlap: int = 128) -> torch.Tensor:
    """The reference's uint8 compositing: RGBA tiles (truncated), PIL alpha_composite, back to 01 [1,3,H,W]."""
    canvas = base.convert("RGBA")
    alphas = alpha_weights(boxes, canvas.height, canvas.width, overlap)
    for tile, box, alpha in zip(tiles, boxes, alphas, strict=True):
        rgba = np.concatenate([to_uint8(tile), (alpha.numpy() * 255).astype(np.uint8)[..., None]], axis=-1)
        layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
        layer.paste(Image.fromarray(rgba, "RGBA"), (box.left, box.top))
        canvas = Image.alpha_composite(canvas, layer)
    rgb = np.asarray(canvas.convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


# 3. Fusion weights (MultiDiffusion-style) ----------------------------------------------------------


def _window_1d(start: int, end: int, length: int, overlap: int) -> torch.Tensor:
    """1 inside; a raised-cosine rise/fall over `overlap` px at edges that are not the border, always > 0."""
    w = torch.ones(end - start, dtype=torch.float64)
    n = min(overlap, end - start)
    if n > 0:
        rise = 0.5 - 0.5 * torch.cos(torch.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n)
        if start != 0:
            w[:n] *= rise
        if end != length:
            w[w.numel() - n:] *= rise.flip(0)
    return w


def fusion_weights(boxes: list[Box], height: int, width: int, overlap: int = 128) -> list[torch.Tensor]:
    """Per-tile weights [h, w] (float64) that sum to 1 at every covered pixel (0 tiles -> no weight).

    Each tile gets a separable smooth window (raised cosine over `overlap` at inner edges, strictly
    positive), normalised by the sum over tiles. Use with boxes in latent units for latent fusion.
    """
    windows = [torch.outer(_window_1d(b.top, b.bottom, height, overlap),
                           _window_1d(b.left, b.right, width, overlap)) for b in boxes]
    total = torch.zeros(height, width, dtype=torch.float64)
    for box, w in zip(boxes, windows):
        total[box.slices] += w
    return [w / total[box.slices] for box, w in zip(boxes, windows)]


# 4. Paste-back -------------------------------------------------------------------------------------


def _crop_mask(mask_px: np.ndarray | torch.Tensor, box: Box, image_hw: tuple[int, int]) -> np.ndarray:
    mask = mask_px.detach().cpu().numpy() if isinstance(mask_px, torch.Tensor) else np.asarray(mask_px)
    mask = mask.reshape(mask.shape[-2:]) > 0.5
    if mask.shape == tuple(image_hw):
        return mask[box.slices]
    if mask.shape == (box.height, box.width):
        return mask
    raise ValueError(f"mask_px has shape {mask.shape}; expected the image {image_hw} or the box "
                     f"{(box.height, box.width)}")


def feather_weights(mask: np.ndarray, box: Box, image_hw: tuple[int, int], feather_px: int) -> np.ndarray:
    """Blend weight in [0, 1] for a cropped binary mask: min(1, d / (feather_px + 1)) inside, 0 outside.

    d is the Euclidean distance to the nearest unedited pixel; the crop border counts as unedited
    unless it is the image border. Weights are > 0 exactly on the mask, so nothing outside changes.
    """
    sides = (box.top == 0, box.bottom == image_hw[0], box.left == 0, box.right == image_hw[1])
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    if sides[0]:
        padded[0] = padded[1]
    if sides[1]:
        padded[-1] = padded[-2]
    if sides[2]:
        padded[:, 0] = padded[:, 1]
    if sides[3]:
        padded[:, -1] = padded[:, -2]
    dist = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    return np.where(mask, np.minimum(1.0, dist / (feather_px + 1)), 0.0)


PASTE_ROWS = 256  # rows per strip of paste_back


def paste_back(original: np.ndarray, edited: torch.Tensor, box: Box, mask_px: np.ndarray | torch.Tensor,
               feather_px: int = 0, truncate: bool = False) -> np.ndarray:
    """Paste an edited crop into the uint8 original inside the mask only (§11, tight_stitch).

    original: [H, W, 3] uint8. edited: [3, h, w] or [1, 3, h, w] float in [0, 1], h x w = box size.
    mask_px: binary, full image [H, W] or crop-sized [h, w]. feather_px > 0 blends with the original over
    that many pixels *inside* the mask border. float -> uint8 rounds; truncate=True is the reference.
    Every pixel outside the mask (or outside the box) is byte-identical to `original`.
    """
    if original.dtype != np.uint8 or original.ndim != 3:
        raise ValueError(f"original must be [H, W, 3] uint8, got {original.dtype} {original.shape}")
    if tuple(edited.shape[-2:]) != (box.height, box.width):
        raise ValueError(f"edited crop is {tuple(edited.shape[-2:])}, box is {(box.height, box.width)}")
    image_hw = original.shape[:2]
    mask = _crop_mask(mask_px, box, image_hw)
    weight = feather_weights(mask, box, image_hw, feather_px) if feather_px > 0 else None
    x = edited.detach().cpu().reshape(-1, box.height, box.width)
    out = original.copy()
    target = out[box.slices]                                    # a view: written strip by strip
    for r0 in range(0, box.height, PASTE_ROWS):                 # strips keep the float64 temporaries small
        rows = slice(r0, min(r0 + PASTE_ROWS, box.height))
        m = mask[rows]
        w = weight[rows] if weight is not None else m.astype(np.float64)
        region = target[rows].astype(np.float64)
        xs = x[:, rows].double().clamp(0, 1).permute(1, 2, 0).numpy()
        blended = w[..., None] * xs * 255 + (1 - w[..., None]) * region
        blended = np.floor(blended) if truncate else np.floor(blended + 0.5)
        target[rows] = np.where(m[..., None], np.clip(blended, 0, 255).astype(np.uint8), target[rows])
    return out
