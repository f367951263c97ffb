"""The two baselines MSBD is compared against (paper §4): one pass at a larger size, and independent windows.

* `naive`: blended latent diffusion directly at `size` (long edge, larger than native) on the final crop rectangle,
  then bilinear-AA to the crop's full size and pasted inside the mask.
* `segmented`: the final crop cut into native-size windows; every window that contains mask pixels is edited
  independently from the original by blended diffusion at native size (no upscaling; windows are batched as grid
  tiles are, `grid.batch`, each with its own generator); each pixel is taken from
  one window only (the last window of a row or column, shifted in, overlaps its neighbour but gives only the
  pixels its neighbour lacks), then pasted.

Both use the first-stage settings of an `MSBDConfig` (steps, guidance, eta, RePaint) with batch 1 and no
reranking, the same crop plan and the same paste-back, so every pixel outside the mask is kept.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ldm.sampling import sample
from msbd.config import MSBDConfig, resolve_seed
from msbd.crop import Box, plan_crop, to_work_image, to_work_mask
from msbd.mask import binarize, resize_image, resize_mask
from msbd.models import ModelBundle, denoiser
from msbd.inpaint import conditioned_model
from msbd.pipeline import _ceil64, _Counter, _latent_mask, _Run, _sampler_config, generator, grid_batch, paste
from msbd.stitch import grid_tiles


def _setup(image: np.ndarray, mask: np.ndarray, prompt: str, config: MSBDConfig, bundle: ModelBundle):
    config.validate()
    config = dataclasses.replace(config, seed=resolve_seed(config.seed))  # -1: a drawn seed
    image01 = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    mask_bin = binarize(torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None])
    plan = plan_crop(mask_bin[0, 0], config.margin, _ceil64(config.first_stage.size),
                     config.reference_quirks.crop_rule)
    with torch.no_grad():
        cond, uncond = bundle.encode_text([prompt]), bundle.encode_text([""])
    run = _Run(bundle, config, _Counter(denoiser(bundle)), cond, uncond, cond, cond)
    return run, image01, mask_bin, plan, to_work_image(image01, plan), to_work_mask(mask_bin, plan)


def _blended(run: _Run, image: torch.Tensor, mask_px: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
    """Blended DDIM (+ RePaint) from noise, first-stage settings: [K, 3, h, w] in [0, 1], one generator per image
    (K images of one shape go through the VAE and the UNet together; image k depends only on gens[k])."""
    fs = run.config.first_stage
    cfg = _sampler_config(run, fs.steps, fs.strength, repaint_steps=fs.repaint_steps, repaint_jump=fs.repaint_jump)
    model = conditioned_model(run.model, run.bundle, image, mask_px)       # inpainting UNets: [x_t, mask, masked]
    z = sample(model, cfg, generators=gens, context=run.cond, uncond_context=run.uncond,
               source=run.bundle.encode(image * 2 - 1), mask=_latent_mask(run, mask_px))
    return run.bundle.decode(z)


def _snap(size: float, multiple: int) -> int:
    return max(multiple, int(round(size / multiple)) * multiple)


def naive(image: np.ndarray, mask: np.ndarray, prompt: str, config: MSBDConfig, bundle: ModelBundle,
          size: int) -> np.ndarray:
    """Blended diffusion on the final crop at long edge `size`, bilinear to full size, pasted (uint8 [H, W, 3])."""
    run, _, mask_bin, plan, work, work_mask = _setup(image, mask, prompt, config, bundle)
    box = plan.final
    scale = size / max(box.height, box.width)
    m = bundle.size_multiple
    hw = (_snap(box.height * scale, m), _snap(box.width * scale, m))
    crop = resize_image(work[..., *box.slices], hw)
    mask_px = resize_mask(work_mask[..., *box.slices], hw)
    out = _blended(run, crop, mask_px, [generator(run.config.seed, 0, 0)])
    out = resize_image(out, (box.height, box.width)).clamp(0, 1)
    return paste(image, mask_bin, out, box, work, plan, config)


def segmented(image: np.ndarray, mask: np.ndarray, prompt: str, config: MSBDConfig, bundle: ModelBundle
              ) -> np.ndarray:
    """Each native-size window of the final crop that holds mask pixels, edited independently; pasted.

    Every window is edited from the original crop with its own generator (keyed by its position), and each
    pixel comes from exactly one window (`window_cells`): the result does not depend on the order of the windows.
    Where the crop is not a multiple of the native size, the last window of a row or column is shifted in and
    overlaps its neighbour; it contributes only the cells its neighbours do not cover.
    """
    run, _, mask_bin, plan, work, work_mask = _setup(image, mask, prompt, config, bundle)
    box, native = plan.final, config.first_stage.size
    source = work[..., *box.slices]
    out = source.clone()
    crop_mask = work_mask[..., *box.slices]
    pairs = [(win, cell) for win, cell in window_cells(box.height, box.width, native)
             if crop_mask[..., *cell.slices].any()]
    batch = grid_batch(run, (native, native), len(pairs))                 # windows share one shape
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        edited = _blended(run, torch.cat([source[..., *win.slices] for win, _ in chunk]),
                          torch.cat([crop_mask[..., *win.slices] for win, _ in chunk]),
                          [generator(run.config.seed, 0, win.top, win.left) for win, _ in chunk])
        for (win, cell), one in zip(chunk, edited.split(1)):
            out[..., *cell.slices] = one[..., *cell.shift(-win.top, -win.left).slices]
    return paste(image, mask_bin, out, box, work, plan, config)


def window_boxes(height: int, width: int, native: int) -> list[Box]:
    """The windows `segmented` uses for a height x width crop (native-size, no overlap, last ones shifted in)."""
    return grid_tiles(height, width, native, 0, min_tile=native)


def window_cells(height: int, width: int, native: int) -> list[tuple[Box, Box]]:
    """(window, cell) pairs: the cells partition the crop into the native grid [k n, (k+1) n) (the last one
    shorter), and each cell lies in its window (a window shifted in owns only the grid's last, partial cell)."""
    def cell(start: int, length: int) -> tuple[int, int]:
        if start % native == 0:
            return start, min(start + native, length)
        return length // native * native, length  # the shifted-in last window

    pairs = []
    for win in window_boxes(height, width, native):
        (top, bottom), (left, right) = cell(win.top, height), cell(win.left, width)
        pairs.append((win, Box(top, left, bottom, right)))
    return pairs
