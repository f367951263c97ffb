"""The toy ×4 SR net: spandrel recognises the export, near-identity init, L1 overfit, PSNR, resumable fit."""
import os

import numpy as np
import spandrel
import torch

from ldm.models.rrdbnet import RRDBNet, RRDBNetConfig
from msbd.toy.data import SRPatches
from msbd.toy.fit import LAST_CKPT, fit_resumable
from msbd.toy.sr_model import (TOY_SR, SRLitModule, bicubic_x4, export_sr, init_nearest_upsampler, load_sr, psnr)


def test_export_is_spandrel_esrgan_x4_and_agrees(tmp_path):
    torch.manual_seed(0)
    model = init_nearest_upsampler(RRDBNet(TOY_SR)).eval()
    path = str(tmp_path / "sr.safetensors")
    export_sr(model, path)
    descriptor = spandrel.ModelLoader().load_from_file(path)
    assert descriptor.architecture.id == "ESRGAN"
    assert descriptor.scale == 4
    ours = load_sr(path)
    assert ours.config == TOY_SR
    x = torch.rand(1, 3, 10, 12)
    with torch.inference_mode():
        ref = descriptor.model.float().eval()(x)
        out = ours(x)
        stored = model.half().float()(x)                    # the module with its weights rounded to fp16
    assert out.shape == (1, 3, 40, 48)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, stored, rtol=0, atol=0)
    assert os.path.getsize(path) < 2 * sum(p.numel() for p in model.parameters()) + 20_000   # fp16


def test_init_starts_near_nearest_upsampling():
    torch.manual_seed(0)
    model = init_nearest_upsampler(RRDBNet(RRDBNetConfig(num_feat=16, num_block=1)))
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        out = model(x)
    nearest = torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")
    assert (psnr(out, nearest) > 20).all()


def test_psnr_by_hand():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.full((2, 3, 4, 4), 0.1)                      # mse 0.01 -> 20 dB
    torch.testing.assert_close(psnr(x, y), torch.tensor([20.0, 20.0]))
    flat = torch.full((1, 3, 4, 4), 0.3)
    torch.testing.assert_close(bicubic_x4(flat), torch.full((1, 3, 16, 16), 0.3))


def _patch_caches() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    image = np.zeros((48, 48, 3), np.uint8)
    image[:, 20:] = (200, 40, 90)                           # a flat shape with a sharp edge
    image[30:, :] = rng.integers(0, 255, 3, dtype=np.uint8)
    return [image[None]]


def test_training_steps_reduce_l1():
    torch.manual_seed(0)
    module = SRLitModule(num_feat=16, num_block=1, lr=1e-3, warmup_steps=1, max_steps=1000)
    module.log = lambda *args, **kwargs: None
    optimizer = module.configure_optimizers()["optimizer"]
    dataset = SRPatches(_patch_caches(), patch=16, length=4, seed=0)
    batch = tuple(torch.stack(t) for t in zip(*[dataset[i] for i in range(4)]))
    losses = []
    for step in range(15):
        loss = module.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]          # observed: 0.048 -> 0.036 (the init already upsamples)


def test_fit_is_resumable(tmp_path):
    dataset = SRPatches(_patch_caches(), patch=16, length=64, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    first = fit_resumable(SRLitModule(num_feat=8, num_block=1, max_steps=4), loader, str(tmp_path), 1.0,
                          max_steps=2)
    assert first.global_step == 2 and os.path.exists(tmp_path / LAST_CKPT)
    module = SRLitModule(num_feat=8, num_block=1, max_steps=4)
    second = fit_resumable(module, loader, str(tmp_path), 1.0, max_steps=3)
    assert second.global_step == 3                         # one more step after the two restored ones
    saved = torch.load(tmp_path / LAST_CKPT, weights_only=False)["state_dict"]
    torch.testing.assert_close(saved["model.conv_first.weight"], module.model.conv_first.weight)


def test_time_limited_fit_checkpoints_its_final_state(tmp_path):
    dataset = SRPatches(_patch_caches(), patch=16, length=10**5, seed=0)   # no epoch end
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    module = SRLitModule(num_feat=8, num_block=1, max_steps=10**6)
    trainer = fit_resumable(module, loader, str(tmp_path), max_minutes=0.05, max_steps=10**6,   # stops on time
                            checkpoint_minutes=0.005)                 # after interval checkpoints
    assert 1 < trainer.global_step < 10**6
    saved = torch.load(tmp_path / LAST_CKPT, weights_only=False)
    assert saved["global_step"] == trainer.global_step     # a re-run re-exports exactly what was exported
    torch.testing.assert_close(saved["state_dict"]["model.conv_last.weight"], module.model.conv_last.weight)
