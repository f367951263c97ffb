"""The toy quality helpers: the latent blur and the latent-blur shape check of the shipped VAE."""
import json

import torch

from msbd.toy import presets
from msbd.toy.quality import latent_blur, measure_latent_blur


def test_latent_blur_is_a_normalised_binomial_filter():
    flat = torch.full((1, 4, 6, 6), 0.7)
    torch.testing.assert_close(latent_blur(flat), flat)                 # constants pass unchanged
    impulse = torch.zeros(1, 4, 5, 5)
    impulse[0, 2, 2, 2] = 16.0
    out = latent_blur(impulse)
    expected = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]])
    torch.testing.assert_close(out[0, 2, 1:4, 1:4], expected)
    assert out[0, [0, 1, 3]].abs().max() == 0                             # channels stay separate


def test_shipped_vae_keeps_shapes_but_loses_them_under_a_latent_blur():
    from msbd.models import build_bundle
    with open(presets.LDM_CONFIG) as f:
        scale = json.load(f)["scale_factor"]
    bundle = build_bundle(presets.toy_ldm_config(scale), presets.LDM_WEIGHTS)
    figures = measure_latent_blur(bundle, n=8)
    assert figures["vae_shape_kept"] == 1.0                               # the decoder draws every outline
    assert figures["vae_shape_kept_latent_blur"] < figures["vae_shape_kept"]   # the finding in the README
