"""Multi-Stage Blended Diffusion (Ackermann & Li 2022): orchestration of the stages, ALGORITHM.md §2.

`run_msbd(image, mask, prompt, config, bundle)`:
1. plan the crop (§3) and build the work image (upsampled when the image is smaller than the first stage);
2. first stage (§5-§6): blended DDIM + RePaint on a batch at native size, CLIP rerank, decoder optimisation;
3. stage ladder (§7-§8): recrop around the mask, super-resolve the previous result, paste the low-passed original
   outside the mask, SDEdit-started blended DDIM (+ decoder optimisation);
4. grid stage (§9) above `max_edgelen`: `fusion='alpha'` diffuses tiles independently and composites them with
   the reference's sigmoid ramps; `fusion='latent'` (MultiDiffusion) runs one sampler on the whole latent whose
   model callable averages the eps of overlapping tiles with `fusion_weights` (the DDIM update is linear in eps,
   so this equals averaging the tiles after every step). Tiles without mask pixels are skipped: their pixels
   come from the upscaled input;
5. paste back (§11): every pixel outside the mask is byte-identical to the input.

Everything here calls helpers (msbd.crop, mask, stitch, upscale, decoder_opt; ldm.sampling). Randomness: every
candidate, stage and tile has its own generator derived from (seed, stage, index), so results do not depend on
which tiles run. Deviations from the reference (documented in msbd.config.ReferenceQuirks): values stay in [0, 1]
when recropping (§14.9), the whole stage input is upsampled once and cut into tiles (the reference upsamples
each tile's low-res window; this also fixes its height-only window ratio), ESRGAN is fed RGB.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ldm.sampling import SamplerConfig, sample
from ldm.sampling.inpaint import inpaint_input
from msbd.config import MSBDConfig, resolve_seed
from msbd.crop import Box, CropPlan, box_to_original, from_work_image, place_crop, plan_crop, stage_geometry
from msbd.crop import stage_sizes, to_work_image, to_work_mask
from msbd.decoder_opt import decoder_optimization
from msbd.errors import InputError
from msbd.inpaint import bundle_condition, conditioned_model
from msbd.mask import binarize, resize_image, resize_mask
from msbd.memory import auto_batch
from msbd.models import ModelBundle, decode_tiled, denoiser, encode_tiled
from msbd.profiling import CallStats, format_split
from msbd.stitch import alpha_composite, fusion_weights, grid_tiles, paste_back, to_uint8
from msbd.upscale import lowpass_reference, upsample

StageHook = Callable[[str], None]
StepHook = Callable[[int], None]    # called after every UNet call with the edit's count so far
TickHook = Callable[[], None]       # called after every step of work that makes no UNet call (decoder optimisation)


@dataclass
class StageResult:
    name: str                       # "first", "stage1", ..., with "(grid)" for grid stages
    image: torch.Tensor             # [1, 3, h, w] in [0, 1], the stage output
    box: Box                        # its crop in work coordinates
    seconds: float
    model_calls: int                # UNet calls (each on a CFG batch)
    tiles_run: int = 1
    tiles_total: int = 1
    decoder_loss: tuple[float, float] | None = None  # decoder optimisation loss (before, after)
    profile: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> {"seconds", "calls"} (profiling)


@dataclass
class EditResult:
    image: np.ndarray               # [H, W, 3] uint8, the edited input
    stages: list[StageResult]
    candidates: list[np.ndarray]    # first-stage candidates, uint8 [size, size, 3]
    scores: list[float] | None      # reranker scores of the candidates (None without reranking)
    chosen: int                     # index of the kept candidate
    plan: CropPlan
    timings: dict[str, float] = field(default_factory=dict)
    profile: dict[str, dict[str, float]] = field(default_factory=dict)  # the whole edit's split by kind of work
    seed: int = 0                   # the seed actually used

    def time_report(self) -> dict:
        """Where the time went: total seconds and, per stage, seconds, tiles and the split by kind of work
        (unet, vae_encode, vae_decode, sr, rerank, decoder_opt: seconds and calls). Written into report.json."""
        return {"seconds": round(self.timings.get("total", 0.0), 2), "split": self.profile,
                "stages": [{"name": s.name, "seconds": round(s.seconds, 2), "unet_calls": s.model_calls,
                            "tiles": f"{s.tiles_run}/{s.tiles_total}", "split": s.profile} for s in self.stages]}

    def time_summary(self) -> str:
        """The time report as lines for a terminal."""
        lines = [f"{s.name}: {s.seconds:.1f} s ({format_split(s.profile)})" for s in self.stages]
        return "\n".join(lines + [f"total: {self.timings.get('total', 0.0):.1f} s ({format_split(self.profile)})"])


class _Counter:
    """Counts and times calls of the model callable (one per UNet evaluation, whatever its batch)."""

    def __init__(self, model: Callable, stats: CallStats | None = None, on_call: StepHook | None = None) -> None:
        self.model, self.calls, self.stats, self.on_call = model, 0, stats or CallStats(), on_call

    def __call__(self, x_t, t, context):
        self.calls += 1
        with self.stats.time("unet"):
            eps = self.model(x_t, t, context)
        if self.on_call is not None:
            self.on_call(self.calls)
        return eps


@dataclass
class _Run:
    """Per-edit state shared by the stage helpers."""

    bundle: ModelBundle
    config: MSBDConfig
    model: _Counter
    cond: torch.Tensor              # prompt context, [1, 77, D]
    uncond: torch.Tensor            # "" context
    upscale_cond: torch.Tensor      # prompt or "" (upscale.conditional)
    grid_cond: torch.Tensor         # prompt or "" for grid stages (grid.conditional, else upscale.conditional)
    stats: CallStats = field(default_factory=CallStats)
    hook: StageHook = lambda name: None
    tick: TickHook = lambda: None


def generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator for (seed, keys...), independent of every other key tuple."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def _sampler_config(run: _Run, steps: int, strength: float, first: bool = False, **kw) -> SamplerConfig:
    """The sampler's settings for the first stage (first=True) or an upscaling stage (their own eta, guidance)."""
    q, fs, up = run.config.reference_quirks, run.config.first_stage, run.config.upscale
    eta, guidance = (fs.eta, fs.guidance) if first else (up.eta, up.guidance)
    return SamplerConfig(num_steps=steps, eta=eta, guidance_scale=guidance, strength=strength,
                         background_level=q.background_level, clean_final=q.clean_final,
                         sdedit_ref_alpha0=q.sdedit_ref_alpha0, progress=run.config.progress,
                         prediction_type=run.bundle.prediction_type, **kw)


