"""Toy scenes: determinism, resolution independence, region renders, captions, edit tasks, CLI."""
import colorsys
import json
import math

import numpy as np
import pytest
from PIL import Image

from msbd.toy import raster
from msbd.toy.analyser import colour_classes, components, edge_width
from msbd.toy.scenes import (
    BACKGROUND_MAX_CHROMA,
    COLOURS,
    PALETTE,
    Background,
    EditTask,
    MaskRegion,
    Scene,
    SceneObject,
    caption,
    main,
    random_edit_task,
    random_scene,
    render,
    render_mask,
)
from msbd.toy.shapes import SHAPES, shape_area


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2))


def test_same_seed_same_pixels_and_different_seed_differs():
    a, b = render(random_scene(3), 96), render(random_scene(3), 96)
    assert a.dtype == np.uint8 and a.shape == (96, 96, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, render(random_scene(4), 96))


@pytest.mark.parametrize("aspect,size", [(1.0, 128), (1.5, 300), (0.75, 256)])
def test_region_equals_crop_of_full_render(aspect, size):
    scene = random_scene(11, n_objects=3, aspect=aspect)
    full = render(scene, size)
    rng = np.random.default_rng(0)
    for _ in range(4):
        h, w = rng.integers(1, full.shape[0]), rng.integers(1, full.shape[1])
        top, left = rng.integers(0, full.shape[0] - h + 1), rng.integers(0, full.shape[1] - w + 1)
        crop = full[top : top + h, left : left + w]
        np.testing.assert_array_equal(render(scene, size, region=(top, left, h, w)), crop)


def test_region_equals_crop_across_strips(monkeypatch):
    scene = random_scene(5, n_objects=2)
    full = render(scene, 160)
    monkeypatch.setattr(raster, "STRIP_PIXELS", 1000)  # many strips, boundaries in different places
    np.testing.assert_array_equal(render(scene, 160, region=(37, 5, 101, 150)), full[37:138, 5:155])


@pytest.mark.parametrize("seed,aspect", [(0, 1.0), (1, 1.0), (2, 1.5), (3, 0.75)])
def test_low_and_high_resolution_renders_agree_after_downsampling(seed, aspect):
    scene = random_scene(seed, n_objects=3, aspect=aspect)
    low = render(scene, 64, as_float=True)
    high = render(scene, 512, as_float=True)
    h, w = low.shape[:2]
    assert high.shape[:2] == (8 * h, 8 * w)
    assert _psnr(low, high.reshape(h, 8, w, 8, 3).mean(axis=(1, 3))) > 32


def test_fine_octaves_only_in_large_renders():
    finest = 0.5 / 2 ** (raster.N_OCTAVES - 1)
    assert finest == pytest.approx(1 / 2048)
    assert raster.octave_weight(finest, 1 / 128) == 0.0
    assert raster.octave_weight(finest, 1 / 8192) == 1.0
    # Grain: visible detail in a 4096 render, mostly gone once averaged over the pixels of a 128 render,
    # and absent from the 128 render itself.
    scene = Scene(background=Background(noise_amplitude=0.0, grain_amplitude=0.08, seed=3))
    tile = render(scene, 4096, region=(1024, 1024, 256, 256), as_float=True)[..., 0]
    assert tile.std() > 4 / 255
    assert tile.reshape(8, 32, 8, 32).mean(axis=(1, 3)).std() < 0.3 * tile.std()
    no_grain = Scene(background=Background(noise_amplitude=0.0, grain_amplitude=0.0, seed=3))
    np.testing.assert_array_equal(render(scene, 128), render(no_grain, 128))


