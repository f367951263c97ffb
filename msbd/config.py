"""The knobs of Multi-Stage Blended Diffusion, grouped by stage (the reference's ~20 kwargs, ALGORITHM.md §13).

`MSBDConfig` holds one dataclass per part of the pipeline: `first_stage` (§5-§6), `upscale` (§7-§8), `grid` (§9),
`decoder_opt` (§10), `paste` (§11), plus the crop `margin` (§3), the `seed` and `reference_quirks` (switches that
reproduce the authors' code where it departs from what we believe correct; the defaults are the fixes).

Defaults are the reference CLI's for Stable Diffusion v1 (native 512 px). Pixel sizes scale with the model's native
size: `MSBDConfig.for_native_size(128)` gives the toy world's (first stage 128, max_edgelen and tile 192,
overlap 32). Field names equal the argument names they feed, so a grep finds both; `validate` raises a ValueError
with a one-line message naming the first out-of-range setting (NaN and infinities included), `check_multiples`
one for a pixel size that is not a multiple of the model's size multiple, and `resolve_seed` turns seed -1 into
a drawn seed.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import secrets
from dataclasses import dataclass, field
from typing import Any, Optional

UPSCALE_MODES = ("esrgan", "bilinear", "bicubic", "sharpen")
LOWPASS_MODES = ("matching", "half", "no")
FUSIONS = ("alpha", "latent")
DECODER_OPT_REGIONS = ("border", "full")


@dataclass
class FirstStageConfig:
    """§5-§6: blended DDIM (+ RePaint) on a batch at the model's native size, then CLIP reranking."""

    size: int = 512                 # diffusion resolution of the first stage (= native size)
    batch: int = 5                  # candidates sampled (reference CLI: 5)
    steps: int = 50                 # DDIM steps
    guidance: float = 7.5           # classifier-free guidance scale
    eta: float = 1.0                # DDIM eta (stochastic in every reference stage)
    repaint_steps: int = 5          # RePaint extra passes per step, the last step excepted (reference CLI: 5)
    repaint_jump: int = 0           # RePaint jump length (0 = per-step resampling, hard-coded in the reference)
    strength: float = 1.0           # SDEdit start of the first stage (1 = from pure noise)
    rerank: bool = True             # keep the CLIP argmax among the candidates (needs a reranker and batch > 1)


@dataclass
class UpscaleConfig:
    """§7-§8: the stage ladder and the SDEdit-started blended refinement of each stage."""

    mode: str = "esrgan"            # esrgan | bilinear | bicubic | sharpen
    max_edgelen: int = 768          # largest stage done in one piece; larger final stages use the grid
    steps: int = 100                # DDIM schedule of the upscaling stages (2 x 50 in the reference)
    strength: float = 0.4           # SDEdit fraction of the intermediate (and non-grid final) stages
    grid_strength: float = 0.25     # SDEdit fraction of the grid stage
    lowpass: str = "matching"       # matching | half | no: low-pass of the reference outside the mask
    conditional: bool = True        # use the prompt in the upscaling stages ("" otherwise)
    blended: bool = True            # blend the background; False = plain SDEdit of the whole crop
    straight_to_grid: bool = False  # skip the intermediate stages
    eta: float = 1.0                # DDIM eta of the upscaling stages (the reference: 1.0, as the first stage)
    guidance: float = 7.5           # guidance scale of the upscaling stages (the reference: 7.5, as the first stage)


@dataclass
class GridConfig:
    """§9: overlapping tiles for stages above max_edgelen."""

    tile: int = 768                 # tile side in pixels
    overlap: int = 128              # overlap between neighbouring tiles in pixels
    fusion: str = "alpha"           # alpha: reference tile compositing | latent: MultiDiffusion eps averaging
    skip_empty_tiles: bool = True   # tiles without mask pixels are not diffused (their pixels: upscaled input)
    batch: int = 0                  # tiles of equal shape per UNet / VAE call; 0 = chosen by free memory (<= 16)
    conditional: Optional[bool] = None  # the prompt in every grid tile (true) or "" (false); None: as
    #                                     upscale.conditional (the reference: the prompt everywhere)


