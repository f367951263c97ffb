"""Checks of a checkpoint against a config: strict key report with likely causes, schedule buffers, family guess.

Mismatches most often come from a file of another model family: SD 1.x (CLIP ViT-L/14 under
`cond_stage_model.transformer.`, context 768) against SD 2.x (OpenCLIP text tower under `cond_stage_model.model.`,
context 1024) and the reverse, SDXL (`conditioner.embedders.*`, context 2048), an inpainting UNet (9 input channels:
latent, mask, masked-image latent) where a plain one is asked for or the reverse, or a full-EMA training file whose
UNet is stored only as `model_ema.*` copies. `check_family` and `resolve_inpainting` turn the first kinds into one
line naming what was found and what to pass; `check_keys` names the first few offending keys and the cause.
"""
from __future__ import annotations

import torch

from ldm.checkpoint.components import (
    COMPONENTS, EMA_PREFIX, PREFIXES, TEXT_PREFIXES, KeyReport, compare_keys, expected_shapes, has_ema, partition,
    prefixes,
)
from ldm.checkpoint.errors import CheckpointError
from ldm.config import LDMConfig, inpainting_channels, with_inpainting
from ldm.sampling.schedule import alphas_cumprod, scaled_linear_betas

SHOW = 3                                       # names listed per kind of mismatch
_UNET_IN = PREFIXES["unet"] + "input_blocks.0.0.weight"
_UNET_IN_EMA = EMA_PREFIX + "diffusion_modelinput_blocks00weight"
_VAE_LATENT = PREFIXES["vae"] + "post_quant_conv.weight"      # [z_channels, embed_dim, 1, 1]: the latent width
_OPENCLIP_PREFIX = TEXT_PREFIXES["open_clip"]  # SD 2.x FrozenOpenCLIPEmbedder
_TEXT_EMB = (PREFIXES["text"] + "text_model.embeddings.token_embedding.weight",
             PREFIXES["text"] + "embeddings.token_embedding.weight",            # transformers < 4.17
             _OPENCLIP_PREFIX + "token_embedding.weight")
_SDXL_PREFIXES = ("conditioner.embedders.", PREFIXES["unet"] + "label_emb.")   # SDXL's GeneralConditioner, ADM labels
_CONTEXT_FAMILY = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 1280: "SDXL refiner"}
# What to pass for a file of each family (model config = ldm preset of the same name).
SUGGEST = {
    "SD 1.x": "config 'sd-v1' (model=sd-v1)",
    "SD 2.x": "config 'sd-v2' (model=sd-v2; 512-base, eps) or 'sd-v2-768' (model=sd-v2-768; 768-v, v-prediction)",
    "SDXL": "an SD 1.x or 2.x checkpoint: SDXL is not supported",
    "SDXL refiner": "an SD 1.x or 2.x checkpoint: the SDXL refiner is not supported",
}


def _first(names: list[str], prefix: str = "") -> str:
    shown = ", ".join(prefix + n for n in names[:SHOW])
    return f"[{shown}{', ...' if len(names) > SHOW else ''}]"


