"""`+experiment=demo`: the README's main job. A large toy-world scene edited end to end, measured.

A held-out edit task (a scene without the object, an ellipse or rectangle mask, a prompt such as "a red star") is
rendered at `size` px, written as `input.png` / `mask.png`, and edited through the same path as a user's own
image (`msbd.cli_edit.edit`: validation, memory check, progress bars, atomic PNG with provenance). The run folder
receives `output.png`, every stage's intermediate (`intermediates/`), `figure.png` (input, mask, output, the
ground-truth render and zoomed crops of the mask border) and `report.json` (the analyser's measurements: object
count, colour, shape, sharpness against the truth, seam, PSNR outside the mask, time).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from experiments.common import RunContext, analyse, figure_grid, toy_case, write_json, zoom_box
from msbd.errors import InputError


@dataclass
class Params:
    task: int = 3                   # held-out edit task (msbd.toy.scenes.random_edit_task of a held-out seed)
    size: int = 2048                # image height in pixels (2048 x 2048 = 4.2 megapixels)
    aspect: float = 1.5             # width / height
    intermediates: bool = True      # save every stage's output

    def validate(self) -> None:
        if not 32 <= self.size <= 16384:
            raise InputError(f"demo.size must be in 32..16384, got {self.size}")
        if not 0.25 <= self.aspect <= 4:
            raise InputError(f"demo.aspect must be in 0.25..4, got {self.aspect}")


def run(ctx: RunContext, p: Params) -> dict:
    from msbd.cli_edit import edit
    from msbd.io import save_png_atomic
    from msbd.toy.scenes import render
    case = toy_case(p.task, p.size, aspect=p.aspect)
    save_png_atomic(case.image, ctx.path("input.png"), compress_level=1)    # the demo's own inputs: written fast
    save_png_atomic(case.mask.astype(np.uint8) * 255, ctx.path("mask.png"), compress_level=1)
    bundle = ctx.bundle()
    result = edit(ctx.path("input.png"), ctx.path("mask.png"), case.task.prompt, ctx.path("output.png"), ctx.msbd,
                  bundle, intermediates_dir=ctx.out_dir / "intermediates" if p.intermediates else None,
                  progress=ctx.progress)
    report = analyse(case, result.image)
    report.update(prompt=case.task.prompt, megapixels=round(case.megapixels, 2),
                  **result.time_report())
    write_json(ctx.path("report.json"), report)
    truth = np.asarray(render(case.task.target, *case.image.shape[:2]))
    zoom = zoom_box(case.mask, size=max(64, p.size // 8))
    figure_grid([[case.image, case.mask.astype(np.uint8) * 255, result.image, truth]], ctx.path("figure.png"),
                col_labels=["input", "mask", f"MSBD: {case.task.prompt}", "ground truth"], zoom=zoom,
                title=f"{case.image.shape[1]}x{case.image.shape[0]} toy scene, {report['seconds']} s, "
                      f"{report['count']} object(s) of the prompt's colour in the mask")
    print(result.time_summary())
    print(json.dumps({k: report[k] for k in ("prompt", "count", "colour_ok", "shape_ok", "seam", "seconds")}))
    return {k: report[k] for k in ("count", "colour_ok", "shape_ok", "edge_ratio", "seam", "psnr_outside", "seconds")}
