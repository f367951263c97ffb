"""run_msbd end to end with tiny random-weight models: invariants of the orchestration, not image quality."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _pipeline_helpers import scene, tiny_config
from msbd.models import build_bundle
from msbd.pipeline import run_msbd


@pytest.fixture(scope="module")
def bundle():
    return build_bundle("tiny-test", seed=0)


def _outside_identical(result, image, mask):
    keep = mask < 0.5
    return np.array_equal(result.image[keep], image[keep])


@pytest.mark.parametrize("fusion", ["alpha", "latent"])
@pytest.mark.parametrize("case", ["plain", "upsampled", "border"])
def test_outside_mask_byte_identical(bundle, fusion, case):
    if case == "plain":
        image, mask = scene()
    elif case == "upsampled":       # short side 40 < 64: the image is upsampled before cropping
        image, mask = scene(40, 56, (10, 12, 30, 40))
    else:                           # mask touches the top-left corner and the right border
        image, mask = scene(80, 96, (0, 0, 30, 96))
    cfg = tiny_config(grid__fusion=fusion)
    result = run_msbd(image, mask, "a red cube", cfg, bundle)
    assert result.image.shape == image.shape and result.image.dtype == np.uint8
    assert _outside_identical(result, image, mask)
    assert not np.array_equal(result.image, image)  # something was edited inside the mask
    assert result.stages[-1].name.endswith("(grid)")  # these sizes exercise the grid stage
    if case == "upsampled":
        assert result.plan.upsampled


def test_same_seed_same_bytes_other_seed_differs(bundle):
    image, mask = scene()
    a = run_msbd(image, mask, "a red cube", tiny_config(), bundle)
    b = run_msbd(image, mask, "a red cube", tiny_config(), bundle)
    c = run_msbd(image, mask, "a red cube", tiny_config(seed=4), bundle)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.image.tobytes() != c.image.tobytes()


def test_skip_empty_tiles_skips_and_keeps_masked_output(bundle):
    image, mask = scene(80, 96, (6, 8, 20, 30))      # mask in one corner of the 64x64 crop -> few tiles touched
    cfg_skip = tiny_config(grid__skip_empty_tiles=True)
    cfg_all = tiny_config(grid__skip_empty_tiles=False)
    skip = run_msbd(image, mask, "a red cube", cfg_skip, bundle)
    full = run_msbd(image, mask, "a red cube", cfg_all, bundle)
    g_skip, g_full = skip.stages[-1], full.stages[-1]
    assert g_full.tiles_run == g_full.tiles_total == 4
    assert 0 < g_skip.tiles_run < g_skip.tiles_total
    calls_per_tile = g_full.model_calls // g_full.tiles_total
    assert g_skip.model_calls == calls_per_tile * g_skip.tiles_run
    assert np.array_equal(skip.image, full.image)  # outside the mask both are the input; inside identical too


def test_latent_fusion_single_tile_equals_non_tiled(bundle):
    image, mask = scene()
    # crop 64x64; grid when 64 > max_edgelen, and tile 64 >= the stage size gives one tile
    tiled = tiny_config(upscale__max_edgelen=48, grid__tile=128, grid__overlap=16, grid__fusion="latent")
    plain = tiny_config(upscale__max_edgelen=64)
    a = run_msbd(image, mask, "a red cube", tiled, bundle)
    b = run_msbd(image, mask, "a red cube", plain, bundle)
    assert a.stages[-1].name.endswith("(grid)") and a.stages[-1].tiles_total == 1
    assert not b.stages[-1].name.endswith("(grid)")
    torch.testing.assert_close(a.stages[-1].image, b.stages[-1].image, rtol=0, atol=0)
    assert np.array_equal(a.image, b.image)


def test_latent_fusion_averages_tiles(bundle):
    """Latent fusion runs every tile once per denoising call and differs from alpha compositing."""
    image, mask = scene()
    lat = run_msbd(image, mask, "a red cube", tiny_config(grid__fusion="latent"), bundle)
    alp = run_msbd(image, mask, "a red cube", tiny_config(grid__fusion="alpha"), bundle)
    assert lat.stages[-1].model_calls == alp.stages[-1].model_calls  # same tiles x same steps
    assert not torch.equal(lat.stages[-1].image, alp.stages[-1].image)


def test_candidates_scores_and_rerank_argmax(bundle):
    image, mask = scene()
    seen = {}

    def reranker(images, prompt):
        seen["n"], seen["prompt"] = len(images), prompt
        return torch.tensor([float(im.mean()) for im in images])  # deterministic, image-dependent

    bundle.reranker = reranker
    try:
        cfg = tiny_config(first_stage__batch=3)
        result = run_msbd(image, mask, "a red cube", cfg, bundle)
    finally:
        bundle.reranker = None
    assert seen == {"n": 3, "prompt": "a red cube"}
    assert len(result.candidates) == 3 and result.candidates[0].shape == (32, 32, 3)
    means = [float(c.mean()) for c in result.candidates]
    assert result.scores == pytest.approx(means)
    assert result.chosen == int(np.argmax(means))
    kept = np.round(result.stages[0].image[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert np.array_equal(kept, result.candidates[result.chosen])


def test_no_reranker_keeps_first_candidate(bundle):
    image, mask = scene()
    result = run_msbd(image, mask, "a red cube", tiny_config(), bundle)
    assert result.scores is None and result.chosen == 0
    assert len(result.candidates) == 2 and not np.array_equal(*result.candidates)


def test_stage_ladder_and_timings(bundle):
    image, mask = scene(200, 230, (40, 40, 170, 200))
    cfg = tiny_config(upscale__max_edgelen=128, grid__tile=64, grid__overlap=16, first_stage__batch=1,
                      upscale__strength=0.25, upscale__grid_strength=0.25)
    result = run_msbd(image, mask, "a red cube", cfg, bundle)
    names = [s.name for s in result.stages]
    assert names[0] == "first" and names[-1].endswith("(grid)") and len(names) >= 3  # an intermediate stage
    assert all(s.model_calls > 0 for s in result.stages)
    assert result.stages[-1].box == result.plan.final
    assert result.timings["total"] >= sum(s.seconds for s in result.stages) * 0.99
    assert _outside_identical(result, image, mask)


@pytest.mark.slow
def test_full_size_photo_outside_mask_identical(bundle):
    from msbd.io import load_image, load_mask
    image = load_image("/work/shared/inputs/lofi_revoy.jpg")
    mask = load_mask("/work/shared/inputs/lofi_revoy_mask.png", image.shape[:2])
    # 1280 x 1280 final crop straight from the 32 px first stage: ~730 tiles of 64 px, one DDIM step each
    cfg = tiny_config(first_stage__steps=2, first_stage__batch=1, first_stage__repaint_steps=0, upscale__steps=2,
                      upscale__max_edgelen=64, grid__tile=64, grid__overlap=16)
    result = run_msbd(image, mask, "a cat", cfg, bundle)
    assert result.image.shape == image.shape
    assert _outside_identical(result, image, mask)
    assert not np.array_equal(result.image, image)
    assert result.stages[-1].box.height == 1280 and result.stages[-1].tiles_run < result.stages[-1].tiles_total


@pytest.mark.parametrize("fusion", ["alpha", "latent"])
def test_batched_grid_tiles_match_one_by_one(bundle, fusion):
    """grid.batch sends tiles of one shape through the UNet and the VAE together; per-tile generators keep the
    result the same as one tile per call, up to the kernels' batch-dependent rounding (measured: < 1e-4)."""
    image, mask = scene(160, 200, (30, 30, 130, 170))
    outs = {}
    for batch in (1, 4):
        cfg = tiny_config(upscale__max_edgelen=64, grid__tile=64, grid__overlap=16, first_stage__batch=1,
                          grid__batch=batch, grid__fusion=fusion)
        result = run_msbd(image, mask, "a red cube", cfg, bundle)
        outs[batch] = result.stages[-1]
        assert result.stages[-1].name.endswith("(grid)") and result.stages[-1].tiles_run >= 4
    assert outs[4].model_calls < outs[1].model_calls
    assert (outs[4].image - outs[1].image).abs().max() < 1e-4
    split = outs[4].profile
    assert split["unet"]["calls"] == outs[4].model_calls and split["vae_decode"]["calls"] >= 1


