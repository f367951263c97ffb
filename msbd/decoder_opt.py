"""Decoder optimisation (ALGORITHM.md §10): fine-tune the VAE decoder so the background decodes to the original.

The stage output is re-encoded (z = E(sample), not the diffusion latent, as the reference), the original decoder's
image D_0(z) is kept, and Adam (lr 1e-4) fits the decoder D_theta to

    L = mean(m (D_theta(z) - D_0(z))^2 w) + bg_weight mean((1 - m) (D_theta(z) - ref)^2 w)

(means over all elements; w = 1 / number of tiles covering a pixel). The result is D_theta(z); the decoder's
weights (and its dtype) are restored afterwards, so every call starts from the pretrained decoder.

Which pixels are optimised (`region`):
* `"full"` (the reference): stages up to `max_edgelen` as one tile, larger ones on `tile` px tiles (overlap
  tile/4), two per Adam step, `iterations` epochs; with `skip_empty_tiles` (default) only tiles holding mask pixels.
* `"border"` (default): the same tiles are re-decoded, but the decoder is *trained* only on the `tile` px tiles
  that hold the mask border (mask and background pixels both), or on the whole stage when that is smaller.
  Paste-back keeps only the masked pixels, so the decoder matters where its receptive field meets the border
  (the seam); deep inside the mask the objective only asks D_theta(z) to stay D_0(z), which the border tiles ask
  as well. Training is the cost (a forward and a backward pass per tile and step); the re-decode is one forward
  pass per tile, so the whole masked area still decodes with one decoder and no step appears where the trained
  region ends (blending the re-decoded border tiles into the stage output left visible tile-shaped patches).
  The number of Adam steps follows the tiles trained (and `max_steps` caps it: a grid stage of T tiles makes
  iterations x T/2 steps otherwise, T/2 times as many as a one-tile stage), so the masked region decodes
  differently from `"full"` with `max_steps=0` (the reference): `bench/decoder_opt.py` measures seam, halo,
  PSNR against `"full"` and time on the same tasks.

Which weights are trained (`train_levels`): 0 (the reference) trains the whole decoder; k > 0 trains only its k
finest resolution levels and the output layers (norm_out, conv_out). The frozen coarser part (post_quant_conv,
conv_in, the middle block and the coarser levels) then runs once per tile before the first step and its activations
are the training input, so an Adam step costs a forward and a backward pass through the fine levels alone
(`Decoder.head` / `Decoder.tail`). The re-decode runs the whole decoder as usual.

Losses stay on the device (no host sync per Adam step); `autocast_bf16` runs the decoder's forward and backward
under bf16 autocast (weights and Adam state stay fp32; on by default where the device has bf16, fp32 elsewhere);
`channels_last` (default) trains the decoder with NHWC weights and activations, the layout oneDNN and cuDNN
convolutions prefer (restored afterwards). Measured here on a 640 px stage (30 steps, 2 threads): fp32 9.8-10.3 s,
bf16 7.5-8.3 s, bf16 + channels_last 7.1-7.7 s; channels_last alone in fp32 made no measurable difference.
A tqdm bar over the epochs shows time left (`progress`).
Deviation: the reference uses tiles with no overlap (except the shifted last one) and re-decodes with 768/256
tiles composited by alpha; we use overlap tile/4 for both and fuse the decoded tiles with `fusion_weights`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from msbd.config import DecoderOptConfig
from msbd.crop import Box
from msbd.models import ModelBundle, decode_tiled, encode_tiled


@dataclass
class DecoderOptResult:
    image: torch.Tensor          # [1, 3, H, W] in [0, 1], decoded with the optimised decoder
    loss_before: float           # loss of the pretrained decoder (over all tiles)
    loss_after: float            # loss of the optimised decoder
    losses: list[float]          # loss of every Adam step


def decoder_loss(decoded: torch.Tensor, d0: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor,
                 weight: torch.Tensor, bg_weight: float) -> torch.Tensor:
    """§10 loss: keep the masked region as D_0 decoded it, pull the background to the reference (all in [-1, 1])."""
    inside = (mask * (decoded - d0) ** 2 * weight).mean()
    outside = ((1 - mask) * (decoded - ref) ** 2 * weight).mean()
    return inside + bg_weight * outside


def optimisation_tiles(height: int, width: int, tile: int, max_edgelen: int) -> list[Box]:
    """One tile when both sides are <= max_edgelen, else tile x tile boxes with overlap tile/4 (all the same size)."""
    if height <= max_edgelen and width <= max_edgelen:
        return [Box(0, 0, height, width)]
    return _tile_grid(height, width, tile)


def _tile_grid(height: int, width: int, tile: int) -> list[Box]:
    """tile x tile boxes with overlap tile/4 covering height x width (the last ones shifted back)."""
    rows, cols = _spans(height, tile, tile // 4), _spans(width, tile, tile // 4)
    return [Box(r0, c0, r1, c1) for r0, r1 in rows for c0, c1 in cols]


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Starts 0, stride tile - overlap; the last span is shifted back to end at `length` (all of size min(tile, L))."""
    if length <= tile:
        return [(0, length)]
    spans, start = [], 0
    while start + tile < length:
        spans.append((start, start + tile))
        start += tile - overlap
    spans.append((length - tile, length))
    return spans


