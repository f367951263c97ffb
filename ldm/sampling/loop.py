"""The sampling loop: DDIM with classifier-free guidance, latent blending, RePaint resampling and SDEdit starts.

One function, `sample`, composes the pure update rules of ddim.py along an explicit operation list from
schedule.py. It covers plain DDIM (Song et al. 2021), Blended Latent Diffusion (Avrahami et al. 2023: after each
step the known region is replaced by the source noised to the same level), RePaint (Lugmayr et al. 2022,
Alg. 1 with jumps) and SDEdit (Meng et al. 2022, start from the noised source). docs/SAMPLER.md lists the
semantics and where they differ from the MSBD reference; every departure that shapes results is a named option.

Dtypes: schedules are float64 python floats, the loop state x is float32, all noise is drawn in float32 on CPU
generators (one per sample) and moved to the device. The model is called with float32 x; a caller that runs the
model in fp16/bf16 wraps it to cast x on the way in (its output is cast back to float32 here).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from tqdm.auto import tqdm

from .ddim import ddim_step, predict_eps, q_sample, renoise
from .guidance import ModelFn, guided_model
from .schedule import ddim_alpha_bars, ddim_timesteps, max_eta, repaint_schedule, sd_alphas_cumprod, sdedit_start

Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass
class SamplerConfig:
    """Knobs of `sample`. Defaults are the reference's except where noted (background_level, clean_final)."""

    num_steps: int = 50  # DDIM steps over the full range (uniform+1 spacing; 60 gives 63, as in the reference)
    eta: float = 1.0  # DDIM eta; the reference uses 1.0 (stochastic) in every stage
    guidance_scale: float = 7.5  # classifier-free guidance scale s; 1.0 disables guidance
    strength: float = 1.0  # SDEdit: fraction of the DDIM steps run (0.4 of 100 -> 40 steps from t = 391); 1 = from noise
    repaint_steps: int = 0  # RePaint r: extra passes per window (0 = plain blended DDIM); reference j=0 has r+1 passes too
    repaint_jump: int = 0  # RePaint jump length j in DDIM steps; 0 and 1 both mean per-step resampling
    background_level: Literal["reached", "reference"] = "reached"  # noise the known region to the level just reached,
    # or ("reference") to the level of the step just taken, as the MSBD code does (its author's comment doubts it)
    clean_final: bool = True  # blend the clean source after DDIM step 0 (reference: source noised to t = 1)
    prediction_type: Literal["eps", "v"] = "eps"  # what the model returns; "v" for SD 2.x v-models
    sdedit_ref_alpha0: bool = False  # SDEdit start divides alpha_bar by alpha_bar_0 = 0.99915, as the reference does
    progress: bool = True  # tqdm bar over the denoising calls
    zero_mean_init: bool = False  # departure: start noise with per-channel spatial mean 0 and std 1 (see zero_mean)

    def __post_init__(self) -> None:
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if self.repaint_steps < 0 or self.repaint_jump < 0:
            raise ValueError(f"repaint_steps and repaint_jump must be >= 0, got {self.repaint_steps}, {self.repaint_jump}")
        if self.background_level not in ("reached", "reference"):
            raise ValueError(f"background_level must be 'reached' or 'reference', got {self.background_level!r}")
        if self.prediction_type not in ("eps", "v"):
            raise ValueError(f"prediction_type must be 'eps' or 'v', got {self.prediction_type!r}")
        ddim_timesteps(self.num_steps)  # raises a ValueError for a bad step count
        limit = max_eta(self.num_steps)
        if self.eta > limit:
            raise ValueError(f"eta must be <= {limit:.4f} for a {self.num_steps}-step DDIM schedule "
                             f"(above it sigma^2 > 1 - alpha_bar_prev), got {self.eta}")


class SampleNoise:
    """Per-sample, per-purpose noise streams, so that sample k of a batch equals the same seed run alone.

    Each user generator seeds four CPU streams: "init" (the start latent, one draw), "step" (DDIM eta noise,
    one draw per denoise call when eta > 0), "background" (one draw per blend with a noisy source) and "renoise"
    (one draw per RePaint jump). Separate streams keep e.g. masked and unmasked runs on the same step noise.

    Draws are prefetched: up to `chunk` draws of a purpose are generated at once on the CPU (each stream still
    draws one sample-sized tensor at a time, so the values do not depend on the chunk), copied to the device in one
    transfer (pinned and non-blocking on CUDA), and handed out one by one. `counts` caps each purpose's prefetch at
    the number of draws the loop will make, so nothing is drawn in vain.
    """

    PURPOSES = ("init", "step", "background", "renoise")

    def __init__(self, generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device | str = "cpu",
                 counts: dict[str, int] | None = None, chunk: int = 16):
        self.shape = tuple(shape[1:])  # one sample: [C, h, w]
        self.device = torch.device(device)
        self.chunk = max(1, chunk)
        self.remaining = dict(counts or {})
        self.streams: dict[str, list[torch.Generator]] = {p: [] for p in self.PURPOSES}
        self._ready: dict[str, list[torch.Tensor]] = {p: [] for p in self.PURPOSES}
        for gen in generators:
            seeds = torch.randint(0, 2**62, (len(self.PURPOSES),), generator=gen, device=gen.device).tolist()
            for purpose, seed in zip(self.PURPOSES, seeds):
                self.streams[purpose].append(torch.Generator().manual_seed(seed))

    def draw(self, purpose: str) -> torch.Tensor:
        """Standard normal noise [B, C, h, w], float32, on the device."""
        ready = self._ready[purpose]
        if not ready:
            n = max(1, min(self.chunk, self.remaining.get(purpose, self.chunk)))
            block = torch.stack([torch.stack([torch.randn(self.shape, generator=g, dtype=torch.float32)
                                              for g in self.streams[purpose]]) for _ in range(n)])  # [n, B, C, h, w]
            if self.device.type == "cuda":
                block = block.pin_memory().to(self.device, non_blocking=True)
            elif block.device != self.device:
                block = block.to(self.device)
            ready.extend(reversed(block.unbind(0)))   # popped from the end: first draw last
        if purpose in self.remaining:
            self.remaining[purpose] -= 1
        return ready.pop()


