"""The toy world's ×4 super-resolution net: a small RRDBNet (Real-ESRGAN layout), trained with L1 on renders.

MSBD upscales its stage-1 edit with Real-ESRGAN (RRDBNet x4plus, 16.7 M parameters). The toy world ships the same
architecture at ~0.9 M parameters (`TOY_SR`), trained as Real-ESRNet is (pixel L1 loss, no GAN stage) on pairs
(degrade(HR), HR) of HR patches cut from scene renders at 256-1024 px (`msbd.toy.data.degrade`); `clean_prob`
makes a share of the LR patches plain bicubic-AA downscales (0 for the shipped weights). The exported fp16
safetensors keeps the Real-ESRGAN parameter names, so spandrel loads it as ESRGAN ×4.

Evaluation (`eval_sr`): held-out scenes rendered at 256 px; LR = the mildest training degradation, i.e. a plain
bicubic-antialiased ×4 downscale rounded to 8 bits (`msbd.toy.data.MILDEST`); PSNR (peak 1, whole frame, outputs
clamped to [0, 1]) of the SR output and of a bicubic ×4 upscale of the same LR, averaged over images. The same
figures on LR made with random training degradations are reported as well (`*_degraded`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ldm.models.rrdbnet import RRDBNet, RRDBNetConfig, rrdbnet_config_from_state_dict
from msbd.toy.data import (MILDEST, DegradationConfig, SRPatches, degrade, images_to_tensor, render_cache,
                           render_seed, seed_range)
from msbd.toy.fit import adamw_with_schedule, fit_resumable

# spandrel assumes a growth width of 32, so it stays at the Real-ESRGAN value while the trunk shrinks.
TOY_SR = RRDBNetConfig(num_feat=32, num_block=2, num_grow_ch=32)
EVAL_SIZE = 256


@torch.no_grad()
def init_nearest_upsampler(model: RRDBNet, scale: float = 0.1) -> RRDBNet:
    """Initialise so that the net starts as a nearest-neighbour ×4 upsampler plus a small random residual.

    Every weight is scaled by `scale` (Real-ESRGAN scales its dense-block init by 0.1 too) and biases are zeroed;
    then the first 3 channels carry the RGB input through conv_first, conv_up1, conv_up2, conv_hr and conv_last
    as centre taps of 1. Inputs in [0, 1] are positive, so the leaky ReLUs pass them unchanged. Training from
    there reaches bicubic quality within a few steps instead of first having to learn to copy colours.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.weight.mul_(scale)
            module.bias.zero_()
    eye = torch.eye(3)
    for conv in (model.conv_first, model.conv_up1, model.conv_up2, model.conv_hr, model.conv_last):
        conv.weight[:3, :3, 1, 1] += eye
    return model


