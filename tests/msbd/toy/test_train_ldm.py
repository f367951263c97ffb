"""The toy LDM training modules learn: a few optimiser steps on one batch lower each loss."""
import numpy as np
import pytest
import torch

from ldm.config import get_preset
from msbd.toy.train_ldm import (LDMLitModule, LDMTrainConfig, VAELitModule, VAETrainConfig, latent_blur,
                                 LatentCaptionDataset, latent_scale_factor, object_cells)


def _steps(module, batch, optimizer, n):
    module.log = module.log_dict = lambda *a, **k: None
    losses = []
    for _ in range(n):
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_vae_module_overfits_one_batch():
    torch.manual_seed(0)
    module = VAELitModule(get_preset("tiny-test").vae, VAETrainConfig(lr=2e-3))
    ramp = torch.linspace(-0.8, 0.8, 16)
    image = torch.stack([ramp.view(1, -1) * ramp.view(-1, 1), ramp.view(1, -1).expand(16, 16), -ramp.view(-1, 1).expand(16, 16)])
    image = image.expand(4, 3, 16, 16).contiguous()   # smooth images: learnable in a few steps
    losses = _steps(module, image, module.configure_optimizers(), 30)
    assert losses[-1] < 0.7 * losses[0]


def test_vae_equivariance_term_trains_the_pooled_latent_decode():
    torch.manual_seed(0)
    cfg = get_preset("tiny-test").vae
    ramp = torch.linspace(-0.8, 0.8, 32)
    image = torch.stack([ramp.view(1, -1) * ramp.view(-1, 1), ramp.view(1, -1).expand(32, 32), -ramp.view(-1, 1).expand(32, 32)])
    image = image.expand(2, 3, 32, 32).contiguous()

    def pooled_error(module):
        with torch.no_grad():
            z = module.vae.encode_moments(image)[0]
            return torch.nn.functional.l1_loss(module.vae.decode(torch.nn.functional.avg_pool2d(z, 2)),
                                               torch.nn.functional.avg_pool2d(image, 2)).item()

    errors = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        module = VAELitModule(cfg, VAETrainConfig(lr=2e-3, equivariance_weight=weight))
        start = pooled_error(module)
        _steps(module, image, module.configure_optimizers(), 30)
        errors[weight] = pooled_error(module) / start
    assert errors[1.0] < 0.8 * errors[0.0], errors       # the term is what lowers the pooled-latent error
    with pytest.raises(ValueError, match="equivariance_weight"):
        VAETrainConfig(equivariance_weight=-1)


def test_vae_latent_blur_term_trains_the_blurred_latent_decode():
    torch.manual_seed(0)
    cfg = get_preset("tiny-test").vae
    image = torch.zeros(2, 3, 32, 32)
    image[:, :, 8:24, 8:24] = 0.8                    # a square: its corners are what a blurred latent loses
    image[1, :, 8:24, 8:16] = -0.8

    def blurred_error(module):
        with torch.no_grad():
            z = module.vae.encode_moments(image)[0]
            return torch.nn.functional.l1_loss(module.vae.decode(latent_blur(z)), image).item()

    errors = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        module = VAELitModule(cfg, VAETrainConfig(lr=2e-3, latent_blur_weight=weight))
        _steps(module, image, module.configure_optimizers(), 120)   # at 30 steps neither decodes the square yet
        errors[weight] = blurred_error(module)
    assert errors[1.0] < 0.6 * errors[0.0], errors       # the term is what lowers the blurred-latent error
    with pytest.raises(ValueError, match="latent_blur_weight"):
        VAETrainConfig(latent_blur_weight=-1)


