"""The OpenCLIP ViT-H/14 text tower that conditions Stable Diffusion 2.x, with open_clip's parameter names.

Cherti et al., "Reproducible scaling laws for contrastive language-image learning" (2023, OpenCLIP); SD 2.x calls it
through `FrozenOpenCLIPEmbedder(layer="penultimate")`: token ids [B, 77] (open_clip's tokenizer pads with 0, not
with EOS) -> token + position embedding -> all residual blocks but the last -> the final LayerNorm `ln_final`
-> [B, 77, 1024], used whole as cross-attention context. Pre-LayerNorm blocks with causal self-attention (one
fused `in_proj` for q, k, v, as `nn.MultiheadAttention` stores it) and an exact-GELU MLP.

Parameter names are those under `cond_stage_model.model.` in the Stability checkpoints (`token_embedding.weight`,
`positional_embedding`, `transformer.resblocks.N.attn.in_proj_weight`, ..., `ln_final.weight`), so the file loads
by stripping that prefix. We build only the blocks that run (`num_hidden_layers - skip_last_layers`); the file's
unused last block, `text_projection` and `logit_scale` are listed by `ignored_keys` and skipped by the loader.
The configuration is `CLIPTextConfig` with `layout="open_clip"`.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ldm.models.clip_text import CLIPTextConfig, check_input_ids

PROJECTION_KEYS = ("text_projection", "logit_scale")   # CLIP's contrastive head: stored, not used for SD's context


class OpenCLIPAttention(nn.Module):
    """Causal multi-head self-attention with `nn.MultiheadAttention`'s parameter layout (fused in_proj)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))   # [q; k; v] rows
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)         # [B, T, 3D]
        q, k, v = (y.view(B, T, self.heads, -1).transpose(1, 2) for y in qkv.chunk(3, dim=-1))  # [B, h, T, D/h]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class ResidualAttentionBlock(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x)); the MLP is c_fc -> GELU (exact) -> c_proj."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        D = cfg.hidden_size
        self.ln_1 = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.attn = OpenCLIPAttention(D, cfg.num_attention_heads)
        self.ln_2 = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        act = nn.GELU() if cfg.hidden_act == "gelu" else _QuickGELU()
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(D, cfg.intermediate_size)), ("gelu", act), ("c_proj", nn.Linear(cfg.intermediate_size, D)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Transformer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(cfg) for _ in range(cfg.layers_run))


class OpenCLIPTextEncoder(nn.Module):
    """SD-2 text encoder: input_ids [B, T<=77] (long) -> hidden state after `layers_run` blocks and ln_final."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        if config.layout != "open_clip":
            raise ValueError(f"OpenCLIPTextEncoder: needs layout='open_clip', got {config.layout!r}")
        self.config = cfg = config
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.max_position_embeddings, cfg.hidden_size))
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer = _Transformer(cfg)
        self.ln_final = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        check_input_ids("OpenCLIPTextEncoder", input_ids, self.config.max_position_embeddings)
        x = self.token_embedding(input_ids) + self.positional_embedding[: input_ids.shape[1]]  # [B, T, D]
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_final(x)


BLOCK_LEAVES = (                                       # parameter names inside one ResidualAttentionBlock
    "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
    "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
    "mlp.c_proj.bias",
)


def ignored_keys(config: CLIPTextConfig) -> tuple[str, ...]:
    """Names a Stability checkpoint stores under `cond_stage_model.model.` that the encoder does not use: the
    contrastive head and the blocks after the one whose output SD takes (the last one for `penultimate`)."""
    skipped = [f"transformer.resblocks.{i}.{leaf}" for i in range(config.layers_run, config.num_hidden_layers)
               for leaf in BLOCK_LEAVES]
    return (*PROJECTION_KEYS, *skipped)
