"""End to end on the embedded (trained, shipped) toy models: real megapixel inputs and a measured toy edit.

* The two real images of ../shared/inputs/ (1803x2117 and 2431x1930; the second mask touches two borders) are
  edited at full size through the user path (`msbd.cli_edit.edit`), and every pixel outside the mask must be
  byte-identical to the input file's decoded pixels. The embedded model cannot paint a corgi, so only geometry,
  I/O and the guarantee outside the mask are checked there (slow: the whole ladder and a tiled grid run).
* A held-out toy scene is edited with the default method and the analyser must find exactly one object of the
  prompt's colour inside the mask, with the right colour.
"""
import os

import numpy as np
import pytest
from PIL import Image

from experiments.common import ModelSpec, load_bundle, run_edit, toy_case
from msbd.config import MSBDConfig, replace
from msbd.io import load_image, load_mask

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INPUTS = os.path.join(os.path.dirname(ROOT), "shared", "inputs")
TOY = ModelSpec(name="toy", ldm_config="toy", ckpt="msbd/toy/weights/toy-ldm.safetensors",
                upscaler="msbd/toy/weights/toy-sr-x4.safetensors", reranker="msbd/toy/weights/toy-clip.safetensors")


def _config(**kw) -> MSBDConfig:
    return replace(MSBDConfig.for_native_size(128), **kw)


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(TOY, _config())


def _paper_examples():
    with open(os.path.join(INPUTS, "inputs.txt")) as f:
        rows = [line.split(";") for line in f if line.strip() and not line.startswith("#")]
    return [(p.strip(), n.strip(), float(m)) for p, n, m in rows]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(INPUTS), reason="../shared/inputs is not beside the repository")
@pytest.mark.parametrize("prompt, name, margin", _paper_examples() if os.path.isdir(INPUTS) else [])
def test_real_inputs_full_size_outside_mask_identical(tmp_path, bundle, prompt, name, margin):
    from msbd.cli_edit import edit
    image_path = os.path.join(INPUTS, name)
    mask_path = image_path.replace(".jpg", "_mask.png")
    config = _config(margin=margin, first_stage={"batch": 2, "steps": 20, "repaint_steps": 1},
                     upscale={"steps": 40}, decoder_opt={"iterations": 2})
    out = tmp_path / "out.png"
    result = edit(image_path, mask_path, prompt, out, config, bundle, progress=False)
    image = load_image(image_path)
    mask = load_mask(mask_path, image.shape[:2]) >= 0.5
    written = np.asarray(Image.open(out).convert("RGB"))
    assert written.shape == image.shape and np.array_equal(written, result.image)
    assert np.array_equal(written[~mask], image[~mask])                 # byte-identical outside the mask
    assert not np.array_equal(written[mask], image[mask])               # and the mask was repainted
    assert any("grid" in s.name for s in result.stages)                 # the full ladder ran, up to a tiled stage


@pytest.mark.slow
def test_toy_scene_edit_adds_one_object(bundle):
    case = toy_case(3, 512)
    image, report = run_edit(case, _config(), bundle)
    assert report["psnr_outside"] == float("inf")
    assert report["count"] == 1 and report["colour_ok"], report
