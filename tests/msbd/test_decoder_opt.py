"""Decoder optimisation (§10): the loss goes down, the decoder's weights are restored, tiling works, and
region="border" optimises and re-decodes only the tiles holding the mask border."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from msbd.config import DecoderOptConfig
from msbd.crop import Box
from msbd.decoder_opt import border_tiles, decoder_loss, decoder_optimization, optimisation_tiles
from msbd.models import build_bundle


def _inputs(h=32, w=32):
    torch.manual_seed(0)
    sample = torch.rand(1, 3, h, w)
    ref = torch.rand(1, 3, h, w)
    mask = torch.zeros(1, 1, h, w)
    mask[..., h // 4: h // 2, w // 4: w // 2] = 1
    return sample, ref, mask


def test_loss_decreases_and_weights_restored():
    bundle = build_bundle("tiny-test", seed=0)
    before = {k: v.clone() for k, v in bundle.vae.state_dict().items()}
    sample, ref, mask = _inputs()
    cfg = DecoderOptConfig(iterations=15, lr=1e-3)
    res = decoder_optimization(bundle, sample, ref, mask, cfg, max_edgelen=48)
    assert res.loss_after < 0.8 * res.loss_before
    assert len(res.losses) == 15
    assert res.image.shape == sample.shape and 0 <= res.image.min() and res.image.max() <= 1
    after = bundle.vae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in bundle.vae.parameters())
    # the optimised decode moved the background towards the reference
    keep = (1 - mask).bool().expand_as(ref)
    plain = bundle.decode(bundle.encode(sample * 2 - 1))
    assert (res.image - ref)[keep].abs().mean() < (plain - ref)[keep].abs().mean()


def test_tiled_path_above_max_edgelen():
    bundle = build_bundle("tiny-test", seed=0)
    sample, ref, mask = _inputs(64, 96)
    boxes = optimisation_tiles(64, 96, 32, 48)
    assert len(boxes) > 1 and all((b.height, b.width) == (32, 32) for b in boxes)
    config = DecoderOptConfig(iterations=2, lr=1e-3, tile=32, skip_empty_tiles=False, region="full")
    res = decoder_optimization(bundle, sample, ref, mask, config, 48)
    assert len(res.losses) == 2 * ((len(boxes) + 1) // 2)  # one Adam step per pair of tiles per epoch
    assert res.image.shape == sample.shape
    assert res.loss_after < res.loss_before


def test_skip_empty_tiles_optimises_only_masked_tiles():
    bundle = build_bundle("tiny-test", seed=0)
    sample, ref, _ = _inputs(64, 96)
    mask = torch.zeros(1, 1, 64, 96)
    mask[..., 4:12, 4:12] = 1                        # only the top-left tile holds mask pixels
    boxes = optimisation_tiles(64, 96, 32, 48)
    masked = [b for b in boxes if mask[..., *b.slices].any()]
    res = decoder_optimization(bundle, sample, ref, mask, DecoderOptConfig(iterations=3, lr=1e-3, tile=32, region="full"),
                               48)
    assert len(res.losses) == 3 * ((len(masked) + 1) // 2)
    covered = torch.zeros(64, 96, dtype=torch.bool)
    for b in masked:
        covered[b.slices] = True
    assert torch.equal(res.image[..., ~covered], sample[..., ~covered])  # untouched outside the masked tiles
    assert not torch.equal(res.image[..., covered], sample[..., covered])


def test_decoder_loss_formula():
    d, d0, ref = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2), torch.full((1, 3, 2, 2), 2.0)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    w = torch.ones(1, 1, 2, 2)
    # inside: 1 px of 4 with error 1 -> mean 0.25; outside: 3 px with error 4 -> mean 3, weighted by 100
    assert float(decoder_loss(d, d0, ref, mask, w, 100.0)) == 0.25 + 300.0


def test_redecode_builds_no_autograd_graph(monkeypatch):
    """The re-decode after optimisation runs without autograd: a graph kept per decoded tile made the peak memory
    of a grid stage grow by ~3.5 KB per pixel (5.8 GB at 1280 px with the toy models)."""
    import msbd.decoder_opt as module

    bundle = build_bundle("tiny-test", seed=0)
    sample, ref, mask = _inputs(64, 96)
    seen = []
    real = module.decode_tiled

    def spy(bundle_, z, boxes, overlap, decode=None):
        image, covered = real(bundle_, z, boxes, overlap, decode=decode)
        seen.append((torch.is_grad_enabled(), image.requires_grad))
        return image, covered

    monkeypatch.setattr(module, "decode_tiled", spy)
    config = DecoderOptConfig(iterations=1, lr=1e-3, tile=32, skip_empty_tiles=False, region="full")
    res = decoder_optimization(bundle, sample, ref, mask, config, 48)
    assert seen == [(False, False)]
    assert res.image.shape == sample.shape


def test_border_region_trains_on_border_tiles_and_redecodes_every_masked_tile():
    bundle = build_bundle("tiny-test", seed=0)
    torch.manual_seed(1)
    sample, ref = torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)
    mask = torch.zeros(1, 1, 128, 128)
    mask[..., 8:88, 8:120] = 1                       # a large mask: its interior holds whole tiles
    boxes = border_tiles(mask[0, 0].numpy() > 0, 32, 48)
    masked = [b for b in optimisation_tiles(128, 128, 32, 48) if mask[..., *b.slices].any()]
    interior = [b for b in masked if mask[..., *b.slices].all()]
    assert boxes and interior and not set(boxes) & set(interior) and set(boxes) < set(masked)
    assert all(mask[..., *b.slices].any() and not mask[..., *b.slices].all() for b in boxes)
    config = DecoderOptConfig(iterations=2, lr=1e-3, tile=32)
    res = decoder_optimization(bundle, sample, ref, mask, config, 48)
    assert len(res.losses) == 2 * ((len(boxes) + 1) // 2)          # trained on the border tiles only
    covered = torch.zeros(128, 128, dtype=torch.bool)
    for b in masked:
        covered[b.slices] = True
    assert torch.equal(res.image[..., ~covered], sample[..., ~covered])
    inner = interior[0]                               # the interior is re-decoded by the same decoder
    assert not torch.allclose(res.image[..., *inner.slices], sample[..., *inner.slices])


def test_max_steps_caps_the_adam_steps_of_a_tiled_stage():
    bundle = build_bundle("tiny-test", seed=0)
    sample, ref, mask = _inputs(64, 96)
    config = DecoderOptConfig(iterations=4, lr=1e-3, tile=32, skip_empty_tiles=False, region="full", max_steps=5)
    res = decoder_optimization(bundle, sample, ref, mask, config, 48)
    assert len(res.losses) == 5                      # 12 tiles: 6 steps an epoch, 24 uncapped
    one_tile = decoder_optimization(bundle, sample[..., :32, :32], ref[..., :32, :32], mask[..., :32, :32],
                                    DecoderOptConfig(iterations=4, lr=1e-3, max_steps=5), 48)
    assert len(one_tile.losses) == 4                 # a one-tile stage makes `iterations` steps, under the cap


def test_border_region_uses_the_whole_stage_when_it_is_smaller():
    mask = torch.zeros(48, 48, dtype=torch.bool)
    mask[10:30, 10:30] = True
    assert border_tiles(mask.numpy(), 32, 48) == [Box(0, 0, 48, 48)]   # 4 tiles of 32 > one 48 x 48
    assert border_tiles(torch.ones(48, 48, dtype=torch.bool).numpy(), 32, 48) == []   # no border at all


def test_channels_last_is_a_layout_only():
    """channels_last trains the same decoder (same losses and image up to float rounding) and leaves the decoder's
    weights contiguous and unchanged afterwards."""
    sample, ref, mask = _inputs()
    results = {}
    for layout in (False, True):
        bundle = build_bundle("tiny-test", seed=0)
        before = {k: v.clone() for k, v in bundle.vae.state_dict().items()}
        cfg = DecoderOptConfig(iterations=5, lr=1e-3, channels_last=layout, autocast_bf16=False)
        results[layout] = decoder_optimization(bundle, sample, ref, mask, cfg, max_edgelen=48)
        after = bundle.vae.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert all(p.is_contiguous() for p in bundle.vae.decoder.parameters())
    assert torch.allclose(torch.tensor(results[True].losses), torch.tensor(results[False].losses), rtol=1e-4)
    assert (results[True].image - results[False].image).abs().max() < 1e-4
    assert results[True].loss_after < results[True].loss_before


def test_bf16_autocast_where_the_device_has_it(monkeypatch):
    """autocast_bf16 (default) runs the decoder in bf16 on the CPU (the losses differ from fp32, the image stays
    close); on CUDA it follows the card's bf16 support, elsewhere fp32."""
    from msbd import decoder_opt
    sample, ref, mask = _inputs()
    out = {}
    for bf16 in (False, True):
        bundle = build_bundle("tiny-test", seed=0)
        out[bf16] = decoder_optimization(bundle, sample, ref, mask,
                                         DecoderOptConfig(iterations=5, lr=1e-3, autocast_bf16=bf16), max_edgelen=48)
    assert DecoderOptConfig().autocast_bf16
    assert out[True].losses != out[False].losses
    assert (out[True].image - out[False].image).abs().mean() < 0.02
    assert decoder_opt.bf16_autocast_supported(torch.device("cpu"))
    assert not decoder_opt.bf16_autocast_supported(torch.device("mps"))
    for supported in (False, True):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, s=supported: s)
        assert decoder_opt.bf16_autocast_supported(torch.device("cuda")) is supported


