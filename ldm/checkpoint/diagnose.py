"""Checks of a checkpoint against a config: strict key report with likely causes, schedule buffers, family guess.

Mismatches most often come from a file of another model family: SD 2.x (OpenCLIP text encoder under
`cond_stage_model.model.`, cross-attention context 1024), an inpainting UNet (9 input channels: latent, mask,
masked-image latent), or a full-EMA training file whose UNet is stored only as `model_ema.*` copies. The error
message names the first few offending keys and the cause it recognises, on one line.
"""
from __future__ import annotations

import torch

from ldm.checkpoint.components import (
    COMPONENTS, PREFIXES, KeyReport, compare_keys, expected_shapes, has_ema, partition,
)
from ldm.checkpoint.errors import CheckpointError
from ldm.config import LDMConfig
from ldm.sampling.schedule import alphas_cumprod, scaled_linear_betas

SHOW = 3                                       # names listed per kind of mismatch
_UNET_IN = PREFIXES["unet"] + "input_blocks.0.0.weight"
_TEXT_EMB = PREFIXES["text"] + "text_model.embeddings.token_embedding.weight"
_OPENCLIP_PREFIX = "cond_stage_model.model."   # SD 2.x FrozenOpenCLIPEmbedder


def _first(names: list[str], prefix: str = "") -> str:
    shown = ", ".join(prefix + n for n in names[:SHOW])
    return f"[{shown}{', ...' if len(names) > SHOW else ''}]"