def _coverage_weight(boxes: list[Box], height: int, width: int, device: torch.device) -> torch.Tensor:
    count = torch.zeros(height, width, device=device)
    for box in boxes:
        count[box.slices] += 1
    return 1.0 / count.clamp(min=1)


def border_tiles(mask: np.ndarray, tile: int, max_edgelen: int) -> list[Box]:
    """Training tiles of region="border": the `tile` px tiles (overlap tile/4) holding mask and background pixels,
    or the whole stage when it fits in one piece (<= max_edgelen) and the border tiles would cover more pixels.
    mask: [H, W] bool (host). [] when the mask has no border (all or nothing)."""
    height, width = mask.shape
    boxes = [b for b in _tile_grid(height, width, tile) if mask[b.slices].any() and not mask[b.slices].all()]
    whole = Box(0, 0, height, width)
    if boxes and height <= max_edgelen and width <= max_edgelen and \
            sum(b.height * b.width for b in boxes) >= height * width:
        return [whole]
    return boxes


def decoder_optimization(bundle: ModelBundle, sample: torch.Tensor, ref: torch.Tensor, mask_px: torch.Tensor,
                         config: DecoderOptConfig, max_edgelen: int, progress: bool = False,
                         on_step: Callable[[], None] | None = None) -> DecoderOptResult:
    """Optimise the decoder for one stage output and return its re-decoded image (weights restored).

    sample, ref: [1, 3, H, W] in [0, 1] (ref: the sharp original crop); mask_px: [1, 1, H, W] binary, 1 = edit.
    All three on the bundle's device; the result is there too. on_step() runs after every Adam step; an exception
    it raises stops the optimisation (the weights are restored all the same).
    """
    height, width = sample.shape[-2:]
    mask_host = mask_px[0, 0].detach().cpu().numpy() > 0.5      # one copy: tile selection is host geometry
    decode_boxes = optimisation_tiles(height, width, config.tile, max_edgelen)
    if config.skip_empty_tiles and len(decode_boxes) > 1:
        # tiles without mask pixels are replaced by the original at paste-back, so their pixels do not matter;
        # dropping them changes the Adam steps (and so the masked region), which bench/decoder_opt.py measures
        decode_boxes = [b for b in decode_boxes if mask_host[b.slices].any()]
    boxes = border_tiles(mask_host, config.tile, max_edgelen) if config.region == "border" else decode_boxes
    if not boxes or not decode_boxes:
        return DecoderOptResult(sample, 0.0, 0.0, [])
    vae, decoder = bundle.vae, bundle.vae.decoder
    saved = {k: v.detach().clone() for k, v in decoder.state_dict().items()}
    dtype, device = bundle.vae_dtype, sample.device
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              enabled=config.autocast_bf16 and bf16_autocast_supported(device))
    frozen = _frozen_levels(decoder, config.train_levels)              # checked before the VAE is touched
    vae.float()
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    decoder.to(memory_format=layout)
    try:
        # 1. Fixed inputs per tile: latent of the re-encoded sample (or, with frozen levels, the activations the
        #    frozen part makes of it, computed once), D_0's image, reference, mask, overlap weight
        weight = _coverage_weight(boxes, height, width, device)
        z_tiles = [z.contiguous(memory_format=layout) for z in _encode_tiles(bundle, sample, boxes)]
        with torch.no_grad(), autocast:
            items = [(_head(bundle, z, frozen), _decode(bundle, z), ref[..., *b.slices] * 2 - 1,
                      mask_px[..., *b.slices].float(), weight[b.slices][None, None]) for z, b in zip(z_tiles, boxes)]
        trained = _trained_modules(decoder, frozen)
        for module in trained:
            module.requires_grad_(True)
        optimizer = torch.optim.Adam([p for m in trained for p in m.parameters()], lr=config.lr)
        loss_before = _total_loss(bundle, items, config.bg_weight, autocast, frozen)
        losses = []
        # 2. Adam over mini-batches of two tiles (tiles share one size, so they stack), `iterations` epochs or
        #    `max_steps` steps, whichever ends first (the last epoch may stop part-way through the tiles)
        per_epoch = (len(items) + 1) // 2
        n_steps = config.iterations * per_epoch
        if config.max_steps > 0:
            n_steps = min(n_steps, config.max_steps)
        epochs = math.ceil(n_steps / per_epoch)
        for epoch in tqdm(range(epochs), desc="decoder opt", unit="epoch", leave=False,
                          disable=not progress or epochs == 0):
            for start in range(0, min(len(items), 2 * (n_steps - epoch * per_epoch)), 2):
                batch = [torch.cat(parts) for parts in zip(*items[start:start + 2])]
                with autocast:
                    loss = _batch_loss(bundle, *batch, config.bg_weight, frozen)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
                if on_step is not None:
                    on_step()
        loss_after = _total_loss(bundle, items, config.bg_weight, autocast, frozen)
        # 3. Re-decode with the optimised decoder (without autograd: a graph kept per decoded tile held
        #    ~3.5 KB per stage pixel, 5.8 GB at a 1280 px grid stage)
        decode = lambda z: _decode(bundle, z).clamp(-1, 1).add(1).div(2)  # noqa: E731
        with torch.no_grad():
            whole = len(decode_boxes) == 1 and (decode_boxes[0].height, decode_boxes[0].width) == (height, width)
            if whole and boxes == decode_boxes:
                image = decode(z_tiles[0])
            elif whole:
                image = decode(bundle.encode(sample * 2 - 1))
            else:
                z = encode_tiled(bundle, sample, decode_boxes, config.tile // 4)
                image, covered = decode_tiled(bundle, z, decode_boxes, config.tile // 4, decode=decode)
                image = torch.where(covered, image, sample)
        loss_values = torch.stack(losses).tolist() if losses else []    # one sync for every step's loss
    finally:
        decoder.load_state_dict(saved)
        decoder.to(memory_format=torch.contiguous_format)
        decoder.requires_grad_(False)
        vae.to(dtype)
    return DecoderOptResult(image.detach(), loss_before, loss_after, loss_values)


def bf16_autocast_supported(device: torch.device) -> bool:
    """Whether `autocast_bf16` runs on this device: the CPU always (oneDNN; faster here even without AVX512-BF16),
    CUDA from compute capability 8.0 (older cards, like the paper's V100, train in fp32), other devices not."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return False


def _encode_tiles(bundle: ModelBundle, sample: torch.Tensor, boxes: list[Box]) -> list[torch.Tensor]:
    """Latents of the re-encoded sample per tile, encoded in batches of equal-shaped tiles."""
    out: list[torch.Tensor] = []
    for start in range(0, len(boxes), 8):
        chunk = boxes[start:start + 8]
        if len({(b.height, b.width) for b in chunk}) == 1:
            z = bundle.encode(torch.cat([sample[..., *b.slices] for b in chunk]) * 2 - 1)
            out += list(z.split(1))
        else:
            out += [bundle.encode(sample[..., *b.slices] * 2 - 1) for b in chunk]
    return out


def _decode(bundle: ModelBundle, z: torch.Tensor) -> torch.Tensor:
    """Differentiable decode of a scaled latent to [-1, 1] (not clamped), in float32."""
    return bundle.vae.decode_latent(z.float(), bundle.scale_factor).float()


def _frozen_levels(decoder: torch.nn.Module, train_levels: int) -> int | None:
    """None when the whole decoder trains (train_levels=0, the reference), else how many of its coarsest levels
    stay frozen with conv_in and the middle block: all but the `train_levels` finest (0 when that is every level,
    which still freezes conv_in and the middle block)."""
    if train_levels > len(decoder.up):
        raise ValueError(f"decoder_opt.train_levels must be at most the decoder's {len(decoder.up)} levels, "
                         f"got {train_levels}")
    return None if train_levels == 0 else len(decoder.up) - train_levels


def _trained_modules(decoder: torch.nn.Module, frozen: int | None) -> list[torch.nn.Module]:
    """The modules Adam trains: the whole decoder, or its finest levels (up[0] is the finest) and output layers."""
    if frozen is None:
        return [decoder]
    return [*list(decoder.up)[:len(decoder.up) - frozen], decoder.norm_out, decoder.conv_out]


def _head(bundle: ModelBundle, z: torch.Tensor, frozen: int | None) -> torch.Tensor:
    """The training input of a tile: its latent (the whole decoder trains) or the frozen part's activations."""
    if frozen is None:
        return z
    vae = bundle.vae
    return vae.decoder.head(vae.post_quant_conv(z.float() / bundle.scale_factor), frozen)


def _batch_loss(bundle, x, d0, ref, mask, weight, bg_weight: float, frozen: int | None = None) -> torch.Tensor:
    decoded = _decode(bundle, x) if frozen is None else bundle.vae.decoder.tail(x, frozen).float()
    return decoder_loss(decoded, d0, ref, mask, weight, bg_weight)


@torch.no_grad()
def _total_loss(bundle: ModelBundle, items: list, bg_weight: float, autocast, frozen: int | None = None
                ) -> float:
    with autocast:
        total = sum(_batch_loss(bundle, *item, bg_weight, frozen) for item in items)
    return float(total) / len(items)                                  # one sync