def test_ldm_module_overfits_one_batch_and_tracks_ema():
    torch.manual_seed(0)
    cfg = get_preset("tiny-test")
    module = LDMLitModule(cfg.unet, cfg.text, LDMTrainConfig(lr=2e-3))
    batch = (torch.randn(4, 4, 8, 8), torch.randint(0, 49408, (4, 77)))
    optimizer = torch.optim.Adam(list(module.unet.parameters()) + list(module.text_encoder.parameters()), lr=2e-3)
    torch.manual_seed(1)
    before = _steps(module, batch, optimizer, 1)[0]
    _steps(module, batch, optimizer, 40)
    torch.manual_seed(1)
    with torch.no_grad():
        after = module.training_step(batch, 0).item()
    assert after < before
    ema_before = [p.clone() for p in module.ema_unet.parameters()]
    module.on_train_batch_end(None, batch, 0)
    moved = any(not torch.equal(a, p) for a, p in zip(ema_before, module.ema_unet.parameters()))
    assert moved


def test_frozen_text_encoder_stays_put_while_the_unet_trains():
    """train_text=False (SD v1's frozen CLIP text tower): the optimiser holds only UNet parameters, the text
    encoder gets no gradient and neither it nor its EMA copy changes, while the UNet does."""
    torch.manual_seed(0)
    cfg = get_preset("tiny-test")
    module = LDMLitModule(cfg.unet, cfg.text, LDMTrainConfig(lr=2e-3, train_text=False))
    source = {k: v + 0.01 for k, v in module.text_encoder.state_dict().items()}
    module.load_text_encoder(source)
    optimizer = module.configure_optimizers()["optimizer"]
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in module.unet.parameters()}
    batch = (torch.randn(4, 4, 8, 8), torch.randint(0, 49408, (4, 77)))
    unet_before = [p.clone() for p in module.unet.parameters()]
    _steps(module, batch, optimizer, 3)
    module.on_train_batch_end(None, batch, 0)
    assert all(p.grad is None for p in module.text_encoder.parameters())
    for m in (module.text_encoder, module.ema_text):
        for k, v in m.state_dict().items():
            torch.testing.assert_close(v, source[k], rtol=0, atol=0)
    assert any(not torch.equal(a, p) for a, p in zip(unet_before, module.unet.parameters()))


def test_latent_scale_factor_is_inverse_std():
    latents = torch.randn(64, 4, 8, 8) * 5.0
    assert abs(latent_scale_factor(latents) - 1 / latents.std().item()) < 1e-4


def test_min_snr_weighting_only_lowers_low_noise_terms():
    cfg = get_preset("tiny-test")
    module = LDMLitModule(cfg.unet, cfg.text, LDMTrainConfig())
    batch = (torch.randn(4, 4, 8, 8), torch.randint(0, 49408, (4, 77)))
    losses = {}
    for gamma in (0.0, 5.0, 1e9):
        module.train_config = LDMTrainConfig(snr_gamma=gamma)
        torch.manual_seed(3)
        with torch.no_grad():
            losses[gamma] = module.training_step(batch, 0).item()
    assert losses[5.0] < losses[0.0]                     # weights min(SNR, 5) / SNR <= 1, < 1 where SNR > 5
    assert abs(losses[1e9] - losses[0.0]) < 1e-6 * losses[0.0]   # a huge gamma is plain MSE


def test_object_cells_marks_saturated_pixels_per_latent_cell_dilated_by_one():
    images = np.full((2, 32, 32, 3), 128, np.uint8)             # grey: no object
    images[0, 8:16, 8:16] = (230, 30, 30)                        # a red square filling latent cell (1, 1) of 4 x 4
    images[0, 0:4, 24:32] = (30, 30, 230)                        # half of cell (0, 3)
    images[0, 28:32, 0:8] = (120, 110, 100)                      # a muted patch: background, not an object
    cells = object_cells(images, 8)
    assert cells.shape == (2, 1, 4, 4) and cells[1].sum() == 0
    expected = torch.zeros(4, 4)
    expected[0:3, 0:3] = 1.0                                     # cell (1, 1) and its 8 neighbours
    expected[0:2, 2:4] = torch.maximum(expected[0:2, 2:4], torch.tensor(0.5))
    torch.testing.assert_close(cells[0, 0], expected)


