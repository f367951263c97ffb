"""Key mappings from a transformers `CLIPTextModel` state dict to our text encoders: `CLIPTextEncoder` (SD-v1
checkpoint names) and, for SD 2.x, `OpenCLIPTextEncoder` (open_clip names; `open_clip_text_from_transformers`);
and back from an open_clip CLIP's text tower to `CLIPTextEncoder` (`clip_text_from_open_clip`, how a checkpoint
can take its frozen text encoder from a contrastive CLIP file instead of storing a second copy).

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


# --- open_clip text tower -> our CLIPTextEncoder names (the inverse of the above) --------------------------------

_FROM_OPEN_CLIP_TOP = {v: k for k, v in _OPEN_CLIP_TOP.items()}
_FROM_OPEN_CLIP_LEAVES = {v: k for k, v in _OPEN_CLIP_LEAVES.items()}
_OPEN_CLIP_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)")
_OPEN_CLIP_IN_PROJ = re.compile(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)")
_OPEN_CLIP_NOT_TEXT = ("visual.", "text_projection", "logit_scale", "logit_bias", "attn_mask")


def clip_text_from_open_clip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text tower of an open_clip CLIP state dict with our `CLIPTextEncoder` names (`text_model.` + HF names).

    Token and position embeddings, the pre-LN blocks (the fused `attn.in_proj_*` split into q/k/v rows, as
    `nn.MultiheadAttention` stacks them) and the final LayerNorm are kept; the image tower, the text projection and
    the logit scale belong to CLIP's contrastive head and are dropped. Any other key is an error, as is a state dict
    without a text tower.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(_OPEN_CLIP_NOT_TEXT):
            continue
        if key in _FROM_OPEN_CLIP_TOP:
            out[_PREFIX + _FROM_OPEN_CLIP_TOP[key]] = value
        elif match := _OPEN_CLIP_IN_PROJ.fullmatch(key):
            layer, param = match.groups()
            if value.shape[0] % 3:
                raise ValueError(f"clip_text_from_open_clip: {key} has {value.shape[0]} rows, not 3 x width")
            for name, part in zip("qkv", value.chunk(3)):
                out[f"{_PREFIX}encoder.layers.{layer}.self_attn.{name}_proj.{param}"] = part
        elif (match := _OPEN_CLIP_BLOCK.fullmatch(key)) and match.group(2) in _FROM_OPEN_CLIP_LEAVES:
            layer, module, param = match.groups()
            out[f"{_PREFIX}encoder.layers.{layer}.{_FROM_OPEN_CLIP_LEAVES[module]}.{param}"] = value
        else:
            raise ValueError(f"clip_text_from_open_clip: unexpected key {key!r} (not an open_clip text-tower weight)")
    if _PREFIX + "embeddings.token_embedding.weight" not in out:
        raise ValueError("clip_text_from_open_clip: no text tower (token_embedding.weight is missing)")
    return out
