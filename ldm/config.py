"""The configuration of one latent diffusion model: its three networks, latent scale and noise schedule.

`LDMConfig` bundles the UNet, VAE and text-encoder configs with what the CompVis `LatentDiffusion` config adds
around them (`scale_factor`, the scaled-linear beta schedule, the parameterisation, the native image size),
ALGORITHM.md sections 1 and 15. Named presets live in `PRESETS`: "sd-v1" (Stable Diffusion v1.x), "sd-v2"
(SD 2.x 512-base, eps), "sd-v2-768" (SD 2.x 768-v, v-prediction), their inpainting variants "sd-v1-inpainting" and
"sd-v2-inpainting" (UNet with 9 input channels: noisy latent, mask, masked-image latent) and "tiny-test" (a few
hundred thousand parameters, for tests). Other packages add theirs with `register_preset`. `with_inpainting`
switches a config's UNet between the plain and the inpainting input.
`to_dict` / `from_dict` give the JSON form written next to exported weights.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ldm.models.autoencoder import SD_LATENT_SCALE, AutoencoderConfig
from ldm.models.clip_text import CLIPTextConfig
from ldm.models.unet import UNetConfig

PREDICTION_TYPES = ("eps", "v")  # what the UNet predicts: eps (SD 1.x, SD 2.x 512-base) or v (SD 2.x 768-v)


@dataclass(frozen=True)
class LDMConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    text: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    scale_factor: float = SD_LATENT_SCALE   # latent = scale_factor * VAE posterior mean
    beta_start: float = 0.00085             # scaled-linear ("linear" in LDM) betas: sqrt-spaced start ...
    beta_end: float = 0.012                 # ... and end
    num_train_timesteps: int = 1000         # DDPM steps t = 0..num_train_timesteps-1
    prediction_type: str = "eps"            # what the UNet predicts
    image_size: int = 512                   # native image size in pixels (latent size x VAE factor)

    def __post_init__(self) -> None:
        for name, cls in (("unet", UNetConfig), ("vae", AutoencoderConfig), ("text", CLIPTextConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"LDMConfig: {name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        if not (math.isfinite(self.scale_factor) and self.scale_factor > 0):
            raise ValueError(f"LDMConfig: scale_factor must be positive, got {self.scale_factor}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"LDMConfig: need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"LDMConfig: num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"LDMConfig: prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        self._check_consistency()

    def _check_consistency(self) -> None:
        """The three networks must fit together: latent channels, context width, image size."""
        c = self.vae.embed_dim
        if self.unet.in_channels not in (c, inpainting_channels(c)) or self.unet.out_channels != c:
            raise ValueError(f"LDMConfig: UNet in/out channels ({self.unet.in_channels}/{self.unet.out_channels}) "
                             f"must be the VAE latent channels (embed_dim={c}), or in = {inpainting_channels(c)} "
                             "for an inpainting UNet (latent, mask, masked-image latent)")
        if self.unet.context_dim != self.text.hidden_size:
            raise ValueError(f"LDMConfig: UNet context_dim {self.unet.context_dim} must equal the text encoder "
                             f"hidden_size {self.text.hidden_size}")
        if self.image_size <= 0 or self.image_size % self.vae.downsample_factor:
            raise ValueError(f"LDMConfig: image_size must be a positive multiple of the VAE factor "
                             f"{self.vae.downsample_factor}, got {self.image_size}")

    @property
    def inpainting(self) -> bool:
        """True for an inpainting UNet (input: noisy latent, mask, masked-image latent)."""
        return self.unet.in_channels == inpainting_channels(self.vae.embed_dim)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae.downsample_factor

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: VAE factor x UNet downsampling (64 for SD v1)."""
        return self.vae.downsample_factor * 2 ** (len(self.unet.channel_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LDMConfig:
        """Inverse of `to_dict`; missing keys take their defaults, unknown keys raise a ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"LDMConfig.from_dict: expected a dict, got {type(d).__name__}")
        _check_keys("LDMConfig", d, cls)
        kwargs = dict(d)
        for name, sub in (("unet", UNetConfig), ("vae", AutoencoderConfig), ("text", CLIPTextConfig)):
            if name in kwargs:
                if not isinstance(kwargs[name], dict):
                    raise ValueError(f"LDMConfig.from_dict: '{name}' must be a dict, got {type(kwargs[name]).__name__}")
                _check_keys(f"LDMConfig.{name}", kwargs[name], sub)
                kwargs[name] = sub(**kwargs[name])
        return cls(**kwargs)


def inpainting_channels(latent_channels: int) -> int:
    """UNet input channels of an inpainting model: latent + 1 mask channel + masked-image latent (9 for SD)."""
    return 2 * latent_channels + 1


def with_inpainting(config: LDMConfig, inpainting: bool) -> LDMConfig:
    """The same config with a plain (4-channel) or an inpainting (9-channel) UNet input."""
    c = config.vae.embed_dim
    in_channels = inpainting_channels(c) if inpainting else c
    if config.unet.in_channels == in_channels:
        return config
    return dataclasses.replace(config, unet=dataclasses.replace(config.unet, in_channels=in_channels))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _check_keys(where: str, d: dict[str, Any], cls: type) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys: {sorted(known)}")


SD_V1 = LDMConfig()

# Stable Diffusion 2.x (Stability's v2-inference.yaml / v2-inference-v.yaml): the same VAE and schedule, a UNet with
# 64-channel heads, Linear proj_in/proj_out and context 1024, conditioned on the penultimate layer (then ln_final)
# of OpenCLIP ViT-H/14's text tower, whose tokenizer pads with 0.
SD_V2 = LDMConfig(
    unet=UNetConfig(num_heads=-1, num_head_channels=64, context_dim=1024, use_linear_in_transformer=True),
    text=CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                        hidden_act="gelu", layout="open_clip", skip_last_layers=1, pad_token_id=0),
)
SD_V2_768 = dataclasses.replace(SD_V2, prediction_type="v", image_size=768)   # 768-v-ema: v-prediction at 768 px

# A complete LDM small enough for unit tests (about 2M parameters, most of them the 49408-token embedding).
TINY_TEST = LDMConfig(
    unet=UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                    num_heads=4, context_dim=32, norm_num_groups=8),
    vae=AutoencoderConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, norm_num_groups=8),
    text=CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    image_size=32,
)

PRESETS: dict[str, LDMConfig] = {
    "sd-v1": SD_V1, "sd-v1-inpainting": with_inpainting(SD_V1, True),          # sd-v1-5-inpainting
    "sd-v2": SD_V2, "sd-v2-768": SD_V2_768, "sd-v2-inpainting": with_inpainting(SD_V2, True),  # 512-inpainting-ema
    "tiny-test": TINY_TEST,
}


def register_preset(name: str, config: LDMConfig) -> None:
    """Add a named preset (e.g. the toy world's "toy"); re-registering the same name with another config fails."""
    if not isinstance(config, LDMConfig):
        raise ValueError(f"register_preset: expected an LDMConfig, got {type(config).__name__}")
    if name in PRESETS and PRESETS[name] != config:
        raise ValueError(f"register_preset: preset {name!r} already exists with a different config")
    PRESETS[name] = config


def get_preset(name: str) -> LDMConfig:
    """The preset called `name`; an unknown name raises a ValueError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; known: {', '.join(sorted(PRESETS))}") from None
