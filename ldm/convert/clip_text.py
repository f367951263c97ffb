"""Key mappings from a transformers `CLIPTextModel` state dict to our text encoders: `CLIPTextEncoder` (SD-v1
checkpoint names) and, for SD 2.x, `OpenCLIPTextEncoder` (open_clip names; `open_clip_text_from_transformers`).

Our names are the transformers 4.x ones: `text_model.embeddings.token_embedding.weight`, ... transformers 5.x
dropped the `text_model.` level from `CLIPTextModel.state_dict()` (`embeddings.token_embedding.weight`, ...) and no
longer stores the `embeddings.position_ids` buffer. The layout is detected from the keys; the position_ids
buffer, when present, is dropped (we compute positions; see `ldm.models.clip_text.IGNORED_KEYS`).
"""
from __future__ import annotations

import re

import torch

_PREFIX = "text_model."
_POSITION_IDS = "embeddings.position_ids"
_VALID = re.compile(
    r"embeddings\.(token_embedding|position_embedding)\.weight"
    r"|encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|layer_norm1|layer_norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
    r"|final_layer_norm\.(weight|bias)"
)


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without `text_model.`, whichever layout came in (4.x: all prefixed; 5.x: none prefixed)."""
    prefixed = [k.startswith(_PREFIX) for k in state_dict]
    if any(prefixed) and not all(prefixed):
        raise ValueError("clip_text_from_transformers: keys mix the 4.x ('text_model.') and 5.x layouts")
    return {k.removeprefix(_PREFIX): v for k, v in state_dict.items()}


def clip_text_from_transformers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a new dict with our keys (`text_model.` + HF text-model names), without the position_ids buffer."""
    if not state_dict:
        raise ValueError("clip_text_from_transformers: empty state dict")
    out = {}
    for key, value in _strip_prefix(state_dict).items():
        if key == _POSITION_IDS:
            continue
        if not _VALID.fullmatch(key):
            raise ValueError(f"clip_text_from_transformers: unexpected key {key!r} (not a CLIPTextModel weight)")
        out[_PREFIX + key] = value
    return out


# --- SD 2.x: transformers CLIPTextModel -> open_clip names (ldm.models.open_clip_text) -----------------------

_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_OPEN_CLIP_LEAVES = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
}
_OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias",
}


def open_clip_text_from_transformers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel state dict (diffusers' SD 2.x `text_encoder/`) with open_clip names.

    q/k/v projections are stacked into `attn.in_proj_weight` / `in_proj_bias` rows [q; k; v], as
    `nn.MultiheadAttention` stores them. diffusers' SD 2.x text encoder holds only the 23 blocks SD runs (its
    config says num_hidden_layers=23), so the result has no block 23 and no text_projection; the loader needs
    neither (see `ldm.models.open_clip_text.ignored_keys`).
    """
    hf = clip_text_from_transformers(state_dict)             # validates names, drops position_ids
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in hf.items():
        key = key.removeprefix(_PREFIX)
        if key in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[key]] = value
            continue
        layer, rest = _LAYER.fullmatch(key).groups()         # every other valid key is a layer key
        module, param = rest.rsplit(".", 1)
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((int(layer), param), {})[module[-6]] = value
        else:
            out[f"transformer.resblocks.{layer}.{_OPEN_CLIP_LEAVES[module]}.{param}"] = value
    for (layer, param), parts in qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise ValueError(f"open_clip_text_from_transformers: layer {layer} lacks some of q/k/v_proj.{param}")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat([parts[c] for c in "qkv"])
    return out
