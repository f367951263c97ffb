"""experiments.evidence_stages: every stage of an edit pasted at full size, the grid's tiles in image pixels, and
the tile check for any image (toy layout on random weights, a few steps: a few seconds)."""
import math

import numpy as np

from experiments.common import ModelSpec, load_bundle, toy_case, variant
from experiments.evidence_stages import grid_tiles_px, prompt_colour, stage_images, tile_check
from msbd.config import MSBDConfig
from msbd.pipeline import run_msbd


def test_stages_paste_like_the_pipeline_and_tiles_cover_the_grid_stage():
    config = variant(MSBDConfig.for_native_size(128), first_stage={"steps": 2, "batch": 1, "rerank": False,
                                                                   "repaint_steps": 0},
                     upscale={"steps": 4, "mode": "bicubic"}, decoder_opt={"enabled": False})
    bundle = load_bundle(ModelSpec(ckpt=None), config)
    case = toy_case(0, 384, (0.2, 0.3))
    result = run_msbd(case.image, case.mask.astype(np.float32), case.task.prompt, config, bundle)
    stages = stage_images(case.image, case.mask, result, config)
    assert [n for n, _ in stages] == [s.name for s in result.stages] and stages[-1][0].endswith("(grid)")
    for _, image in stages:
        assert np.array_equal(image[~case.mask], case.image[~case.mask])
    assert np.array_equal(stages[-1][1], result.image)          # the last stage pasted is the output
    tiles = grid_tiles_px(result, config)
    grid = result.stages[-1]
    assert len(tiles) == grid.tiles_total > 1
    covered = np.zeros(case.mask.shape, bool)
    for b in tiles:
        covered[b.top:b.bottom, b.left:b.right] = True
    box = grid.box                                              # no upsampling here: work = image pixels
    assert covered[box.top:box.bottom, box.left:box.right].all() and covered.sum() == box.height * box.width
    check = tile_check(case.image, case.mask, result, config, case.task.prompt)
    assert check["tiles"] == len(tiles) and math.isfinite(check["tile_step"])
    assert set(check["blobs_per_stage"]) == {s.name for s in result.stages}


def test_prompt_colour():
    from msbd.toy.scenes import COLOURS
    assert prompt_colour("A red circle") == COLOURS.index("red")
    assert prompt_colour("a mirror") is None
