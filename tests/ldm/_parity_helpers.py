"""Shared by the parity tests of tests/ldm."""
from __future__ import annotations

import torch


@torch.no_grad()
def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Noise on every parameter, so that norms (init 1) and biases (init 0) are not trivial; returns it in eval."""
    for p in model.parameters():
        p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def diffusers_vae(c):
    """diffusers' AutoencoderKL in the layout of our AutoencoderConfig `c`, perturbed."""
    import diffusers
    n = len(c.ch_mult)
    return perturb(diffusers.AutoencoderKL(
        in_channels=c.in_channels, out_channels=c.out_ch, latent_channels=c.z_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(c.ch * m for m in c.ch_mult), layers_per_block=c.num_res_blocks,
        norm_num_groups=c.norm_num_groups,
    ))
