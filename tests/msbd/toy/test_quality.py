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
    from ldm.config import LDMConfig
    with open(presets.LDM_CONFIG) as f:
        bundle = build_bundle(LDMConfig.from_dict(json.load(f)), presets.LDM_WEIGHTS)   # the shipped sizes
    figures = measure_latent_blur(bundle, n=8)
    assert figures["vae_shape_kept"] == 1.0                               # the decoder draws every outline
    assert figures["vae_shape_kept_latent_blur"] < figures["vae_shape_kept"]   # the finding in the README


def test_inpainting_figures_count_shape_only_with_one_object_of_the_right_colour(monkeypatch):
    """measure_inpainting on a stand-in editor: the ground truth (the prompt's object drawn in) succeeds with its
    shape; the same object with another shape succeeds without it; an unchanged image fails both."""
    from dataclasses import replace

    import numpy as np

    import msbd.pipeline
    from msbd.config import MSBDConfig
    from msbd.toy.quality import inpainting_tasks, measure_inpainting
    from msbd.toy.scenes import render
    tasks = inpainting_tasks(3)
    other = {"circle": "square", "square": "triangle", "triangle": "star", "star": "circle"}

    class Result:
        def __init__(self, image):
            self.image = image

    def fake_run(image, mask, prompt, cfg, bundle):
        task = tasks[cfg.seed]                                 # measure_inpainting seeds edit k with k
        if cfg.seed == 0:                                      # the ground truth
            return Result(np.asarray(render(task.target, 128)))
        if cfg.seed == 1:                                      # the right colour, the wrong shape
            wrong = replace(task.target, objects=task.source.objects + (replace(task.obj, shape=other[task.obj.shape]),))
            return Result(np.asarray(render(wrong, 128)))
        return Result(image)                                   # nothing painted

    monkeypatch.setattr(msbd.pipeline, "run_msbd", fake_run)
    figures, _ = measure_inpainting(None, MSBDConfig.for_native_size(128), n=3)
    assert figures["inpaint_success"] == 2 / 3 and figures["inpaint_shape_acc"] == 1 / 3
    assert figures["inpaint_outside_unchanged"] == 1.0