@dataclass
class DecoderOptConfig:
    """§10: fine-tune the VAE decoder per stage so the background matches the original (weights restored after)."""

    enabled: bool = True            # reference CLI default; the function default is off
    iterations: int = 100           # epochs (one Adam step per pair of tiles each)
    lr: float = 1e-4                # Adam learning rate
    bg_weight: float = 100.0        # weight of the background term
    tile: int = 512                 # optimisation tile for stages above max_edgelen
    skip_empty_tiles: bool = True   # only tiles holding mask pixels (False: every tile, as the reference)
    region: str = "border"          # border: train on the tiles holding the mask border, re-decode every masked
    #                                 tile; full: train on every decoded tile (the reference)
    train_levels: int = 0           # 0: train the whole decoder (reference); k > 0: only its k finest resolution
    #                                 levels and output layers, the coarser part frozen and run once per tile
    autocast_bf16: bool = True      # the decoder's forward/backward under bf16 autocast (fp32 weights and Adam) where
    #                                 the device has bf16 (CPU, CUDA >= 8.0; fp32 elsewhere); false = the reference
    channels_last: bool = True      # train the decoder in the NHWC layout (same maths; faster with bf16 autocast)
    max_steps: int = 200            # at most this many Adam steps per stage (0 = no cap: iterations x tiles/2, the
    #                                 reference); binds only on grid stages, whose tiles each make half a step per epoch


@dataclass
class PasteConfig:
    """§11: paste the final crop into the original, inside the mask only."""

    feather_px: int = 0             # 0 = hard binary paste as the reference; > 0 feathers inward


@dataclass
class ReferenceQuirks:
    """Switches that reproduce the reference code; every default is the fixed behaviour (docs/SAMPLER.md, §14)."""

    background_level: str = "reached"            # "reference": background noised at t, not t-1
    clean_final: bool = True            # False: final background is the source noised to t = 1 (reference)
    sdedit_ref_alpha0: bool = False     # True: SDEdit start divides by alpha_bar_0 (reference)
    esrgan_bgr: bool = False            # True: run ESRGAN with R and B swapped, as the reference does (§8)
    crop_rule: str = "fixed"            # "reference": the W/H-swapped clamp and its assert (§3)
    drop_redundant_tiles: bool = True   # False: keep the reference's redundant last tiles (§9)
    alpha_quantize: bool = False        # True: quantise tile alphas to uint8 steps as PIL does (§9)
    truncate_uint8: bool = False        # True: float -> uint8 by truncation (reference), else rounding
    same_seed_per_tile: bool = False    # True: every tile replays the same noise (the reference re-seeds per tile)


