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
