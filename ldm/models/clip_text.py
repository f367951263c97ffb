"""The CLIP ViT-L/14 text transformer that conditions Stable Diffusion v1, with the HF `CLIPTextModel` names.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (2021); SD v1 uses it through
`FrozenCLIPEmbedder` (ALGORITHM.md section 12): token ids [B, 77] -> the last layer's hidden states after the final
LayerNorm, [B, 77, 768], used whole as cross-attention context (no pooling, no penultimate layer). Pre-LayerNorm
blocks with causal self-attention and a quick-GELU MLP. There is no padding mask: pad positions (id 49407) attend
to everything before them, exactly as in SD v1.

Parameter names are those under `cond_stage_model.transformer.` in SD-v1 checkpoints (transformers 4.x layout,
`text_model.embeddings.token_embedding.weight`, ...). Those checkpoints also hold the integer buffer
`text_model.embeddings.position_ids` (= arange(77)); we compute positions on the fly instead, so loaders must skip
that key: it is listed in `IGNORED_KEYS`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IGNORED_KEYS = ("text_model.embeddings.position_ids",)  # checkpoint buffer we do not keep (positions = arange)

_ACTIVATIONS = ("quick_gelu", "gelu")
LAYOUTS = ("transformers", "open_clip")
EOS_TOKEN_ID = 49407


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    max_position_embeddings: int = 77   # context length
    hidden_size: int = 768
    intermediate_size: int = 3072       # MLP width
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"      # x * sigmoid(1.702 x), as OpenAI trained it
    layout: str = "transformers"        # parameter names and module: "transformers" (HF CLIPTextModel, SD 1.x,
    #                                     this file) or "open_clip" (SD 2.x, ldm/models/open_clip_text.py)
    skip_last_layers: int = 0           # blocks of the tower (num_hidden_layers) stored but not run; SD 2.x: 1
    #                                     ("penultimate"), the final LayerNorm still applies
    pad_token_id: int = EOS_TOKEN_ID    # what the tokenizer pads with: EOS for SD 1.x, 0 for SD 2.x (open_clip)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_position_embeddings", "hidden_size", "intermediate_size",
                     "num_hidden_layers", "num_attention_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"CLIPTextConfig: {name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"CLIPTextConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"CLIPTextConfig: layout must be one of {LAYOUTS}, got {self.layout!r}")
        if not 0 <= self.skip_last_layers < self.num_hidden_layers:
            raise ValueError(f"CLIPTextConfig: skip_last_layers must be in [0, num_hidden_layers), got "
                             f"{self.skip_last_layers}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"CLIPTextConfig: pad_token_id must be a token id, got {self.pad_token_id}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"CLIPTextConfig: hidden_act must be one of {_ACTIVATIONS}, got {self.hidden_act!r}")

    @property
    def layers_run(self) -> int:
        """Blocks the encoder builds and runs."""
        return self.num_hidden_layers - self.skip_last_layers


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """The sigmoid approximation of GELU used by OpenAI's CLIP: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


class CLIPTextEmbeddings(nn.Module):
    """Token embedding plus a learned absolute position embedding."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # [T]
        return self.token_embedding(input_ids) + self.position_embedding(positions)  # [B, T, D]


class CLIPAttention(nn.Module):
    """Multi-head causal self-attention with biased q/k/v/out projections, scale head_dim^-1/2."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        D = cfg.hidden_size
        self.q_proj = nn.Linear(D, D)
        self.k_proj = nn.Linear(D, D)
        self.v_proj = nn.Linear(D, D)
        self.out_proj = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        # [B, T, D] -> [B, heads, T, D/heads]
        q, k, v = (proj(x).view(B, T, self.num_heads, -1).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, D)
        return self.out_proj(y)


class CLIPMLP(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.act = quick_gelu if cfg.hidden_act == "quick_gelu" else F.gelu
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LN transformer block: x + attn(LN1(x)), then x + mlp(LN2(x))."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.layers_run))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPTextTransformer(nn.Module):
    """embeddings -> encoder.layers -> final_layer_norm (the `text_model` of HF's CLIPTextModel)."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.final_layer_norm(self.encoder(self.embeddings(input_ids)))


class CLIPTextEncoder(nn.Module):
    """SD-v1 text encoder: input_ids [B, T<=77] (long) -> last hidden state after the final LayerNorm [B, T, D]."""

    def __init__(self, config: CLIPTextConfig | None = None):
        super().__init__()
        self.config = config or CLIPTextConfig()
        if self.config.layout != "transformers":
            raise ValueError(f"CLIPTextEncoder: needs layout='transformers', got {self.config.layout!r} "
                             "(layout 'open_clip' is ldm.models.open_clip_text.OpenCLIPTextEncoder)")
        self.text_model = CLIPTextTransformer(self.config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        check_input_ids("CLIPTextEncoder", input_ids, self.config.max_position_embeddings)
        return self.text_model(input_ids)


def check_input_ids(name: str, input_ids: torch.Tensor, max_positions: int) -> None:
    """Token ids must be an integer [B, T] tensor with T <= max_positions (ValueError naming the encoder)."""
    if input_ids.ndim != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name}: expected integer input_ids [B, T], got {input_ids.dtype} "
                         f"{tuple(input_ids.shape)}")
    if input_ids.shape[1] > max_positions:
        raise ValueError(f"{name}: sequence length {input_ids.shape[1]} exceeds "
                         f"max_position_embeddings={max_positions}")