def test_grid_chunks_group_tiles_by_shape_in_as_few_calls_as_the_batch_allows():
    """A row's shifted last tile has its own width; chunks group equal shapes across rows (order-free under alpha
    fusion) instead of cutting every row into a long run and a single tile."""
    from msbd.crop import Box
    from msbd.pipeline import _chunks
    boxes = [Box(r * 48, c, r * 48 + 64, c + (64 if c < 144 else 40)) for r in range(5) for c in (0, 48, 96, 144)]
    chunks = _chunks(list(range(len(boxes))), boxes, batch=8)
    assert sorted(i for c in chunks for i in c) == list(range(20))
    assert all(len({(boxes[i].height, boxes[i].width) for i in c}) == 1 for c in chunks)
    assert sorted(map(len, chunks)) == [5, 7, 8]                             # 15 wide tiles in 2 calls, 5 narrow in 1
    assert sorted(map(len, _chunks(list(range(10)), boxes[:1] * 10, batch=4))) == [3, 3, 4]   # balanced
    assert max(map(len, _chunks(list(range(20)), boxes, batch=1))) == 1


def test_upscaling_stages_use_their_own_eta_and_guidance(bundle, monkeypatch):
    """upscale.eta / upscale.guidance drive the upscaling stages; first_stage.* only the first (issue 23 item 5)."""
    import msbd.pipeline as pipeline
    seen = []
    real = pipeline.sample

    def spy(model, cfg, **kw):
        seen.append((cfg.eta, cfg.guidance_scale, cfg.strength))
        return real(model, cfg, **kw)

    monkeypatch.setattr(pipeline, "sample", spy)
    image, mask = scene(80, 96, (20, 30, 50, 70))
    cfg = tiny_config(first_stage__guidance=3.0, first_stage__eta=0.5, upscale__guidance=9.0, upscale__eta=0.0)
    run_msbd(image, mask, "a red cube", cfg, bundle)
    assert seen[0][:2] == (0.5, 3.0) and len(seen) > 1
    assert all(s[:2] == (0.0, 9.0) for s in seen[1:])


