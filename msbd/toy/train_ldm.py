"""Training of the toy world's latent diffusion models: the VAE, then the UNet with its text encoder.

Both are the `ldm` classes at tiny sizes (see `msbd/toy/presets.py`), trained from scratch with
pytorch-lightning on procedural renders. The VAE follows the KL-autoencoder recipe of latent diffusion
(reconstruction + a very small KL term; an edge term stands in for the perceptual and GAN losses that
are too costly here). The UNet learns eps-prediction on the SD-v1 schedule, with caption dropout for
classifier-free guidance, and keeps an EMA of its weights. The text encoder is trained jointly from scratch
(`train_text=True`) or, as SD v1 does with CLIP ViT-L/14's, is a contrastively trained CLIP text tower held frozen
(`train_text=False`, the shipped recipe: train_toy.py's `ldm.freeze_text` loads the toy CLIP's). Four options
depart from the plain recipe: `snr_gamma` (min-SNR-gamma loss weighting, Hang et al. 2023), a cosine decay
of the learning rate from `decay_start` to `max_steps`, `object_weight` (more eps loss on the latent cells
around objects, whose outlines are a small part of a 16 x 16 latent of a textured scene) and `offset_noise`
(Guttenberg 2023: eps gets a per-sample, per-channel constant of this std, so that the UNet does not read the
image's mean colour off the start noise; on a 16 x 16 latent the noise's own channel means have std 1/16, four
times SD's at 64 x 64); all are off here by default (configs/train_toy.yaml sets the shipped recipe's). Sampling
is SD's in every case.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ldm.models.autoencoder import AutoencoderConfig, AutoencoderKL
from ldm.models.clip_text import CLIPTextConfig, CLIPTextEncoder
from ldm.models.unet import UNetConfig, UNetModel
from ldm.sampling.schedule import alphas_cumprod, scaled_linear_betas
from msbd.toy.quality import latent_blur


# ----------------------------------------------------------------------------------------------------------
# VAE


@dataclass
class VAETrainConfig:
    lr: float = 4e-4
    kl_weight: float = 1e-6        # as latent diffusion's kl-f8 config
    edge_weight: float = 0.5       # L1 on image gradients: keeps edges crisp without a GAN
    crop: int = 64                 # random crops of the 128 px renders (the VAE is convolutional)
    batch_size: int = 32
    equivariance_weight: float = 0.0   # > 0: decode(avgpool2(z)) must match avgpool2(image) too (see VAELitModule)
    latent_blur_weight: float = 0.0    # > 0: decode(latent_blur(z)) must reconstruct the image too (see VAELitModule)

    def __post_init__(self) -> None:
        for name in ("equivariance_weight", "latent_blur_weight", "edge_weight", "kl_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or self.batch_size < 1 or self.crop < 8 or self.crop % 8:
            raise ValueError(f"need lr > 0, batch_size >= 1 and a crop that is a multiple of 8, got lr {self.lr}, "
                             f"batch_size {self.batch_size}, crop {self.crop}")


class ImageCropDataset(Dataset):
    """Random square crops (and flips) of a uint8 [N, H, W, 3] array, as float images in [-1, 1]."""

    def __init__(self, images, crop: int, seed: int = 0):
        self.images, self.crop, self.seed = images, crop, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 127.5 - 1.0  # [3, H, W]
        _, h, w = image.shape
        top = int(torch.randint(0, h - self.crop + 1, ()))
        left = int(torch.randint(0, w - self.crop + 1, ()))
        image = image[:, top:top + self.crop, left:left + self.crop]
        return image.flip(-1) if torch.rand(()) < 0.5 else image


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


class VAELitModule(pl.LightningModule):
    """KL-autoencoder training. With `equivariance_weight` > 0 (a departure from the latent diffusion recipe, off by
    default) a scale-equivariance term is added: the latent average-pooled by 2 must decode to the image
    average-pooled by 2 (the regulariser of Skorokhodov et al. 2025, "Improving the diffusability of autoencoders").
    Measured on the plain toy VAE: a 3x3 blur of the latent turns a star or square into a smaller round blob, i.e.
    the outline lives in the latent's high frequencies, which an MSE-trained UNet regresses away.
    With `latent_blur_weight` > 0 (also off by default) the latent after `latent_blur` must decode to the image
    itself: the encoder is pushed to put outlines into frequencies that survive a mild blur (costs some PSNR)."""

    def __init__(self, model_config: AutoencoderConfig, train_config: VAETrainConfig):
        super().__init__()
        self.vae = AutoencoderKL(model_config)
        self.train_config = train_config

    def training_step(self, image: torch.Tensor, batch_idx: int) -> torch.Tensor:
        mean, logvar = self.vae.encode_moments(image)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        recon = self.vae.decode(z)
        rec = F.l1_loss(recon, image) + F.mse_loss(recon, image)
        (gy, gx), (ry, rx) = image_gradients(image), image_gradients(recon)
        edge = F.l1_loss(ry, gy) + F.l1_loss(rx, gx)
        kl = 0.5 * torch.mean(mean.pow(2) + logvar.exp() - 1.0 - logvar)
        loss = rec + self.train_config.edge_weight * edge + self.train_config.kl_weight * kl
        if self.train_config.equivariance_weight > 0:
            small, target = self.vae.decode(F.avg_pool2d(z, 2)), F.avg_pool2d(image, 2)
            equivariance = F.l1_loss(small, target) + F.mse_loss(small, target)
            loss = loss + self.train_config.equivariance_weight * equivariance
            self.log("equivariance", equivariance, prog_bar=True)
        if self.train_config.latent_blur_weight > 0:
            blurred = self.vae.decode(latent_blur(z))
            blur_loss = F.l1_loss(blurred, image) + F.mse_loss(blurred, image)
            loss = loss + self.train_config.latent_blur_weight * blur_loss
            self.log("blur", blur_loss, prog_bar=True)
        with torch.no_grad():
            psnr = -10 * torch.log10(F.mse_loss((recon.clamp(-1, 1) + 1) / 2, (image + 1) / 2))
        self.log_dict({"loss": loss, "psnr": psnr, "kl": kl}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.vae.parameters(), lr=self.train_config.lr, weight_decay=0.0)


class DecoderLitModule(pl.LightningModule):
    """Fine-tunes a trained VAE's decoder side (post_quant_conv and decoder) with its encoder frozen, as Stability's
    sd-vae-ft-mse did for SD's VAE: the latents, their scale factor, and so the UNet trained on them stay as they
    are, while the reconstructions improve. The decoder sees posterior samples, the latents the UNet learnt to
    produce; the loss is the VAE's reconstruction and edge terms (`VAETrainConfig`: lr, edge_weight, crop,
    batch_size; no KL, since the posterior is fixed)."""

    def __init__(self, model_config: AutoencoderConfig, train_config: VAETrainConfig):
        super().__init__()
        self.vae = AutoencoderKL(model_config)
        self.train_config = train_config
        for frozen in (self.vae.encoder, self.vae.quant_conv):
            frozen.requires_grad_(False)

    def training_step(self, image: torch.Tensor, batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            mean, logvar = self.vae.encode_moments(image)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        recon = self.vae.decode(z)
        (gy, gx), (ry, rx) = image_gradients(image), image_gradients(recon)
        edge = F.l1_loss(ry, gy) + F.l1_loss(rx, gx)
        loss = F.l1_loss(recon, image) + F.mse_loss(recon, image) + self.train_config.edge_weight * edge
        with torch.no_grad():
            psnr = -10 * torch.log10(F.mse_loss((recon.clamp(-1, 1) + 1) / 2, (image + 1) / 2))
        self.log_dict({"loss": loss, "psnr": psnr}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        trained = [p for p in self.vae.parameters() if p.requires_grad]
        return torch.optim.AdamW(trained, lr=self.train_config.lr, weight_decay=0.0)


# ----------------------------------------------------------------------------------------------------------
# UNet + text encoder


@dataclass
class LDMTrainConfig:
    lr: float = 3e-4
    warmup_steps: int = 200
    batch_size: int = 64
    caption_dropout: float = 0.1   # the share of empty prompts, for classifier-free guidance
    ema_decay: float = 0.999
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    snr_gamma: float = 0.0         # > 0: weight the eps loss by min(SNR, gamma) / SNR (min-SNR); 0: plain MSE
    decay_start: int = 0           # with max_steps > 0: constant LR until this step, then cosine to 0 at max_steps
    max_steps: int = 0             # 0: constant LR after warm-up, no step limit (time budget only)
    object_weight: float = 0.0     # > 0: eps loss weight 1 + object_weight on latent cells near an object (see below)
    train_text: bool = True        # False: the text encoder is frozen (SD v1: CLIP's text tower, see train_toy.py)
    offset_noise: float = 0.0      # > 0: std of a per-sample, per-channel constant added to eps (offset noise)

    def __post_init__(self) -> None:
        if self.snr_gamma < 0:
            raise ValueError(f"snr_gamma must be >= 0, got {self.snr_gamma}")
        if self.object_weight < 0:
            raise ValueError(f"object_weight must be >= 0, got {self.object_weight}")
        if self.offset_noise < 0:
            raise ValueError(f"offset_noise must be >= 0, got {self.offset_noise}")
        if self.max_steps < 0 or self.decay_start < 0 or (self.max_steps and self.decay_start >= self.max_steps):
            raise ValueError(f"need 0 <= decay_start < max_steps (or max_steps = 0), got {self.decay_start}, "
                             f"{self.max_steps}")

    def lr_factor(self, step: int) -> float:
        """LR multiplier at optimiser step `step`: linear warm-up, constant, then the optional cosine decay."""
        factor = min(1.0, (step + 1) / self.warmup_steps)
        if self.max_steps and step > self.decay_start:
            progress = min(1.0, (step - self.decay_start) / (self.max_steps - self.decay_start))
            factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
        return factor


def object_cells(images, factor: int, chroma_min: float = 0.4, chunk: int = 512) -> torch.Tensor:
    """Per latent cell, the share of object pixels (chroma >= chroma_min, the analyser's rule: backgrounds are
    muted), dilated by one cell so that the codes around an outline count too. uint8 [N, H, W, 3] -> [N, 1, h, w]."""
    out = []
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(images[start:start + chunk].copy()).float()
        chroma = (x.amax(dim=-1) - x.amin(dim=-1)) >= chroma_min * 255               # [n, H, W]
        cells = F.avg_pool2d(chroma[:, None].float(), factor)
        out.append(F.max_pool2d(cells, 3, stride=1, padding=1))
    return torch.cat(out)


class LatentCaptionDataset(Dataset):
    """Pre-encoded latents [N, 4, h, w] (already multiplied by the scale factor) with token ids [N, 77], and
    optionally per-cell loss weights [N, 1, h, w] (then items are (latent, ids, weights))."""

    def __init__(self, latents: torch.Tensor, token_ids: torch.Tensor, empty_ids: torch.Tensor,
                 caption_dropout: float, weights: torch.Tensor | None = None):
        self.latents, self.token_ids, self.empty_ids = latents, token_ids, empty_ids
        self.caption_dropout, self.weights = caption_dropout, weights

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        drop = torch.rand(()) < self.caption_dropout
        item = (self.latents[i], (self.empty_ids if drop else self.token_ids[i]))
        return item if self.weights is None else (*item, self.weights[i])


class LDMLitModule(pl.LightningModule):
    def __init__(self, unet_config: UNetConfig, text_config: CLIPTextConfig, train_config: LDMTrainConfig):
        super().__init__()
        self.unet = UNetModel(unet_config)
        self.text_encoder = CLIPTextEncoder(text_config)
        self.train_config = train_config
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.ema_text = copy.deepcopy(self.text_encoder).requires_grad_(False)
        self.text_encoder.requires_grad_(train_config.train_text)
        betas = scaled_linear_betas(train_config.beta_start, train_config.beta_end, train_config.num_train_timesteps)
        self.register_buffer("alpha_bar", alphas_cumprod(betas).float(), persistent=False)

    def load_text_encoder(self, state: dict[str, torch.Tensor]) -> None:
        """Set the text encoder and its EMA copy (strictly), e.g. to a CLIP text tower that stays frozen."""
        for m in (self.text_encoder, self.ema_text):
            m.load_state_dict(state)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        z0, ids = batch[:2]                                                # [B, 4, h, w], [B, 77]
        t = torch.randint(0, self.train_config.num_train_timesteps, (z0.shape[0],), device=z0.device)
        a = self.alpha_bar[t].view(-1, 1, 1, 1)
        eps = torch.randn_like(z0)
        if self.train_config.offset_noise > 0:                            # one constant per sample and channel
            eps = eps + self.train_config.offset_noise * torch.randn_like(z0[:, :, :1, :1])
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
        eps_hat = self.unet(z_t, t, self.text_encoder(ids))     # a frozen encoder (train_text=False) builds no graph
        err = F.mse_loss(eps_hat, eps, reduction="none")
        if self.train_config.object_weight > 0:                           # cells near objects weigh more; the
            w = 1 + self.train_config.object_weight * batch[2]             # weights of each sample sum to its size
            err = err * w / w.mean(dim=(1, 2, 3), keepdim=True)
        loss = err.mean(dim=(1, 2, 3))                                     # [B]
        if self.train_config.snr_gamma > 0:
            snr = self.alpha_bar[t] / (1 - self.alpha_bar[t])
            loss = loss * snr.clamp(max=self.train_config.snr_gamma) / snr
        loss = loss.mean()
        self.log("loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        decay = min(self.train_config.ema_decay, (1 + self.global_step) / (10 + self.global_step))
        with torch.no_grad():
            pairs = [(self.ema_unet, self.unet)]
            if self.train_config.train_text:
                pairs.append((self.ema_text, self.text_encoder))
            for ema, live in pairs:
                for p_ema, p in zip(ema.parameters(), live.parameters()):
                    p_ema.lerp_(p, 1 - decay)

    def configure_optimizers(self):
        params = list(self.unet.parameters())
        if self.train_config.train_text:
            params += list(self.text_encoder.parameters())
        optimizer = torch.optim.AdamW(params, lr=self.train_config.lr, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self.train_config.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def round_scale(value: float) -> float:
    """A latent scale factor rounded to 5 significant digits (also undoes a float32 round trip)."""
    return float(f"{float(value):.5g}")


def latent_scale_factor(latents: torch.Tensor) -> float:
    """1 / std of unscaled latents, the way SD's 0.18215 was computed (rounded to 5 digits)."""
    return round_scale(1.0 / latents.float().std().item())