@dataclass
class _Level:
    """Everything one DDIM index needs, computed once before the loop."""

    t: int  # DDPM timestep of the step
    t_batch: torch.Tensor  # [B] long, the same t as fed to the model
    alpha_bar_t: float  # level the step starts from
    alpha_bar_prev: float  # level the step lands on
    alpha_bar_bg: float | None  # level of the blended background; None = clean source


def _validate(shape, source, mask, generators, config) -> tuple[int, ...]:
    """Check the inputs of `sample`; return the latent shape [B, C, h, w]."""
    if source is None and shape is None:
        raise ValueError("give either shape (sampling from noise) or source (blending / SDEdit)")
    if source is not None:
        if source.ndim != 4:
            raise ValueError(f"source must be [B, C, h, w], got shape {tuple(source.shape)}")
        src_shape = (len(generators), *source.shape[1:])
        if source.shape[0] not in (1, len(generators)):
            raise ValueError(f"source batch {source.shape[0]} must be 1 or len(generators) = {len(generators)}")
        if shape is not None and tuple(shape) != src_shape:
            raise ValueError(f"shape {tuple(shape)} does not match source {src_shape}")
        shape = src_shape
    if len(shape) != 4 or shape[0] != len(generators):
        raise ValueError(f"shape must be [B, C, h, w] with B = len(generators) = {len(generators)}, got {tuple(shape)}")
    if source is None and (mask is not None or config.strength < 1.0):
        raise ValueError("a mask or strength < 1 needs a source latent")
    if mask is not None:
        if mask.ndim != 4 or mask.shape[0] not in (1, shape[0]) or mask.shape[1] not in (1, shape[1]):
            raise ValueError(f"mask must be [B or 1, 1 or C, h, w] for latents {tuple(shape)}, got {tuple(mask.shape)}")
        if tuple(mask.shape[2:]) != tuple(shape[2:]):
            raise ValueError(f"mask size {tuple(mask.shape[2:])} differs from latent size {tuple(shape[2:])}")
        if bool(((mask < 0) | (mask > 1)).any()):  # one host sync per call
            raise ValueError("mask values must lie in [0, 1] (1 = edit, 0 = keep)")
    return tuple(shape)


def _levels(config: SamplerConfig, alpha_bar: torch.Tensor, batch: int, device: torch.device) -> list[_Level]:
    """Per DDIM index i: model timestep, alpha_bar before/after the step and the background level."""
    timesteps = ddim_timesteps(config.num_steps, len(alpha_bar))
    a, a_prev = ddim_alpha_bars(alpha_bar, timesteps)
    bg = a_prev if config.background_level == "reached" else a
    levels = []
    for i, t in enumerate(timesteps):
        a_bg = None if (i == 0 and config.clean_final) else bg[i]
        t_batch = torch.full((batch,), t, dtype=torch.long, device=device)
        levels.append(_Level(t, t_batch, a[i], a_prev[i], a_bg))
    return levels


def zero_mean(noise: torch.Tensor) -> torch.Tensor:
    """Noise `[B, C, h, w]` with each channel's spatial mean removed and its spatial std set to 1.

    The start noise's per-channel mean has std 1/sqrt(h*w): 1/64 for SD's 64x64 latents, 1/16 for the toy world's
    16x16 ones, where it is as large as the signal left at t = T and sets the colour of the whole image (the
    toy model's backgrounds come out saturated). Off by default; measured in `+experiment=toy_quality`.
    """
    centred = noise - noise.mean(dim=(2, 3), keepdim=True)
    return centred / centred.std(dim=(2, 3), keepdim=True)


