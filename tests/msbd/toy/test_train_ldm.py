"""The toy LDM training modules learn: a few optimiser steps on one batch lower each loss."""
import torch

from ldm.config import get_preset
from msbd.toy.train_ldm import LDMLitModule, LDMTrainConfig, VAELitModule, VAETrainConfig, latent_scale_factor


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


def test_latent_scale_factor_is_inverse_std():
    latents = torch.randn(64, 4, 8, 8) * 5.0
    assert abs(latent_scale_factor(latents) - 1 / latents.std().item()) < 1e-4
