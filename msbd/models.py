"""The networks one MSBD run needs, bundled, and the adapter that hands the UNet to the sampler.

`ModelBundle` holds the LDM (UNet, VAE, text encoder, tokenizer, latent scale, native size), the dtype/device it
runs in, and two optional helpers: a `reranker` (callable (images uint8 [H, W, 3] list, prompt) -> scores [N]) and an
`upscaler` (module RGB [0, 1] [B, 3, h, w] -> [B, 3, 4h, 4w]). `build_bundle` loads them from files (SD v1 or the
toy world, whose trained weights plug in by path) or, without a checkpoint, builds random-weight networks for tests.
`denoiser(bundle)` is the (x_t, t, context) -> eps callable of `ldm.sampling.sample`, casting x to the model dtype
on the way in and eps back to float32. The bundle also says what the UNet predicts (`prediction_type`: eps, or v
for SD 2.x 768-v) and whether it is an inpainting UNet (`inpainting`; its conditioning: msbd.inpaint).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ldm.config import LDMConfig, get_preset
from ldm.models.autoencoder import AutoencoderKL
from ldm.models.clip_text import CLIPTextEncoder
from ldm.models.open_clip_text import OpenCLIPTextEncoder
from ldm.models.tokenizer import CLIPTokenizer
from msbd.profiling import CallStats

Reranker = Callable[[Sequence[np.ndarray], str], torch.Tensor]


@dataclass
class ModelBundle:
    unet: nn.Module
    vae: AutoencoderKL
    text_encoder: CLIPTextEncoder | OpenCLIPTextEncoder
    tokenizer: CLIPTokenizer
    scale_factor: float                       # latent = scale_factor * VAE posterior mean
    native_size: int                          # training resolution in pixels (512 SD v1, 128 toy)
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reranker: Reranker | None = None          # (uint8 images, prompt) -> scores [N]
    upscaler: nn.Module | Callable | None = None  # RGB [0,1] -> x4
    weights_files: dict[str, str] = field(default_factory=dict)  # component -> path (hashed into the output)
    stats: CallStats = field(default_factory=CallStats)  # seconds and counts of the VAE calls (set per run)
    prediction_type: str = "eps"              # what the UNet returns: "eps" or "v" (SD 2.x 768-v)

    @property
    def inpainting(self) -> bool:
        """True for an inpainting UNet: input [x_t, mask_z, z_masked], 2 x latent channels + 1."""
        return self.unet.config.in_channels == 2 * self.vae.config.embed_dim + 1

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell (8 for SD v1)."""
        return self.vae.config.downsample_factor

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: VAE factor x UNet downsampling."""
        return self.latent_factor * 2 ** (len(self.unet.config.channel_mult) - 1)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Cross-attention context [B, 77, D] (float32) of the prompts."""
        ids = self.tokenizer(list(prompts)).to(self.device)
        return self.text_encoder(ids).float()

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Scaled latent z (float32) of an image in [-1, 1], [B, 3, H, W]."""
        x = image.to(self.device, self.vae_dtype)
        with self.stats.time("vae_encode"):
            return self.vae.encode_latent(x, self.scale_factor).float()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image in [0, 1] (clamped, float32) from a scaled latent."""
        with self.stats.time("vae_decode"):
            x = self.vae.decode_latent(z.to(self.device, self.vae_dtype), self.scale_factor).float()
        return ((x + 1) / 2).clamp(0, 1)

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype


def denoiser(bundle: ModelBundle) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The sampler's model callable: (x_t float32, t, context) -> eps float32, the UNet run in bundle.dtype."""
    unet, dtype = bundle.unet, bundle.dtype

    @torch.no_grad()
    def model(x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return unet(x_t.to(dtype), t, context.to(dtype)).float()

    return model


def build_bundle(config: LDMConfig | str, ckpt_path: str | os.PathLike | None = None, *,
                 reranker: tuple[str, str] | Reranker | None = None, sr_path: str | os.PathLike | None = None,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 seed: int = 0, inpainting: bool | None = None) -> ModelBundle:
    """Build the bundle: load `ckpt_path` (any format ldm.checkpoint reads), or random weights when it is None.

    inpainting: None takes the UNet input from the checkpoint (4 channels plain, 9 inpainting) or, for random
    weights, from the config; True/False demands one kind (a checkpoint of the other is a one-line error).
    reranker: (open_clip name, weights path) for `msbd.toy.clip_model.load_reranker` ("ViT-L-14" or the toy CLIP),
    or a ready callable. sr_path: RealESRGAN_x4plus.pth or the toy SR safetensors (read by spandrel).
    seed: of the random weights (tests).
    """
    config = get_preset(config) if isinstance(config, str) else config
    files: dict[str, str] = {}
    if ckpt_path is None:
        if inpainting is not None:
            from ldm.config import with_inpainting
            config = with_inpainting(config, inpainting)
        unet, vae, text = _random_networks(config, seed)
    else:
        from ldm.checkpoint import load_models
        loaded = load_models(ckpt_path, config, inpainting=inpainting)
        unet, vae, text, config = loaded.unet, loaded.vae, loaded.text_encoder, loaded.config
        files["ldm"] = os.fspath(ckpt_path)
        from ldm.checkpoint.formats import linked_files       # an overlay's base, a linked text encoder
        files.update({f"ldm.{role}": os.fspath(p) for role, p in linked_files(ckpt_path).items()})
    device = torch.device(device)
    unet, vae, text = (m.to(device, dtype).eval().requires_grad_(False) for m in (unet, vae, text))
    bundle = ModelBundle(unet, vae, text, CLIPTokenizer(pad_token_id=config.text.pad_token_id), config.scale_factor,
                         config.image_size, dtype, device, weights_files=files, prediction_type=config.prediction_type)
    if isinstance(reranker, tuple):
        bundle.reranker = clip_reranker(*reranker, device=device)
        files["reranker"] = os.fspath(reranker[1])
    elif reranker is not None:
        bundle.reranker = reranker
    if sr_path is not None:
        from msbd.upscale import load_upscaler
        bundle.upscaler = load_upscaler(sr_path).to(device)   # fp32: the x4 pass's numbers do not depend on dtype
        files["upscaler"] = os.fspath(sr_path)
    return bundle


def _random_networks(config: LDMConfig, seed: int) -> tuple[nn.Module, AutoencoderKL, nn.Module]:
    from ldm.checkpoint.components import build_model
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build_model("unet", config), build_model("vae", config), build_model("text", config)
    finally:
        torch.random.set_rng_state(state)


def clip_reranker(name: str, weights_path: str | os.PathLike, device: str | torch.device = "cpu") -> Reranker:
    """A reranker from open_clip weights on disk: images -> 100 x cosine similarity to the prompt (§6)."""
    from msbd.toy.clip_model import clip_scores, load_reranker
    model, preprocess, tokenizer = load_reranker(name, os.fspath(weights_path))
    model = model.to(device)

    def score(images: Sequence[np.ndarray], prompt: str) -> torch.Tensor:
        return clip_scores(model, preprocess, tokenizer, list(images), prompt)

    return score


def _latent_box(box, factor: int):
    from msbd.crop import Box
    if any(v % factor for v in box):
        raise ValueError(f"tile {tuple(box)} is not aligned to the latent factor {factor}")
    return Box(box.top // factor, box.left // factor, box.bottom // factor, box.right // factor)


def encode_tiled(bundle: ModelBundle, image: torch.Tensor, boxes: Sequence, overlap_px: int) -> torch.Tensor:
    """Scaled latent of an image in [0, 1] [B, 3, H, W], encoded tile by tile and fused with `fusion_weights`.

    A single tile covering the image is exactly `bundle.encode`. Cells outside every tile are 0.
    """
    from msbd.stitch import fusion_weights
    f = bundle.latent_factor
    h, w = image.shape[-2] // f, image.shape[-1] // f
    boxes_z = [_latent_box(b, f) for b in boxes]
    if len(boxes) == 1 and (boxes[0].height, boxes[0].width) == tuple(image.shape[-2:]):
        return bundle.encode(image * 2 - 1)
    weights = fusion_weights(boxes_z, h, w, max(1, overlap_px // f))
    z = torch.zeros(image.shape[0], bundle.vae.config.embed_dim, h, w, device=image.device)
    for box, box_z, weight in zip(boxes, boxes_z, weights):
        z[..., *box_z.slices] += weight.to(z.device, torch.float32) * bundle.encode(image[..., *box.slices] * 2 - 1)
    return z


def decode_tiled(bundle: ModelBundle, z: torch.Tensor, boxes: Sequence, overlap_px: int,
                 decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(image [B, 3, H, W] in [0, 1], coverage [H, W] bool) decoded tile by tile, fused with `fusion_weights`.

    boxes are in pixels; decode: latent tile -> image [0, 1] (default `bundle.decode`). Uncovered pixels are 0.
    """
    from msbd.stitch import fusion_weights
    decode = decode or bundle.decode
    f = bundle.latent_factor
    height, width = z.shape[-2] * f, z.shape[-1] * f
    if len(boxes) == 1 and (boxes[0].height, boxes[0].width) == (height, width):
        return decode(z), torch.ones(height, width, dtype=torch.bool, device=z.device)
    weights = fusion_weights(list(boxes), height, width, max(1, overlap_px))
    image = torch.zeros(z.shape[0], 3, height, width, device=z.device)
    covered = torch.zeros(height, width, dtype=torch.bool, device=z.device)
    for box, weight in zip(boxes, weights):
        image[..., *box.slices] += weight.to(z.device, torch.float32) * decode(z[..., *_latent_box(box, f).slices])
        covered[box.slices] = True
    return image, covered
