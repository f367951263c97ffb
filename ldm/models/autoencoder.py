"""The KL-regularised autoencoder (VAE) of Stable Diffusion v1, with the CompVis parameter names.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (2022), the `AutoencoderKL` of
latent-diffusion (`ldm/models/autoencoder.py` + `ldm/modules/diffusionmodules/model.py`), ALGORITHM.md section 15.
The encoder maps an image in [-1, 1] to the moments (mean, log-variance) of a diagonal Gaussian over the latent;
inference uses only the mean. The decoder maps a latent back to an image (no tanh, so values may leave [-1, 1]).
The diffusion model works on latents multiplied by `SD_LATENT_SCALE`; `encode_latent` / `decode_latent` apply it.

Parameter names (`encoder.down.N.block.M.norm1`, `encoder.mid.attn_1.q`, `decoder.up.N.upsample.conv`, ...) are
those of the `first_stage_model.` part of an SD-v1 checkpoint, so that part loads after stripping the prefix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SD_LATENT_SCALE = 0.18215  # `scale_factor` of SD v1: brings the latents to roughly unit variance


@dataclass(frozen=True)
class AutoencoderConfig:
    ch: int = 128                                 # width of the first level
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)       # width multiplier per level; len - 1 downsamplings
    num_res_blocks: int = 2                       # ResnetBlocks per encoder level (the decoder has one more)
    z_channels: int = 4                           # channels of the latent between encoder/decoder and the quant convs
    embed_dim: int = 4                            # channels of the latent the diffusion model sees
    double_z: bool = True                         # encoder outputs mean and log-variance
    in_channels: int = 3                          # RGB in
    out_ch: int = 3                               # RGB out
    attn_resolutions: tuple[int, ...] = ()        # resolutions with extra attention blocks (none in SD v1)
    resolution: int = 256                         # nominal input size; only used to place attn_resolutions
    norm_num_groups: int = 32                     # GroupNorm groups (32 in SD v1; smaller for tiny test models)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"AutoencoderConfig: ch_mult must be non-empty and positive, got {self.ch_mult}")
        for name in ("ch", "num_res_blocks", "z_channels", "embed_dim", "in_channels", "out_ch", "norm_num_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"AutoencoderConfig: {name} must be positive, got {getattr(self, name)}")
        for mult in self.ch_mult:
            if (self.ch * mult) % self.norm_num_groups:
                raise ValueError(f"AutoencoderConfig: width {self.ch * mult} is not divisible by "
                                 f"norm_num_groups={self.norm_num_groups}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (as SD does for fp16), cast back afterwards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def _norm(channels: int, groups: int) -> GroupNorm32:
    return GroupNorm32(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GN, swish, conv3x3, GN, swish, dropout, conv3x3, plus a skip (1x1 `nin_shortcut` if the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels; q, k, v and proj_out are 1x1 convs, scale C^-1/2."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        # [B, C, H, W] -> [B, 1, H*W, C]: one head whose tokens are the pixels; contiguous, so SDPA takes a fused
        # kernel (a last dimension of stride H*W sends it to the math path, which materialises the HW x HW scores)
        q, k, v = (conv(h).reshape(B, 1, C, H * W).transpose(2, 3).contiguous() for conv in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # default scale is C^-1/2
        h = h.transpose(2, 3).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a stride-2 conv3x3 without padding (CompVis; halves H and W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """ResnetBlock, AttnBlock, ResnetBlock at the lowest resolution (`mid.block_1`, `mid.attn_1`, `mid.block_2`)."""

    def __init__(self, channels: int, groups: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups, dropout)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


def _level(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    """One resolution level: `.block` (ResnetBlocks), `.attn` (AttnBlocks, usually empty); resampler added later."""
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attns)
    return level


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn) > 0:
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    """Image [B, in_channels, H, W] -> moments [B, 2*z_channels, H/f, W/f] (f = 2^(levels-1))."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        groups, widths = cfg.norm_num_groups, [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in, res = cfg.ch, cfg.resolution
        for i_level, block_out in enumerate(widths):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, groups, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in, groups))
            level = _level(blocks, attns)
            if i_level != len(widths) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = MidBlock(block_in, groups, cfg.dropout)
        self.norm_out = _norm(block_in, groups)
        z_out = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.conv_out = nn.Conv2d(block_in, z_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent [B, z_channels, h, w] -> image [B, out_ch, h*f, w*f]. `up[i]` mirrors `down[i]`; runs deepest first."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        groups, widths = cfg.norm_num_groups, [cfg.ch * m for m in cfg.ch_mult]
        block_in = widths[-1]
        res = cfg.resolution // cfg.downsample_factor
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = MidBlock(block_in, groups, cfg.dropout)
        levels = []
        for i_level in reversed(range(len(widths))):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, widths[i_level], groups, cfg.dropout))
                block_in = widths[i_level]
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in, groups))
            level = _level(blocks, attns)
            if i_level != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.tail(self.head(z, 0), 0)

    def head(self, z: torch.Tensor, levels: int) -> torch.Tensor:
        """The activations after conv_in, mid and the `levels` coarsest resolution levels (with their upsampling);
        tail(head(z, k), k) == forward(z) for every 0 <= k <= len(up)."""
        self._check_levels(levels)
        return self._run_levels(self.mid(self.conv_in(z)), list(reversed(self.up))[:levels])

    def tail(self, h: torch.Tensor, levels: int) -> torch.Tensor:
        """The rest of `forward` after `head(z, levels)`: the finer levels, norm_out and conv_out."""
        self._check_levels(levels)
        h = self._run_levels(h, list(reversed(self.up))[levels:])
        return self.conv_out(F.silu(self.norm_out(h)))

    @staticmethod
    def _run_levels(h: torch.Tensor, levels: list[nn.Module]) -> torch.Tensor:
        for level in levels:
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return h

    def _check_levels(self, levels: int) -> None:
        if not 0 <= levels <= len(self.up):
            raise ValueError(f"Decoder: levels must be in 0..{len(self.up)}, got {levels}")


