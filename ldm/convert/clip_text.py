"""Key mapping from a transformers `CLIPTextModel` state dict to our `CLIPTextEncoder` (SD-v1 checkpoint names).

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