def _latent_mask(run: _Run, mask_px: torch.Tensor) -> torch.Tensor:
    """mask_z from a pixel mask at the diffusion size (§4 rule: bilinear, > 0), for the bundle's VAE factor."""
    f = run.bundle.latent_factor
    return resize_mask(mask_px, (mask_px.shape[-2] // f, mask_px.shape[-1] // f))


# 2. First stage ----------------------------------------------------------------------------------------------


def first_stage(run: _Run, source: torch.Tensor, mask_crop: torch.Tensor, prompt: str
                ) -> tuple[torch.Tensor, list[np.ndarray], list[float] | None, int]:
    """Blended DDIM (+ RePaint) on a batch at native size (§5-§6). source: [1, 3, S, S] in [0, 1] (the square
    crop), mask_crop: its binary mask. Returns (chosen image [1, 3, n, n], candidates, scores, chosen index)."""
    fs = run.config.first_stage
    size = (fs.size, fs.size)
    image = resize_image(source, size)
    mask_z = resize_mask(mask_crop, (fs.size // run.bundle.latent_factor,) * 2)  # straight from the S x S mask (§4)
    z_src = run.bundle.encode(image * 2 - 1)
    gens = [generator(run.config.seed, 0, k) for k in range(fs.batch)]
    cfg = _sampler_config(run, fs.steps, fs.strength, first=True, repaint_steps=fs.repaint_steps,
                          repaint_jump=fs.repaint_jump)
    model = conditioned_model(run.model, run.bundle, image, resize_mask(mask_crop, size))  # inpainting UNets
    z = sample(model, cfg, generators=gens, context=run.cond, uncond_context=run.uncond, source=z_src,
               mask=mask_z)
    images = run.bundle.decode(z)                                   # [B, 3, n, n]: the candidates in one call
    truncate = run.config.reference_quirks.truncate_uint8
    host = images.cpu()                                             # one copy for the uint8 candidates
    candidates = [to_uint8(host[k], truncate) for k in range(fs.batch)]
    scores, chosen = None, 0
    if fs.rerank and fs.batch > 1 and run.bundle.reranker is not None:
        with run.stats.time("rerank"):
            scores = [float(s) for s in run.bundle.reranker(candidates, prompt)]
        chosen = int(np.argmax(scores))
    return images[chosen:chosen + 1], candidates, scores, chosen


# 3. One blended SDEdit refinement (a stage or a tile) ---------------------------------------------------------


def refine(run: _Run, image: torch.Tensor, mask_px: torch.Tensor, strength: float,
           gens: torch.Generator | list[torch.Generator], context: torch.Tensor | None = None) -> torch.Tensor:
    """Encode, SDEdit-start blended DDIM with the upscaling schedule, decode (§8 upscale steps 5-6).

    image [K, 3, h, w], mask_px [K, 1, h, w] and one generator per image: K tiles of one shape go through the VAE
    and the UNet together; image k depends only on gens[k] (up to the kernels' batch-dependent rounding).
    context: the prompt's or "" (default: the upscaling stages' context, `upscale.conditional`)."""
    up = run.config.upscale
    gens = [gens] if isinstance(gens, torch.Generator) else list(gens)
    z_src = run.bundle.encode(image * 2 - 1)
    mask_z = _latent_mask(run, mask_px) if up.blended else None
    model = conditioned_model(run.model, run.bundle, image, mask_px)      # inpainting UNets: [x_t, mask, masked]
    context = run.upscale_cond if context is None else context
    z = sample(model, _sampler_config(run, up.steps, strength), generators=gens, context=context,
               uncond_context=run.uncond, source=z_src, mask=mask_z)
    return run.bundle.decode(z)


def stage_input(run: _Run, x_in: torch.Tensor, ref: torch.Tensor, mask_px: torch.Tensor) -> torch.Tensor:
    """Upsample the previous result to the target and paste the low-passed reference outside the mask (§8 2-4)."""
    up_cfg, q = run.config.upscale, run.config.reference_quirks
    target = tuple(ref.shape[-2:])
    with run.stats.time("sr"):
        up = upsample(x_in, target, up_cfg.mode, run.bundle.upscaler, q.esrgan_bgr)
    if not up_cfg.blended:
        return up
    ref_lp = lowpass_reference(ref, tuple(x_in.shape[-2:]), up_cfg.lowpass)
    return mask_px * up + (1 - mask_px) * ref_lp


def grid_batch(run: _Run, tile_hw: tuple[int, int], n_tiles: int) -> int:
    """Tiles per UNet / VAE call: grid.batch, or (0) as many as half the free memory holds, at most 16."""
    if n_tiles <= 1:
        return 1
    if run.config.grid.batch > 0:
        return min(run.config.grid.batch, n_tiles)
    return min(auto_batch(run.bundle, max(tile_hw), cap=16), n_tiles)


def _chunks(ids: list[int], boxes: list[Box], batch: int) -> list[list[int]]:
    """Tiles of one shape together, at most `batch` a call, in as few calls as that allows and balanced (10 tiles
    at batch 4: 4, 3, 3). The shifted last tiles of a row or column are grouped with each other instead of cutting
    every row into a long run and a single tile. Alpha fusion diffuses tiles independently, so their order does
    not matter; latent fusion sums the tiles' eps in chunk order, which moves its result by rounding only."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i in ids:
        by_shape.setdefault((boxes[i].height, boxes[i].width), []).append(i)
    chunks: list[list[int]] = []
    for group in by_shape.values():
        n = math.ceil(len(group) / batch)
        bounds = [round(k * len(group) / n) for k in range(n + 1)]
        chunks += [group[a:b] for a, b in zip(bounds, bounds[1:])]
    return chunks


def grid_stage(run: _Run, image: torch.Tensor, mask_px: torch.Tensor, stage: int) -> tuple[torch.Tensor, int, int]:
    """Refine a large stage input tile by tile (§9). Returns (image, tiles run, tiles in the layout)."""
    grid, q = run.config.grid, run.config.reference_quirks
    height, width = image.shape[-2:]
    # min_tile <= stride: stitch.grid_tiles loops forever when a moved-back start never advances
    min_tile = min(run.config.first_stage.size, grid.tile - grid.overlap)
    boxes = grid_tiles(height, width, grid.tile, grid.overlap, min_tile=min_tile,
                       drop_redundant=q.drop_redundant_tiles)
    _check_aligned(boxes, run.bundle.size_multiple)
    mask_host = mask_px[0, 0].cpu().numpy() > 0.5                  # tile selection is host geometry: one copy
    run_ids = [i for i, b in enumerate(boxes) if not grid.skip_empty_tiles or mask_host[b.slices].any()]
    strength = run.config.upscale.grid_strength
    if grid.fusion == "latent":
        return latent_fusion(run, image, mask_px, [boxes[i] for i in run_ids], stage), len(run_ids), len(boxes)
    tiles: dict[int, torch.Tensor] = {}
    batch = grid_batch(run, (grid.tile, grid.tile), len(run_ids))
    bar = tqdm(total=len(run_ids), desc=f"stage{stage} tiles", unit="tile", leave=False,
               disable=not run.config.progress)
    for chunk in _chunks(run_ids, boxes, batch):
        run.hook(f"stage{stage}: tiles {len(tiles) + 1}-{len(tiles) + len(chunk)}/{len(run_ids)}")
        gens = [generator(run.config.seed, stage, 0 if q.same_seed_per_tile else i) for i in chunk]
        out = refine(run, torch.cat([image[..., *boxes[i].slices] for i in chunk]),
                     torch.cat([mask_px[..., *boxes[i].slices] for i in chunk]), strength, gens, run.grid_cond)
        tiles.update(zip(chunk, out.split(1)))
        bar.update(len(chunk))
    bar.close()
    out = alpha_composite([tiles[i] for i in run_ids], [boxes[i] for i in run_ids], image, grid.overlap,
                          q.alpha_quantize)
    return out, len(run_ids), len(boxes)


def latent_fusion(run: _Run, image: torch.Tensor, mask_px: torch.Tensor, boxes: list[Box], stage: int
                  ) -> torch.Tensor:
    """MultiDiffusion: one sampler over the whole latent, eps fused from overlapping tiles every step.

    Tiles of one shape go through the UNet together (`grid.batch` per call)."""
    if not boxes:
        return image
    f, overlap = run.bundle.latent_factor, run.config.grid.overlap
    z_src = encode_tiled(run.bundle, image, boxes, overlap)  # [1, C, H/f, W/f]
    boxes_z = [Box(b.top // f, b.left // f, b.bottom // f, b.right // f) for b in boxes]
    weights = [w.to(z_src.device, torch.float32)
               for w in fusion_weights(boxes_z, z_src.shape[-2], z_src.shape[-1], max(1, overlap // f))]
    chunks = _chunks(list(range(len(boxes))), boxes, grid_batch(run, (run.config.grid.tile,) * 2, len(boxes)))
    # inpainting UNets: [mask_z, z_masked] of the whole stage, cut into tiles with x_t
    cond = bundle_condition(run.bundle, image, mask_px, boxes, overlap) if run.bundle.inpainting else None

    def fused(x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        eps = torch.zeros_like(x_t)
        n = x_t.shape[0]
        x_in = x_t if cond is None else inpaint_input(x_t, cond)                 # [n, C or 2C + 1, H, W]
        for chunk in chunks:
            x = torch.cat([x_in[..., *boxes_z[i].slices] for i in chunk])        # [len(chunk) * n, C', h, w]
            out = run.model(x, t.repeat(len(chunk)), context.repeat(len(chunk), 1, 1)).split(n)
            for i, eps_tile in zip(chunk, out):
                eps[..., *boxes_z[i].slices] += weights[i] * eps_tile
        return eps

    up = run.config.upscale
    mask_z = _latent_mask(run, mask_px) if up.blended else None
    cfg = _sampler_config(run, up.steps, up.grid_strength)
    z = sample(fused, cfg, generators=[generator(run.config.seed, stage, 0)], context=run.grid_cond,
               uncond_context=run.uncond, source=z_src, mask=mask_z)
    decoded, covered = decode_tiled(run.bundle, z, boxes, overlap)
    return torch.where(covered, decoded, image)


def check_for_bundle(config: MSBDConfig, bundle: ModelBundle) -> None:
    """The settings that depend on the models: one InputError line, before any work."""
    levels = len(bundle.vae.decoder.up)
    if config.decoder_opt.enabled and config.decoder_opt.train_levels > levels:
        raise InputError(f"decoder_opt.train_levels={config.decoder_opt.train_levels}, but this VAE's decoder has "
                         f"{levels} levels (0 trains the whole decoder)")


def _grid_conditional(config: MSBDConfig) -> bool:
    """Grid stages see the prompt when `grid.conditional` says so, or (None) when `upscale.conditional` does."""
    return config.upscale.conditional if config.grid.conditional is None else config.grid.conditional


def _check_aligned(boxes: list[Box], multiple: int) -> None:
    for box in boxes:
        if any(v % multiple for v in box):
            raise ValueError(f"grid tile {tuple(box)} is not aligned to {multiple} px (VAE x UNet downsampling); "
                             f"choose grid.tile, grid.overlap and first_stage.size as multiples of {multiple}")


# 4. Orchestration ---------------------------------------------------------------------------------------------


def _ceil64(x: int) -> int:
    return int(math.ceil(x / 64) * 64)


def run_msbd(image: np.ndarray, mask: np.ndarray, prompt: str, config: MSBDConfig, bundle: ModelBundle,
             on_stage: StageHook | None = None, on_step: StepHook | None = None,
             on_tick: TickHook | None = None) -> EditResult:
    """Edit `image` ([H, W, 3] uint8) inside `mask` ([H, W] in [0, 1], >= 0.5 = edit) to show `prompt`.

    on_stage(name) is called when a stage (or a chunk of grid tiles) starts, on_step(n) after the n-th UNet call,
    on_tick() after every Adam step of decoder optimisation; an exception raised by any of them stops the edit (the
    app's cancel button; the decoder's weights are restored).

    Everything computed lives on `bundle.device` from here on (work image, masks, references, accumulators); crop
    plans and tile boxes are numpy geometry on the host. The result comes back to the host once, at paste-back.
    """
    config.validate()
    check_for_bundle(config, bundle)
    config = dataclasses.replace(config, seed=resolve_seed(config.seed))   # -1: a drawn seed (EditResult.seed)
    hook = on_stage or (lambda name: None)
    q, up_cfg = config.reference_quirks, config.upscale
    device = bundle.device
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    stats = CallStats(device)
    bundle_stats, bundle.stats = bundle.stats, stats
    try:
        # 1. Crop plan (host, from the raw mask: crop_rule=reference takes its bbox from the nonzero pixels) and
        #    the work image/mask on the device (upsampled when the image is smaller than the first stage)
        mask_raw = np.asarray(mask, dtype=np.float32)
        mask_bin = binarize(torch.from_numpy(mask_raw)[None, None])  # [1, 1, H, W], host (paste-back)
        plan = plan_crop(mask_raw, config.margin, _ceil64(config.first_stage.size), q.crop_rule)
        image01 = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float() / 255
        work = to_work_image(image01, plan)
        work_mask_host = to_work_mask(mask_bin, plan)
        mask_np = work_mask_host[0, 0].numpy() > 0
        work_mask = work_mask_host.to(device)
        with torch.no_grad():
            cond, uncond = bundle.encode_text([prompt]), bundle.encode_text([""])
        run = _Run(bundle, config, _Counter(denoiser(bundle), stats, on_step), cond, uncond,
                   cond if up_cfg.conditional else uncond,
                   cond if _grid_conditional(config) else uncond, stats, hook, on_tick or (lambda: None))
        stages: list[StageResult] = []
        # 2. First stage on the square crop, rerank, decoder optimisation
        hook("first")
        t0, split0 = time.perf_counter(), stats.totals()
        square = plan.square
        prev, candidates, scores, chosen = first_stage(run, work[..., *square.slices],
                                                       work_mask[..., *square.slices], prompt)
        dec_loss = None
        if config.decoder_opt.enabled:
            size = tuple(prev.shape[-2:])
            ref = resize_image(work[..., *square.slices], size)
            mask_px = resize_mask(work_mask[..., *square.slices], size)
            prev, dec_loss = _optimise(run, prev, ref, mask_px)
        stages.append(StageResult("first", prev, square, time.perf_counter() - t0, run.model.calls,
                                  decoder_loss=dec_loss, profile=stats.since(split0)))
        prev_box = square
        # 3-4. Stage ladder; the stages above max_edgelen are grids
        edges = stage_sizes(plan.long_edge, _ceil64(config.first_stage.size), up_cfg.max_edgelen,
                            up_cfg.straight_to_grid)
        for k, edge in enumerate(edges, start=1):
            hook(f"stage{k}")
            t0, calls0, split0 = time.perf_counter(), run.model.calls, stats.totals()
            geom = stage_geometry(edge, plan.diff_h, plan.diff_w, tuple(prev.shape[-2:]), plan.long_edge,
                                  image_hw=plan.work_hw)
            box = place_crop(mask_np, *geom.crop_hw, q.crop_rule)
            x_in = resize_image(_stitched_crop(work, prev, prev_box, box), geom.input_hw)
            ref = resize_image(work[..., *box.slices], geom.target_hw)
            mask_px = resize_mask(work_mask[..., *box.slices], geom.target_hw)
            image_in = stage_input(run, x_in, ref, mask_px)
            grid = edge > up_cfg.max_edgelen
            if grid:
                out, n_run, n_tiles = grid_stage(run, image_in, mask_px, k)
            else:
                out = refine(run, image_in, mask_px, up_cfg.strength, generator(config.seed, k, 0))
                n_run, n_tiles = 1, 1
            dec_loss = None
            if config.decoder_opt.enabled:
                hook(f"stage{k}: decoder optimisation")
                out, dec_loss = _optimise(run, out, ref, mask_px)
            stages.append(StageResult(f"stage{k}" + (" (grid)" if grid else ""), out, box,
                                      time.perf_counter() - t0, run.model.calls - calls0, n_run, n_tiles, dec_loss,
                                      stats.since(split0)))
            prev, prev_box = out, box
        # 5. Paste back inside the mask only (the one copy back to the host)
        hook("paste")
        timings["total_before_paste"] = time.perf_counter() - t_start
        result = paste(image, mask_bin, prev, prev_box, work, plan, config)
    finally:
        bundle.stats = bundle_stats
    timings["total"] = time.perf_counter() - t_start
    for s in stages:
        timings[s.name] = s.seconds
    return EditResult(result, stages, candidates, scores, chosen, plan, timings, stats.totals(), config.seed)


def _stitched_crop(work: torch.Tensor, prev: torch.Tensor, prev_box: Box, box: Box) -> torch.Tensor:
    """The work image inside `box` with the previous stage's result (resized to `prev_box`) pasted over it (§8 2).

    Only the crop is built (not a copy of the whole work image per stage, 12 bytes a pixel at 64 MP)."""
    crop = work[..., *box.slices].clone()
    up = resize_image(prev, (prev_box.height, prev_box.width)).clamp(0, 1)
    top, left = max(box.top, prev_box.top), max(box.left, prev_box.left)
    bottom, right = min(box.bottom, prev_box.bottom), min(box.right, prev_box.right)
    if top < bottom and left < right:
        crop[..., top - box.top:bottom - box.top, left - box.left:right - box.left] = \
            up[..., top - prev_box.top:bottom - prev_box.top, left - prev_box.left:right - prev_box.left]
    return crop


def _optimise(run: _Run, image: torch.Tensor, ref: torch.Tensor, mask_px: torch.Tensor
              ) -> tuple[torch.Tensor, tuple[float, float]]:
    with run.stats.time("decoder_opt"), run.stats.muted():
        res = decoder_optimization(run.bundle, image, ref, mask_px, run.config.decoder_opt,
                                   run.config.upscale.max_edgelen, progress=run.config.progress, on_step=run.tick)
    return res.image, (res.loss_before, res.loss_after)


def paste(image: np.ndarray, mask_bin: torch.Tensor, edited: torch.Tensor, box: Box, work: torch.Tensor,
          plan: CropPlan, config: MSBDConfig) -> np.ndarray:
    """§11: the final crop into the original, inside the binary mask only (via the work image when upsampled)."""
    truncate, feather = config.reference_quirks.truncate_uint8, config.paste.feather_px
    if not plan.upsampled:
        orig_box, inner = box_to_original(box, plan)
        return paste_back(image, edited[..., *inner.slices], orig_box, mask_bin, feather, truncate)
    canvas = work.clone()
    canvas[..., *box.slices] = edited
    full = from_work_image(canvas, plan).clamp(0, 1)
    return paste_back(image, full, Box(0, 0, *image.shape[:2]), mask_bin, feather, truncate)
