"""What every experiment shares: the typed run context, model loading, toy-world tasks, tables and figures.

`scripts/run.py` composes the Hydra configuration, turns it into the plain dataclasses below (`ModelSpec`,
`msbd.config.MSBDConfig`, the experiment's own dataclass) and calls `experiments.<name>.run(ctx, params)`.
Nothing here imports Hydra. An experiment writes into `ctx.out_dir`: its figure(s), its numbers (`results.csv`,
`results.md`, `summary.json`) and, written last by run.py, the completion marker `DONE` that lets a restarted
sweep skip the run.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from msbd.config import MSBDConfig
from msbd.errors import InputError
from msbd.models import ModelBundle

DONE_MARKER = "DONE"


# ------------------------------------------------------------------------------------------------------------
# Models


@dataclass
class ModelSpec:
    """The `model` config group: which networks a run uses (`model=toy`, `model=sd-v1`, `model=random`)."""

    name: str = "toy"
    ldm_config: str = "toy"             # an ldm.config preset name, "toy" (the shipped JSON) or a path to a JSON
    ckpt: str | None = None             # the LDM weights (.ckpt / .safetensors / diffusers folder); None = random
    upscaler: str | None = None         # x4 SR weights (RealESRGAN_x4plus.pth or the toy SR), for upscale.mode=esrgan;
    #                                     "random": an untrained toy RRDBNet initialised as nearest x4 (tests)
    reranker: str | None = None         # CLIP weights for reranking (ViT-L/14 file or the toy CLIP); "random" (tests)
    reranker_arch: str = "msbd-toy-clip"  # open_clip architecture of the reranker: ViT-L-14 | msbd-toy-clip
    use_ema: bool = False               # load the model_ema.* UNet copy of a full-EMA checkpoint
    inpainting: bool | None = None      # None: a 9-channel (inpainting) or 4-channel UNet as the checkpoint holds;
    #                                     true/false: demand one (with random weights: build one)
    seed: int = 0                       # weights seed when ckpt is None (tests and smoke runs)


def _resolve(path: str | None) -> str | None:
    """Relative weights paths are relative to the repository (so they work from any working directory)."""
    if path is None or os.path.isabs(path):
        return path
    repo = Path(__file__).resolve().parent.parent
    return str(repo / path) if not os.path.exists(path) and (repo / path).exists() else path


def ldm_config_of(spec: ModelSpec):
    from ldm.config import LDMConfig, get_preset
    if spec.ldm_config == "toy":
        from msbd.toy import presets
        path = presets.LDM_CONFIG
    elif spec.ldm_config.endswith(".json"):
        path = _resolve(spec.ldm_config)
    else:
        return get_preset(spec.ldm_config)
    if not os.path.isfile(path):
        raise InputError(f"model config {path} not found (model.ldm_config); the toy world's is written by "
                         f"python scripts/train_toy.py")
    with open(path) as f:
        return LDMConfig.from_dict(json.load(f))


def _require(path: str | None, key: str, hint: str) -> str | None:
    if path is not None and not os.path.exists(path):
        raise InputError(f"{key}: weights file {path} not found; set {key}=PATH ({hint})")
    return path


def _needs(msbd_config: MSBDConfig) -> tuple[bool, bool]:
    """(an upscaler is used, a reranker is used) under these settings."""
    fs = msbd_config.first_stage
    return msbd_config.upscale.mode == "esrgan", fs.rerank and fs.batch > 1


def model_files(spec: ModelSpec, msbd_config: MSBDConfig) -> dict[str, str | None]:
    """The weights files a run needs ({"ckpt", "upscaler", "reranker"}; None = not needed or an untrained
    stand-in), each checked to exist: a missing one is one InputError naming the config key to set."""
    hint = "the toy weights ship in msbd/toy/weights" if spec.name == "toy" else "see README, 'Real weights on a GPU'"
    esrgan, needs_rerank = _needs(msbd_config)
    if esrgan and spec.upscaler is None:
        raise InputError("upscale.mode=esrgan needs model.upscaler=PATH (or choose msbd.upscale.mode=bicubic)")
    files = {"ckpt": spec.ckpt, "upscaler": spec.upscaler if esrgan else None,
             "reranker": spec.reranker if needs_rerank else None}
    out = {}
    for key, path in files.items():
        out[key] = None if path in (None, "random") else _require(_resolve(path), f"model.{key}", hint)
    return out


def load_bundle(spec: ModelSpec, msbd_config: MSBDConfig, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu") -> ModelBundle:
    """Build the ModelBundle of a spec; missing files give one InputError naming the config key to set."""
    from msbd.models import build_bundle
    config = ldm_config_of(spec)
    files = model_files(spec, msbd_config)
    ckpt, sr, rr = files["ckpt"], files["upscaler"], files["reranker"]
    esrgan, needs_rerank = _needs(msbd_config)
    random_sr, random_rr = esrgan and spec.upscaler == "random", needs_rerank and spec.reranker == "random"
    if spec.ckpt is not None and config.image_size != msbd_config.first_stage.size:
        raise InputError(f"msbd.first_stage.size={msbd_config.first_stage.size} differs from the model's native "
                         f"size {config.image_size}; use the model group's sizes")
    try:
        bundle = build_bundle(config, ckpt, reranker=(spec.reranker_arch, rr) if rr else None, sr_path=sr,
                              dtype=dtype, device=device, seed=spec.seed, inpainting=spec.inpainting)
    except (OSError, RuntimeError) as err:          # unreadable / corrupt files: one line, not a traceback
        raise InputError(f"could not load the model weights: {str(err).splitlines()[0]}") from None
    from msbd.pipeline import check_for_bundle
    check_for_bundle(msbd_config, bundle)
    if random_sr:
        bundle.upscaler = random_upscaler(spec.seed).to(bundle.device)
    if random_rr:
        bundle.reranker = random_reranker(spec.seed, bundle.device)
    return bundle


def random_upscaler(seed: int) -> torch.nn.Module:
    """An untrained toy RRDBNet that starts as nearest-neighbour x4 (the ESRGAN code path without weights)."""
    from ldm.models.rrdbnet import RRDBNet
    from msbd.toy.sr_model import TOY_SR, init_nearest_upsampler
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return init_nearest_upsampler(RRDBNet(TOY_SR)).eval().requires_grad_(False)
    finally:
        torch.random.set_rng_state(state)


def random_reranker(seed: int, device: torch.device | str = "cpu"):
    """The reranking code path with an untrained toy CLIP: (uint8 images, prompt) -> scores."""
    import open_clip
    from msbd.toy.clip_model import TOY_CLIP_NAME, clip_scores, register_toy_clip
    register_toy_clip()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(TOY_CLIP_NAME)
    finally:
        torch.random.set_rng_state(state)
    model.eval().to(device)
    tokenizer = open_clip.get_tokenizer(TOY_CLIP_NAME)
    return lambda images, prompt: clip_scores(model, preprocess, tokenizer, list(images), prompt)


# ------------------------------------------------------------------------------------------------------------
# Run context


@dataclass
class RunContext:
    out_dir: Path
    seed: int
    model: ModelSpec
    msbd: MSBDConfig
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    progress: bool = True
    _bundle: ModelBundle | None = field(default=None, repr=False)

    def bundle(self, msbd_config: MSBDConfig | None = None) -> ModelBundle:
        """The run's models, loaded once (an experiment may need more helpers than the base config asks for)."""
        if self._bundle is None:
            self._bundle = load_bundle(self.model, msbd_config or self.msbd, self.dtype, self.device)
        return self._bundle

    def path(self, *parts: str) -> Path:
        p = self.out_dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def variant(base: MSBDConfig, **changes: dict[str, Any] | Any) -> MSBDConfig:
    """A copy of `base` with nested changes: variant(cfg, first_stage={"repaint_steps": 0}, seed=3)."""
    from msbd.config import replace
    return replace(base, **changes)


