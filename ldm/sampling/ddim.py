"""DDIM update rules and forward noising as pure functions (Song et al. 2021, "Denoising Diffusion Implicit Models").

Notation (code name -> paper symbol; DDIM eq. 12 with alpha_t of DDIM = alpha_bar_t of DDPM):
    x_t            -> x_t, the latent at the current noise level
    eps            -> eps_theta(x_t), the predicted noise
    x0_hat         -> "predicted x_0" = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
    alpha_bar_t    -> alpha_t (DDIM), prod_{s<=t} (1 - beta_s) at the current level
    alpha_bar_prev -> alpha_{t-1} (DDIM), the level the step lands on
    sigma_t        -> sigma_t(eta) = eta * sqrt((1 - a_prev)/(1 - a_t)) * sqrt(1 - a_t/a_prev)   (DDIM eq. 16)
    noise          -> eps_t ~ N(0, I), the fresh noise of the stochastic part (diffusers: variance_noise)
    v              -> v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022), for v-prediction

The noise levels enter as python floats (schedules are float64; see schedule.py) so one step costs a handful of
tensor ops. All functions are pure: tensors in, tensors out, randomness passed in as a tensor.
"""
from __future__ import annotations

import math

import torch


def ddim_sigma(alpha_bar_t: float, alpha_bar_prev: float, eta: float) -> float:
    """sigma_t(eta) of DDIM eq. 16; eta = 1 is DDPM's posterior std, eta = 0 is deterministic DDIM."""
    return eta * math.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_prev))


def eta_limit(alpha_bar_t: float, alpha_bar_prev: float) -> float:
    """Largest eta of one DDIM step: sigma_t(eta)^2 = 1 - a_prev, where the eps direction of eq. 12 vanishes.

    eta^2 = (1 - a_t) / (1 - a_t / a_prev); about 1.05 for SD's 50-step schedule (its step 1 binds), 1.09 for 100.
    """
    return math.sqrt((1.0 - alpha_bar_t) / (1.0 - alpha_bar_t / alpha_bar_prev))


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) (DDIM eq. 9 / 12, "predicted x_0")."""
    return (x_t - math.sqrt(1.0 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)


def predict_eps(x_t: torch.Tensor, v: torch.Tensor, alpha_bar_t: float) -> torch.Tensor:
    """eps from a v-prediction: eps = sqrt(a_t) v + sqrt(1 - a_t) x_t (Salimans & Ho 2022, app. D)."""
    return math.sqrt(alpha_bar_t) * v + math.sqrt(1.0 - alpha_bar_t) * x_t


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    eta: float,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step (DDIM eq. 12): returns (x_prev, x0_hat).

    x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma noise. x0_hat is not clipped.
    `noise` is required when eta > 0 and ignored when eta == 0.
    """
    x0_hat = predict_x0(x_t, eps, alpha_bar_t)
    sigma = ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)
    dir_var = 1.0 - alpha_bar_prev - sigma**2  # variance left for the eps direction; < 0 when eta is too large
    if dir_var < -1e-12:
        limit = eta_limit(alpha_bar_t, alpha_bar_prev)
        raise ValueError(f"eta must be <= {limit:.6g} for a DDIM step from alpha_bar {alpha_bar_t:.6g} to "
                         f"{alpha_bar_prev:.6g} (sigma^2 <= 1 - alpha_bar_prev), got {eta}")
    x_prev = math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(max(dir_var, 0.0)) * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs a noise tensor")
        x_prev = x_prev + sigma * noise
    return x_prev, x0_hat


def q_sample(x0: torch.Tensor, alpha_bar: float, noise: torch.Tensor) -> torch.Tensor:
    """Forward noising q(x_t | x_0) = N(sqrt(a) x_0, (1 - a) I) (DDPM eq. 4)."""
    return math.sqrt(alpha_bar) * x0 + math.sqrt(1.0 - alpha_bar) * noise


def renoise(x: torch.Tensor, alpha_bar_from: float, alpha_bar_to: float, noise: torch.Tensor) -> torch.Tensor:
    """Re-noise from a lower to a higher noise level: q(x_to | x_from), a = a_to / a_from (RePaint Alg. 1 l.10 across a jump).

    This is the composition of the DDPM forward steps between the two levels, so a sample of q(x_from | x_0)
    becomes a sample of q(x_to | x_0).
    """
    if alpha_bar_to > alpha_bar_from:
        raise ValueError(f"renoise goes up in noise: alpha_bar_to {alpha_bar_to} > alpha_bar_from {alpha_bar_from}")
    ratio = alpha_bar_to / alpha_bar_from
    return math.sqrt(ratio) * x + math.sqrt(1.0 - ratio) * noise
