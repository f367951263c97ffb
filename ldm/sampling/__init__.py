"""Diffusion schedules and the DDIM sampler with blending, RePaint and SDEdit starts."""
from .ddim import ddim_step, predict_eps, predict_x0, q_sample, renoise
from .guidance import cfg_combine, guided_model
from .loop import SampleNoise, SamplerConfig, sample
from .schedule import ddim_timesteps, max_eta, repaint_schedule, sd_alphas_cumprod, sdedit_start, sdedit_steps

__all__ = [
    "SampleNoise", "SamplerConfig", "cfg_combine", "ddim_step", "ddim_timesteps", "guided_model", "max_eta", "predict_eps",
    "predict_x0", "q_sample", "renoise", "repaint_schedule", "sample", "sd_alphas_cumprod", "sdedit_start", "sdedit_steps",
]