# ------------------------------------------------------------------------------------------------------------
# Toy-world tasks


@dataclass
class ToyCase:
    """One toy-world edit at a given size: the scene render, its mask, the task (for the analyser)."""

    name: str
    task: Any                            # msbd.toy.scenes.EditTask
    image: np.ndarray                    # [H, W, 3] uint8
    mask: np.ndarray                     # [H, W] bool

    @property
    def megapixels(self) -> float:
        return self.image.shape[0] * self.image.shape[1] / 1e6


def toy_case(seed: int, size: int, mask_radius: tuple[float, float] = (0.15, 0.3), aspect: float = 1.0,
             name: str | None = None) -> ToyCase:
    """Held-out edit task `seed` rendered at `size` px (height): image, mask and task."""
    from msbd.toy.data import HELDOUT_SEEDS
    from msbd.toy.scenes import random_edit_task, render, render_mask
    task = random_edit_task(HELDOUT_SEEDS[seed], aspect=aspect, mask_radius=mask_radius)
    width = int(round(size * aspect))
    image = np.asarray(render(task.source, size, width))
    mask = render_mask(task, size, width)
    return ToyCase(name or f"task{seed}@{size}", task, image, mask)


def analyse(case: ToyCase, edited: np.ndarray) -> dict[str, Any]:
    from msbd.toy.analyser import analyse_edit
    return analyse_edit(edited, case.mask, case.image, case.task).to_dict()


