"""Inpainting UNets (9 input channels) in MSBD: the conditioning of one diffusion, from a stage's image and mask.

Every diffusion of the pipeline (first stage, stage ladder, grid tiles, both fusions) hands the sampler the plain
model callable when the bundle's UNet is a plain one, and `conditioned_model(...)` when it is an inpainting one:
the same callable with `[mask_z, z_masked]` of that diffusion's own image and mask appended to the latent
(`ldm.sampling.inpaint`, the released models' convention). The known region is still blended after every step, so
every pixel outside the mask stays as with a plain UNet; the inpainting UNet adds that the model sees the known
region whole, at every step, instead of only through the blended latent.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ldm.sampling.inpaint import binarize_mask, inpaint_condition, latent_mask, masked_image, with_inpaint_condition
from msbd.models import ModelBundle, encode_tiled


def bundle_condition(bundle: ModelBundle, image: torch.Tensor, mask_px: torch.Tensor,
                     boxes: Sequence | None = None, overlap_px: int = 0) -> torch.Tensor:
    """[B, 1 + C, h, w] for image [B, 3, H, W] in [0, 1] and mask_px [B or 1, 1, H, W] (1 = edit).

    boxes (pixels): encode the masked image tile by tile (`encode_tiled`, for latent fusion over a large image)."""
    f = bundle.latent_factor
    mask_px = mask_px.to(image.device, torch.float32).expand(image.shape[0], 1, *image.shape[-2:])
    masked = masked_image(image * 2 - 1, mask_px)                      # [-1, 1], masked pixels 0
    if boxes is None:
        z_masked = bundle.encode(masked)
    else:
        z_masked = encode_tiled(bundle, (masked + 1) / 2, boxes, overlap_px)
    mask_z = latent_mask(binarize_mask(mask_px), (image.shape[-2] // f, image.shape[-1] // f))
    return inpaint_condition(mask_z, z_masked)


def conditioned_model(model: Callable, bundle: ModelBundle, image: torch.Tensor, mask_px: torch.Tensor) -> Callable:
    """`model` itself for a plain UNet; for an inpainting UNet, `model` fed [x_t, mask_z, z_masked] of this
    image and mask (image [B, 3, H, W] in [0, 1], one per sample or one for all)."""
    if not bundle.inpainting:
        return model
    return with_inpaint_condition(model, bundle_condition(bundle, image, mask_px))
