"""Mask convention and the §4 resampling rules (centre sampling, not dilation), plus dilation."""
import pytest
import torch
import torch.nn.functional as F

from msbd.mask import (binarize, dilate_mask, dilation_kernel_size, interpolate_image_mask, latent_mask,
                       resize_image, resize_mask)


def test_binarize_reference_threshold():
    values = torch.tensor([0, 1, 127, 128, 255], dtype=torch.float32) / 255
    assert binarize(values).tolist() == [0, 0, 0, 1, 1]


def test_latent_mask_is_centre_sampling():
    # §4: with f = 8, latent cell (i, j) is 1 iff one of the 2x2 central pixels (8i+3..8i+4) is masked.
    torch.manual_seed(1)
    mask = (torch.rand(1, 1, 64, 96) > 0.97).float()
    image = torch.rand(1, 3, 64, 96)
    image_out, mask_px, mask_z = interpolate_image_mask(image, mask, (64, 96))
    assert torch.equal(image_out, image) and torch.equal(mask_px, mask)
    centre = mask[0, 0].reshape(8, 8, 12, 8)[:, 3:5, :, 3:5]  # [i, 2, j, 2]
    expected = centre.amax(dim=(1, 3))
    assert mask_z.shape == (1, 1, 8, 12) and torch.equal(mask_z[0, 0], expected)
    assert torch.equal(latent_mask(mask_px), mask_z)


def test_first_stage_factor_24_samples_pixels_11_and_12():
    # S=1536 -> 64x64 latent: samples 24i+11 and 24i+12 (checked along one axis with a 1536x48 strip).
    mask = torch.zeros(1, 1, 1536, 48)
    mask[0, 0, 24 * 5 + 11] = 1      # hits latent row 5
    mask[0, 0, 24 * 9 + 13] = 1      # between samples: vanishes
    mask_z = resize_mask(mask, (64, 2))
    assert mask_z[0, 0, :, 0].nonzero().flatten().tolist() == [5]


def test_thin_line_vanishes_and_pixel_mask_rule():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 10, :] = 1  # one-pixel line on row 10: 8*1+3 = 11 and 12 are not sampled
    assert latent_mask(mask).sum() == 0
    down = resize_mask(mask, (32, 32))  # f = 2: samples 2i+0.5 -> rows 10 and 11 give row 5
    assert down[0, 0, :, 0].nonzero().flatten().tolist() == [5]
    assert set(down.unique().tolist()) <= {0.0, 1.0}


def test_resize_image_antialiased():
    image = torch.zeros(1, 3, 64, 64)
    image[..., ::4, :] = 1  # every 4th row: plain bilinear samples rows 4i+1, 4i+2 and sees none of them
    out = resize_image(image, (16, 16))
    plain = F.interpolate(image, size=(16, 16), mode="bilinear", align_corners=False)
    assert plain.abs().max() == 0
    assert torch.allclose(out[..., 1:-1, :], torch.full_like(out[..., 1:-1, :], 0.25), atol=0.05)
    assert resize_image(image, (64, 64)) is image


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_dilation_matches_ones_kernel_convolution(k):
    torch.manual_seed(k)
    mask = (torch.rand(1, 1, 20, 24) > 0.9).float()
    conv = F.conv2d(mask, torch.ones(1, 1, k, k), padding="same")
    assert torch.equal(dilate_mask(mask, k), (conv >= 1).float())
    with pytest.raises(ValueError):
        dilate_mask(mask, 4)


def test_dilation_schedule():
    assert [dilation_kernel_size(p) for p in (0.0, 0.24, 0.25, 0.49, 0.5, 0.74, 0.75, 1.2)] == [
        7, 7, 5, 5, 3, 3, 1, 1]
