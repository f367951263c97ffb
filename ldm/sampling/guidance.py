"""Classifier-free guidance (Ho & Salimans 2022): combine unconditional and conditional predictions.

`cfg_combine` is the update rule; `guided_model` wraps a plain model callable (x_t, t, context) -> eps into one
that runs the unconditional and conditional halves in a single batched call, ordered [uncond, cond] as in the
reference. The wrapper does not look inside the model, so any callable (a tiled or dtype-casting wrapper) fits.
"""
from __future__ import annotations

from typing import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def cfg_combine(out_uncond: torch.Tensor, out_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_hat = eps_u + s (eps_c - eps_u) (CFG eq. 6 with w = s - 1); also valid for v-predictions (linear)."""
    return out_uncond + scale * (out_cond - out_uncond)


def _expand_batch(context: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat a batch-1 conditioning to `batch`; leave a full batch alone."""
    if context.shape[0] == batch:
        return context
    if context.shape[0] != 1:
        raise ValueError(f"conditioning batch {context.shape[0]} does not match latent batch {batch}")
    return context.expand(batch, *context.shape[1:])


def guided_model(
    model: ModelFn, context: torch.Tensor | None, uncond_context: torch.Tensor | None, scale: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap `model` into eps_fn(x_t, t) with CFG; scale 1 runs only the conditional half (one model call of B).

    context, uncond_context: [B or 1, L, D]. x_t: [B, C, h, w]; t: LongTensor [B].
    """
    if scale != 1.0 and uncond_context is None:
        raise ValueError(f"guidance_scale {scale} needs uncond_context; use guidance_scale=1.0 for no guidance")
    if scale != 1.0 and context is None:
        raise ValueError("classifier-free guidance needs a conditional context")

    def eps_fn_plain(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = None if context is None else _expand_batch(context, x_t.shape[0])
        return model(x_t, t, cond)

    def eps_fn_guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = x_t.shape[0]
        contexts = torch.cat([_expand_batch(uncond_context, batch), _expand_batch(context, batch)])  # [2B, L, D]
        out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), contexts)  # [2B, C, h, w]
        out_uncond, out_cond = out.chunk(2)
        return cfg_combine(out_uncond, out_cond, scale)

    return eps_fn_plain if scale == 1.0 else eps_fn_guided