def run_edit(case: ToyCase, config: MSBDConfig, bundle: ModelBundle, method: str = "msbd", **kwargs
             ) -> tuple[np.ndarray, dict]:
    """Edit a case with MSBD or a baseline (kwargs: e.g. naive's `size`); returns (image, measurements:
    analyser + seconds + peak RSS)."""
    from msbd import baselines
    from msbd.pipeline import run_msbd
    fn: Callable = {"msbd": run_msbd, "naive": baselines.naive, "segmented": baselines.segmented}[method]
    reset_peak_rss()
    t0 = time.perf_counter()
    out = fn(case.image, case.mask.astype(np.float32), case.task.prompt, config, bundle, **kwargs)
    seconds = time.perf_counter() - t0
    image = out.image if hasattr(out, "image") else out
    row = {"seconds": round(seconds, 2), "peak_rss_gb": round(peak_rss_gb(), 3)}
    row.update(analyse(case, image))
    return image, row


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter of this process (Linux: VmHWM), so the next reading is per edit."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass                                    # not Linux: the reading stays the process-wide peak


def peak_rss_gb() -> float:
    """Peak resident memory (GiB) since the last `reset_peak_rss` (VmHWM), else of the whole process."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ------------------------------------------------------------------------------------------------------------
# Numbers


def mean_ci(values: Iterable[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% interval (Student t) of the finite values; (nan, nan) if there are none."""
    from scipy import stats
    v = np.array([x for x in values if x is not None and math.isfinite(float(x))], dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) == 1:
        return float(v[0]), math.nan
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(half)


def write_csv(rows: Sequence[dict], path: Path) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _fmt(mean: float, half: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if math.isfinite(half) else "")


# (column title, row key, how: "mean" | "rate" | "one", digits)
DEFAULT_COLUMNS = (
    ("one object", "count", "one", 2),
    ("objects", "count", "mean", 2),
    ("colour ok", "colour_ok", "rate", 2),
    ("shape ok", "shape_ok", "rate", 2),
    ("edge / truth", "edge_ratio", "mean", 2),
    ("seam", "seam", "mean", 2),
    ("seconds", "seconds", "mean", 1),
    ("peak GB", "peak_rss_gb", "mean", 2),
)


def summarise(rows: Sequence[dict], group_key: str = "variant", columns=DEFAULT_COLUMNS) -> list[dict]:
    """One row per group: each column's mean and 95% interval over the group's rows."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row[group_key]), []).append(row)
    out = []
    for name, members in groups.items():
        line: dict[str, Any] = {group_key: name, "n": len(members)}
        for title, key, how, digits in columns:
            if how == "one":
                values = [float(r[key] == 1) for r in members]
            elif how == "rate":
                values = [float(bool(r[key])) for r in members]
            else:
                values = [float(r[key]) for r in members]
            m, h = mean_ci(values)
            line[title] = _fmt(m, h, digits)
            line[f"_{title}"] = m
        out.append(line)
    return out


def markdown_table(summary: Sequence[dict]) -> str:
    keys = [k for k in summary[0] if not k.startswith("_")] if summary else []
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in summary]
    return "\n".join(lines) + "\n"


def write_results(ctx: RunContext, rows: Sequence[dict], group_key: str = "variant", columns=DEFAULT_COLUMNS,
                  title: str = "") -> list[dict]:
    """results.csv (every row), results.md (means and 95% intervals per group) and summary.json."""
    write_csv(rows, ctx.path("results.csv"))
    summary = summarise(rows, group_key, columns)
    text = (f"# {title}\n\n" if title else "") + markdown_table(summary)
    ctx.path("results.md").write_text(text)
    ctx.path("summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


# ------------------------------------------------------------------------------------------------------------
# Figures


def figure_grid(rows: Sequence[Sequence[np.ndarray]], path: Path, col_labels: Sequence[str] = (),
                row_labels: Sequence[str] = (), zoom: tuple[int, int, int, int] | None = None,
                title: str = "", cell_labels: Sequence[Sequence[str]] = ()) -> Path:
    """A paper-style grid of images (matplotlib), optionally with a zoomed crop (top, left, h, w) under each.

    col_labels title the first row's images; cell_labels (one list per row) title every image of their row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n_rows = len(rows) * (2 if zoom else 1)
    n_cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.4 * n_cols, 2.4 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, images in enumerate(rows):
        row_zoom = zoom[i] if isinstance(zoom, list) else zoom
        for j, image in enumerate(images):
            r = i * (2 if zoom else 1)
            gray = {"cmap": "gray", "vmin": 0, "vmax": 255} if image.ndim == 2 else {}   # masks: white = edit
            small = _display_copy(image)      # drawn in the original's coordinates (extent), so zoom boxes fit
            h, w = image.shape[:2]
            axes[r, j].imshow(small, interpolation="antialiased" if small is not image else "nearest",
                              extent=(-0.5, w - 0.5, h - 0.5, -0.5), **gray)
            if row_zoom:
                top, left, h, w = row_zoom
                axes[r, j].add_patch(matplotlib.patches.Rectangle((left, top), w, h, fill=False, color="yellow", lw=1))
                axes[r + 1, j].imshow(image[top:top + h, left:left + w], interpolation="nearest", **gray)
            if i < len(cell_labels) and j < len(cell_labels[i]):
                axes[r, j].set_title(cell_labels[i][j], fontsize=9)
            elif i == 0 and j < len(col_labels):
                axes[r, j].set_title(col_labels[j], fontsize=9)
        if i < len(row_labels):
            axes[i * (2 if zoom else 1), 0].text(-0.05, 0.5, row_labels[i], transform=axes[i * (2 if zoom else 1), 0]
                                                 .transAxes, ha="right", va="center", fontsize=9, rotation=90)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _display_copy(image: np.ndarray, side: int = 640) -> np.ndarray:
    """The image resized (Lanczos, PIL) to at most `side` px, a few times a grid cell's pixels at the figure's dpi;
    matplotlib's own resampling of a multi-megapixel array took seconds per image."""
    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image
    from PIL import Image
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.LANCZOS))


