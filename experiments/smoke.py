"""`+experiment=smoke`: the whole model stack once on random weights (no trained model needed).

Render a toy scene, encode it, blended DDIM inside a centre square, decode, write `smoke.png` with the prompt, seed
and configuration in PNG text chunks. A quick check that an installation works.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from experiments.common import RunContext
from msbd.errors import InputError

USES_MODEL = False                  # builds its own random-weight models


@dataclass
class Params:
    preset: str = "tiny-test"       # an ldm.config preset; its models get random weights
    prompt: str = "a red triangle"
    steps: int = 10
    size: int = 64                  # pixels; a multiple of the VAE factor

    def validate(self) -> None:
        from ldm.config import get_preset
        if self.steps <= 0:
            raise InputError(f"smoke.steps must be positive, got {self.steps}")
        try:
            f = get_preset(self.preset).vae.downsample_factor
        except ValueError as err:
            raise InputError(f"smoke.preset: {err}") from None
        if self.size <= 0 or self.size % f:
            raise InputError(f"smoke.size must be a positive multiple of {f}, got {self.size}")


@torch.inference_mode()
def run(ctx: RunContext, p: Params) -> dict:
    from ldm.config import get_preset
    from ldm.sampling import SamplerConfig, sample
    from msbd.io import save_png_atomic
    from msbd.models import build_bundle, denoiser
    from msbd.toy import scenes
    config = get_preset(p.preset)
    bundle = build_bundle(config, None, dtype=ctx.dtype, device=ctx.device, seed=ctx.seed)
    image = scenes.render(scenes.random_scene(ctx.seed), p.size)                        # [H, W, 3] uint8
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    z_src = bundle.encode(x)
    mask = torch.zeros_like(z_src[:, :1])
    h = z_src.shape[-1]
    mask[..., h // 4: 3 * h // 4, h // 4: 3 * h // 4] = 1
    z = sample(denoiser(bundle), SamplerConfig(num_steps=p.steps, progress=ctx.progress), generators=[torch.Generator().manual_seed(ctx.seed)],
               context=bundle.encode_text([p.prompt]), uncond_context=bundle.encode_text([""]), source=z_src,
               mask=mask)
    pixels = (bundle.decode(z)[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    path = ctx.path("smoke.png")
    save_png_atomic(pixels, path, {"prompt": p.prompt, "seed": str(ctx.seed), "config": f"smoke: {p}"})
    return {"image": str(path)}
