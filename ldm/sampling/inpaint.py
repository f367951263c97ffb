"""The input of an inpainting UNet: noisy latent, latent-size mask and masked-image latent, side by side.

The released inpainting models (RunwayML's sd-v1-5-inpainting, Stability's 512-inpainting-ema; Rombach et al. 2022,
the LDM inpainting fine-tune) are the plain UNet with five more input channels, fine-tuned with the conditioning
concatenated along channels in this order: `[x_t (C), mask_z (1), z_masked (C)]`, where `mask_z` is the pixel mask
(1 = repaint) binarised at 0.5 and downsampled to the latent size by nearest-neighbour interpolation, and
`z_masked` is the scaled latent of `image * (mask < 0.5)`: the image in [-1, 1] with the masked pixels set to 0
(mid-grey). diffusers' StableDiffusionInpaintPipeline builds the same; both halves of classifier-free guidance see
the same conditioning. `with_inpaint_condition` wraps a model callable so that the sampler keeps calling it with
the C-channel latent alone.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ldm.sampling.guidance import ModelFn


def binarize_mask(mask_px: torch.Tensor) -> torch.Tensor:
    """1 where mask >= 0.5 (repaint), else 0, as the released models' data pipeline and diffusers do."""
    return (mask_px >= 0.5).to(mask_px.dtype)


def masked_image(image: torch.Tensor, mask_px: torch.Tensor) -> torch.Tensor:
    """The image in [-1, 1] [B, 3, H, W] with the masked pixels (mask >= 0.5) set to 0: image * (mask < 0.5)."""
    return image * (mask_px < 0.5).to(image.dtype)


def latent_mask(mask_px: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Binary pixel mask [B, 1, H, W] -> [B, 1, h, w] by nearest-neighbour downsampling (F.interpolate's default)."""
    return F.interpolate(binarize_mask(mask_px), size=tuple(latent_hw), mode="nearest")


def inpaint_condition(mask_z: torch.Tensor, z_masked: torch.Tensor) -> torch.Tensor:
    """The 1 + C conditioning channels [B, 1 + C, h, w]: mask first, then the masked-image latent."""
    if mask_z.shape[-2:] != z_masked.shape[-2:] or mask_z.shape[1] != 1:
        raise ValueError(f"inpaint_condition: mask [B, 1, h, w] and masked latent [B, C, h, w] must share h, w; "
                         f"got {tuple(mask_z.shape)} and {tuple(z_masked.shape)}")
    return torch.cat([mask_z.to(z_masked.dtype), z_masked], dim=1)


def inpaint_input(x_t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """[x_t, mask_z, z_masked] along channels, [N, 2C + 1, h, w]. cond [B, 1 + C, h, w] is repeated to N = k B
    (classifier-free guidance stacks [uncond half, cond half], each in sample order)."""
    n, b = x_t.shape[0], cond.shape[0]
    if n % b:
        raise ValueError(f"inpaint_input: latent batch {n} is not a multiple of the conditioning batch {b}")
    cond = cond.to(x_t.device, x_t.dtype)
    return torch.cat([x_t, cond.repeat(n // b, 1, 1, 1) if n != b else cond], dim=1)


def with_inpaint_condition(model: ModelFn, cond: torch.Tensor) -> Callable:
    """A model callable (x_t [N, C, h, w], t, context) that runs `model` on `inpaint_input(x_t, cond)`."""

    def inpaint_model(x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        return model(inpaint_input(x_t, cond), t, context)

    return inpaint_model
