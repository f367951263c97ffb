"""Build the SD networks from a config and load a checkpoint into them strictly, on the CPU.

Steps: resolve the file (a missing one gives a one-line message saying where it was looked for, which config key
names it and where to get it), read it in any supported format, take the UNet input (plain or inpainting) from the
file's conv_in, check that the file is of the config's family (SD 1.x / 2.x; SDXL is refused), check the stored
schedule against ours, check every key and shape against what the config expects (one error with the likely cause),
then build the networks on the meta device and assign the weights (no random init of 1B parameters), in eval mode
without gradients.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ldm.checkpoint.components import COMPONENTS, build_meta_model, split_components
from ldm.checkpoint.diagnose import check_family, check_keys, check_schedule, resolve_inpainting
from ldm.checkpoint.errors import CheckpointError
from ldm.checkpoint.formats import read_state_dict
from ldm.config import PRESETS, LDMConfig, get_preset
from ldm.models.autoencoder import AutoencoderKL
from ldm.models.clip_text import CLIPTextEncoder
from ldm.models.open_clip_text import OpenCLIPTextEncoder
from ldm.models.unet import UNetModel

SD_V1_HINT = ("get sd-v1-4.ckpt from https://huggingface.co/CompVis/stable-diffusion-v-1-4-original "
              "(accept the licence there), or give a diffusers folder such as CompVis/stable-diffusion-v1-4")


@dataclass
class LDMModels:
    """The loaded networks (None for components not asked for) and the config they were built from."""

    config: LDMConfig
    unet: UNetModel | None = None
    vae: AutoencoderKL | None = None
    text_encoder: CLIPTextEncoder | OpenCLIPTextEncoder | None = None
    format: str = ""


def resolve_config(config: LDMConfig | str) -> tuple[LDMConfig, str]:
    """(config, name for messages) from an LDMConfig or a preset name."""
    if isinstance(config, str):
        return get_preset(config), f"config '{config}'"
    if not isinstance(config, LDMConfig):
        raise ValueError(f"config must be an LDMConfig or a preset name, got {type(config).__name__}")
    name = next((n for n, c in PRESETS.items() if c == config), None)   # a preset passed as an object
    return config, f"config '{name}'" if name else "the given config"


def check_exists(path: str | os.PathLike, config_key: str | None = "ckpt", hint: str = SD_V1_HINT) -> Path:
    """The path, or a one-line CheckpointError: where it was looked for, which config key sets it, how to get it."""
    path = Path(os.path.expanduser(os.fspath(path)))
    if not path.exists():
        where = f"set by config key '{config_key}'; " if config_key else ""
        raise CheckpointError(f"weights file not found: {path.resolve()} ({where}{hint})")
    return path


def _components(components: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    components = tuple(components)
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown or not components:
        raise ValueError(f"components must be a non-empty subset of {COMPONENTS}, got {components}")
    return components


def _instantiate(component: str, config: LDMConfig, weights: dict[str, torch.Tensor],
                 dtype: torch.dtype) -> nn.Module:
    """The network with `weights` assigned (strict), floating tensors cast to dtype, eval, no grad."""
    model = build_meta_model(component, config)
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise CheckpointError(f"{component}: some tensors were not loaded (non-persistent buffers?)")
    return model.eval().requires_grad_(False)


_DIFFUSERS_PREDICTION = {"epsilon": "eps", "v_prediction": "v"}


def check_diffusers_prediction_type(folder: Path, config: LDMConfig, config_name: str = "the config") -> None:
    """A diffusers folder's scheduler/scheduler_config.json names the parameterisation (512-base: epsilon, 768-v:
    v_prediction), which the weights do not show: a mismatch with the config is one CheckpointError."""
    file = folder / "scheduler" / "scheduler_config.json"
    if not file.is_file():
        return
    try:
        stored = json.loads(file.read_text()).get("prediction_type")
    except (OSError, ValueError):
        return                                   # an unreadable scheduler config is not the weights' problem
    ours = _DIFFUSERS_PREDICTION.get(stored)
    if ours is not None and ours != config.prediction_type:
        hint = "config 'sd-v2-768' (model=sd-v2-768)" if ours == "v" else "config 'sd-v2' (model=sd-v2)"
        raise CheckpointError(f"{folder} is a {stored} model (scheduler/scheduler_config.json) but {config_name} "
                              f"predicts {config.prediction_type}: pass {hint}, or a config with "
                              f"prediction_type={ours!r}")


def load_models(path: str | os.PathLike, config: LDMConfig | str = "sd-v1", *,
                components: tuple[str, ...] | list[str] = COMPONENTS, use_ema: bool = False,
                dtype: torch.dtype | None = None, config_key: str | None = "ckpt", hint: str = SD_V1_HINT,
                inpainting: bool | None = None) -> LDMModels:
    """Load the networks of a .ckpt/.pt/.safetensors file or a diffusers folder, strictly, on the CPU.

    The returned `config` is the given one with the UNet input of the file: an inpainting UNet (conv_in with
    9 input channels) is recognised from its shape; `inpainting=True/False` demands one kind instead.
    use_ema: take the UNet from the model_ema.* copies of a full-EMA file (otherwise they are ignored).
    dtype: of the floating-point weights (default float32, whatever the file stores).
    config_key, hint: name the config entry that set `path` and where to get the file, for the not-found message.
    """
    config, config_name = resolve_config(config)
    components = _components(components)
    # 1. Read, whatever the format.
    path = check_exists(path, config_key, hint)
    state_dict, fmt = read_state_dict(path, config, components)
    # 2. Plain or inpainting UNet from the file; its family; schedule buffers; every key and shape.
    if "unet" in components:
        config = resolve_inpainting(state_dict, config, inpainting, source=str(path))
    check_family(state_dict, config, source=str(path), config_name=config_name)
    if fmt == "diffusers":
        check_diffusers_prediction_type(path, config, config_name)
    check_schedule(state_dict, config, source=str(path))
    check_keys(state_dict, config, components, use_ema, source=str(path), config_name=config_name)
    # 3. Build on meta and assign the weights.
    parts = split_components(state_dict, config, use_ema)
    models = {c: _instantiate(c, config, parts[c], dtype or torch.float32) for c in components}
    return LDMModels(config=config, unet=models.get("unet"), vae=models.get("vae"),
                     text_encoder=models.get("text"), format=fmt)