def _start_latent(source, n_run: int, levels: list[_Level], noise: torch.Tensor, config, alpha_bar):
    """x at the first step: pure noise (strength 1) or the source noised to the SDEdit start level."""
    if config.strength == 1.0:
        return noise  # the reference starts from pure noise at strength 1, not from q_sample(source, t=981)
    a_start = levels[n_run - 1].alpha_bar_t
    if config.sdedit_ref_alpha0:  # reference: q(x_t | x_0) with a_t / a_0, i.e. signal sqrt(a_t / 0.99915)
        return renoise(source, float(alpha_bar[0]), a_start, noise)
    return q_sample(source, a_start, noise)


def _denoise(eps_fn, x, level: _Level, config: SamplerConfig, noise: SampleNoise):
    """One guided DDIM step from level.alpha_bar_t to level.alpha_bar_prev; returns (x_prev, x0_hat)."""
    out = eps_fn(x, level.t_batch).float()  # [B, C, h, w]
    eps = predict_eps(x, out, level.alpha_bar_t) if config.prediction_type == "v" else out
    step_noise = noise.draw("step") if config.eta > 0 else None
    return ddim_step(x, eps, level.alpha_bar_t, level.alpha_bar_prev, config.eta, step_noise)


def _blend(x, source, mask, keep, level: _Level, noise: SampleNoise) -> torch.Tensor:
    """Replace the known region (mask 0) by the source at the background level (Blended Latent Diffusion)."""
    if level.alpha_bar_bg is None:
        background = source
    else:
        background = q_sample(source, level.alpha_bar_bg, noise.draw("background"))
    return mask * x + keep * background


def _draw_counts(ops: list, levels: list[_Level], config: SamplerConfig, blended: bool) -> dict[str, int]:
    """How many draws of each noise purpose the loop makes (for the prefetch)."""
    denoise = [op[1] for op in ops if op[0] == "denoise"]
    return {"init": 1, "step": len(denoise) if config.eta > 0 else 0,
            "background": sum(levels[i].alpha_bar_bg is not None for i in denoise) if blended else 0,
            "renoise": sum(op[0] == "renoise" for op in ops)}


def sample(
    model: ModelFn,
    config: SamplerConfig,
    *,
    generators: Sequence[torch.Generator],
    context: torch.Tensor | None = None,
    uncond_context: torch.Tensor | None = None,
    shape: Sequence[int] | None = None,
    source: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Sample latents with DDIM + CFG, optionally blending into `source` outside `mask`, with RePaint and SDEdit.

    model: callable (x_t [N, C, h, w] float32, t LongTensor [N], context [N, L, D]) -> eps (or v).
    generators: one torch.Generator per sample; sample k depends only on generators[k].
    shape: [B, C, h, w] when sampling from noise; otherwise taken from source ([B or 1, C, h, w]).
    mask: [B or 1, 1 or C, h, w] in [0, 1], 1 = edit, 0 = keep; None = no blending.
    callback(n, t, x, x0_hat): after the n-th denoising call (counting RePaint repeats), with t the DDPM step it
    started from, x the latent after the step and blend, x0_hat the model's predicted clean latent.
    Returns float32 latents [B, C, h, w] (not clamped).
    """
    # 1. Inputs, device, noise streams
    shape = _validate(shape, source, mask, generators, config)
    device = source.device if source is not None else (context.device if context is not None else torch.device("cpu"))
    if source is not None:
        source = source.to(device, torch.float32).expand(shape)
    # 2. Schedule: noise levels per DDIM index, SDEdit truncation, operation list
    alpha_bar = sd_alphas_cumprod()
    levels = _levels(config, alpha_bar, shape[0], device)
    n_run = len(levels) if config.strength == 1.0 else sdedit_start(config.strength, config.num_steps, alpha_bar).num_steps_run
    if n_run == 0:
        return source.clone()  # strength 0: no diffusion, as the reference (used by its decoder re-decode)
    ops = repaint_schedule(n_run, config.repaint_steps, config.repaint_jump)
    noise = SampleNoise(generators, shape, device, _draw_counts(ops, levels, config, mask is not None))
    # 3. Start latent and the guided eps function
    init = noise.draw("init")
    x = _start_latent(source, n_run, levels, zero_mean(init) if config.zero_mean_init else init, config, alpha_bar)
    eps_fn = guided_model(model, context, uncond_context, config.guidance_scale)
    if mask is not None:
        mask = mask.to(device, torch.float32)
        keep = 1.0 - mask
    # 4. Loop: denoise -> blend -> callback, and RePaint renoise jumps
    n_denoise = sum(op[0] == "denoise" for op in ops)
    bar = tqdm(total=n_denoise, desc="DDIM", disable=not config.progress, leave=False)
    n = 0
    for op in ops:
        if op[0] == "renoise":
            _, i_lo, i_hi = op
            x = renoise(x, levels[i_lo].alpha_bar_prev, levels[i_hi].alpha_bar_t, noise.draw("renoise"))
            continue
        level = levels[op[1]]
        x, x0_hat = _denoise(eps_fn, x, level, config, noise)
        if mask is not None:
            x = _blend(x, source, mask, keep, level, noise)
        if callback is not None:
            callback(n, level.t, x, x0_hat)
        n += 1
        bar.update(1)
    bar.close()
    return x
