"""Upscaling modes, the spandrel-loaded ESRGAN (toy-sized RRDBNet file) and the low-passed reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldm.models.rrdbnet import RRDBNet
from msbd.mask import resize_image
from msbd.toy.sr_model import TOY_SR, export_sr, init_nearest_upsampler
from msbd.upscale import esrgan_x4, load_upscaler, lowpass_reference, upsample


@pytest.fixture(scope="module")
def sr_file(tmp_path_factory):
    torch.manual_seed(1)
    model = init_nearest_upsampler(RRDBNet(TOY_SR))
    path = tmp_path_factory.mktemp("sr") / "toy-sr.safetensors"
    export_sr(model, str(path))
    return path


def test_esrgan_loads_through_spandrel_and_upscales_x4(sr_file):
    up = load_upscaler(sr_file)
    x = torch.rand(1, 3, 12, 10)
    y = esrgan_x4(x, up)
    assert y.shape == (1, 3, 48, 40) and 0 <= y.min() and y.max() <= 1
    # near-identity init: close to a nearest x4 upsample
    assert (y - F.interpolate(x, scale_factor=4, mode="nearest")).abs().mean() < 0.1


def test_esrgan_channel_order(sr_file):
    """RGB in by default; swap_channels reproduces the reference's BGR-swapped call."""
    up = load_upscaler(sr_file)
    x = torch.rand(1, 3, 8, 8)
    plain, swapped = esrgan_x4(x, up), esrgan_x4(x, up, swap_channels=True)
    torch.testing.assert_close(swapped, esrgan_x4(x.flip(1), up).flip(1))
    assert not torch.allclose(plain, swapped)


def test_upsample_esrgan_is_one_pass_then_resize(sr_file):
    # as the reference (outscale=4): one x4 pass, then bilinear-AA to the target, down (x2.5) or up (x17.5);
    # never a chain of passes, whose last one would be far larger than the target
    up = load_upscaler(sr_file)
    x = torch.rand(1, 3, 4, 5)
    for target in ((10, 12), (70, 90)):
        y = upsample(x, target, "esrgan", up)
        assert y.shape == (1, 3, *target)
        torch.testing.assert_close(y, resize_image(esrgan_x4(x, up), target).clamp(0, 1))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "sharpen"])
def test_interpolating_modes(mode):
    x = torch.rand(1, 3, 10, 12)
    y = upsample(x, (25, 30), mode)
    assert y.shape == (1, 3, 25, 30) and 0 <= y.min() and y.max() <= 1
    if mode == "sharpen":  # unsharp mask raises local contrast above plain bilinear
        assert y.std() > upsample(x, (25, 30), "bilinear").std()


def test_upsample_identity_and_errors():
    x = torch.rand(1, 3, 8, 8)
    assert upsample(x, (8, 8), "esrgan") is x
    with pytest.raises(ValueError, match="needs an upscaler"):
        upsample(x, (16, 16), "esrgan")
    with pytest.raises(ValueError, match="unknown upscaling mode"):
        upsample(x, (16, 16), "nearest-ish")


def test_lowpass_reference_modes():
    ref = torch.rand(1, 3, 32, 48)
    assert lowpass_reference(ref, (8, 12), "no") is ref
    matching = lowpass_reference(ref, (8, 12), "matching")
    torch.testing.assert_close(matching, resize_image(resize_image(ref, (8, 12)), (32, 48)))
    half = lowpass_reference(ref, (8, 12), "half")
    torch.testing.assert_close(half, resize_image(resize_image(ref, (16, 24)), (32, 48)))
    # blur removes high frequencies: the stronger low-pass is farther from the sharp reference
    assert (matching - ref).abs().mean() > (half - ref).abs().mean() > 0
