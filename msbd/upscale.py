"""Super-resolution of a stage's input and the low-passed reference of MSBD's upscaling stages (ALGORITHM.md §8).

* `upsample`: the previous result to the stage's target size. `esrgan` runs one pass of a x4 network (Real-ESRGAN
  x4plus or the toy SR, loaded by spandrel, `load_upscaler`), then resizes bilinear-AA to the target (down, or up
  when the stage grows by more than x4), as the reference does;
  `sharpen` is bilinear-AA plus kornia's unsharp mask (11x11, sigma 7, amount 1); `bilinear` / `bicubic` are
  antialiased interpolation.
* `lowpass_reference`: the original crop, blurred to the effective resolution of the upsampled edit ('matching'),
  to half the target ('half') or left sharp ('no').

Images are float [B, 3, H, W] in [0, 1], RGB. Deviation: the reference feeds RGB to `RealESRGANer.enhance`, which
expects BGR, so its network runs with R and B swapped (§14.18); we feed RGB, `swap_channels=True` reproduces it.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F

from msbd.mask import resize_image

UpscalerFn = Callable[[torch.Tensor], torch.Tensor]


def load_upscaler(path: str | os.PathLike) -> UpscalerFn:
    """A x4 super-resolution model from a file (RealESRGAN_x4plus.pth, the toy SR .safetensors) via spandrel."""
    from spandrel import ModelLoader
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"super-resolution weights not found: {path}")
    descriptor = ModelLoader().load_from_file(path)
    if descriptor.scale != 4:
        raise ValueError(f"{path}: expected a x4 super-resolution model, spandrel reports x{descriptor.scale}")
    return descriptor.eval()


@torch.no_grad()
def esrgan_x4(image: torch.Tensor, upscaler: UpscalerFn, swap_channels: bool = False) -> torch.Tensor:
    """One x4 pass: [B, 3, h, w] RGB [0, 1] -> [B, 3, 4h, 4w] clamped to [0, 1]."""
    x = image.flip(1) if swap_channels else image  # reference QUIRK: BGR-trained net fed RGB
    param = next(iter(getattr(upscaler, "model", upscaler).parameters()), None)
    device, dtype = (param.device, param.dtype) if param is not None else (x.device, x.dtype)
    out = upscaler(x.to(device, dtype)).to(image.device, torch.float32).clamp(0, 1)
    return out.flip(1) if swap_channels else out


def upsample(image: torch.Tensor, size: tuple[int, int], mode: str = "esrgan", upscaler: UpscalerFn | None = None,
             swap_channels: bool = False) -> torch.Tensor:
    """The stage input at the target size (H, W); the identity when the size already matches (§8 upscale step 2)."""
    size = tuple(size)
    if tuple(image.shape[-2:]) == size:
        return image
    if mode == "esrgan":
        if upscaler is None:
            raise ValueError("upscale.mode 'esrgan' needs an upscaler (bundle.upscaler / sr weights file)")
        # one x4 pass, then bilinear-AA to the target (down, or up beyond x4), as the reference (outscale=4)
        return resize_image(esrgan_x4(image, upscaler, swap_channels), size).clamp(0, 1)
    if mode == "sharpen":
        import kornia
        x = resize_image(image, size)
        return kornia.filters.unsharp_mask(x, (11, 11), (7.0, 7.0)).clamp(0, 1)
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(image, size=size, mode=mode, align_corners=False, antialias=True).clamp(0, 1)
    raise ValueError(f"unknown upscaling mode {mode!r}; use esrgan, bilinear, bicubic or sharpen")


def lowpass_reference(ref: torch.Tensor, input_hw: tuple[int, int], mode: str = "matching") -> torch.Tensor:
    """Low-pass the reference at the target size (§8 upscale step 3): down to input_hw ('matching') or to half
    the target ('half') with bilinear-AA, then back up; 'no' returns it unchanged."""
    target = tuple(ref.shape[-2:])
    if mode == "no":
        return ref
    if mode == "matching":
        low = tuple(input_hw)
    elif mode == "half":
        low = (target[0] // 2, target[1] // 2)
    else:
        raise ValueError(f"unknown lowpass mode {mode!r}; use matching, half or no")
    return resize_image(resize_image(ref, low), target)
