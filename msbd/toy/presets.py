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


def toy_unet_config(text: CLIPTextConfig = TOY_CLIP_TEXT) -> UNetConfig:
    """The toy UNet, its cross-attention sized for the text encoder `text`."""
    return replace(TOY_UNET, context_dim=text.hidden_size)


def toy_ldm_config(scale_factor: float, text: CLIPTextConfig = TOY_CLIP_TEXT, vae: AutoencoderConfig = TOY_VAE,
                   unet: UNetConfig = TOY_UNET) -> LDMConfig:
    """The toy world's LDMConfig; `scale_factor` is measured on the training latents (see train_toy.py). `vae` and
    `unet` default to the shipped sizes (train_toy's `arch` options give others); the UNet's cross-attention is
    sized for `text`."""
    return LDMConfig(unet=replace(unet, context_dim=text.hidden_size), vae=vae, text=text, scale_factor=scale_factor,
                     image_size=TOY_IMAGE_SIZE)


def toy_ldm_config_dict(scale_factor: float, text: CLIPTextConfig = TOY_CLIP_TEXT, vae: AutoencoderConfig = TOY_VAE,
                        unet: UNetConfig = TOY_UNET) -> dict:
    return toy_ldm_config(scale_factor, text, vae, unet).to_dict()
