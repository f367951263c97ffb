"""cli_edit.edit: validation with one-line InputErrors, memory refusal, PNG provenance, intermediates."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from _pipeline_helpers import scene, tiny_config
from msbd.cli_edit import check_memory, edit, estimate_memory
from msbd.errors import InputError
from msbd.models import build_bundle


@pytest.fixture(scope="module")
def bundle():
    return build_bundle("tiny-test", seed=0)


@pytest.fixture
def files(tmp_path):
    image, mask = scene()
    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray((mask * 255).astype(np.uint8), "L").save(tmp_path / "in_mask.png")
    return tmp_path / "in.png", tmp_path / "in_mask.png", image, mask


def test_edit_writes_png_with_provenance_and_intermediates(bundle, files, tmp_path):
    img_path, mask_path, image, mask = files
    out = tmp_path / "out.png"
    result = edit(img_path, mask_path, "a red cube", out, tiny_config(), bundle,
                  intermediates_dir=tmp_path / "steps", progress=False)
    saved = Image.open(out)
    assert np.array_equal(np.asarray(saved), result.image)
    assert saved.text["prompt"] == "a red cube" and saved.text["seed"] == "3"
    assert json.loads(saved.text["msbd_config"])["grid"]["tile"] == 48
    assert json.loads(saved.text["weights_sha256"]) == {}  # random weights: no files
    assert np.array_equal(np.asarray(saved)[mask < 0.5], image[mask < 0.5])
    names = sorted(p.name for p in (tmp_path / "steps").iterdir())
    assert names == ["candidate_0.png", "candidate_1.png", "scores.json", "stage_0_first.png", "stage_1_stage1.png"]


@pytest.mark.parametrize("change, message", [
    ({"grid__overlap": 48}, "grid.overlap"),
    ({"upscale__steps": -1}, "steps"),
    ({"upscale__strength": 1.5}, "upscale.strength"),
    ({"upscale__grid_strength": -0.1}, "grid_strength"),
    ({"margin": 0.9}, "margin"),
    ({"grid__fusion": "median"}, "grid.fusion"),
])
def test_bad_settings_raise_one_line_input_error(bundle, files, tmp_path, change, message):
    img_path, mask_path, _, _ = files
    with pytest.raises(InputError, match=message) as err:
        edit(img_path, mask_path, "a red cube", tmp_path / "out.png", tiny_config(**change), bundle, progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt(bundle, files, tmp_path, prompt):
    img_path, mask_path, _, _ = files
    with pytest.raises(InputError, match="prompt is empty"):
        edit(img_path, mask_path, prompt, tmp_path / "out.png", tiny_config(), bundle, progress=False)


def test_long_prompt_is_truncated_with_warning(bundle, files, tmp_path):
    img_path, mask_path, _, _ = files
    long_prompt = " ".join(["cube"] * 90)
    with pytest.warns(UserWarning, match="tokens"):
        edit(img_path, mask_path, long_prompt, tmp_path / "out.png", tiny_config(), bundle, progress=False)
    assert (tmp_path / "out.png").exists()


def test_output_overwriting_input_refused_before_running(bundle, files):
    img_path, mask_path, _, _ = files
    with pytest.raises(InputError, match="overwrite"):
        edit(img_path, mask_path, "a red cube", img_path, tiny_config(), bundle, progress=False)


def test_memory_refused_early_with_a_setting_that_fits(bundle, files, tmp_path):
    img_path, mask_path, _, _ = files
    cfg = tiny_config(first_stage__batch=8)
    est = estimate_memory(cfg, bundle, (80, 96), 64)
    assert est["driver"] == "first_stage.batch"
    limit = int(est["peak"] * 0.6)
    with pytest.raises(InputError, match=r"estimated peak memory .* first_stage.batch=\d would fit") as err:
        edit(img_path, mask_path, "a red cube", tmp_path / "out.png", cfg, bundle, memory_limit_bytes=limit,
             progress=False)
    batch = int(str(err.value).split("first_stage.batch=")[1].split()[0])
    cfg.first_stage.batch = batch
    check_memory(cfg, bundle, (80, 96), 64, limit)  # the suggested setting passes


def test_memory_estimate_counts_the_upscaler_and_decoder_optimisation():
    """The x4 pass and the decoder's backward pass are part of the estimate (they drive it at real sizes)."""
    import copy

    from experiments.common import random_upscaler
    from msbd.config import MSBDConfig

    bundle = build_bundle("tiny-test", seed=0)
    cfg = MSBDConfig.for_native_size(32)
    cfg.decoder_opt.enabled = False
    cfg.upscale.mode, cfg.upscale.max_edgelen = "bilinear", 256
    plain = estimate_memory(cfg, bundle, (4096, 4096), 4096)
    with_sr = copy.copy(bundle)
    with_sr.upscaler = random_upscaler(0)
    cfg.upscale.mode = "esrgan"
    sr = estimate_memory(cfg, with_sr, (4096, 4096), 4096)
    assert "upscale.esrgan" not in plain["parts"] and sr["parts"]["upscale.esrgan"] > 0
    assert sr["peak"] >= plain["peak"]
    cfg.decoder_opt.enabled = True
    dec = estimate_memory(cfg, bundle, (4096, 4096), 4096)
    assert dec["parts"]["decoder_opt.tile"] > 0 and dec["peak"] > plain["peak"]
    cfg.decoder_opt.tile = 2048                      # a huge optimisation tile drives the estimate...
    big = estimate_memory(cfg, bundle, (4096, 4096), 4096)
    assert big["driver"] == "decoder_opt.tile"
    limit = int(big["peak"] * 0.5)                   # ...and the refusal names a smaller tile that fits
    with pytest.raises(InputError, match=r"decoder_opt.tile=\d+ would fit") as err:
        check_memory(cfg, bundle, (4096, 4096), 4096, limit)
    cfg.decoder_opt.tile = int(str(err.value).split("decoder_opt.tile=")[1].split()[0])
    check_memory(cfg, bundle, (4096, 4096), 4096, limit)


