"""A toy inpainting UNet, fine-tuned from the shipped toy UNet the way the released SD inpainting models were.

RunwayML's sd-v1-5-inpainting and Stability's 512-inpainting-ema start from the plain UNet, add five input channels
(the latent-size mask and the latent of the masked image, `ldm.sampling.inpaint`) whose conv_in weights are
zero-initialised, so training starts from the plain model's behaviour, and train on random masks with a share of
fully masked images (which keeps text-to-image alive). Here, per training scene (held apart from the toy UNet's
own training seeds):
* half are edit tasks of the toy world (`random_edit_task`: the mask of a task, the image with the added object,
  the object's prompt): the toy analogue of a mask over an object the caption names;
* a quarter are random masks (ellipses, boxes, thick strokes, centred on an object half of the time) with the
  whole scene's caption;
* a quarter are fully masked (the masked image is mid-grey everywhere) with the whole scene's caption.
Departure, forced by the 30 MB budget msbd/toy/weights had when the shipped overlay was made (a second full UNet
is 8.9 MB in fp16, 3 MB were left): only `TRAINED_PREFIXES` are trained (conv_in, the encoder's two finest levels,
the decoder's finest level and a half, the output head: 1.07 M of 4.45 M parameters), and only they ship, as an
overlay on the toy UNet (`ldm.checkpoint` reads a safetensors file whose metadata names its base). With the 64 MB
budget of issue 18, `scripts/train_toy_inpaint.py --trained all` fine-tunes the whole UNet (the released recipe). Loss: eps MSE with min-SNR 5, caption
dropout 0.1, AdamW, EMA of the trained weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

TRAINED_PREFIXES = (                           # UNet parameters that are fine-tuned (and shipped)
    "input_blocks.0.", "input_blocks.1.", "input_blocks.2.", "input_blocks.3.", "input_blocks.4.", "input_blocks.5.",
    "output_blocks.4.", "output_blocks.5.", "output_blocks.6.", "output_blocks.7.", "output_blocks.8.", "out.",
)
KINDS = ("object", "random", "full")
KIND_SHARES = (0.5, 0.25, 0.25)


@dataclass
class InpaintTrainConfig:
    lr: float = 1e-4
    warmup_steps: int = 50
    batch_size: int = 32
    caption_dropout: float = 0.1
    ema_decay: float = 0.998
    snr_gamma: float = 5.0
    max_minutes: float = 25.0       # wall-clock budget of the optimisation (summed over resumed runs)
    checkpoint_every: int = 50      # steps


def random_mask(rng: np.random.Generator, size: int, image: np.ndarray | None = None) -> np.ndarray:
    """A procedural training mask [size, size] bool: an ellipse, a box or 1-3 thick strokes, centred on an object
    pixel (chroma >= 0.4, the analyser's rule) half of the time when the image has one."""
    centre = rng.uniform(0.15, 0.85, 2) * size
    if image is not None and rng.random() < 0.5:
        chroma = image.max(axis=-1).astype(np.int16) - image.min(axis=-1)
        ys, xs = np.nonzero(chroma >= 0.4 * 255)
        if len(ys):
            k = rng.integers(len(ys))
            centre = np.array([xs[k], ys[k]], dtype=np.float64)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    kind = rng.choice(["ellipse", "box", "strokes"])
    if kind == "ellipse":
        rx, ry = rng.uniform(0.1, 0.35, 2) * size
        return ((xx - centre[0]) / rx) ** 2 + ((yy - centre[1]) / ry) ** 2 <= 1
    if kind == "box":
        hx, hy = rng.uniform(0.08, 0.3, 2) * size
        return (abs(xx - centre[0]) <= hx) & (abs(yy - centre[1]) <= hy)
    mask = np.zeros((size, size), bool)
    for _ in range(rng.integers(1, 4)):
        width = rng.uniform(0.05, 0.15) * size
        p = centre + rng.normal(0, 0.1 * size, 2)
        for _ in range(rng.integers(2, 5)):                         # a polyline of 1-4 segments
            q = np.clip(p + rng.normal(0, 0.25 * size, 2), 0, size)
            d = q - p
            t = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
            mask |= (xx - p[0] - t * d[0]) ** 2 + (yy - p[1] - t * d[1]) ** 2 <= (width / 2) ** 2
            p = q
    return mask


def make_sample(seed: int, size: int) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(image uint8 [size, size, 3], mask bool [size, size], caption, kind) of one training scene."""
    from msbd.toy import scenes
    rng = np.random.default_rng([seed, 19])
    kind = KINDS[int(rng.choice(len(KINDS), p=KIND_SHARES))]
    task = scenes.random_edit_task(seed)
    image = np.asarray(scenes.render(task.target, size))
    if kind == "object":
        return image, scenes.render_mask(task, size), task.prompt, kind
    if kind == "full":
        return image, np.ones((size, size), bool), scenes.caption(task.target), kind
    return image, random_mask(rng, size, image), scenes.caption(task.target), kind


def inpaint_unet_from(plain_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain UNet's state dict with conv_in widened from its C latent channels to 2C + 1 inputs (mask, masked
    latent), the new ones zero (the released recipe)."""
    state = dict(plain_state)
    w = state["input_blocks.0.0.weight"]                                        # [O, C, 3, 3]
    extra = torch.zeros(w.shape[0], w.shape[1] + 1, *w.shape[2:], dtype=w.dtype)
    state["input_blocks.0.0.weight"] = torch.cat([w, extra], dim=1)             # [O, 2C + 1, 3, 3]
    return state


def is_trained(name: str) -> bool:
    return name.startswith(TRAINED_PREFIXES)


def lr_factor(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup)


def loss_fn(unet, alpha_bar: torch.Tensor, z0: torch.Tensor, cond: torch.Tensor, context: torch.Tensor,
            snr_gamma: float, gen: torch.Generator) -> torch.Tensor:
    """eps MSE of the inpainting UNet on [z_t, mask_z, z_masked], min-SNR-gamma weighted."""
    from ldm.sampling.inpaint import inpaint_input
    t = torch.randint(0, len(alpha_bar), (z0.shape[0],), generator=gen)
    a = alpha_bar[t].view(-1, 1, 1, 1)
    eps = torch.randn(z0.shape, generator=gen)
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
    err = F.mse_loss(unet(inpaint_input(z_t, cond), t, context), eps, reduction="none").mean(dim=(1, 2, 3))
    snr = alpha_bar[t] / (1 - alpha_bar[t])
    return (err * snr.clamp(max=snr_gamma) / snr).mean() if snr_gamma > 0 else err.mean()


def ema_update(ema: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter], step: int, decay: float) -> None:
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for name, p in params.items():
            ema[name].lerp_(p.detach(), 1 - d)