def test_edges_are_one_pixel_wide_at_every_size():
    scene = Scene(background=Background(noise_amplitude=0.0), objects=(SceneObject("circle", "blue", 0.5, 0.5, 0.6),))
    widths = []
    for size in (128, 8192):
        top = round(0.2 * size) - 48  # a 96 px window across the top of the circle (its edge at 0.2 * size)
        image = render(scene, size, region=(max(top, 0), size // 2 - 48, 96, 96))
        obj = components(colour_classes(image) == COLOURS.index("blue"), 20)[0]
        widths.append(edge_width(image, obj))
    assert 0.7 < widths[0] < 1.8 and 0.7 < widths[1] < 1.8
    assert abs(widths[0] - widths[1]) < 0.35


def test_object_area_matches_geometry():
    for shape in SHAPES:
        obj = SceneObject(shape, "red", 0.5, 0.5, 0.8, 1.0)
        scene = Scene(background=Background(noise_amplitude=0.0), objects=(obj,))
        coverage = render(scene, 256, as_float=True)[..., 1]  # green: 0 on the object, 0.5 on the background
        area = (1 - coverage / 0.5).sum() / 256**2
        assert area == pytest.approx(shape_area(shape, 0.4), rel=0.01), shape


def test_palette_is_saturated_and_backgrounds_are_muted():
    hues = []
    for rgb in PALETTE.values():
        assert max(rgb) - min(rgb) == 255
        hues.append(360 * colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0])
    gaps = np.diff(sorted(hues) + [sorted(hues)[0] + 360])
    assert len(PALETTE) == 8 and gaps.min() >= 29
    for seed in range(20):
        bg = random_scene(seed).background
        for colour in (bg.colour_a, bg.colour_b):
            assert max(colour) - min(colour) <= BACKGROUND_MAX_CHROMA
    with pytest.raises(ValueError, match="chroma"):
        Background(colour_a=(1.0, 0.0, 0.0))


def test_random_scenes_hold_zero_to_three_objects_inside_the_image():
    counts = set()
    for seed in range(40):
        scene = random_scene(seed)
        counts.add(len(scene.objects))
        for o in scene.objects:
            assert 0.15 <= o.size <= 0.45
            assert o.size / 2 <= o.x <= 1 - o.size / 2 and o.size / 2 <= o.y <= 1 - o.size / 2
    assert counts == {0, 1, 2, 3}
    assert len(random_scene(0, n_objects=2).objects) == 2


def test_random_scene_sizes_option_draws_from_the_range_and_keeps_the_default_draws():
    assert random_scene(5, sizes=(0.15, 0.45)) == random_scene(5)       # the default range: same scene
    for seed in range(20):
        (o,) = random_scene(seed, n_objects=1, sizes=(0.5, 0.7)).objects
        assert 0.5 <= o.size <= 0.7
        assert o.size / 2 <= o.x <= 1 - o.size / 2 and o.size / 2 <= o.y <= 1 - o.size / 2
    for bad in ((0.0, 0.3), (0.5, 0.4), (0.3, 1.2)):
        with pytest.raises(ValueError, match="object sizes"):
            random_scene(0, sizes=bad)


def test_captions():
    striped = Background(stripe_amplitude=0.05)
    red_triangle = SceneObject("triangle", "red", 0.5, 0.5, 0.3)
    blue_circle = SceneObject("circle", "blue", 0.2, 0.2, 0.2)
    orange_star = SceneObject("star", "orange", 0.8, 0.8, 0.2)
    assert caption(Scene(objects=(red_triangle,))) == "a red triangle"
    assert caption(Scene(background=striped, objects=(blue_circle,))) == "a blue circle on a striped background"
    assert caption(Scene(objects=(red_triangle, orange_star))) == "a red triangle and an orange star"
    assert caption(Scene(objects=(red_triangle, blue_circle, orange_star))) == (
        "a red triangle, a blue circle and an orange star"
    )
    assert caption(Scene()) == "a plain background"
    assert caption(Scene(background=striped)) == "a striped background"


def test_json_round_trip():
    scene = random_scene(7, n_objects=3, aspect=1.25)
    assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene
    task = random_edit_task(7)
    assert EditTask.from_dict(json.loads(json.dumps(task.to_dict()))) == task


def test_invalid_inputs_raise():
    scene = random_scene(0)
    with pytest.raises(ValueError, match="width"):
        render(scene, 64, width=80)
    with pytest.raises(ValueError, match="region"):
        render(scene, 64, region=(60, 0, 10, 10))
    with pytest.raises(ValueError, match="height"):
        render(scene, 0)
    with pytest.raises(ValueError, match="shape"):
        SceneObject("blob", "red", 0.5, 0.5, 0.3)
    with pytest.raises(ValueError, match="colour"):
        SceneObject("circle", "pink", 0.5, 0.5, 0.3)
    with pytest.raises(ValueError, match="kind"):
        MaskRegion("blob", 0.5, 0.5, 0.1, 0.1)


@pytest.mark.parametrize("seed", range(6))
def test_edit_task_object_inside_mask_and_colour_new(seed):
    task = random_edit_task(seed, aspect=[1.0, 1.5][seed % 2])
    mask = render_mask(task, 128)
    changed = np.any(render(task.target, 128) != render(task.source, 128), axis=-1)
    assert changed.any() and not (changed & ~mask).any()
    assert task.prompt == f"{'an' if task.obj.colour[0] in 'aeiou' else 'a'} {task.obj.colour} {task.obj.shape}"
    near = [o for o in task.source.objects if np.any(render_mask(task, 128) & _object_pixels(task.source, o))]
    assert task.obj.colour not in {o.colour for o in near}
    assert task.target.objects[-1] == task.obj


def _object_pixels(scene: Scene, obj: SceneObject) -> np.ndarray:
    alone = Scene(aspect=scene.aspect, background=Background(noise_amplitude=0.0), objects=(obj,))
    return colour_classes(render(alone, 128)) >= 0


def test_render_mask_shapes():
    ellipse = MaskRegion("ellipse", 0.5, 0.5, 0.25, 0.125)
    rect = MaskRegion("rect", 0.5, 0.5, 0.25, 0.125)
    assert render_mask(rect, 64).sum() == 32 * 16
    assert render_mask(ellipse, 256).sum() == pytest.approx(math.pi * 64 * 32, rel=0.01)
    crop = render_mask(ellipse, 256)[100:150, 20:80]
    np.testing.assert_array_equal(render_mask(ellipse, 256, region=(100, 20, 50, 60)), crop)


def test_cli_writes_png(tmp_path, capsys):
    out = tmp_path / "scene.png"
    main(["--seed", "3", "--size", "64", str(out)])
    image = np.asarray(Image.open(out))
    np.testing.assert_array_equal(image, render(random_scene(3), 64))
    assert caption(random_scene(3)) in capsys.readouterr().out
    for bad in (["--size", "0", str(out)], ["--objects", "5", str(out)], [str(tmp_path / "x.jpg")]):
        with pytest.raises(SystemExit):
            main(bad)
