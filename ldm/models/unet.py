"""The Stable Diffusion v1 noise-prediction UNet, with the CompVis `openaimodel` parameter names.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (2022); the network is the
ADM UNet of Dhariwal & Nichol (2021) with a SpatialTransformer (self-attention, cross-attention on the text
context, GEGLU feed-forward) after the ResBlocks of the attention levels. The module tree mirrors CompVis
`ldm/modules/diffusionmodules/openaimodel.py` (`input_blocks`, `middle_block`, `output_blocks`, `time_embed`,
`out`, ...), so the `model.diffusion_model.*` entries of an SD-v1 checkpoint load with strict=True once that
prefix is stripped. Layout and numerics: ALGORITHM.md §15. Attention goes through
`F.scaled_dot_product_attention`; GroupNorms compute in fp32 for half-precision inputs (CompVis `GroupNorm32`),
and so do convolutions and linear layers on CPUs without fast half-precision kernels (storage stays half).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4                              # latent channels in
    out_channels: int = 4                             # eps channels out
    model_channels: int = 320                         # width of level 0; the time embedding is 4x this
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)      # width multiplier per level
    num_res_blocks: int = 2                           # ResBlocks per level on the way down (one more going up)
    attention_resolutions: tuple[int, ...] = (4, 2, 1)  # downsampling factors 2**level that get a SpatialTransformer
    num_heads: int = 8                                # attention heads (used when num_head_channels == -1)
    num_head_channels: int = -1                       # channels per head instead of a fixed head count
    transformer_depth: int = 1                        # BasicTransformerBlocks per SpatialTransformer
    context_dim: int = 768                            # width of the text context (CLIP ViT-L/14: 768)
    use_linear_in_transformer: bool = False           # SD-2 style Linear proj_in/proj_out instead of 1x1 convs
    norm_num_groups: int = 32                         # GroupNorm groups everywhere

    def __post_init__(self) -> None:
        # Accept lists (e.g. from YAML) but store tuples, so the config stays hashable and comparable.
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        for name in ("in_channels", "out_channels", "model_channels", "num_res_blocks", "transformer_depth",
                     "context_dim", "norm_num_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"UNetConfig: {name} must be positive, got {getattr(self, name)}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"UNetConfig: channel_mult must be non-empty and positive, got {self.channel_mult}")
        if (self.num_heads == -1) == (self.num_head_channels == -1):
            raise ValueError("UNetConfig: set exactly one of num_heads and num_head_channels (the other to -1), "
                             f"got num_heads={self.num_heads}, num_head_channels={self.num_head_channels}")
        for mult in self.channel_mult:
            ch = mult * self.model_channels
            if ch % self.norm_num_groups:
                raise ValueError(f"UNetConfig: width {ch} is not divisible by norm_num_groups={self.norm_num_groups}")
            self.attention_heads(ch)

    def attention_heads(self, channels: int) -> tuple[int, int]:
        """(heads, channels per head) of a SpatialTransformer at the given width (CompVis, legacy=False)."""
        if self.num_head_channels == -1:
            heads, dim_head = self.num_heads, channels // self.num_heads
        else:
            heads, dim_head = channels // self.num_head_channels, self.num_head_channels
        if heads < 1 or heads * dim_head != channels:
            raise ValueError(f"UNetConfig: width {channels} does not split into heads "
                             f"(num_heads={self.num_heads}, num_head_channels={self.num_head_channels})")
        return heads, dim_head


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of the DDPM timesteps t [B] -> [B, dim] fp32 (ALGORITHM.md §15)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]                        # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)    # [B, 2*half]
    return F.pad(emb, (0, dim % 2))                                 # odd dim: one zero column, as CompVis


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that normalises half-precision inputs in fp32 and casts the result back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


@functools.cache
def _cpu_has_fast_half(dtype: torch.dtype) -> bool:
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def _upcast(x: torch.Tensor) -> bool:
    """True for a bf16/fp16 CPU tensor when oneDNN has no half-precision kernels on this CPU (e.g. AVX2 only):
    PyTorch's fallback convolution and matmul are then 7-300x slower than fp32, so we compute in fp32."""
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16) and not _cpu_has_fast_half(x.dtype)


class Conv2d(nn.Conv2d):
    """nn.Conv2d that computes in fp32 (and casts back) where half precision has no fast kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _upcast(x):
            return super().forward(x)
        bias = None if self.bias is None else self.bias.float()
        return self._conv_forward(x.float(), self.weight.float(), bias).to(x.dtype)


class Linear(nn.Linear):
    """nn.Linear that computes in fp32 (and casts back) where half precision has no fast kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _upcast(x):
            return super().forward(x)
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)


class ResBlock(nn.Module):
    """GN-SiLU-conv, plus the projected time embedding, then GN-SiLU-conv; skip is identity or a 1x1 conv."""

    def __init__(self, in_ch: int, emb_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(groups, in_ch), nn.SiLU(), Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), Linear(emb_ch, out_ch))
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, out_ch), nn.SiLU(),
            nn.Identity(),                                         # dropout 0 in SD v1; keeps index 3 for the conv
            Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.skip_connection = nn.Identity() if in_ch == out_ch else Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)                                      # [B, C_out, H, W]
        h = h + self.emb_layers(emb)[:, :, None, None]             # emb [B, C_emb] -> [B, C_out, 1, 1]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (CompVis key `op`)."""

    def __init__(self, ch: int):
        super().__init__()
        self.op = Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv (CompVis key `conv`)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class CrossAttention(nn.Module):
    """Multi-head attention of x [B, N, C] over context [B, M, C_ctx] (itself when context is None)."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = Linear(query_dim, inner, bias=False)
        self.to_k = Linear(context_dim, inner, bias=False)
        self.to_v = Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([Linear(inner, query_dim)])  # CompVis: Sequential(Linear, Dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        B, N, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:                # [B, L, h*d] -> [B, h, L, d]
            return y.view(B, y.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)             # [B, h, N, d], scale d^-0.5
        out = out.transpose(1, 2).reshape(B, N, -1)                 # [B, N, h*d]
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """Linear C -> 2*C_inner split into value and gate; value * GELU(gate) (exact, erf GELU)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate, approximate="none")