class AutoencoderKL(nn.Module):
    """SD-v1 VAE: `encoder` + `quant_conv` give Gaussian moments, `post_quant_conv` + `decoder` give the image."""

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        self.config = cfg = config or AutoencoderConfig()
        if not cfg.double_z:
            raise ValueError("AutoencoderKL: double_z=False leaves no log-variance; the KL autoencoder needs it")
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def _check_image(self, image: torch.Tensor) -> None:
        f = self.config.downsample_factor
        if image.ndim != 4 or image.shape[1] != self.config.in_channels:
            raise ValueError(f"AutoencoderKL: expected image [B, {self.config.in_channels}, H, W], "
                             f"got {tuple(image.shape)}")
        if image.shape[2] % f or image.shape[3] % f:
            raise ValueError(f"AutoencoderKL: H and W must be multiples of {f}, got {tuple(image.shape[2:])}")

    def encode_moments(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, logvar), each [B, embed_dim, H/f, W/f]; logvar clamped to [-30, 20] as in CompVis."""
        self._check_image(image)
        moments = self.quant_conv(self.encoder(image))  # [B, 2*embed_dim, H/f, W/f]
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Posterior mean (unscaled latent) of an image in [-1, 1]: [B, C, H, W] -> [B, embed_dim, H/f, W/f]."""
        return self.encode_moments(image)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image (about [-1, 1], not clamped) from an unscaled latent [B, embed_dim, h, w]."""
        if z.ndim != 4 or z.shape[1] != self.config.embed_dim:
            raise ValueError(f"AutoencoderKL: expected latent [B, {self.config.embed_dim}, h, w], got {tuple(z.shape)}")
        return self.decoder(self.post_quant_conv(z))

    def encode_latent(self, image: torch.Tensor, scale: float = SD_LATENT_SCALE) -> torch.Tensor:
        """The latent the diffusion model works on: scale * posterior mean."""
        return scale * self.encode(image)

    def decode_latent(self, z: torch.Tensor, scale: float = SD_LATENT_SCALE) -> torch.Tensor:
        """Inverse of `encode_latent` (up to the VAE's reconstruction error): decode(z / scale)."""
        return self.decode(z / scale)
