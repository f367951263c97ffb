"""Noise schedules of Stable Diffusion v1: betas, alpha-bar, DDIM timesteps, RePaint and SDEdit schedules.

Everything here is computed in float64 (or as python ints) and cast at the point of use. The DDPM index `t`
(0..999) and the DDIM index `i` (0 = least noisy) are kept apart: `timesteps[i]` is the `t` that DDIM step `i`
starts from. The spacing follows the CompVis latent-diffusion code ("uniform" with a +1 offset), which is also
diffusers' DDIMScheduler with `timestep_spacing='leading', steps_offset=1` (DDIM, Song et al. 2021, sec. 4.2;
schedule of Rombach et al. 2022). See docs/SAMPLER.md for the semantics and the differences from the MSBD reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .ddim import eta_limit

SD_BETA_START = 0.00085
SD_BETA_END = 0.012
SD_NUM_TRAIN_STEPS = 1000

# A RePaint schedule is a list of operations: ("denoise", i) runs DDIM step i (from the level of timesteps[i]
# down to the level of step i - 1), ("renoise", i_lo, i_hi) undoes DDIM steps i_hi..i_lo: it takes x from the
# level reached after step i_lo back up to the level step i_hi starts from (RePaint Alg. 1 l.10, across a jump).
Op = tuple


def scaled_linear_betas(
    beta_start: float = SD_BETA_START, beta_end: float = SD_BETA_END, num_train_steps: int = SD_NUM_TRAIN_STEPS
) -> torch.Tensor:
    """Betas linear in sqrt space (LDM "linear", diffusers "scaled_linear"), float64 [num_train_steps]."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_steps, dtype=torch.float64) ** 2


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s), in float64 (DDPM eq. 4 notation)."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def sd_alphas_cumprod() -> torch.Tensor:
    """alpha_bar of SD v1 (and SD 2.x): 1000 scaled-linear betas from 0.00085 to 0.012, float64 [1000]."""
    return alphas_cumprod(scaled_linear_betas())


