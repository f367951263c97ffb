"""Seed splits, render caches (skip and resume) and the ×4 degradation of msbd.toy.data."""
import numpy as np
import pytest
import scipy.ndimage
import torch

from msbd.toy.data import (HELDOUT_SEEDS, MILDEST, TRAIN_SEEDS, DegradationConfig, SRPatches, degrade, edge_crop,
                           gaussian_blur, jpeg_roundtrip, object_edge_points, render_cache, resize_area, seed_range,
                           single_object_renderer, to_uint8)


class CountingRenderer:
    """Stand-in renderer: a seed-dependent gradient image; counts calls and can fail at one seed."""

    def __init__(self, fail_at: int | None = None):
        self.calls, self.fail_at = [], fail_at

    def __call__(self, seed: int, height: int, width: int) -> tuple[np.ndarray, str]:
        if seed == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append(seed)
        ramp = np.add.outer(np.arange(height), np.arange(width)) + 7 * seed
        return np.stack([ramp % 256, (ramp * 3) % 256, np.full_like(ramp, seed % 256)], -1).astype(np.uint8), \
            f"scene {seed}"


def test_seed_splits_never_overlap():
    assert set(TRAIN_SEEDS).isdisjoint(range(HELDOUT_SEEDS.start, HELDOUT_SEEDS.start + 10))
    assert TRAIN_SEEDS.stop <= HELDOUT_SEEDS.start
    assert list(seed_range("heldout", 3, offset=2)) == [10**6 + 2, 10**6 + 3, 10**6 + 4]
    with pytest.raises(ValueError, match="runs past"):
        seed_range("train", 2, offset=len(TRAIN_SEEDS) - 1)
    with pytest.raises(ValueError, match="split"):
        seed_range("test", 3)


def test_cache_renders_once_then_skips(tmp_path):
    renderer = CountingRenderer()
    cache = render_cache(str(tmp_path), range(5, 15), 8, 12, chunk=4, renderer=renderer)
    assert renderer.calls == list(range(5, 15))
    assert cache.images.shape == (10, 8, 12, 3) and cache.images.dtype == np.uint8
    assert cache.captions == [f"scene {s}" for s in range(5, 15)]
    np.testing.assert_array_equal(cache.images[3], renderer(8, 8, 12)[0])
    again = CountingRenderer()
    cache2 = render_cache(str(tmp_path), range(5, 15), 8, 12, chunk=4, renderer=again)
    assert again.calls == []
    np.testing.assert_array_equal(cache2.images, cache.images)