def zoom_box(mask: np.ndarray, size: int = 96) -> tuple[int, int, int, int]:
    """A square (top, left, h, w) of side `size` centred on the mask's contour at its top edge (where seams show)."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    size = min(size, h, w)
    cy, cx = int(rows.min()), int(cols.mean())
    top = int(np.clip(cy - size // 2, 0, h - size))
    left = int(np.clip(cx - size // 2, 0, w - size))
    return top, left, size, size


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(x: Any) -> Any:
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return str(x)


# ------------------------------------------------------------------------------------------------------------
# Variant sweeps on toy cases (the engine of the ablations, seeds, baselines and eval)


@dataclass
class Variant:
    name: str
    config: MSBDConfig
    method: str = "msbd"                # msbd | naive | segmented
    kwargs: dict = field(default_factory=dict)


@dataclass
class CaseSpec:
    """Which toy tasks an experiment edits: `tasks` held-out task ids at each of `sizes` px (height)."""

    tasks: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    sizes: list[int] = field(default_factory=lambda: [1024])
    mask_radius: list[float] = field(default_factory=lambda: [0.15, 0.3])
    aspect: float = 1.0

    def validate(self, name: str) -> None:
        if not self.tasks or not self.sizes:
            raise InputError(f"{name}.tasks and {name}.sizes must not be empty")
        if any(s < 32 or s > 16384 for s in self.sizes):
            raise InputError(f"{name}.sizes must lie in 32..16384 px, got {self.sizes}")
        if len(self.mask_radius) != 2 or not 0 < self.mask_radius[0] <= self.mask_radius[1] <= 0.5:
            raise InputError(f"{name}.mask_radius must be [lo, hi] with 0 < lo <= hi <= 0.5, got {self.mask_radius}")

    def cases(self) -> list[ToyCase]:
        return [toy_case(t, s, tuple(self.mask_radius), self.aspect) for s in self.sizes for t in self.tasks]


def run_variants(ctx: RunContext, cases: Sequence[ToyCase], variants: Sequence[Variant], title: str,
                 figure_cases: int = 3) -> list[dict]:
    """Every variant on every case: results.csv/md/summary.json, one PNG per edit, figure.png (cases x variants)."""
    from msbd.io import save_png_atomic
    from tqdm.auto import tqdm
    bundle = ctx.bundle()
    rows, grid = [], []
    bar = tqdm(total=len(cases) * len(variants), desc=title, disable=not ctx.progress)
    for i, case in enumerate(cases):
        images = [case.image]
        for v in variants:
            bar.set_postfix_str(f"{case.name} {v.name}")
            image, row = run_edit(case, v.config, bundle, v.method, **v.kwargs)
            rows.append({"variant": v.name, "case": case.name, "megapixels": round(case.megapixels, 2),
                         "prompt": case.task.prompt, **row})
            save_png_atomic(image, ctx.path("edits", f"{case.name}_{_slug(v.name)}.png"))
            images.append(image)
            bar.update(1)
        if i < figure_cases:
            grid.append(images)
    bar.close()
    summary = write_results(ctx, rows, title=title)
    zooms = [zoom_box(c.mask, size=max(48, c.image.shape[0] // 6)) for c in cases[:figure_cases]]
    figure_grid(grid, ctx.path("figure.png"), col_labels=["input"] + [v.name for v in variants],
                row_labels=[c.task.prompt for c in cases[:figure_cases]], zoom=zooms, title=title)
    print(markdown_table(summary))
    return summary


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


def short_summary(summary: Sequence[dict]) -> dict:
    """{variant: {column: mean}} for the DONE marker."""
    return {row["variant"]: {k[1:]: v for k, v in row.items() if k.startswith("_")} for row in summary}