def _context_dim(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Cross-attention context width of the UNet in the file (from any attn2.to_k weight)."""
    for key, value in state_dict.items():
        if key.endswith("attn2.to_k.weight") and value.ndim == 2:
            return int(value.shape[1])
    return None


def likely_causes(state_dict: dict[str, torch.Tensor], config: LDMConfig, use_ema: bool = False) -> list[str]:
    """Human-readable reasons why a CompVis-layout dict would not fit `config`."""
    causes = []
    ctx = _context_dim(state_dict)
    text_emb = state_dict.get(_TEXT_EMB)
    if any(k.startswith(_OPENCLIP_PREFIX) for k in state_dict) or (ctx == 1024 and config.unet.context_dim != 1024):
        causes.append("an SD 2.x file (OpenCLIP text encoder, context_dim 1024) given to an SD 1.x config")
    elif ctx is not None and ctx != config.unet.context_dim:
        causes.append(f"a UNet with context_dim {ctx} (config: {config.unet.context_dim})")
    if text_emb is not None and text_emb.ndim == 2 and text_emb.shape[1] != config.text.hidden_size:
        causes.append(f"a text encoder of width {text_emb.shape[1]} (config: {config.text.hidden_size})")
    unet_in = state_dict.get(_UNET_IN)
    if unet_in is not None and unet_in.ndim == 4 and unet_in.shape[1] != config.unet.in_channels:
        kind = "an inpainting UNet" if unet_in.shape[1] == 9 else "a UNet"
        causes.append(f"{kind} with {unet_in.shape[1]} input channels (config: {config.unet.in_channels})")
    if not use_ema and has_ema(state_dict) and not any(k.startswith(PREFIXES["unet"]) for k in state_dict):
        causes.append("an EMA-only file: the UNet is stored only as model_ema.* copies, pass use_ema=True")
    return causes


def _describe(component: str, report: KeyReport) -> str:
    prefix, parts = PREFIXES[component], []
    if report.missing:
        parts.append(f"{len(report.missing)} missing {_first(report.missing, prefix)}")
    if report.unexpected:
        parts.append(f"{len(report.unexpected)} unexpected {_first(report.unexpected, prefix)}")
    if report.mismatched:
        shown = ", ".join(f"{prefix}{k} {list(got)} vs {list(want)}" for k, got, want in report.mismatched[:SHOW])
        more = ", ..." if len(report.mismatched) > SHOW else ""
        parts.append(f"{len(report.mismatched)} with another shape (file vs config) [{shown}{more}]")
    return f"{component}: " + ", ".join(parts)


def key_reports(state_dict: dict[str, torch.Tensor], config: LDMConfig, components: tuple[str, ...] = COMPONENTS,
                use_ema: bool = False) -> tuple[dict[str, KeyReport], list[str]]:
    """Per-component key reports, and the checkpoint keys that belong to no component."""
    part = partition(state_dict, config, use_ema)
    reports = {c: compare_keys(part.components[c], expected_shapes(config, c)) for c in components}
    return reports, part.unexpected


def describe_mismatches(state_dict: dict[str, torch.Tensor], config: LDMConfig,
                        components: tuple[str, ...] = COMPONENTS, use_ema: bool = False) -> list[str]:
    """One phrase per component (and for stray keys) that does not fit the config; empty if all fit."""
    reports, other = key_reports(state_dict, config, components, use_ema)
    problems = [_describe(c, r) for c, r in reports.items() if not r.ok]
    if other:
        problems.append(f"{len(other)} keys of no component {_first(other)}")
    for c, r in reports.items():
        if r.missing and len(r.missing) == len(expected_shapes(config, c)) and not (r.unexpected or r.mismatched):
            problems.append(f"the file has no {c} weights (no '{PREFIXES[c]}*' keys)")
    return problems


def check_keys(state_dict: dict[str, torch.Tensor], config: LDMConfig, components: tuple[str, ...] = COMPONENTS,
               use_ema: bool = False, source: str = "checkpoint", config_name: str = "the config") -> None:
    """Raise one CheckpointError listing missing/unexpected/mis-shaped weights and the likely cause."""
    problems = describe_mismatches(state_dict, config, components, use_ema)
    if not problems:
        return
    causes = likely_causes(state_dict, config, use_ema)
    hint = ("likely " + " and ".join(causes)) if causes else \
        "check that file and config are the same model family (python -m ldm.checkpoint inspect FILE)"
    raise CheckpointError(f"{source} does not fit {config_name}: {'; '.join(problems)}; {hint}")


def schedule_rtol(dtype: torch.dtype) -> float:
    """Relative tolerance for a stored alpha-bar: float64 values rounded to `dtype` (fp32 1e-6, fp16 2e-3)."""
    return max(1e-6, 2 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-6


def check_schedule(state_dict: dict[str, torch.Tensor], config: LDMConfig, source: str = "checkpoint") -> float | None:
    """Compare a stored `alphas_cumprod` with the config's; return the max relative error (None if not stored)."""
    stored = state_dict.get("alphas_cumprod")
    if stored is None:
        return None
    ours = alphas_cumprod(scaled_linear_betas(config.beta_start, config.beta_end, config.num_train_timesteps))
    if tuple(stored.shape) != tuple(ours.shape):
        raise CheckpointError(f"{source} stores alphas_cumprod of shape {list(stored.shape)} but the config has "
                              f"num_train_timesteps={config.num_train_timesteps}")
    rel = ((stored.double() - ours).abs() / ours).max().item()
    if not rel <= schedule_rtol(stored.dtype):                # `not <=` also catches NaN
        t = int(((stored.double() - ours).abs() / ours).argmax())
        raise CheckpointError(
            f"{source} was trained with another noise schedule: stored alphas_cumprod[{t}] = {stored[t].item():.6g}, "
            f"config gives {ours[t].item():.6g} (scaled-linear betas {config.beta_start}..{config.beta_end}, "
            f"{config.num_train_timesteps} steps; max relative error {rel:.2g})")
    return rel


def guess_family(state_dict: dict[str, torch.Tensor]) -> str:
    """A short description of the model family the keys and shapes look like."""
    has_unet = any(k.startswith(PREFIXES["unet"]) for k in state_dict)
    ctx = _context_dim(state_dict)
    text_emb = state_dict.get(_TEXT_EMB)
    width = int(text_emb.shape[1]) if text_emb is not None and text_emb.ndim == 2 else None
    unet_in = state_dict.get(_UNET_IN)
    in_ch = int(unet_in.shape[1]) if unet_in is not None and unet_in.ndim == 4 else None
    if any(k.startswith(_OPENCLIP_PREFIX) for k in state_dict) or ctx == 1024:
        family = "SD 2.x"
    elif ctx == 768 or (ctx is None and width == 768):
        family = "SD 1.x"
    elif has_unet or has_ema(state_dict) or any(k.startswith(PREFIXES["vae"]) for k in state_dict) or width:
        sizes = [f"context_dim {ctx}"] * (ctx is not None) + [f"text width {width}"] * (width is not None)
        family = "latent diffusion, not SD" + (f" ({', '.join(sizes)})" if sizes else "")
    else:
        return "unknown (no CompVis-layout keys)"
    if in_ch == 9:
        family += " inpainting"
    elif in_ch is not None and in_ch != 4:
        family += f" with {in_ch} input channels"
    if has_ema(state_dict):
        family += ", with EMA copies (model_ema.*)" if has_unet else ", EMA weights only (model_ema.*)"
    return family
