"""`+experiment=toy_quality`: the embedded models' quality bars, measured on fresh held-out renders.

Prints one row per bar (figure, bar, PASS/FAIL) and an overall verdict line; writes `quality.json`, `results.md`
and `figure.png` (text-to-image samples at 128 px, inpainting results, and samples at 4x the native size, where
the paper's failure mode - repeated objects - shows). Also reported, not bars: the mean object count at 4x, the
share of single objects whose shape survives a 3 x 3 blur of their latent (`quality.measure_latent_blur`), and
(`zero_mean_init`) the text-to-image figures when the start noise has zero per-channel mean
(`SamplerConfig.zero_mean_init`: on 16x16 latents the start noise's mean sets the background colour).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from experiments.common import RunContext, _resolve, figure_grid, write_json
from msbd.errors import InputError


@dataclass
class Params:
    n_vae: int = 64                 # held-out renders for the VAE PSNR
    n_blur: int = 32                # single objects for the latent-blur shape check (reported, not a bar)
    n_t2i: int = 64                 # single-object prompts for text-to-image
    n_inpaint: int = 40             # edit tasks for blended inpainting
    n_clip: int = 200               # scenes for caption retrieval
    n_sr: int = 16                  # scenes for super-resolution
    n_4x: int = 8                   # samples at 4x the native size
    steps: int = 50                 # DDIM steps (text-to-image and inpainting)
    zero_mean_init: bool = True     # also report text-to-image from zero-mean start noise (not a bar)
    update_card: bool = False       # write the table into msbd/toy/weights/MODEL_CARD.md (QUALITY section)

    def validate(self) -> None:
        for name in ("n_vae", "n_blur", "n_t2i", "n_inpaint", "n_sr", "n_4x", "steps"):
            if getattr(self, name) < 1:
                raise InputError(f"toy_quality.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_clip < 2:
            raise InputError(f"toy_quality.n_clip must be >= 2, got {self.n_clip}")


def run(ctx: RunContext, p: Params) -> dict:
    from msbd.config import replace
    from msbd.toy import quality
    from tqdm.auto import tqdm
    if p.update_card and not _shipped(ctx.model.ckpt):
        raise InputError(f"toy_quality.update_card writes msbd/toy/weights/MODEL_CARD.md, which describes the shipped "
                         f"weights, not {ctx.model.ckpt}: leave it false for other weights")
    bundle = ctx.bundle()
    guidance = ctx.msbd.first_stage.guidance
    figures: dict = {}
    inpaint_cfg = replace(ctx.msbd, first_stage={"steps": p.steps})
    t2i_args = dict(seed=ctx.seed, steps=p.steps, guidance=guidance)
    has_clip, has_sr = (getattr(ctx.model, k) not in (None, "random") for k in ("reranker", "upscaler"))
    progress = tqdm(total=5 + p.zero_mean_init + has_clip + has_sr, desc="toy_quality", unit="measure")

    @contextmanager
    def measuring(name: str):
        progress.set_postfix_str(name)
        yield
        progress.update()

    with measuring(f"VAE ({p.n_vae} renders)"):
        figures.update(quality.measure_vae(bundle, p.n_vae))
    with measuring(f"latent blur ({p.n_blur} objects)"):
        figures.update(quality.measure_latent_blur(bundle, p.n_blur))
    with measuring(f"text-to-image ({p.n_t2i} prompts)"):
        t2i, t2i_images = quality.measure_t2i(bundle, p.n_t2i, **t2i_args)
        figures.update(t2i)
    if p.zero_mean_init:
        with measuring(f"text-to-image, zero-mean noise ({p.n_t2i} prompts)"):
            figures.update(quality.measure_t2i(bundle, p.n_t2i, zero_mean_init=True, **t2i_args)[0])
    with measuring(f"inpainting ({p.n_inpaint} tasks)"):
        inp, inp_images = quality.measure_inpainting(bundle, inpaint_cfg, p.n_inpaint)
        figures.update(inp)
    if has_clip:                                          # untrained stand-ins have no weights file to measure
        with measuring(f"CLIP ({p.n_clip} scenes)"):
            figures.update(quality.measure_clip(_resolve(ctx.model.reranker), p.n_clip))
    if has_sr:
        with measuring(f"SR ({p.n_sr} scenes)"):
            figures.update(quality.measure_sr(_resolve(ctx.model.upscaler), p.n_sr))
    with measuring(f"count at 4x ({p.n_4x} samples)"):
        big, big_images = quality.measure_count_at(bundle, 4, p.n_4x, **t2i_args)
        figures.update(big)
    progress.close()
    rows = quality.verdict(figures)
    overall = "PASS" if all(r["result"] == "PASS" for r in rows) else "FAIL"
    extras = ["count_at_4x", "vae_shape_kept", "vae_shape_kept_latent_blur"]
    extras += [k for k in figures if k.endswith("_zero_mean_init")]
    width = max(len(k) for k in [r["bar"] for r in rows] + [k + " (not a bar)" for k in extras])
    lines = [f"{r['bar']:{width}s} {_fmt(r['figure']):>9s}  bar {r['threshold']:>8s}  {r['result']}" for r in rows]
    lines += [f"{k + ' (not a bar)':{width}s} {_fmt(figures[k]):>9s}" for k in extras]
    lines.append(f"overall: {overall} ({sum(r['result'] == 'PASS' for r in rows)}/{len(rows)} bars)")
    print("\n".join(lines))
    write_json(ctx.path("quality.json"), {"figures": figures, "bars": rows, "overall": overall})
    md = ["| bar | figure | threshold | result |", "|---|---|---|---|"]
    md += [f"| {r['bar']} | {_fmt(r['figure'])} | {r['threshold']} | {r['result']} |" for r in rows]
    md += [f"| {k} (reported) | {_fmt(figures[k])} | - | - |" for k in extras]
    table = "\n".join(md) + f"\n\noverall: **{overall}**\n"
    ctx.path("results.md").write_text(table)
    if p.update_card:
        from pathlib import Path
        from msbd.toy import presets
        from msbd.toy.card import replace_quality
        card = Path(presets.WEIGHTS_DIR) / "MODEL_CARD.md"
        command = "python scripts/run.py +experiment=toy_quality"
        card.write_text(replace_quality(card.read_text(), f"Measured by `{command}` (seed {ctx.seed}, "
                                        f"n = {p.n_t2i} prompts / {p.n_inpaint} edit tasks):\n\n{table}"))
    labels = [[q[0] for q in quality.single_object_prompts(min(8, p.n_t2i))],
              [task.prompt for task in quality.inpainting_tasks(min(8, p.n_inpaint))],
              [q[0] for q in quality.count_prompts(min(4, p.n_4x))]]
    figure_grid([t2i_images[:8], inp_images[:8], [np.asarray(im) for im in big_images[:4]]], ctx.path("figure.png"),
                cell_labels=labels, row_labels=["text-to-image 128 px", "inpainting", "at 4x (512 px)"],
                title=f"toy_quality: {overall}")
    return {"overall": overall, **{k: v for k, v in figures.items() if k in quality.BARS}}


def _shipped(ckpt) -> bool:
    from pathlib import Path

    from msbd.toy import presets
    return ckpt is not None and Path(_resolve(ckpt)).resolve() == Path(presets.LDM_WEIGHTS).resolve()


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


