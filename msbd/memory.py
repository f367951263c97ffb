"""How much memory an edit needs, where it is free, and how many tiles fit in one call.

`estimate_memory` gives rough peak bytes of the largest model call per setting that drives it (first-stage batch,
stage size, grid tile and batch, the x4 upscaler, decoder optimisation) plus the images held where the models run.
`check_memory` compares it with the free memory *where the models run*: the GPU's free memory from
`torch.cuda.mem_get_info` on CUDA (the host's RAM says nothing about a 16 GB card), the host's MemAvailable on the
CPU (free pages plus reclaimable page cache: a host whose RAM is page cache is not full). A run that would not fit
is refused before any model runs, naming a setting that would fit. `auto_batch` sizes `grid.batch=0`.
"""
from __future__ import annotations

import dataclasses
import os

import torch

from msbd.config import MSBDConfig
from msbd.errors import InputError
from msbd.models import ModelBundle


def _unet_bytes(bundle: ModelBundle, side_px: int, batch: int) -> float:
    """Rough peak bytes of one guided UNet call on a side_px square. Attention runs through fused SDPA kernels
    (flash / memory-efficient on CUDA, flash on the CPU), which never materialise the N x N scores: its memory is
    the q, k, v and output activations, counted with the rest."""
    c = bundle.unet.config
    tokens = (side_px / bundle.latent_factor) ** 2
    n = 2 * batch  # CFG doubles the batch
    elem = torch.finfo(bundle.dtype).bits // 8
    return n * c.model_channels * max(c.channel_mult) * tokens * 24 * elem


def _vae_bytes(bundle: ModelBundle, side_px: int) -> float:
    """Rough peak bytes of decoding a side_px square: full-resolution features (the mid-block attention is fused
    SDPA on contiguous q, k, v: no HW x HW scores)."""
    cfg = bundle.vae.config
    return cfg.ch * side_px ** 2 * 6 * 4


def _upscaler_bytes(bundle: ModelBundle, side_px: int) -> float:
    """Rough peak bytes of one x4 pass (RRDBNet layout) on a side_px square input: the x4 feature maps dominate
    (conv_up2, its activation and conv_hr at 16x the input pixels with num_feat channels)."""
    model = getattr(bundle.upscaler, "model", bundle.upscaler)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)] if isinstance(model, torch.nn.Module) else []
    feat = convs[0].out_channels if convs else 64
    elem = next(iter(model.parameters())).element_size() if convs else 4
    return 3 * 16 * side_px ** 2 * feat * elem + 16 * side_px ** 2 * 3 * 4 * 2   # + the float output and its resize


def _decoder_cache_bytes(config: MSBDConfig, bundle: ModelBundle, long_edge: int) -> float:
    """decoder_opt.train_levels > 0 keeps the frozen part's output for every training tile: the input channels of
    the finest trained level at its resolution, in bf16 under autocast (else fp32), over at most every tile of the
    stage (tile/4 overlap: (4/3)^2 of its pixels)."""
    dec, decoder = config.decoder_opt, bundle.vae.decoder
    if dec.train_levels <= 0:
        return 0.0
    k = min(dec.train_levels, len(decoder.up))
    first_trained = decoder.up[k - 1]                   # up[0] is the finest level; the trained ones are up[:k]
    channels = first_trained.block[0].conv1.in_channels
    scale = 2 ** (k - 1)                                 # the input of up[k-1] is 2^(k-1) times coarser than pixels
    from msbd.decoder_opt import bf16_autocast_supported
    elem = 2 if dec.autocast_bf16 and bf16_autocast_supported(bundle.device) else 4
    return channels * (long_edge / scale) ** 2 * (4 / 3) ** 2 * elem


def estimate_memory(config: MSBDConfig, bundle: ModelBundle, image_hw: tuple[int, int], long_edge: int) -> dict:
    """Peak bytes of the largest model call, per setting that drives it, plus the images held in memory."""
    fs, up, grid, dec = config.first_stage, config.upscale, config.grid, config.decoder_opt
    stage_side = min(up.max_edgelen, long_edge)
    grid_side = grid.tile if long_edge > up.max_edgelen else 0
    tiles = max(1, grid.batch)   # grid.batch=0 picks a batch within half the free memory, so it counts as one tile
    parts = {
        "first_stage.batch": _unet_bytes(bundle, fs.size, fs.batch) + fs.batch * _vae_bytes(bundle, fs.size),
        "upscale.max_edgelen": _unet_bytes(bundle, stage_side, 1) + _vae_bytes(bundle, stage_side),
        "grid.tile": (_unet_bytes(bundle, grid_side, tiles) + tiles * _vae_bytes(bundle, grid_side)
                      if grid_side else 0.0),
    }
    # on the device: up to three float copies of the image (the [0, 1] image, the padded or upsampled work image,
    # the paste-back canvas: 12 B a pixel each) and the stage images; on the host: the uint8 input and result,
    # the source as stored with the output made from it (msbd.io.output_like; up to 16-bit RGBA, 8 B a pixel
    # each) and the float paste-back strips
    images = 3 * 3 * 4 * image_hw[0] * image_hw[1] + 16 * 4 * long_edge ** 2
    host = (2 * 3 + 2 * 8) * image_hw[0] * image_hw[1] + 3 * 8 * 256 * image_hw[1]
    if up.mode == "esrgan" and bundle.upscaler is not None and long_edge > fs.size:
        # the x4 pass runs on the previous stage's result, at most max_edgelen on a side
        parts["upscale.esrgan"] = _upscaler_bytes(bundle, stage_side)
    if dec.enabled:
        # The backward pass keeps every decoder activation: measured on the toy VAE, ~9x the forward estimate per
        # pixel. A stage up to max_edgelen is optimised as one tile (so it counts under upscale.max_edgelen); the
        # grid stage's tiles are decoder_opt.tile, two per step.
        parts["upscale.max_edgelen"] = max(parts["upscale.max_edgelen"], 9 * _vae_bytes(bundle, stage_side))
        if long_edge > up.max_edgelen:
            parts["decoder_opt.tile"] = 9 * 2 * _vae_bytes(bundle, dec.tile)
        images += 36 * long_edge ** 2     # per-tile inputs kept during decoder optimisation (9 floats a pixel)
        images += _decoder_cache_bytes(config, bundle, long_edge)
    on_device = bundle.device.type != "cpu"
    peak = max(parts.values()) + images + (0 if on_device else host)
    return {"peak": peak, "driver": max(parts, key=parts.get), "parts": parts, "host": host if on_device else peak,
            "device": bundle.device.type}