@pytest.mark.parametrize("autocast_bf16", [True, False])
def test_train_levels_trains_only_the_finest_levels_and_matches_the_whole_decoder_at_step_zero(autocast_bf16):
    """train_levels=k: Adam moves only the k finest levels and the output layers, and the frozen part runs once
    per tile, not per step; before the first step the loss is the whole decoder's, and the loss still goes down."""
    bundle = build_bundle("tiny-test", seed=0)
    decoder = bundle.vae.decoder
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    sample, ref, mask = _inputs()
    seen, calls = {}, []

    def snapshot():
        seen.update({k: v.clone() for k, v in decoder.state_dict().items()})

    cfg = DecoderOptConfig(iterations=10, lr=1e-3, autocast_bf16=autocast_bf16)
    whole = decoder_optimization(bundle, sample, ref, mask, cfg, 48)
    hook = decoder.conv_in.register_forward_hook(lambda *a: calls.append(1))
    try:
        res = decoder_optimization(bundle, sample, ref, mask, replace(cfg, train_levels=1), 48, on_step=snapshot)
    finally:
        hook.remove()
    # conv_in: D_0 and the frozen head once per tile (1 tile), the loss before/after, the re-decode; not per step
    assert len(res.losses) == 10 and len(calls) <= 5
    assert abs(res.loss_before - whole.loss_before) <= 1e-3 * whole.loss_before
    assert res.loss_after < 0.9 * res.loss_before
    coarsest = len(decoder.up) - 1
    moved = {k for k in before if not torch.equal(before[k], seen[k])}
    assert moved and all(k.startswith(("up.0.", "norm_out", "conv_out")) for k in moved), sorted(moved)[:5]
    assert any(k.startswith("up.0.") for k in moved) and not any(k.startswith(f"up.{coarsest}.") for k in moved)
    assert all(torch.equal(before[k], v) for k, v in decoder.state_dict().items())      # restored afterwards
    assert not torch.equal(res.image, whole.image)


def test_train_levels_is_validated():
    from msbd.config import MSBDConfig
    from msbd.errors import InputError
    from msbd.pipeline import check_for_bundle
    with pytest.raises(ValueError, match="train_levels"):
        MSBDConfig(decoder_opt=DecoderOptConfig(train_levels=-1)).validate()
    bundle = build_bundle("tiny-test", seed=0)
    levels = len(bundle.vae.decoder.up)
    check_for_bundle(MSBDConfig(decoder_opt=DecoderOptConfig(train_levels=levels)), bundle)
    with pytest.raises(InputError, match="train_levels"):
        check_for_bundle(MSBDConfig(decoder_opt=DecoderOptConfig(train_levels=levels + 1)), bundle)