class FeedForward(nn.Module):
    """GEGLU C -> 4C, then Linear 4C -> C (CompVis keys `net.0.proj`, `net.2`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Identity(), Linear(4 * dim, dim))  # [1] was Dropout(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-LN self-attention, cross-attention on the context, and a GEGLU feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm (eps 1e-6), proj_in, transformer blocks over the H*W tokens, proj_out, plus the input."""

    def __init__(self, ch: int, heads: int, dim_head: int, config: UNetConfig):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = config.use_linear_in_transformer
        self.norm = GroupNorm32(config.norm_num_groups, ch, eps=1e-6)
        proj = Linear if self.use_linear else (lambda i, o: Conv2d(i, o, 1))
        self.proj_in = proj(ch, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, config.context_dim) for _ in range(config.transformer_depth)
        )
        self.proj_out = proj(inner, ch)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        h = self.norm(x)
        if not self.use_linear:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(B, H * W, -1)           # [B, HW, C]; a view for channels_last input
        if self.use_linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear:
            h = self.proj_out(h)
        h = h.reshape(B, H, W, -1).permute(0, 3, 1, 2)            # [B, C, H, W] with channels_last strides
        if not self.use_linear:
            h = self.proj_out(h)
        return x + h


class TimestepEmbedSequential(nn.ModuleList):
    """Runs its layers in turn, handing the time embedding to ResBlocks and the context to transformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """eps-prediction UNet: forward(x [B, C_in, H, W], t, context [B, M, context_dim]) -> eps [B, C_out, H, W]."""

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = c = config
        mc, groups = c.model_channels, c.norm_num_groups
        emb_ch = 4 * mc

        def res(in_ch: int, out_ch: int) -> ResBlock:
            return ResBlock(in_ch, emb_ch, out_ch, groups)

        def attn(ch: int) -> SpatialTransformer:
            return SpatialTransformer(ch, *c.attention_heads(ch), c)

        self.time_embed = nn.Sequential(Linear(mc, emb_ch), nn.SiLU(), Linear(emb_ch, emb_ch))

        # 1. Encoder: conv_in, then per level num_res_blocks x (Res [+ ST]) and a Downsample except at the last.
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential([Conv2d(c.in_channels, mc, 3, padding=1)])])
        skip_chs, ch = [mc], mc
        for level, mult in enumerate(c.channel_mult):
            has_attn = 2**level in c.attention_resolutions
            for _ in range(c.num_res_blocks):
                layers = [res(ch, mult * mc)]
                ch = mult * mc
                layers += [attn(ch)] if has_attn else []
                self.input_blocks.append(TimestepEmbedSequential(layers))
                skip_chs.append(ch)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential([Downsample(ch)]))
                skip_chs.append(ch)

        # 2. Bottleneck: Res, ST, Res.
        self.middle_block = TimestepEmbedSequential([res(ch, ch), attn(ch), res(ch, ch)])

        # 3. Decoder: per level (deepest first) num_res_blocks + 1 x (Res over [h, skip] [+ ST]) [+ Upsample].
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            has_attn = 2**level in c.attention_resolutions
            for i in range(c.num_res_blocks + 1):
                layers = [res(ch + skip_chs.pop(), mult * mc)]
                ch = mult * mc
                layers += [attn(ch)] if has_attn else []
                layers += [Upsample(ch)] if level and i == c.num_res_blocks else []
                self.output_blocks.append(TimestepEmbedSequential(layers))

        self.out = nn.Sequential(GroupNorm32(groups, ch), nn.SiLU(), Conv2d(ch, c.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, context: torch.Tensor) -> torch.Tensor:
        """Predict eps. x [B, C_in, H, W] with H, W divisible by 2**(levels-1); t an int, a 0-d or a [B] tensor
        of DDPM timesteps; context [B, M, context_dim]. Computes in the parameters' dtype, returns x's dtype."""
        dtype = self.time_embed[0].weight.dtype
        t = self._timesteps(t, x)
        self._check_inputs(x, context)
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(dtype))  # [B, 4*mc]
        context = context.to(dtype)

        h, skips = x.to(dtype), []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h).to(x.dtype)

    @staticmethod
    def _timesteps(t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """t as a [B] tensor on x's device."""
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"UNetModel: t must be a scalar or have shape [{x.shape[0]}], got {tuple(t.shape)}")
        return t

    def _check_inputs(self, x: torch.Tensor, context: torch.Tensor) -> None:
        c = self.config
        factor = 2 ** (len(c.channel_mult) - 1)
        if x.ndim != 4 or x.shape[1] != c.in_channels or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"UNetModel: x must be [B, {c.in_channels}, H, W] with H, W divisible by {factor}, "
                             f"got {tuple(x.shape)}")
        if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != c.context_dim:
            raise ValueError(f"UNetModel: context must be [{x.shape[0]}, M, {c.context_dim}], got {tuple(context.shape)}")
