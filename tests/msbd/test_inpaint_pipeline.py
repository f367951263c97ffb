"""run_msbd with an inpainting UNet (9 input channels) and with a v-prediction UNet: tiny random weights.

Every UNet call of every stage (first stage, stage ladder, grid tiles with both fusions, the baselines) must get
the 9-channel input [x_t, mask_z, z_masked], the mask channel must hold the stage's mask, and every pixel outside
the mask must stay byte-identical (the known region is still blended).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from _pipeline_helpers import scene, tiny_config
from ldm.config import TINY_TEST
from msbd.baselines import naive
from msbd.models import build_bundle
from msbd.pipeline import run_msbd


@pytest.fixture(scope="module")
def bundle():
    b = build_bundle("tiny-test", seed=0, inpainting=True)
    assert b.inpainting and b.unet.config.in_channels == 9
    return b


def _record_inputs(bundle):
    seen: list[torch.Tensor] = []
    handle = bundle.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen, handle


@pytest.mark.parametrize("fusion", ["alpha", "latent"])
def test_every_stage_feeds_the_nine_channel_input_and_keeps_the_outside(bundle, fusion):
    image, mask = scene()
    seen, handle = _record_inputs(bundle)
    try:
        result = run_msbd(image, mask, "a red cube", tiny_config(grid__fusion=fusion), bundle)
    finally:
        handle.remove()
    assert [s.name.split()[0] for s in result.stages] == ["first", "stage1"] and "(grid)" in result.stages[-1].name
    assert sum(s.model_calls for s in result.stages) == len(seen) > 0
    assert all(x.shape[1] == 9 for x in seen)
    mask_channels = torch.cat([x[:, 4].flatten() for x in seen])
    assert set(mask_channels.unique().tolist()) == {0.0, 1.0}            # binary, and both kinds of cell occur
    first_calls = result.stages[0].model_calls
    assert all(0 < x[:, 4].mean() < 1 for x in seen[:first_calls])     # the first stage's crop holds mask and not
    keep = mask < 0.5
    assert np.array_equal(result.image[keep], image[keep])
    assert not np.array_equal(result.image, image)


def test_conditioning_is_the_stage_mask_in_the_first_stage(bundle):
    """The mask channel of the first stage is the crop's mask, nearest-downsampled: 1 over the mask's cells."""
    image, mask = scene(64, 64, (16, 16, 48, 48))                        # the crop is the whole 64 x 64 image
    seen, handle = _record_inputs(bundle)
    try:
        result = run_msbd(image, mask, "a red cube", tiny_config(), bundle)
    finally:
        handle.remove()
    assert result.plan.square.height == 64
    m = seen[0][0, 4]                                                     # 32 px first stage -> 16 x 16 latent
    expected = torch.zeros(16, 16)
    expected[4:12, 4:12] = 1
    assert torch.equal(m, expected)


def test_baseline_runs_with_an_inpainting_unet(bundle):
    image, mask = scene()
    seen, handle = _record_inputs(bundle)
    try:
        out = naive(image, mask, "a red cube", tiny_config(), bundle, size=64)
    finally:
        handle.remove()
    assert seen and all(x.shape[1] == 9 for x in seen)
    keep = mask < 0.5
    assert np.array_equal(out[keep], image[keep])


def test_v_prediction_bundle_passes_its_parameterisation_to_the_sampler():
    v_config = dataclasses.replace(TINY_TEST, prediction_type="v")
    eps_bundle, v_bundle = build_bundle(TINY_TEST, seed=0), build_bundle(v_config, seed=0)
    assert (eps_bundle.prediction_type, v_bundle.prediction_type) == ("eps", "v")
    image, mask = scene()
    a = run_msbd(image, mask, "a red cube", tiny_config(), eps_bundle)
    b = run_msbd(image, mask, "a red cube", tiny_config(), v_bundle)
    assert a.image.tobytes() != b.image.tobytes()                      # same weights, other update: other bytes
    keep = mask < 0.5
    assert np.array_equal(b.image[keep], image[keep])