@dataclass
class MSBDConfig:
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)
    upscale: UpscaleConfig = field(default_factory=UpscaleConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    decoder_opt: DecoderOptConfig = field(default_factory=DecoderOptConfig)
    paste: PasteConfig = field(default_factory=PasteConfig)
    margin: float = 1.2             # crop side = ceil(mask extent x margin / 64) x 64 (>= 1)
    seed: int = 0                   # every sample, stage and tile derives its generator from it
    reference_quirks: ReferenceQuirks = field(default_factory=ReferenceQuirks)
    progress: bool = False          # tqdm bars inside the sampler

    @classmethod
    def for_native_size(cls, native: int, **overrides: Any) -> "MSBDConfig":
        """Defaults with pixel sizes scaled to a model of native size `native` (512 for SD v1, 128 toy).

        first-stage size = native, max_edgelen = tile = 1.5 native, overlap = native / 4, decoder tile = native.
        overrides: top-level fields or sub-dataclass instances / dicts of their fields.
        """
        cfg = cls()
        cfg.first_stage.size = native
        cfg.upscale.max_edgelen = cfg.grid.tile = native * 3 // 2
        cfg.grid.overlap = native // 4
        cfg.decoder_opt.tile = native
        return replace(cfg, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every setting (the resolved config written into the output PNG)."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise a ValueError naming the first out-of-range setting (whether or not this image would use it).

        Every float must be finite; eta must not exceed the DDIM schedules' limit (`ldm.sampling.max_eta`: above
        it sigma^2 > 1 - alpha_bar_prev and the step is undefined; we refuse rather than clamp); seed -1 means
        "draw one" (`resolve_seed`), other negative seeds are refused. Sizes are checked against a model's size
        multiple by `check_multiples`, which needs the model.
        """
        _check_finite(self)
        fs, up, grid, dec = self.first_stage, self.upscale, self.grid, self.decoder_opt
        checks = [
            (_is_int(self.seed) and self.seed >= -1, f"seed must be an integer >= 0, or -1 for a random seed, "
                                                     f"got {self.seed}"),
            (self.margin >= 1, f"margin must be >= 1, got {self.margin}"),
            (fs.size > 0, f"first_stage.size must be positive, got {fs.size}"),
            (fs.batch >= 1, f"first_stage.batch must be >= 1, got {fs.batch}"),
            (1 <= fs.steps <= MAX_STEPS, f"first_stage.steps must be in 1..{MAX_STEPS}, got {fs.steps}"),
            (1 <= up.steps <= MAX_STEPS, f"upscale.steps must be in 1..{MAX_STEPS}, got {up.steps}"),
            (fs.repaint_steps >= 0, f"first_stage.repaint_steps must be >= 0, got {fs.repaint_steps}"),
            (fs.repaint_jump >= 0, f"first_stage.repaint_jump must be >= 0, got {fs.repaint_jump}"),
            (fs.eta >= 0, f"first_stage.eta must be >= 0, got {fs.eta}"),
            (0 < fs.strength <= 1, f"first_stage.strength must be in (0, 1], got {fs.strength}"),
            (0 <= up.strength <= 1, f"upscale.strength must be in [0, 1], got {up.strength}"),
            (0 <= up.grid_strength <= 1, f"upscale.grid_strength must be in [0, 1], got {up.grid_strength}"),
            (up.mode in UPSCALE_MODES, f"upscale.mode must be one of {UPSCALE_MODES}, got {up.mode!r}"),
            (up.lowpass in LOWPASS_MODES, f"upscale.lowpass must be one of {LOWPASS_MODES}, got {up.lowpass!r}"),
            (up.max_edgelen >= fs.size, f"upscale.max_edgelen ({up.max_edgelen}) must be >= first_stage.size "
                                        f"({fs.size})"),
            (grid.tile > 0, f"grid.tile must be positive, got {grid.tile}"),
            (0 <= grid.overlap < grid.tile, f"grid.overlap ({grid.overlap}) must be in [0, grid.tile={grid.tile})"),
            (grid.fusion in FUSIONS, f"grid.fusion must be one of {FUSIONS}, got {grid.fusion!r}"),
            (grid.conditional in (None, True, False),
             f"grid.conditional must be true, false or null, got {grid.conditional!r}"),
            (grid.batch >= 0, f"grid.batch must be >= 0 (0 = by free memory), got {grid.batch}"),
            (dec.region in DECODER_OPT_REGIONS,
             f"decoder_opt.region must be one of {DECODER_OPT_REGIONS}, got {dec.region!r}"),
            (up.eta >= 0, f"upscale.eta must be >= 0, got {up.eta}"),
            (dec.iterations >= 0, f"decoder_opt.iterations must be >= 0, got {dec.iterations}"),
            (_is_int(dec.train_levels) and dec.train_levels >= 0,
             f"decoder_opt.train_levels must be an integer >= 0 (0 = the whole decoder), got {dec.train_levels}"),
            (dec.max_steps >= 0, f"decoder_opt.max_steps must be >= 0 (0 = no cap), got {dec.max_steps}"),
            (dec.lr > 0, f"decoder_opt.lr must be positive, got {dec.lr}"),
            (dec.tile > 0, f"decoder_opt.tile must be positive, got {dec.tile}"),
            (self.paste.feather_px >= 0, f"paste.feather_px must be >= 0, got {self.paste.feather_px}"),
            (self.reference_quirks.background_level in ("reached", "reference"),
             "reference_quirks.background_level must be 'reached' or 'reference', "
             f"got {self.reference_quirks.background_level!r}"),
            (self.reference_quirks.crop_rule in ("fixed", "reference"),
             f"reference_quirks.crop_rule must be 'fixed' or 'reference', got {self.reference_quirks.crop_rule!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_eta("first_stage.eta", fs.eta, (fs.steps,))
        check_eta("upscale.eta", up.eta, (up.steps,))

        for name, strength, steps_name, steps in (("first_stage.strength", fs.strength, "first_stage.steps", fs.steps),
                                                  ("upscale.strength", up.strength, "upscale.steps", up.steps),
                                                  ("upscale.grid_strength", up.grid_strength, "upscale.steps", up.steps)):
            check_strength(name, strength, steps_name, steps)

    def check_multiples(self, multiple: int) -> None:
        """Raise a ValueError naming the first pixel size that is not a multiple of the model's `multiple`
        (VAE factor x UNet downsampling, `ModelBundle.size_multiple`), whatever the image: the stages and tiles
        made from them must be."""
        sizes = {"first_stage.size": self.first_stage.size, "grid.tile": self.grid.tile, "grid.overlap": self.grid.overlap,
                 "decoder_opt.tile": self.decoder_opt.tile}
        for name, value in sizes.items():
            if value % multiple:
                raise ValueError(f"{name} must be a multiple of {multiple} (the model's size multiple: VAE factor "
                                 f"x UNet downsampling), got {value}")


MAX_STEPS = 500  # the uniform+1 DDIM spacing of 1000 training steps allows at most 500 steps (ldm ddim_timesteps)


def check_eta(name: str, eta: float, steps: tuple[int, ...]) -> None:
    """Raise a ValueError when `eta` exceeds the limit of the DDIM schedule of any of `steps` steps."""
    from ldm.sampling.schedule import max_eta
    for n in steps:
        limit = max_eta(n)
        if eta > limit:
            raise ValueError(f"{name} must be <= {math.floor(limit * 1e4) / 1e4:g} for a {n}-step DDIM schedule "
                             f"(above it sigma^2 > 1 - alpha_bar_prev), got {eta}")


def check_strength(name: str, strength: float, steps_name: str, steps: int) -> None:
    """Raise a ValueError when an SDEdit strength in (0, 1] runs none of the DDIM steps (ldm `sdedit_start`)."""
    from ldm.sampling.schedule import sdedit_start
    try:
        sdedit_start(strength, steps)
    except ValueError as err:
        raise ValueError(f"{name}={strength} with {steps_name}={steps}: {err}") from None


def resolve_seed(seed: int) -> int:
    """`seed`, or a fresh random seed in [0, 2^31) for -1 (the reference's "random")."""
    return secrets.randbelow(2**31) if seed == -1 else seed


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_finite(node: Any, prefix: str = "") -> None:
    """Every float field of a (nested) dataclass is finite; the error names the setting."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{prefix}{f.name} must be a finite number, got {value}")


def replace(cfg: MSBDConfig, **overrides: Any) -> MSBDConfig:
    """A copy of cfg with top-level fields replaced; a dict for a sub-config updates only the keys it names."""
    out = copy.deepcopy(cfg)
    for name, value in overrides.items():
        if name not in {f.name for f in dataclasses.fields(MSBDConfig)}:
            raise ValueError(f"unknown MSBDConfig field {name!r}")
        current = getattr(out, name)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            value = dataclasses.replace(current, **value)
        setattr(out, name, value)
    return out