def test_seed_minus_one_draws_a_seed_that_the_output_records(bundle, files, tmp_path):
    """Issue 23: seed -1 (random, as the reference) failed in SeedSequence; the drawn seed is recorded and is the
    one the run used (the same seed given explicitly gives the same pixels); other negative seeds are refused."""
    img_path, mask_path, _, _ = files
    config = tiny_config(seed=-1)
    first = edit(img_path, mask_path, "a red cube", tmp_path / "a.png", config, bundle, progress=False)
    saved = Image.open(tmp_path / "a.png")
    seed = int(saved.text["seed"])
    assert 0 <= seed < 2**31 and json.loads(saved.text["msbd_config"])["seed"] == seed
    again = edit(img_path, mask_path, "a red cube", tmp_path / "b.png", tiny_config(seed=seed), bundle, progress=False)
    assert np.array_equal(first.image, again.image)
    with pytest.raises(InputError, match=r"seed must be an integer >= 0, or -1 for a random seed, got -2"):
        edit(img_path, mask_path, "a red cube", tmp_path / "c.png", tiny_config(seed=-2), bundle, progress=False)


def test_memory_estimate_counts_the_frozen_decoder_activations_of_train_levels():
    """train_levels > 0 keeps the frozen part's output of every training tile: its channels x pixels, per tile."""
    import torch

    from msbd.config import MSBDConfig
    from msbd.memory import _decoder_cache_bytes
    bundle = build_bundle("tiny-test", seed=0)
    cfg = MSBDConfig.for_native_size(32)
    cfg.decoder_opt.autocast_bf16 = False                          # fp32 activations: 4 bytes
    whole = estimate_memory(cfg, bundle, (1024, 1024), 1024)["peak"]
    decoder, f = bundle.vae.decoder, bundle.latent_factor
    z = torch.zeros(1, bundle.vae.config.z_channels, 64 // f, 64 // f)
    for k in range(1, len(decoder.up) + 1):
        cfg.decoder_opt.train_levels = k
        cached = decoder.head(z, len(decoder.up) - k)               # what decoder_opt keeps for a 64 px tile
        per_px = cached.numel() * 4 / 64 ** 2
        assert _decoder_cache_bytes(cfg, bundle, 1024) == pytest.approx(per_px * 1024 ** 2 * 16 / 9)
        assert estimate_memory(cfg, bundle, (1024, 1024), 1024)["peak"] > whole
