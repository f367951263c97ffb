"""Mask convention and the image/mask resampling rules of MSBD (ALGORITHM.md §4, §5 dilation).

Masks are float tensors ``[B, 1, H, W]`` with 1 = edit and 0 = keep; the name says the resolution
(`mask_px` at pixel size, `mask_z` at latent size). Images are ``[B, 3, H, W]`` in any range.

The reference resamples in one fixed way everywhere (`interpolate_img_mask`):
* image: bilinear with antialias ("bilinear-AA"), align_corners=False;
* pixel mask: bilinear *without* antialias of the binary mask, then every value > 0 becomes 1;
* latent mask: the same rule applied to the *same source mask* straight to (H'//8, W'//8).
With align_corners=False, output cell i samples the source at (i + 0.5) f - 0.5 (f = downscale factor),
so this is centre sampling, not dilation: thin mask parts can vanish from the latent mask. `dilate_mask`
is the separate, optional dilation (max-pool, equal to the reference's ones-kernel convolution then >= 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LATENT_FACTOR = 8  # SD-v1 VAE downsampling


def binarize(mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Binary float mask: 1 where mask >= threshold (mask in [0, 1]); the reference uses value/255 >= 0.5."""
    return (mask >= threshold).to(torch.float32)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear-AA resize of [B, C, H, W] to size (H', W'); the identity when the size already matches."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """§4 mask rule: bilinear (no antialias) of a [B, 1, H, W] binary mask to size, then > 0 -> 1."""
    out = F.interpolate(mask.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return (out > 0).to(torch.float32)


def latent_size(size: tuple[int, int]) -> tuple[int, int]:
    """Latent (H//8, W//8) of a pixel size."""
    return size[0] // LATENT_FACTOR, size[1] // LATENT_FACTOR


def latent_mask(mask_px: torch.Tensor) -> torch.Tensor:
    """mask_z from a pixel mask at the target size, as `upscale()` derives it (§4 last paragraph)."""
    return resize_mask(mask_px, latent_size(tuple(mask_px.shape[-2:])))


def interpolate_image_mask(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`interpolate_img_mask` (§4): (image at size, mask_px at size, mask_z at size//8).

    image: [B, C, H, W]; mask: [B, 1, H, W] binary. Both masks come straight from the source mask.
    """
    image_out = resize_image(image, size)
    mask_px = resize_mask(mask, size)
    mask_z = resize_mask(mask, latent_size(size))
    return image_out, mask_px, mask_z


def dilate_mask(mask: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Square dilation of a [B, 1, H, W] binary mask by an odd kernel (`get_dilated_mask`); 1 is the identity."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if kernel_size == 1:
        return mask
    return F.max_pool2d(mask.float(), kernel_size, stride=1, padding=kernel_size // 2)


def dilation_kernel_size(progress: float) -> int:
    """Kernel of the reference's progressive dilation (§5): 7, 5, 3, 1 for progress < .25, < .5, < .75, else."""
    for bound, size in ((0.25, 7), (0.5, 5), (0.75, 3)):
        if progress < bound:
            return size
    return 1
