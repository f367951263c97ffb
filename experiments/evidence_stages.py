"""Issue 21 item 6: where do extra objects appear? Every stage of an MSBD edit pasted into the input and scored.

`stage_images(case_image, case_mask, result, config)` turns an `msbd.pipeline.EditResult` into one full-size uint8
image per stage (the stage output resized to its crop box and pasted inside the mask, as the final paste-back
does), so the analyser counts objects after the first stage, after each intermediate stage and after the grid.
`grid_tiles_px(result, config)` gives the grid stage's tiles in image pixels, for the tile-border seam and the
per-tile speck measures of `msbd.toy.analyser`.
"""
from __future__ import annotations

import numpy as np
import torch

from msbd.config import MSBDConfig
from msbd.crop import Box, box_to_original, to_work_image
from msbd.mask import binarize, resize_image
from msbd.pipeline import EditResult, paste
from msbd.stitch import grid_tiles


def stage_images(image: np.ndarray, mask: np.ndarray, result: EditResult, config: MSBDConfig
                 ) -> list[tuple[str, np.ndarray]]:
    """[(stage name, the input with that stage's output pasted inside the mask, uint8 [H, W, 3])]."""
    image01 = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    work = to_work_image(image01, result.plan)
    mask_bin = binarize(torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None])
    out = []
    for stage in result.stages:
        crop = resize_image(stage.image.float().cpu(), (stage.box.height, stage.box.width)).clamp(0, 1)
        out.append((stage.name, paste(image, mask_bin, crop, stage.box, work, result.plan, config)))
    return out


def grid_tiles_px(result: EditResult, config: MSBDConfig) -> list[Box]:
    """The tiles of the last grid stage in image pixels (clipped to the image); [] when no stage is a grid or the
    plan upsampled the image (the tiles then live in work coordinates only)."""
    grids = [s for s in result.stages if s.name.endswith("(grid)")]
    if not grids or result.plan.upsampled:
        return []
    stage, grid = grids[-1], config.grid
    h, w = stage.image.shape[-2:]
    min_tile = min(config.first_stage.size, grid.tile - grid.overlap)
    boxes = grid_tiles(h, w, grid.tile, grid.overlap, min_tile=min_tile,
                       drop_redundant=config.reference_quirks.drop_redundant_tiles)
    sy, sx = stage.box.height / h, stage.box.width / w             # stage pixels -> work pixels
    out = []
    for b in boxes:
        work_box = Box(stage.box.top + round(b.top * sy), stage.box.left + round(b.left * sx),
                       stage.box.top + round(b.bottom * sy), stage.box.left + round(b.right * sx))
        orig, _ = box_to_original(work_box, result.plan)
        if orig.height > 0 and orig.width > 0:
            out.append(orig)
    return out


def prompt_colour(prompt: str) -> int | None:
    """Palette index of the first toy colour word in the prompt (None if it names none)."""
    from msbd.toy.scenes import COLOURS
    words = prompt.lower().replace(",", " ").split()
    return next((COLOURS.index(w) for w in words if w in COLOURS), None)


def tile_check(image: np.ndarray, mask: np.ndarray, result: EditResult, config: MSBDConfig, prompt: str) -> dict:
    """The issue's observation on any image (no toy task needed): steps between the grid tiles inside the mask
    (with the control on the cells' centre lines) and blobs of the prompt's colour per tile cell, for the final
    output and after every stage."""
    from msbd.toy.analyser import specks_per_tile, tile_steps
    tiles = [tuple(b) for b in grid_tiles_px(result, config)]
    binary = np.asarray(mask) >= 0.5
    if not tiles:
        return {"tiles": 0}
    step, tex, pairs = tile_steps(result.image, binary, tiles)
    step_c, tex_c, _ = tile_steps(result.image, binary, tiles, control=True)
    out = {"tiles": len(tiles), "pairs": pairs, "tile_step": step, "tile_step_ctrl": step_c,
           "tile_texture_step": tex, "tile_texture_ctrl": tex_c}
    colour = prompt_colour(prompt)
    if colour is not None:
        min_px = max(3, round(4 * min(binary.shape) ** 2 / 2**20))
        out["blobs_per_stage"] = {}
        for name, im in stage_images(image, binary, result, config):
            blobs, busy, cells = specks_per_tile(im, binary, tiles, colour, min_px)
            out["blobs_per_stage"][name] = {"blobs": blobs, "cells_with_blobs": busy, "mask_cells": cells}
    return out


def main(argv: list[str]) -> int:
    """python -m experiments.evidence_stages IMAGE MASK PROMPT OUT.png [msbd overrides as key=value ...]

    Edits with the toy models and their default settings (msbd/toy/weights; decoder optimisation, grid and all as
    `+experiment=edit`), writes OUT.png and prints the tile measures as JSON."""
    import json
    import sys

    from experiments.common import ModelSpec, load_bundle, variant
    from msbd.cli_edit import edit
    from msbd.io import load_image, load_mask
    if len(argv) < 4:
        print(main.__doc__, file=sys.stderr)
        return 2
    image_path, mask_path, prompt, out_path = argv[:4]
    changes: dict = {}
    for item in argv[4:]:                       # e.g. first_stage.steps=8
        key, value = item.split("=", 1)
        group, _, name = key.rpartition(".")
        parsed = json.loads(value) if value[:1] in "-0123456789[{tf" else value
        (changes.setdefault(group, {}) if group else changes)[name or key] = parsed
    config = variant(MSBDConfig.for_native_size(128), **changes)
    spec = ModelSpec(ckpt="msbd/toy/weights/toy-ldm.safetensors", upscaler="msbd/toy/weights/toy-sr-x4.safetensors",
                     reranker="msbd/toy/weights/toy-clip.safetensors")
    bundle = load_bundle(spec, config)
    result = edit(image_path, mask_path, prompt, out_path, config, bundle)
    image = load_image(image_path)
    mask = load_mask(mask_path, image.shape[:2])
    print(json.dumps({"seconds": round(result.timings["total"], 1),
                      **tile_check(image, mask, result, config, prompt)}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