def test_object_weight_weighs_the_eps_error_of_object_cells():
    cfg = get_preset("tiny-test")
    module = LDMLitModule(cfg.unet, cfg.text, LDMTrainConfig())
    module.log = lambda *a, **k: None
    z0, ids = torch.randn(2, 4, 8, 8), torch.randint(0, 49408, (2, 77))
    weights = torch.zeros(2, 1, 8, 8)
    weights[:, :, 2:5, 2:5] = 1.0
    errors = {}
    original_unet = module.unet.forward
    module.unet.forward = lambda x, t, c: original_unet(x, t, c) * 0 + errors["eps_hat"]
    for weight in (0.0, 4.0):
        module.train_config = LDMTrainConfig(object_weight=weight)
        torch.manual_seed(3)
        torch.randint(0, 1000, (2,))                             # training_step draws t, then the noise
        eps = torch.randn(2, 4, 8, 8)
        errors["eps_hat"] = eps.clone()
        errors["eps_hat"][:, :, 2:5, 2:5] += 1.0                 # the model is wrong only on the object cells
        torch.manual_seed(3)
        with torch.no_grad():
            errors[weight] = module.training_step((z0, ids, weights), 0).item()
    area = 9 / 64
    assert abs(errors[0.0] - area) < 1e-5                                  # plain mean: the wrong share
    assert abs(errors[4.0] - 5 * area / (1 + 4 * area)) < 1e-5             # weight 5 there, mean weight normalised
    dataset = LatentCaptionDataset(z0, ids, ids[0], 0.0, weights)
    assert len(dataset[1]) == 3 and torch.equal(dataset[1][2], weights[1])
    with pytest.raises(ValueError, match="object_weight"):
        LDMTrainConfig(object_weight=-1)


def test_offset_noise_adds_one_constant_per_sample_and_channel_to_the_target():
    cfg = get_preset("tiny-test")
    module = LDMLitModule(cfg.unet, cfg.text, LDMTrainConfig())
    module.log = lambda *a, **k: None
    z0, ids = torch.randn(3, 4, 8, 8), torch.randint(0, 49408, (3, 77))
    seen = {}
    original_unet = module.unet.forward
    module.unet.forward = lambda x, t, c: original_unet(x, t, c) * 0 + seen.setdefault("x", x) * 0
    targets = {}
    for offset in (0.0, 0.5):
        module.train_config = LDMTrainConfig(offset_noise=offset)
        seen.clear()
        torch.manual_seed(3)
        with torch.no_grad():
            targets[offset] = module.training_step((z0, ids), 0).item()          # eps_hat = 0: loss = E[eps^2]
        t = (torch.manual_seed(3), torch.randint(0, 1000, (3,)))[1]
        a = module.alpha_bar[t].view(-1, 1, 1, 1)
        eps = (seen["x"] - a.sqrt() * z0) / (1 - a).sqrt()                       # the noise that was added
        plain = (torch.manual_seed(3), torch.randint(0, 1000, (3,)), torch.randn_like(z0))[2]
        shift = eps - plain                                                      # what offset noise added
        torch.testing.assert_close(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-4, rtol=0)
        assert (shift.abs().max() < 1e-4) == (offset == 0.0)
        assert abs(targets[offset] - eps.pow(2).mean().item()) < 1e-4            # the UNet is asked for eps + offset
    with pytest.raises(ValueError, match="offset_noise"):
        LDMTrainConfig(offset_noise=-0.1)


def test_lr_factor_warmup_constant_then_cosine():
    plain = LDMTrainConfig(warmup_steps=10)
    assert plain.lr_factor(0) == 0.1 and plain.lr_factor(9) == 1.0 and plain.lr_factor(10**6) == 1.0
    decay = LDMTrainConfig(warmup_steps=10, decay_start=100, max_steps=300)
    assert decay.lr_factor(100) == 1.0
    assert abs(decay.lr_factor(200) - 0.5) < 1e-12 and decay.lr_factor(300) == 0.0 and decay.lr_factor(400) == 0.0
    assert decay.lr_factor(150) > decay.lr_factor(250)
    with pytest.raises(ValueError, match="decay_start"):
        LDMTrainConfig(decay_start=300, max_steps=300)
    with pytest.raises(ValueError, match="snr_gamma"):
        LDMTrainConfig(snr_gamma=-1)
