"""Latent diffusion stack (Stable Diffusion v1 layout), written from scratch.

`ldm.models` holds the networks (UNet, VAE, CLIP text encoder) with CompVis parameter names,
`ldm.sampling` the DDIM / blended / RePaint / SDEdit sampler, `ldm.checkpoint` the loaders.
Nothing here imports `msbd`, Hydra or a device of its own choosing.
"""
