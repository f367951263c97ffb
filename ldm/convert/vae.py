"""Key mapping from the diffusers `AutoencoderKL` state dict to ours (CompVis names, no `first_stage_model.` prefix).

diffusers numbers the decoder levels from the deepest (`decoder.up_blocks.0` is our `decoder.up.{L-1}`), names the
mid-block layers by list position, and implements the mid attention with Linear layers where CompVis uses 1x1
convs, so those weights gain two trailing unit dimensions. Both the current attention names (`to_q`, `to_k`,
`to_v`, `to_out.0`, `group_norm`) and the pre-0.14 ones (`query`, `key`, `value`, `proj_attn`) are accepted.
Block counts are read from the keys, so any depth and width work.
"""
from __future__ import annotations

import re

import torch

_RESNET = {"conv_shortcut": "nin_shortcut", "norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2"}
_ATTN = {
    "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
    "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out",
}
_TOP = {"conv_in": "conv_in", "conv_norm_out": "norm_out", "conv_out": "conv_out"}


def _num_up_levels(state_dict: dict[str, torch.Tensor]) -> int:
    levels = {int(m.group(1)) for k in state_dict if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))}
    if not levels:
        raise ValueError("vae_from_diffusers: no 'decoder.up_blocks.N.' keys; is this a diffusers AutoencoderKL?")
    return max(levels) + 1


def _map_module(path: str, num_up: int) -> str:
    """diffusers module path inside encoder/decoder (no leaf) -> ours."""
    if path in _TOP:
        return _TOP[path]
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", path):
        kind, level, block, layer = m.groups()
        level = int(level) if kind == "down" else num_up - 1 - int(level)
        return f"{kind}.{level}.block.{block}.{_RESNET[layer]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", path):
        return f"down.{m.group(1)}.downsample.conv"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", path):
        return f"up.{num_up - 1 - int(m.group(1))}.upsample.conv"
    if m := re.fullmatch(r"mid_block\.resnets\.([01])\.(\w+)", path):
        return f"mid.block_{int(m.group(1)) + 1}.{_RESNET[m.group(2)]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", path):
        return f"mid.attn_1.{_ATTN[m.group(1)]}"
    raise KeyError(path)


def _map_key(key: str, num_up: int) -> str:
    module, leaf = key.rsplit(".", 1)
    if module in ("quant_conv", "post_quant_conv"):
        return key
    side, _, path = module.partition(".")
    if side not in ("encoder", "decoder"):
        raise KeyError(key)
    return f"{side}.{_map_module(path, num_up)}.{leaf}"


def vae_from_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a new state dict with our names; 2-D mid-attention weights become [C, C, 1, 1] conv kernels."""
    num_up = _num_up_levels(state_dict)
    out = {}
    for key, value in state_dict.items():
        try:
            new_key = _map_key(key, num_up)
        except KeyError:
            raise ValueError(f"vae_from_diffusers: unexpected key {key!r}") from None
        if ".mid.attn_1." in new_key and new_key.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)  # Linear [C_out, C_in] -> conv1x1 [C_out, C_in, 1, 1]
        out[new_key] = value
    return out