def ddim_timesteps(num_steps: int, num_train_steps: int = SD_NUM_TRAIN_STEPS) -> list[int]:
    """DDPM timesteps of the DDIM steps, "uniform + 1" spacing, least noisy first: N=50 gives [1, 21, ..., 981].

    With c = num_train_steps // num_steps the list is [0, c, 2c, ...] + 1 (all entries below num_train_steps).
    As in the reference, a num_steps that does not divide num_train_steps gives *more* steps (60 -> 63,
    30 -> 31); we follow it so that the noise levels match, and callers should use len() of the result.
    Where the reference would step at t = num_train_steps (and crash), that step is left out (3 -> [1, 334, 667]).
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool):
        raise ValueError(f"num_steps must be an int, got {num_steps!r}")
    max_steps = num_train_steps // 2  # c = 1 would put the +1 offset at t = num_train_steps, out of range
    if num_steps <= 0 or num_steps > max_steps:
        raise ValueError(f"num_steps must be in 1..{max_steps} for uniform+1 spacing, got {num_steps}")
    stride = num_train_steps // num_steps
    # Bug fix: when the last start is num_train_steps - 1 (stride divides 999: N = 3, 9, 27, 101..111, 250..333),
    # the reference's +1 indexes alpha_bar[1000] and crashes; that step is dropped.
    return [t + 1 for t in range(0, num_train_steps, stride) if t + 1 < num_train_steps]


def ddim_alpha_bars(alpha_bar: torch.Tensor, timesteps: list[int]) -> tuple[list[float], list[float]]:
    """Per DDIM step i: (alpha_bar at timesteps[i], alpha_bar of the level step i lands on), as python floats.

    The level after step 0 is alpha_bar[0] = 0.99915, not 1.0, as in the reference (diffusers: set_alpha_to_one=False).
    """
    a = [float(alpha_bar[t]) for t in timesteps]
    a_prev = [float(alpha_bar[0])] + a[:-1]
    return a, a_prev


def max_eta(num_steps: int, alpha_bar: torch.Tensor | None = None) -> float:
    """The largest DDIM eta that every step of the `num_steps` schedule allows (sigma^2 <= 1 - alpha_bar_prev).

    Above it eq. 12 has no real eps coefficient. SD v1: 1.0003 at 2 steps, 1.0456 at 50, 1.092 at 100. We
    reject larger values rather than clamp sigma (which would change what eta means step by step).
    """
    alpha_bar = sd_alphas_cumprod() if alpha_bar is None else alpha_bar
    a, a_prev = ddim_alpha_bars(alpha_bar, ddim_timesteps(num_steps, len(alpha_bar)))
    return min(eta_limit(a_t, a_p) for a_t, a_p in zip(a, a_prev))


def repaint_schedule(num_steps: int, repaint_steps: int = 0, jump: int = 0) -> list[Op]:
    """Explicit list of denoise/renoise operations for RePaint resampling over DDIM steps num_steps-1..0.

    Windows follow RePaint's `get_schedule_jump` (Lugmayr et al. 2022): steps 1..j, j+1..2j, ..., k*j+1..(k+1)*j
    for every full window with (k+1)*j < num_steps. Step 0 (Alg. 1's t = 1) is never resampled, nor are the top
    steps above the last full window. Each window is run `repaint_steps + 1` times in total, with a renoise from
    the level reached after its lowest step back to the level its highest step starts from between passes.
    jump 0 and 1 both mean one step per window (the reference's j = 0). repaint_steps = 0 gives plain DDIM:
    [("denoise", n-1), ..., ("denoise", 0)]. Differences from the reference (see docs/SAMPLER.md): no index
    wrap-around at step 0, and r counts extra passes for every jump (the reference's j > 0 uses r - 1 extra passes).
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if repaint_steps < 0 or jump < 0:
        raise ValueError(f"repaint_steps and jump must be >= 0, got {repaint_steps}, {jump}")
    jump = max(jump, 1)
    n_windows = (num_steps - 1) // jump  # full windows [k*j + 1, (k+1)*j] below num_steps
    top = n_windows * jump  # steps top+1..num_steps-1 are run once
    ops: list[Op] = [("denoise", i) for i in range(num_steps - 1, top, -1)]
    for k in reversed(range(n_windows)):
        i_lo, i_hi = k * jump + 1, (k + 1) * jump
        for p in range(repaint_steps + 1):
            ops += [("denoise", i) for i in range(i_hi, i_lo - 1, -1)]
            if p < repaint_steps:
                ops.append(("renoise", i_lo, i_hi))
    ops.append(("denoise", 0))
    return ops


@dataclass(frozen=True)
class SDEditStart:
    """Where an SDEdit run starts: the first `num_steps_run` DDIM steps are run, from DDPM step `t_start`."""

    num_steps_run: int  # DDIM steps actually run (0 = return the source unchanged)
    t_start: int  # DDPM timestep of the first step (= timesteps[num_steps_run - 1])
    alpha_bar_start: float  # alpha_bar at t_start; the start latent is sqrt(a) * source + sqrt(1 - a) * noise
    noise_std: float  # sqrt(1 - alpha_bar_start)


def sdedit_start(strength: float, num_steps: int, alpha_bar: torch.Tensor | None = None) -> SDEditStart:
    """Convert an SDEdit strength (fraction of the DDIM steps run) to steps run and start t, as the reference does.

    strength 0.4 with 100 steps runs the 40 least-noisy steps, from t = 391 (alpha_bar 0.439, noise std 0.749).
    The reference computes int(N * strength); we add 1e-9 before flooring so that 0.29 * 100 = 28.999... gives 29.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    alpha_bar = sd_alphas_cumprod() if alpha_bar is None else alpha_bar
    timesteps = ddim_timesteps(num_steps, len(alpha_bar))
    n_run = math.floor(strength * len(timesteps) + 1e-9)
    if n_run == 0:
        if strength > 0:
            raise ValueError(f"strength {strength} runs 0 of {len(timesteps)} steps; use 0 or >= {1 / len(timesteps):.4g}")
        return SDEditStart(0, 0, 1.0, 0.0)
    t_start = timesteps[n_run - 1]
    a = float(alpha_bar[t_start])
    return SDEditStart(n_run, t_start, a, math.sqrt(1.0 - a))


def sdedit_steps(strength: float, num_steps: int) -> tuple[int, int]:
    """(number of DDIM steps run, DDPM t of the first step) for an SDEdit strength; see `sdedit_start`."""
    start = sdedit_start(strength, num_steps)
    return start.num_steps_run, start.t_start