def test_interrupted_cache_resumes_at_last_chunk(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        render_cache(str(tmp_path), range(10), 6, chunk=4, renderer=CountingRenderer(fail_at=6))
    resumed = CountingRenderer()
    cache = render_cache(str(tmp_path), range(10), 6, chunk=4, renderer=resumed)
    assert resumed.calls == [4, 5, 6, 7, 8, 9]        # chunk [0, 4) was finished before the interruption
    reference = render_cache(str(tmp_path / "ref"), range(10), 6, chunk=4, renderer=CountingRenderer())
    np.testing.assert_array_equal(cache.images, reference.images)
    assert cache.captions == reference.captions


def test_cache_rejects_bad_renders(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        render_cache(str(tmp_path), range(2), 6, renderer=lambda s, h, w: (np.zeros((h, w + 1, 3), np.uint8), ""))


def test_single_object_renderer_draws_one_object_of_the_given_size(tmp_path):
    from msbd.toy.analyser import colour_classes, components
    from msbd.toy.scenes import COLOURS
    render = single_object_renderer((0.5, 0.6))
    cache = render_cache(str(tmp_path), range(10, 16), 64, renderer=render)
    for image, text in zip(cache.images, cache.captions):
        assert " and " not in text and text.split()[1] in COLOURS        # 'a red star' (+ ' on a striped ...')
        found = components(colour_classes(np.asarray(image), 0.4) == COLOURS.index(text.split()[1]), 20)
        assert len(found) == 1 and found[0].sum() > 0.05 * 64 * 64       # one object, a large one
    assert np.array_equal(render(10, 64, 64)[0], cache.images[0])


def test_to_uint8():
    np.testing.assert_array_equal(to_uint8(np.array([[[0.0, 0.5, 1.2]]])), [[[0, 128, 255]]])
    with pytest.raises(ValueError):
        to_uint8(np.zeros((1, 1, 3), np.int32))


def test_gaussian_blur_matches_scipy():
    image = torch.rand(1, 3, 20, 17, dtype=torch.float64)
    ours = gaussian_blur(image, 1.0)[0].numpy()
    # torch's "reflect" padding is scipy's "mirror"; scipy's radius int(3 * 1 + 0.5) = 3 equals ours.
    ref = np.stack([scipy.ndimage.gaussian_filter(c, 1.0, mode="mirror", truncate=3.0) for c in image[0].numpy()])
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert gaussian_blur(image, 0.0) is image


def test_degrade_shapes_range_and_levels():
    rng = np.random.default_rng(0)
    hr = torch.rand(3, 32, 24)
    config = DegradationConfig(jpeg_prob=1.0)
    lr = degrade(hr, rng, config)
    assert lr.shape == (3, 8, 6)
    assert lr.min() >= 0 and lr.max() <= 1
    torch.testing.assert_close(lr * 255, (lr * 255).round(), rtol=0, atol=1e-4)     # 8-bit levels
    torch.testing.assert_close(degrade(hr, np.random.default_rng(1), config),
                               degrade(hr, np.random.default_rng(1), config), rtol=0, atol=0)
    with pytest.raises(ValueError, match="divisible"):
        degrade(torch.rand(3, 30, 24), rng)


def test_mildest_degradation_is_plain_bicubic_downscale():
    hr = torch.rand(3, 16, 16)
    lr = degrade(hr, np.random.default_rng(0), MILDEST)
    expected = (resize_area(hr[None], 4)[0].clamp(0, 1) * 255).round() / 255
    torch.testing.assert_close(lr, expected, rtol=0, atol=0)


def test_degradation_blurs_and_noises():
    hr = torch.zeros(3, 64, 64)
    hr[:, :, 32:] = 1.0                                           # a vertical edge
    sharp = degrade(hr, np.random.default_rng(0), MILDEST)
    blurred = degrade(hr, np.random.default_rng(0), DegradationConfig(blur_sigma=(3.0, 3.0), noise_std=(0, 0),
                                                                     jpeg_prob=0.0))
    assert blurred[0, 8, 6] > sharp[0, 8, 6] + 0.01               # edge spread further to the left
    noisy = degrade(hr, np.random.default_rng(0), DegradationConfig(blur_sigma=(0, 0), noise_std=(0.05, 0.05),
                                                                   jpeg_prob=0.0))
    assert 0.02 < (noisy - sharp)[:, :, :6].std() < 0.08          # on the flat dark side... clipped at 0
    with pytest.raises(ValueError):
        DegradationConfig(blur_sigma=(1.0, 0.5))


def test_clean_prob_mixes_plain_bicubic_patches_into_the_degraded_ones():
    hr = torch.rand(3, 32, 32)
    heavy = DegradationConfig(blur_sigma=(2.0, 2.0), noise_std=(0.05, 0.05), jpeg_prob=1.0)
    plain = degrade(hr, np.random.default_rng(0), MILDEST)
    always = degrade(hr, np.random.default_rng(0), DegradationConfig(blur_sigma=(2.0, 2.0), noise_std=(0.05, 0.05),
                                                                    jpeg_prob=1.0, clean_prob=1.0))
    torch.testing.assert_close(always, plain, rtol=0, atol=0)
    # clean_prob = 0 draws nothing extra (other configs keep their random stream); clean_prob > 0 draws one more
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    degrade(hr, rng_a, heavy)
    degrade(hr, rng_b, DegradationConfig(clean_prob=0.25))
    assert rng_a.random() != rng_b.random()
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    degrade(hr, rng_a, heavy)
    rng_b.uniform(), rng_b.uniform(), rng_b.random(), rng_b.integers(70, 96), rng_b.standard_normal((3, 8, 8))
    assert rng_a.random() == rng_b.random()
    clean = [torch.equal(degrade(hr, np.random.default_rng(s), DegradationConfig(clean_prob=0.5)),
                         degrade(hr, np.random.default_rng(s), MILDEST)) for s in range(40)]
    assert 8 <= sum(clean) <= 32
    with pytest.raises(ValueError, match="clean_prob"):
        DegradationConfig(clean_prob=1.5)


def test_jpeg_roundtrip_is_lossy_but_close():
    image = torch.linspace(0, 1, 3 * 16 * 16).reshape(3, 16, 16)
    out = jpeg_roundtrip(image, 90)
    assert out.shape == image.shape
    assert 0 < (out - image).abs().mean() < 0.05


def test_sr_patches_are_deterministic_pairs():
    cache = CountingRenderer()(3, 40, 40)[0][None]                # [1, 40, 40, 3]
    dataset = SRPatches([cache], patch=16, length=5, seed=7)
    lr, hr = dataset[2]
    assert hr.shape == (3, 16, 16) and lr.shape == (3, 4, 4)
    lr2, hr2 = dataset[2]
    torch.testing.assert_close(hr, hr2, rtol=0, atol=0)
    torch.testing.assert_close(lr, lr2, rtol=0, atol=0)
    assert not torch.equal(dataset[3][1], hr)                     # another index, another crop


def _square_scene() -> np.ndarray:
    image = np.full((64, 64, 3), 120, np.uint8)                  # grey background (chroma 0)
    image[20:30, 40:50] = (255, 0, 0)                            # a saturated 10 x 10 square
    return image


def test_object_edge_points_lie_on_the_outline():
    points = object_edge_points(_square_scene())
    assert len(points) == 36                                     # the 10 x 10 square's border pixels
    rows, cols = points[:, 0], points[:, 1]
    assert set(rows) <= set(range(20, 30)) and set(cols) <= set(range(40, 50))
    assert ((rows == 20) | (rows == 29) | (cols == 40) | (cols == 49)).all()
    assert len(object_edge_points(_square_scene(), max_points=8)) == 8
    assert len(object_edge_points(np.full((8, 8, 3), 90, np.uint8))) == 0      # no object, no points


def test_edge_crop_contains_the_outline_point():
    image, rng = _square_scene(), np.random.default_rng(0)
    points = object_edge_points(image)
    for _ in range(20):
        crop = edge_crop(image, 16, points, rng)
        assert crop.shape == (16, 16, 3)
        assert (crop == (255, 0, 0)).all(axis=-1).any()          # within a quarter patch of an outline pixel
    with pytest.raises(ValueError, match="does not fit"):
        edge_crop(image, 65, points, rng)


def test_edge_prob_draws_patches_on_object_outlines():
    cache = _square_scene()[None]
    def red_share(dataset):
        return np.mean([bool(((dataset[i][1][0] == 1) & (dataset[i][1][1] == 0)).any()) for i in range(40)])
    uniform = SRPatches([cache], patch=16, length=40, seed=0)
    edges = SRPatches([cache], patch=16, length=40, seed=0, edge_prob=1.0)
    assert red_share(edges) == 1.0 and red_share(uniform) < 0.6   # uniform: (16 + 9)^2 / 49^2 of positions touch it
    with pytest.raises(ValueError, match="edge_prob"):
        SRPatches([cache], patch=16, length=4, seed=0, edge_prob=1.5)
    torch.testing.assert_close(SRPatches([cache], patch=16, length=4, seed=0, edge_prob=0.0)[3][1], uniform[3][1])
