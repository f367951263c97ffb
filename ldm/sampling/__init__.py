"""Diffusion schedules and the DDIM sampler with blending, RePaint and SDEdit starts."""