def _context_dim(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Cross-attention context width of the UNet in the file (from any attn2.to_k weight)."""
    for key, value in state_dict.items():
        if key.endswith("attn2.to_k.weight") and value.ndim == 2:
            return int(value.shape[1])
    return None


def _text_width(state_dict: dict[str, torch.Tensor]) -> int | None:
    emb = next((state_dict[k] for k in _TEXT_EMB if k in state_dict), None)
    return int(emb.shape[1]) if emb is not None and emb.ndim == 2 else None


def unet_in_channels(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Input channels of the file's UNet (conv_in = input_blocks.0.0), live or EMA copy; None without a UNet."""
    weight = state_dict.get(_UNET_IN, state_dict.get(_UNET_IN_EMA))
    return int(weight.shape[1]) if weight is not None and weight.ndim == 4 else None


def vae_latent_channels(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Latent channels (embed_dim) of the file's VAE, read from post_quant_conv; None without a VAE."""
    weight = state_dict.get(_VAE_LATENT)
    return int(weight.shape[1]) if weight is not None and weight.ndim == 4 else None


def file_family(state_dict: dict[str, torch.Tensor]) -> str | None:
    """"SD 1.x", "SD 2.x", "SDXL", "SDXL refiner" from keys and widths, or None (not an SD layout)."""
    ctx = _context_dim(state_dict)
    if any(k.startswith(_SDXL_PREFIXES) for k in state_dict):
        return "SDXL refiner" if ctx == 1280 else "SDXL"
    if ctx in _CONTEXT_FAMILY:
        return _CONTEXT_FAMILY[ctx]
    if any(k.startswith(_OPENCLIP_PREFIX) for k in state_dict):
        return "SD 2.x"
    if ctx is not None:
        return None
    width = _text_width(state_dict)
    return {768: "SD 1.x", 1024: "SD 2.x"}.get(width) if width else None


def config_family(config: LDMConfig) -> str | None:
    """"SD 1.x" / "SD 2.x" for configs of those families, None for others (toy, tiny-test)."""
    if config.text.layout == "open_clip" and config.unet.context_dim == 1024 == config.text.hidden_size:
        return "SD 2.x"
    if config.text.layout == "transformers" and config.unet.context_dim == 768 == config.text.hidden_size:
        return "SD 1.x"
    return None


def _kind(inpainting: bool, latent: int = 4) -> str:
    return (f"an inpainting UNet ({inpainting_channels(latent)} input channels: latent, mask, masked-image latent)"
            if inpainting else f"a plain UNet ({latent} input channels)")


def check_family(state_dict: dict[str, torch.Tensor], config: LDMConfig, source: str = "checkpoint",
                 config_name: str = "the config") -> None:
    """One-line CheckpointError when the file is of another SD family than the config (SD 1.x, 2.x, SDXL)."""
    found, wanted = file_family(state_dict), config_family(config)
    if found is None or found == wanted or (wanted is None and not found.startswith("SDXL")):
        return
    in_ch = unet_in_channels(state_dict)
    what = found + (" inpainting" if in_ch == inpainting_channels(config.vae.embed_dim) else "")
    is_what = f"is {wanted}" if wanted else "is not an SD config"
    raise CheckpointError(f"{source} holds an {what} model but {config_name} {is_what}: pass {SUGGEST[found]}")


def resolve_inpainting(state_dict: dict[str, torch.Tensor], config: LDMConfig, inpainting: bool | None,
                       source: str = "checkpoint") -> LDMConfig:
    """The config with the UNet input of the file (plain or inpainting), or the one `inpainting` demands.

    inpainting=None follows the file's conv_in; True/False must agree with it (one-line CheckpointError naming
    what was found and what to pass). A file whose conv_in fits neither is left to the key check."""
    c = config.vae.embed_dim
    in_ch = unet_in_channels(state_dict)
    if in_ch not in (c, inpainting_channels(c)):
        return config if inpainting is None else with_inpainting(config, inpainting)
    found = in_ch == inpainting_channels(c)
    if inpainting is not None and inpainting != found:
        family = file_family(state_dict) or "latent diffusion"
        raise CheckpointError(
            f"{source} holds {_kind(found, c)} ({family}) where {_kind(inpainting, c).split(' (')[0]} was asked for "
            f"(inpainting={inpainting}): give {'an inpainting' if inpainting else 'a plain'} {family} checkpoint, "
            f"or leave inpainting unset (model.inpainting=null) to follow the file")
    return with_inpainting(config, found)


def likely_causes(state_dict: dict[str, torch.Tensor], config: LDMConfig, use_ema: bool = False) -> list[str]:
    """Human-readable reasons why a CompVis-layout dict would not fit `config`."""
    causes = []
    ctx = _context_dim(state_dict)
    found, wanted = file_family(state_dict), config_family(config)
    if found is not None and found != wanted:
        causes.append(f"an {found} file given to {'an ' + wanted if wanted else 'a non-SD'} config "
                      f"(pass {SUGGEST[found]})")
    elif ctx is not None and ctx != config.unet.context_dim:
        causes.append(f"a UNet with context_dim {ctx} (config: {config.unet.context_dim})")
    width = _text_width(state_dict)
    if width is not None and width != config.text.hidden_size:
        causes.append(f"a text encoder of width {width} (config: {config.text.hidden_size})")
    in_ch = unet_in_channels(state_dict)
    if in_ch is not None and in_ch != config.unet.in_channels:
        kind = "an inpainting UNet" if in_ch == inpainting_channels(config.vae.embed_dim) else "a UNet"
        causes.append(f"{kind} with {in_ch} input channels (config: {config.unet.in_channels})")
    if not use_ema and has_ema(state_dict) and not any(k.startswith(PREFIXES["unet"]) for k in state_dict):
        causes.append("an EMA-only file: the UNet is stored only as model_ema.* copies, pass use_ema=True")
    return causes


def _describe(component: str, report: KeyReport, prefix: str) -> str:
    parts = []
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
    pre = prefixes(config)
    problems = [_describe(c, r, pre[c]) for c, r in reports.items() if not r.ok]
    if other:
        problems.append(f"{len(other)} keys of no component {_first(other)}")
    for c, r in reports.items():
        if r.missing and len(r.missing) == len(expected_shapes(config, c)) and not (r.unexpected or r.mismatched):
            problems.append(f"the file has no {c} weights (no '{pre[c]}*' keys)")
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
    ctx, width, in_ch = _context_dim(state_dict), _text_width(state_dict), unet_in_channels(state_dict)
    family = file_family(state_dict)
    if family is None:
        if not (has_unet or has_ema(state_dict) or width or any(k.startswith(PREFIXES["vae"]) for k in state_dict)):
            return "unknown (no CompVis-layout keys)"
        sizes = [f"context_dim {ctx}"] * (ctx is not None) + [f"text width {width}"] * (width is not None)
        family = "latent diffusion, not SD" + (f" ({', '.join(sizes)})" if sizes else "")
    latent = vae_latent_channels(state_dict) or 4                      # SD's 4 where the file has no VAE
    if in_ch == inpainting_channels(latent):
        family += " inpainting"
    elif in_ch is not None and in_ch != latent:
        family += f" with {in_ch} input channels"
    if has_ema(state_dict):
        family += ", with EMA copies (model_ema.*)" if has_unet else ", EMA weights only (model_ema.*)"
    return family