def host_available() -> int:
    """Bytes of host memory available to a new allocation (Linux MemAvailable: free pages plus reclaimable page
    cache), or a large number when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 50


def available_memory(device: torch.device | str = "cpu") -> int:
    """Free bytes where the models run: the GPU's free memory (`torch.cuda.mem_get_info`) on CUDA, else the host's."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return host_available()


def auto_batch(bundle: ModelBundle, side_px: int, cap: int = 16) -> int:
    """Tiles of side_px per UNet / VAE call that fit in half the free memory where the models run (1..cap)."""
    per_tile = _unet_bytes(bundle, side_px, 1) + _vae_bytes(bundle, side_px)
    return int(max(1, min(cap, 0.5 * available_memory(bundle.device) // max(per_tile, 1))))


def check_memory(config: MSBDConfig, bundle: ModelBundle, image_hw: tuple[int, int], long_edge: int,
                 limit_bytes: int | None = None) -> dict:
    """Refuse (InputError) a run whose estimated peak exceeds the free memory, naming a setting that would fit.

    On CUDA the device part is compared with the GPU's free memory and the host part with MemAvailable; on the
    CPU everything with MemAvailable. limit_bytes replaces the free memory where the models run (tests)."""
    where = "GPU memory" if bundle.device.type == "cuda" else "memory"
    limit = available_memory(bundle.device) if limit_bytes is None else limit_bytes
    est = estimate_memory(config, bundle, image_hw, long_edge)
    if est["peak"] > limit:
        hint = _fitting_setting(config, bundle, image_hw, long_edge, limit, est["driver"])
        raise InputError(f"estimated peak {where} {est['peak'] / 2**30:.1f} GiB exceeds the available "
                         f"{limit / 2**30:.1f} GiB on {bundle.device} (largest: {est['driver']}); {hint}")
    if bundle.device.type != "cpu" and limit_bytes is None and est["host"] > host_available():
        raise InputError(f"estimated host memory {est['host'] / 2**30:.1f} GiB exceeds the available "
                         f"{host_available() / 2**30:.1f} GiB (the image itself); use a machine with more memory")
    return est


def _fitting_setting(config, bundle, image_hw, long_edge, limit, driver: str) -> str:
    trial = dataclasses.replace(config)
    if driver == "first_stage.batch":
        for batch in range(config.first_stage.batch - 1, 0, -1):
            trial.first_stage = dataclasses.replace(config.first_stage, batch=batch)
            if estimate_memory(trial, bundle, image_hw, long_edge)["peak"] <= limit:
                return f"first_stage.batch={batch} would fit"
    if driver == "decoder_opt.tile":
        for side in range(config.decoder_opt.tile - bundle.size_multiple, bundle.size_multiple - 1,
                          -bundle.size_multiple):
            trial.decoder_opt = dataclasses.replace(config.decoder_opt, tile=side)
            if estimate_memory(trial, bundle, image_hw, long_edge)["peak"] <= limit:
                return f"decoder_opt.tile={side} would fit"
        trial.decoder_opt = dataclasses.replace(config.decoder_opt, enabled=False)
        if estimate_memory(trial, bundle, image_hw, long_edge)["peak"] <= limit:
            return "decoder_opt.enabled=false would fit"
        trial.decoder_opt = config.decoder_opt
    if driver == "upscale.esrgan":
        trial.upscale = dataclasses.replace(config.upscale, mode="bicubic")
        if estimate_memory(trial, bundle, image_hw, long_edge)["peak"] <= limit:
            return "upscale.mode=bicubic (no x4 network) would fit"
    if driver == "grid.tile" and config.grid.batch > 1:
        for batch in range(config.grid.batch - 1, 0, -1):
            trial.grid = dataclasses.replace(config.grid, batch=batch)
            if estimate_memory(trial, bundle, image_hw, long_edge)["peak"] <= limit:
                return f"grid.batch={batch} would fit"
        trial.grid = config.grid
    if driver in ("grid.tile", "upscale.max_edgelen", "upscale.esrgan"):
        step = bundle.size_multiple
        for side in range(config.grid.tile - step, config.first_stage.size - 1, -step):
            trial.grid = dataclasses.replace(config.grid, tile=side, overlap=min(config.grid.overlap, side // 4))
            trial.upscale = dataclasses.replace(config.upscale, max_edgelen=max(side, config.first_stage.size))
            if estimate_memory(trial, bundle, image_hw, long_edge)["peak"] <= limit:
                return f"grid.tile={side} and upscale.max_edgelen={trial.upscale.max_edgelen} would fit"
    return "no smaller setting fits; use a machine with more memory or a smaller model"
