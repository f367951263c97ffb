"""Sizes of the embedded toy world's models: the SD-v1 classes at a few million parameters.

The geometry mirrors Stable Diffusion: 128 px native images, a VAE with downsampling factor 8 and 4 latent
channels (16x16 latents, as SD has 64x64 at 512 px), a UNet with cross-attention at every level but the
deepest, and a CLIP-style causal text transformer over the real CLIP BPE vocabulary: the toy CLIP's text tower,
frozen, as SD v1 uses CLIP ViT-L/14's (`TOY_CLIP_TEXT`, the shipped weights), or one trained jointly with the UNet
from scratch (`TOY_JOINT_TEXT`, train_toy's `ldm.freeze_text=false`).
"""
from __future__ import annotations

import os
from dataclasses import replace

from ldm.config import LDMConfig

from ldm.models.autoencoder import AutoencoderConfig
from ldm.models.clip_text import CLIPTextConfig
from ldm.models.unet import UNetConfig

TOY_IMAGE_SIZE = 128
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
LDM_WEIGHTS = os.path.join(WEIGHTS_DIR, "toy-ldm.safetensors")
LDM_CONFIG = os.path.join(WEIGHTS_DIR, "toy-ldm.json")
CLIP_WEIGHTS = os.path.join(WEIGHTS_DIR, "toy-clip.safetensors")
SR_WEIGHTS = os.path.join(WEIGHTS_DIR, "toy-sr-x4.safetensors")

# The text tower of the toy CLIP (`assets/msbd-toy-clip.json`, text_cfg; open_clip's default GELU): the shipped
# text encoder, on which train_toy (`ldm.freeze_text=true`) conditions the UNet frozen, as SD v1 is on CLIP
# ViT-L/14's (see `clip_model.clip_text_state`).
TOY_CLIP_TEXT = CLIPTextConfig(
    hidden_size=48, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4, hidden_act="gelu",
)
TOY_JOINT_TEXT = CLIPTextConfig(      # ldm.freeze_text=false: a text encoder trained jointly with the UNet from scratch
    hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
)
TOY_VAE = AutoencoderConfig(
    ch=16, ch_mult=(1, 2, 4, 8), num_res_blocks=1, norm_num_groups=8,    # 3 downsamplings: factor 8
)
TOY_UNET = UNetConfig(
    model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=2, attention_resolutions=(1, 2),
    num_heads=-1, num_head_channels=32, context_dim=TOY_CLIP_TEXT.hidden_size, norm_num_groups=32,
)


def toy_ldm_config(scale_factor: float, text: CLIPTextConfig = TOY_CLIP_TEXT, vae: AutoencoderConfig = TOY_VAE,
                   unet: UNetConfig = TOY_UNET) -> LDMConfig:
    """The toy world's LDMConfig; `scale_factor` is measured on the training latents (see train_toy.py). `vae` and
    `unet` default to the shipped sizes (train_toy's `arch` options give others); the UNet's cross-attention is
    sized for `text`."""
    return LDMConfig(unet=replace(unet, context_dim=text.hidden_size), vae=vae, text=text, scale_factor=scale_factor,
                     image_size=TOY_IMAGE_SIZE)


# train_toy's `arch` options (configs/train_toy.yaml) and the shipped sizes they default to
TOY_ARCH = {"latent_channels": 4, "unet_channels": 32, "unet_mult": [1, 2, 4], "unet_res_blocks": 2,
            "unet_head_channels": 32, "unet_norm_groups": 32, "unet_attention": [1, 2]}
_ARCH_LISTS = ("unet_mult", "unet_attention")


def toy_arch(arch: dict, text: CLIPTextConfig = TOY_CLIP_TEXT) -> tuple[AutoencoderConfig, UNetConfig]:
    """(AutoencoderConfig, UNetConfig) of `arch` (keys of TOY_ARCH; missing ones keep the shipped value).

    The VAE keeps its depth (factor 8) and width; its latent channels are the UNet's in and out channels. A
    ValueError (one line) for an unknown key, a value of the wrong type, a UNet deeper than the 16 x 16 latent
    allows, an attention level that is not 2**level of an existing level, or widths that do not split into heads or
    GroupNorm groups (the configs check those)."""
    unknown = sorted(set(arch) - set(TOY_ARCH))
    if unknown:
        raise ValueError(f"arch: unknown option(s) {unknown}; known: {', '.join(TOY_ARCH)}")
    a = {**TOY_ARCH, **arch}
    for key, value in a.items():
        if key in _ARCH_LISTS:
            if (not isinstance(value, (list, tuple)) or not value
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
                raise ValueError(f"arch.{key} must be a non-empty list of positive ints, got {value!r}")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"arch.{key} must be a positive int, got {value!r}")
    latent = TOY_IMAGE_SIZE // 8
    levels = len(a["unet_mult"])
    if latent % 2 ** (levels - 1):
        raise ValueError(f"arch.unet_mult: {levels} levels downsample the {latent} x {latent} latent "
                         f"{2 ** (levels - 1)} times, more than it divides by")
    allowed = [2 ** level for level in range(levels)]
    if any(v not in allowed for v in a["unet_attention"]):
        raise ValueError(f"arch.unet_attention holds downsampling factors 2**level of the UNet's levels, "
                         f"{allowed}; got {list(a['unet_attention'])}")
    c = a["latent_channels"]
    vae = replace(TOY_VAE, z_channels=c, embed_dim=c)
    unet = replace(TOY_UNET, in_channels=c, out_channels=c, model_channels=a["unet_channels"],
                   channel_mult=tuple(a["unet_mult"]), num_res_blocks=a["unet_res_blocks"],
                   num_head_channels=a["unet_head_channels"], norm_num_groups=a["unet_norm_groups"],
                   attention_resolutions=tuple(a["unet_attention"]), context_dim=text.hidden_size)
    return vae, unet
