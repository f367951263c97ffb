"""The one Hydra entry point: compose the configuration, pick device and dtype, run the chosen experiment.

    python scripts/run.py +experiment=demo

Errors a user can cause (bad config values, bad inputs, missing weights) end in one line on stderr and exit code 2.
"""
from __future__ import annotations

import logging
import os
import sys

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ldm.config import get_preset  # noqa: E402
from ldm.models.autoencoder import AutoencoderKL  # noqa: E402
from ldm.models.clip_text import CLIPTextEncoder  # noqa: E402
from ldm.models.tokenizer import CLIPTokenizer  # noqa: E402
from ldm.models.unet import UNetModel  # noqa: E402
from ldm.sampling import SamplerConfig, guided_model, sample  # noqa: E402
from msbd.errors import InputError  # noqa: E402
from msbd.io import save_png_atomic  # noqa: E402
from msbd.toy import scenes  # noqa: E402

log = logging.getLogger("msbd")


@torch.inference_mode()
def run_smoke(cfg: DictConfig, device: torch.device, dtype: torch.dtype) -> str:
    """Random-weight models of a preset: encode a toy render, blended DDIM in a centre square, decode, save."""
    s = cfg.smoke
    config = get_preset(s.preset)
    f = config.vae.downsample_factor
    if s.size <= 0 or s.size % f:
        raise InputError(f"smoke.size must be a positive multiple of {f}, got {s.size}")
    if s.steps <= 0:
        raise InputError(f"smoke.steps must be positive, got {s.steps}")
    torch.manual_seed(cfg.seed)
    unet = UNetModel(config.unet).to(device, dtype).eval()
    vae = AutoencoderKL(config.vae).to(device, dtype).eval()
    text = CLIPTextEncoder(config.text).to(device, dtype).eval()
    image = scenes.render(scenes.random_scene(cfg.seed), s.size)                        # [H, W, 3] uint8
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    z_src = vae.encode_latent(x.to(device, dtype), config.scale_factor).float()         # [1, 4, h, w]
    mask = torch.zeros_like(z_src[:, :1])
    h = z_src.shape[-1]
    mask[..., h // 4: 3 * h // 4, h // 4: 3 * h // 4] = 1
    ids = CLIPTokenizer()([s.prompt, ""]).to(device)
    context, uncond = text(ids).float().chunk(2)
    model = lambda x_t, t, c: unet(x_t.to(dtype), t, c.to(dtype)).float()  # noqa: E731
    z = sample(model, SamplerConfig(num_steps=s.steps), generators=[torch.Generator().manual_seed(cfg.seed)],
               context=context, uncond_context=uncond, source=z_src, mask=mask)
    out = vae.decode_latent(z.to(dtype), config.scale_factor).float().clamp(-1, 1)
    pixels = ((out[0].permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)
    path = os.path.join(cfg.output_dir, "smoke.png")
    os.makedirs(cfg.output_dir, exist_ok=True)
    save_png_atomic(pixels, path, {"prompt": s.prompt, "seed": str(cfg.seed), "config": OmegaConf.to_yaml(cfg)})
    return path


EXPERIMENTS = {"smoke": run_smoke}


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        if cfg.task not in EXPERIMENTS:
            raise InputError(f"unknown task {cfg.task!r}; known: {', '.join(sorted(EXPERIMENTS))}")
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if cfg.dtype not in dtypes:
            raise InputError(f"dtype must be one of {', '.join(dtypes)}, got {cfg.dtype!r}")
        path = EXPERIMENTS[cfg.task](cfg, torch.device(cfg.device), dtypes[cfg.dtype])
    except (InputError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