def test_reference_crop_rule_plans_from_the_raw_mask(bundle, monkeypatch):
    """crop_rule=reference takes the bbox of the raw nonzero mask (issue 23 item 6): run_msbd plans from the mask
    it is given, not from its binarised copy, so its plan equals the one cli_edit estimates memory from."""
    from msbd.crop import plan_crop
    image, _ = scene(128, 128, (0, 0, 1, 1))
    mask = np.zeros((128, 128), np.float32)
    mask[40:80, 40:80] = 1.0
    mask[20:40, 40:80] = 0.3                        # soft fringe: nonzero, below the 0.5 edit threshold
    cfg = tiny_config(first_stage__steps=1, first_stage__batch=1, first_stage__repaint_steps=0, upscale__steps=2)
    cfg.reference_quirks.crop_rule = "reference"
    result = run_msbd(image, mask, "a red cube", cfg, bundle)
    expected = plan_crop(mask, cfg.margin, 64, "reference")
    binarised = plan_crop((mask >= 0.5).astype(np.float32), cfg.margin, 64, "reference")
    assert (expected.diff_h, expected.diff_w) != (binarised.diff_h, binarised.diff_w)
    assert result.plan == expected


@pytest.mark.parametrize("fusion", ["alpha", "latent"])
def test_grid_conditional_changes_only_the_grid_stage(fusion):
    """grid.conditional=false runs the grid tiles on "" while the earlier stages keep the prompt; None follows
    upscale.conditional (the reference: the prompt everywhere), so None and true give the same edit."""
    image, mask = scene(160, 192, (40, 60, 120, 150))
    bundle = build_bundle("tiny-test", seed=0)
    out = {}
    for value in (None, True, False):
        out[value] = run_msbd(image, mask, "a red cube", tiny_config(grid__fusion=fusion, grid__conditional=value),
                              bundle)
    assert [s.name for s in out[None].stages][-1].endswith("(grid)")
    assert np.array_equal(out[None].image, out[True].image)
    for a, b in zip(out[None].stages[:-1], out[False].stages[:-1]):
        assert torch.equal(a.image, b.image)                      # first stage and ladder: the prompt in both
    assert not torch.equal(out[None].stages[-1].image, out[False].stages[-1].image)
    with pytest.raises(ValueError, match="grid.conditional"):
        tiny_config(grid__conditional="yes").validate()


@pytest.mark.parametrize("fusion", ["alpha", "latent"])
def test_latents_of_other_channel_counts_run_end_to_end(fusion):
    """Nothing in the method assumes SD's 4 latent channels (the toy world may train 8 or 16, as SD 3 went to 16):
    an 8-channel VAE and UNet edit through every stage, decoder optimisation included, outside the mask untouched."""
    from dataclasses import replace

    from ldm.config import TINY_TEST
    config = replace(TINY_TEST, vae=replace(TINY_TEST.vae, z_channels=8, embed_dim=8),
                     unet=replace(TINY_TEST.unet, in_channels=8, out_channels=8))
    bundle8 = build_bundle(config, seed=0)
    image, mask = scene()
    cfg = tiny_config(grid__fusion=fusion, decoder_opt__enabled=True, decoder_opt__iterations=1)
    result = run_msbd(image, mask, "a red cube", cfg, bundle8)
    assert _outside_identical(result, image, mask) and not np.array_equal(result.image, image)
    assert result.stages[-1].name.endswith("(grid)")
