"""The toy inpainting UNet: the fine-tune's building blocks, and the shipped overlay (loads as an inpainting bundle
on top of the toy UNet, and edits keep every pixel outside the mask)."""
import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ldm.checkpoint import load_models
from ldm.config import LDMConfig
from msbd.toy import presets
from msbd.toy.train_inpaint import KINDS, TRAINED_PREFIXES, inpaint_unet_from, is_trained, make_sample, random_mask

OVERLAY = os.path.join(presets.WEIGHTS_DIR, "toy-inpaint-unet.safetensors")


def _config() -> LDMConfig:
    with open(presets.LDM_CONFIG) as f:
        return LDMConfig.from_dict(json.load(f))


def test_conv_in_widened_with_zero_channels():
    w = torch.randn(32, 4, 3, 3)
    state = inpaint_unet_from({"input_blocks.0.0.weight": w, "out.2.bias": torch.ones(4)})
    assert state["input_blocks.0.0.weight"].shape == (32, 9, 3, 3)
    assert torch.equal(state["input_blocks.0.0.weight"][:, :4], w) and state["input_blocks.0.0.weight"][:, 4:].abs().max() == 0
    assert is_trained("input_blocks.0.0.weight") and not is_trained("middle_block.0.in_layers.2.weight")
    wide = inpaint_unet_from({"input_blocks.0.0.weight": torch.randn(48, 8, 3, 3)})       # toy world v2: 8 channels
    assert wide["input_blocks.0.0.weight"].shape == (48, 17, 3, 3)


def test_training_samples_and_masks():
    rng = np.random.default_rng(0)
    masks = [random_mask(rng, 64) for _ in range(30)]
    assert all(m.dtype == bool and m.shape == (64, 64) for m in masks)
    assert 0 < np.mean([m.mean() for m in masks]) < 0.6
    kinds = {make_sample(seed, 64)[3] for seed in range(700_000, 700_030)}
    assert kinds == set(KINDS)
    image, mask, caption, kind = make_sample(700_000, 64)
    assert image.shape == (64, 64, 3) and mask.any() and caption
    assert mask.all() == (kind == "full")


@pytest.mark.skipif(not os.path.isfile(OVERLAY), reason="toy-inpaint-unet.safetensors not shipped")
def test_shipped_overlay_loads_as_an_inpainting_unet_on_the_toy_unet():
    """The overlay holds the fine-tuned tensors (TRAINED_PREFIXES, or the whole UNet with --trained all) and loads
    on its base as a 2C + 1-channel inpainting UNet whose new input channels were trained."""
    with safe_open(OVERLAY, "pt") as f:
        assert f.metadata()["msbd_overlay_base"] == os.path.basename(presets.LDM_WEIGHTS)
        names = [n.removeprefix("model.diffusion_model.") for n in f.keys()]
    config = _config()
    base = load_models(presets.LDM_WEIGHTS, config, components=("unet",)).unet
    partial = all(n.startswith(TRAINED_PREFIXES) for n in names)
    assert partial or sorted(names) == sorted(base.state_dict())
    models = load_models(OVERLAY, config, components=("unet",))
    c = config.vae.embed_dim
    assert models.config.inpainting and models.unet.config.in_channels == 2 * c + 1
    conv_in = models.unet.input_blocks[0][0].weight
    assert conv_in[:, c:].abs().max() > 0                                    # the new channels were trained
    if partial:                                                              # frozen layers come from the base
        torch.testing.assert_close(models.unet.middle_block[1].proj_in.weight, base.middle_block[1].proj_in.weight,
                                   rtol=0, atol=0)


@pytest.mark.skipif(not os.path.isfile(OVERLAY), reason="toy-inpaint-unet.safetensors not shipped")
def test_shipped_overlay_edits_inside_the_mask_only():
    from msbd.config import MSBDConfig
    from msbd.models import build_bundle
    from msbd.pipeline import run_msbd
    from msbd.toy.scenes import random_edit_task, render, render_mask
    bundle = build_bundle(_config(), OVERLAY)
    assert bundle.inpainting
    task = random_edit_task(10**6 + 3)
    image, mask = np.asarray(render(task.source, 128)), render_mask(task, 128)
    cfg = MSBDConfig.for_native_size(128, progress=False)
    cfg.first_stage.steps, cfg.first_stage.batch, cfg.first_stage.rerank = 8, 1, False
    cfg.decoder_opt.enabled, cfg.margin = False, 1.0
    out = run_msbd(image, mask.astype(np.float32), task.prompt, cfg, bundle).image
    assert np.array_equal(out[~mask], image[~mask]) and not np.array_equal(out[mask], image[mask])


def test_train_script_checks_its_base_export_and_run_dir_before_training(tmp_path):
    """scripts/train_toy_inpaint.py: a base folder without the toy LDM, an overlay away from its base, or a run-dir
    prepared for another base is one `error:` line and a non-zero exit, before any data is rendered."""
    import shutil
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    script = [sys.executable, os.path.join(root, "scripts", "train_toy_inpaint.py"), "--run-dir", str(tmp_path / "run")]

    def refused(*args: str, words: str) -> None:
        out = subprocess.run(script + list(args), capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and out.stderr.startswith("error:") and out.stderr.count("\n") == 1, out.stderr
        assert words in out.stderr, out.stderr

    refused("--base-dir", str(tmp_path), words="has no toy-ldm.safetensors")
    base = tmp_path / "base"
    base.mkdir()
    for f in (presets.LDM_WEIGHTS, presets.LDM_CONFIG, presets.CLIP_WEIGHTS):
        shutil.copy(f, base)
    refused("--base-dir", str(base), "--export", str(tmp_path / "overlay.safetensors"), words="must be in --base-dir")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "base.json").write_text('{"base_sha256": "0"}')
    refused("--base-dir", str(base), words="of another base")
    (tmp_path / "run" / "base.json").write_text('{"base_sha256": ')
    refused("--base-dir", str(base), words="is not JSON")
    (tmp_path / "run" / "base.json").unlink()
    (tmp_path / "run" / "last.pt").write_bytes(b"")                              # a run from before the record
    refused("--base-dir", str(base), words="made before runs recorded their base")
    (tmp_path / "run" / "last.pt").unlink()
    (base / "toy-ldm.json").write_text("{}")
    refused("--base-dir", str(base), words="--base-dir")                          # a config that is no LDMConfig
    assert os.listdir(tmp_path / "run") == [] and sorted(os.listdir(base)) == [
        "toy-clip.safetensors", "toy-ldm.json", "toy-ldm.safetensors"]
