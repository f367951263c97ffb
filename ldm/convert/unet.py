"""Map a `diffusers.UNet2DConditionModel` state dict onto the CompVis names of `ldm.models.unet.UNetModel`.

diffusers groups the UNet by block (`down_blocks.i.{resnets,attentions,downsamplers}`, `mid_block`,
`up_blocks.i.*`); CompVis numbers a flat list (`input_blocks.N.k`, `middle_block.k`, `output_blocks.N.k`). The
numbering follows from `num_res_blocks`, `channel_mult` and `attention_resolutions` of our config, so the mapping
works for any such layout. ResBlock leaves are renamed; transformer leaves share their names, except that the
proj_in/proj_out weights are reshaped between Linear [C, C] and 1x1 conv [C, C, 1, 1] as our config asks.
"""
from __future__ import annotations

import torch

from ldm.models.unet import UNetConfig

_RESNET_LEAVES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _module_map(config: UNetConfig) -> dict[str, tuple[str, str]]:
    """diffusers module prefix -> (our module prefix, kind) with kind in {"plain", "resnet", "attention"}."""
    n, levels = config.num_res_blocks, len(config.channel_mult)
    has_attn = [2**level in config.attention_resolutions for level in range(levels)]
    m = {
        "conv_in": ("input_blocks.0.0", "plain"),
        "time_embedding.linear_1": ("time_embed.0", "plain"),
        "time_embedding.linear_2": ("time_embed.2", "plain"),
        "mid_block.resnets.0": ("middle_block.0", "resnet"),
        "mid_block.attentions.0": ("middle_block.1", "attention"),
        "mid_block.resnets.1": ("middle_block.2", "resnet"),
        "conv_norm_out": ("out.0", "plain"),
        "conv_out": ("out.2", "plain"),
    }
    for level in range(levels):
        for j in range(n):                                  # input_blocks: [conv_in] + per level n blocks + down
            block = 1 + level * (n + 1) + j
            m[f"down_blocks.{level}.resnets.{j}"] = (f"input_blocks.{block}.0", "resnet")
            if has_attn[level]:
                m[f"down_blocks.{level}.attentions.{j}"] = (f"input_blocks.{block}.1", "attention")
        if level != levels - 1:
            m[f"down_blocks.{level}.downsamplers.0.conv"] = (f"input_blocks.{(level + 1) * (n + 1)}.0.op", "plain")
    for i in range(levels):                                 # up_blocks.i is level levels-1-i
        attn = has_attn[levels - 1 - i]
        for j in range(n + 1):
            block = i * (n + 1) + j
            m[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{block}.0", "resnet")
            if attn:
                m[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{block}.1", "attention")
        if i != levels - 1:
            m[f"up_blocks.{i}.upsamplers.0.conv"] = (f"output_blocks.{i * (n + 1) + n}.{2 if attn else 1}.conv", "plain")
    return m


def _proj_weight(w: torch.Tensor, linear: bool) -> torch.Tensor:
    """proj_in/proj_out weight as Linear [O, I] (linear) or 1x1 conv [O, I, 1, 1]."""
    if linear:
        return w[:, :, 0, 0] if w.ndim == 4 else w
    return w[:, :, None, None] if w.ndim == 2 else w


def _map_leaf(leaf: str, kind: str, config: UNetConfig, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    """Rename the part of a key below its module prefix (e.g. `norm1.weight`) and reshape if needed."""
    if kind == "resnet":
        name, _, param = leaf.rpartition(".")
        if name not in _RESNET_LEAVES:
            raise ValueError(f"unet_from_diffusers: unexpected ResBlock parameter {leaf!r}")
        return f"{_RESNET_LEAVES[name]}.{param}", value
    if kind == "attention" and leaf in ("proj_in.weight", "proj_out.weight"):
        return leaf, _proj_weight(value, config.use_linear_in_transformer)
    return leaf, value


def diffusers_unet_kwargs(config: UNetConfig) -> dict:
    """Constructor arguments of a `diffusers.UNet2DConditionModel` with our config's layout (the counterpart this
    mapping reads; diffusers itself is not imported here)."""
    c = config
    attn = [2**level in c.attention_resolutions for level in range(len(c.channel_mult))]
    widths = [m * c.model_channels for m in c.channel_mult]
    # diffusers' `attention_head_dim` is (for this class, by a naming accident) the number of heads per level
    heads = c.num_heads if c.num_head_channels == -1 else tuple(c.attention_heads(w)[0] for w in widths)
    return dict(in_channels=c.in_channels, out_channels=c.out_channels,
                down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
                up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
                block_out_channels=tuple(widths), layers_per_block=c.num_res_blocks,
                cross_attention_dim=c.context_dim, attention_head_dim=heads,
                transformer_layers_per_block=c.transformer_depth, use_linear_projection=c.use_linear_in_transformer,
                norm_num_groups=c.norm_num_groups, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0)


def unet_from_diffusers(state_dict: dict[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    """Return a new state dict with our (CompVis) key names for a diffusers UNet2DConditionModel state dict.

    `config` describes the UNet the weights belong to (it fixes the block numbering). Unknown keys raise a
    ValueError; missing ones are left for `load_state_dict(strict=True)` to report.
    """
    modules = _module_map(config)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        prefix = next((p for p in modules if key.startswith(p + ".")), None)
        if prefix is None:
            raise ValueError(f"unet_from_diffusers: no CompVis counterpart for key {key!r} under {config}")
        target, kind = modules[prefix]
        leaf, value = _map_leaf(key[len(prefix) + 1:], kind, config, value)
        out[f"{target}.{leaf}"] = value
    return out