class SRLitModule(pl.LightningModule):
    """L1 training of a ×4 RRDBNet. A batch is (LR `[B, 3, P/4, P/4]`, HR `[B, 3, P, P]`), both in [0, 1]."""

    def __init__(self, num_feat: int = TOY_SR.num_feat, num_block: int = TOY_SR.num_block, lr: float = 5e-4,
                 warmup_steps: int = 50, max_steps: int = 2000):
        super().__init__()
        self.save_hyperparameters()
        self.model = init_nearest_upsampler(RRDBNet(RRDBNetConfig(num_feat=num_feat, num_block=num_block,
                                                                  num_grow_ch=32)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        lr_image, hr_image = batch
        loss = F.l1_loss(self.model(lr_image), hr_image)
        self.log("train/l1", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> dict:
        groups = [{"params": list(self.model.parameters()), "weight_decay": 0.0}]
        return adamw_with_schedule(self, groups, self.hparams.lr, self.hparams.warmup_steps, self.hparams.max_steps)


def export_sr(model: RRDBNet, path: str) -> None:
    """Save the Real-ESRGAN-layout state dict in fp16 safetensors (spandrel: ESRGAN, scale 4)."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, path, metadata={"format": "Real-ESRGAN RRDBNet", "scale": "4"})


def load_sr(path: str) -> RRDBNet:
    """An fp32 RRDBNet in eval mode from a Real-ESRGAN-layout safetensors file (sizes inferred from the weights)."""
    if not os.path.isfile(path):
        raise ValueError(f"SR weights not found: {path}")
    state = {k: v.float() for k, v in load_file(path).items()}
    model = RRDBNet(rrdbnet_config_from_state_dict(state))
    model.load_state_dict(state, strict=True)
    return model.eval()


def bicubic_x4(lr_image: torch.Tensor) -> torch.Tensor:
    """The baseline: bicubic ×4 upscale of `[B, 3, h, w]`, clamped to [0, 1]."""
    return F.interpolate(lr_image, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB with peak 1: `[B, C, H, W]` x2 -> `[B]`."""
    mse = (x - y).pow(2).flatten(1).mean(dim=1).clamp_min(1e-12)
    return -10.0 * torch.log10(mse)


@torch.no_grad()
def eval_sr(model: torch.nn.Module, n: int = 16, offset: int = 0, size: int = EVAL_SIZE) -> dict:
    """PSNR (dB) of SR vs bicubic on `n` held-out scenes at `size` px; see the module docstring for the protocol."""
    if n < 1 or size % 4:
        raise ValueError(f"need n >= 1 and a size divisible by 4, got n={n}, size={size}")
    was_training = model.training
    model.eval()
    sums = {"psnr_sr": 0.0, "psnr_bicubic": 0.0, "psnr_sr_degraded": 0.0, "psnr_bicubic_degraded": 0.0}
    for i, seed in enumerate(seed_range("heldout", n, offset)):
        hr = images_to_tensor(render_seed(seed, size, size)[0][None])          # [1, 3, size, size]
        for suffix, config in (("", MILDEST), ("_degraded", DegradationConfig())):
            lr_image = degrade(hr[0], np.random.default_rng((seed, i)), config)[None]
            sums["psnr_sr" + suffix] += psnr(model(lr_image).clamp(0, 1), hr).item()
            sums["psnr_bicubic" + suffix] += psnr(bicubic_x4(lr_image), hr).item()
    model.train(was_training)
    metrics = {k: v / n for k, v in sums.items()}
    metrics["gain_db"] = metrics["psnr_sr"] - metrics["psnr_bicubic"]
    metrics["gain_db_degraded"] = metrics["psnr_sr_degraded"] - metrics["psnr_bicubic_degraded"]
    return metrics


@dataclass(frozen=True)
class SRTrainConfig:
    sizes: tuple[int, ...] = (256, 512, 1024)     # render sizes of the HR caches
    n_scenes: tuple[int, ...] = (256, 64, 16)     # scenes per size (similar pixel counts)
    patch: int = 128                              # HR patch; LR patch = patch / 4
    batch_size: int = 16
    lr: float = 5e-4
    warmup_steps: int = 50
    max_steps: int = 2000                         # schedule length; training also stops at max_minutes
    eval_n: int = 16
    clean_prob: float = 0.0                       # share of plain bicubic-AA LR patches (the evaluation's LR)
    edge_prob: float = 0.0                        # share of patches centred on an object outline (else uniform)

    def __post_init__(self) -> None:
        if len(self.sizes) != len(self.n_scenes) or not self.sizes:
            raise ValueError(f"sizes and n_scenes must pair up, got {self.sizes} and {self.n_scenes}")
        if not 0.0 <= self.clean_prob <= 1.0:
            raise ValueError(f"clean_prob must lie in [0, 1], got {self.clean_prob}")
        if not 0.0 <= self.edge_prob <= 1.0:
            raise ValueError(f"edge_prob must lie in [0, 1], got {self.edge_prob}")
        if self.patch % 4 or self.patch > min(self.sizes):
            raise ValueError(f"patch must be divisible by 4 and fit in every render, got {self.patch}")


def train_sr(out_dir: str, max_minutes: float, seed: int, config: SRTrainConfig = SRTrainConfig(),
             cache_dir: str | None = None) -> dict:
    """Train the toy ×4 RRDBNet (resumable from out_dir/last.ckpt), export out_dir/sr.safetensors (fp16), evaluate.

    Returns (and writes to out_dir/metrics.json) the export path, steps done and the `eval_sr` figures.
    """
    # 1. data: HR render caches at several sizes (disjoint training seed ranges), patches drawn on the fly
    pl.seed_everything(seed, workers=True)
    cache_dir = os.path.join(out_dir, "cache") if cache_dir is None else cache_dir
    caches, offset = [], 0
    for size, n in zip(config.sizes, config.n_scenes):
        caches.append(render_cache(cache_dir, seed_range("train", n, offset), size).images)
        offset += n
    dataset = SRPatches(caches, config.patch, length=config.max_steps * config.batch_size, seed=seed,
                        config=DegradationConfig(clean_prob=config.clean_prob), edge_prob=config.edge_prob)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=False, drop_last=True)
    # 2. fit (time-boxed, resumable)
    module = SRLitModule(lr=config.lr, warmup_steps=config.warmup_steps, max_steps=config.max_steps)
    trainer = fit_resumable(module, loader, out_dir, max_minutes, config.max_steps)
    # 3. export fp16 and evaluate the exported weights
    path = os.path.join(out_dir, "sr.safetensors")
    export_sr(module.model, path)
    metrics = {"weights": path, "steps": trainer.global_step, "config": asdict(config), "seed": seed,
               **eval_sr(load_sr(path), config.eval_n)}
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics
