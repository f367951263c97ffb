"""Which checkpoint keys belong to which network, and what a config expects of them.

A CompVis SD checkpoint is one flat dict: the UNet under `model.diffusion_model.`, the VAE under
`first_stage_model.`, the text encoder under `cond_stage_model.transformer.` (ALGORITHM.md section 15; SD 2.x:
the OpenCLIP tower under `cond_stage_model.model.`, see `prefixes`), plus
schedule buffers (`betas`, `alphas_cumprod`, ...) that we recompute, and in full-EMA files `model_ema.*`: copies
of the UNet weights whose names lost their dots (`model_ema.diffusion_modelinput_blocks00weight`, as CompVis
`LitEma` registers them) and the `model_ema.decay` / `model_ema.num_updates` counters. This module splits such
a dict into per-network state dicts with our names, and lists what is missing, unexpected or mis-shaped.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ldm.checkpoint.errors import CheckpointError
from ldm.config import LDMConfig
from ldm.models.autoencoder import AutoencoderKL
from ldm.models.clip_text import IGNORED_KEYS as TEXT_IGNORED_KEYS
from ldm.models.clip_text import CLIPTextEncoder
from ldm.models.open_clip_text import OpenCLIPTextEncoder
from ldm.models.open_clip_text import ignored_keys as open_clip_ignored_keys
from ldm.models.unet import UNetModel

COMPONENTS = ("unet", "vae", "text")
PREFIXES = {                                   # the CompVis prefixes of SD 1.x, defined here once
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text": "cond_stage_model.transformer.",
}
TEXT_PREFIXES = {                              # per CLIPTextConfig.layout
    "transformers": PREFIXES["text"],          # SD 1.x FrozenCLIPEmbedder (an HF CLIPTextModel)
    "open_clip": "cond_stage_model.model.",    # SD 2.x FrozenOpenCLIPEmbedder (an open_clip CLIP without .visual)
}
IGNORED_KEYS = {"unet": (), "vae": (), "text": TEXT_IGNORED_KEYS}  # SD 1.x, per component, without the prefix
EMA_PREFIX = "model_ema."
EMA_COUNTERS = ("model_ema.decay", "model_ema.num_updates")
_EMA_MODEL_PREFIX = "diffusion_model."        # LitEma names are relative to LatentDiffusion.model
SCHEDULE_KEYS = (                              # LatentDiffusion buffers recomputed from the config
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar",
)
# transformers < 4.17 had no `text_model.` level; such SD-v1 files store cond_stage_model.transformer.embeddings.*
_OLD_TEXT_ROOTS = ("embeddings.", "encoder.", "final_layer_norm.")


def prefixes(config: LDMConfig) -> dict[str, str]:
    """The checkpoint prefix of each network under this config (the text encoder's depends on its layout)."""
    return {**PREFIXES, "text": TEXT_PREFIXES[config.text.layout]}


def ignored_keys(config: LDMConfig, component: str) -> tuple[str, ...]:
    """Names (without prefix) a checkpoint may store for this network that we knowingly do not load."""
    if component != "text":
        return IGNORED_KEYS[component]
    text = config.text
    if text.layout == "open_clip":
        return open_clip_ignored_keys(text)
    skipped = tuple(k for k in _skipped_text_layers(text))
    return (*IGNORED_KEYS["text"], *skipped)


def _skipped_text_layers(text) -> list[str]:
    """HF-layout names of the text blocks a config stores but does not run (skip_last_layers)."""
    leaves = [f"{m}.{p}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                                   "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")]
    return [f"text_model.encoder.layers.{i}.{leaf}" for i in range(text.layers_run, text.num_hidden_layers)
            for leaf in leaves]


def build_model(component: str, config: LDMConfig) -> nn.Module:
    """Construct one network (random init, on the current default device) from the config."""
    if component == "unet":
        return UNetModel(config.unet)
    if component == "vae":
        return AutoencoderKL(config.vae)
    if component == "text":
        if config.text.layout == "open_clip":
            return OpenCLIPTextEncoder(config.text)
        return CLIPTextEncoder(config.text)
    raise ValueError(f"unknown component {component!r}; expected one of {COMPONENTS}")


class _SkipMetaInit(TorchFunctionMode):
    """Skip in-place initialisers (`normal_`, `kaiming_uniform_`, ...) on meta tensors: they hold no data, and
    torch routes some of them (nn.Embedding's normal_) through decompositions that import torch._dynamo (seconds)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
        if name.endswith("_") and not name.endswith("__") and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


def build_meta_model(component: str, config: LDMConfig) -> nn.Module:
    """The network on the meta device (shapes only, no memory, no init), ready for load_state_dict(assign=True)."""
    with torch.device("meta"), _SkipMetaInit():
        return build_model(component, config)


def expected_shapes(config: LDMConfig, component: str) -> dict[str, tuple[int, ...]]:
    """Our names (no prefix) and shapes of one network's state dict; built on the meta device, so free."""
    return dict(_expected_shapes(config, component))


@functools.lru_cache(maxsize=32)
def _expected_shapes(config: LDMConfig, component: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    model = build_meta_model(component, config)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def expected_keys(config: LDMConfig, components: tuple[str, ...] = COMPONENTS) -> dict[str, list[int]]:
    """Every CompVis-layout name (with prefix) a config expects, with its shape as a list."""
    pre = prefixes(config)
    return {pre[c] + k: list(s) for c in components for k, s in expected_shapes(config, c).items()}


def _ema_names(config: LDMConfig) -> dict[str, str]:
    """`model_ema.` key -> our UNet name, for every UNet parameter (dots removed, as LitEma does)."""
    out: dict[str, str] = {}
    for name in expected_shapes(config, "unet"):
        ema_key = EMA_PREFIX + (_EMA_MODEL_PREFIX + name).replace(".", "")
        if ema_key in out:
            raise CheckpointError(f"EMA names are ambiguous for this UNet: {out[ema_key]!r} and {name!r}")
        out[ema_key] = name
    return out


def has_ema(state_dict: dict[str, torch.Tensor]) -> bool:
    """True if the dict holds EMA copies of the UNet (not just the counters)."""
    return any(k.startswith(EMA_PREFIX) and k not in EMA_COUNTERS for k in state_dict)


@dataclass
class Partition:
    """A checkpoint dict split up: per-network dicts with our names, and the keys that fit nowhere."""

    components: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)   # full checkpoint names
    ignored: list[str] = field(default_factory=list)      # schedule buffers, unused EMA copies, known extras


def partition(state_dict: dict[str, torch.Tensor], config: LDMConfig, use_ema: bool = False) -> Partition:
    """Split a CompVis-layout dict; with use_ema the UNet comes from the `model_ema.*` copies."""
    if use_ema and not has_ema(state_dict):
        raise CheckpointError("use_ema=True but the file has no model_ema.* weights (an EMA-only file already "
                              "stores the EMA weights under model.diffusion_model.: load it with use_ema=False)")
    part = Partition(components={c: {} for c in COMPONENTS})
    ema_names = _ema_names(config) if use_ema else {}
    pre = prefixes(config)
    ignored = {c: set(ignored_keys(config, c)) for c in COMPONENTS}
    for key, value in state_dict.items():
        component, name = _component_of(key, pre)
        if component == "unet" and use_ema:
            part.ignored.append(key)                        # the non-EMA weights, replaced below
        elif component is not None and name in ignored[component]:
            part.ignored.append(key)
        elif component is not None:
            part.components[component][name] = value
        elif key in ema_names:
            part.components["unet"][ema_names[key]] = value
        elif key in SCHEDULE_KEYS or key in EMA_COUNTERS or (key.startswith(EMA_PREFIX) and not use_ema):
            part.ignored.append(key)
        else:
            part.unexpected.append(key)
    return part


def _component_of(key: str, pre: dict[str, str]) -> tuple[str | None, str]:
    """(component, name without prefix) of a checkpoint key under the prefixes `pre`, or (None, key)."""
    for component, prefix in pre.items():
        if key.startswith(prefix):
            name = key[len(prefix):]
            if component == "text" and prefix == PREFIXES["text"] and name.startswith(_OLD_TEXT_ROOTS):
                name = "text_model." + name
            return component, name
    return None, key


def split_components(state_dict: dict[str, torch.Tensor], config: LDMConfig,
                     use_ema: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Per-network state dicts ("unet", "vae", "text") with the CompVis prefixes stripped."""
    return partition(state_dict, config, use_ema).components


@dataclass
class KeyReport:
    """How one network's weights compare with what the config expects (names without prefix)."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (name, in file, expected)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def compare_keys(weights: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> KeyReport:
    """Missing, unexpected and mis-shaped names of `weights` against `expected` (name -> shape)."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [(k, tuple(v.shape), expected[k]) for k, v in weights.items()
                  if k in expected and tuple(v.shape) != expected[k]]
    return KeyReport(missing, unexpected, mismatched)
